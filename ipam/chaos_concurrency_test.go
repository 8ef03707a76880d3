package ipam

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
)

// The fault tests: ten nodes, each with its own etcd client and allocator,
// allocate (automatically and fixed addresses) and release concurrently
// against one embedded etcd, while etcd and the allocators restart at
// random moments and requests are cancelled or time out mid-request. Every
// operation's outcome is recorded: acknowledged, refused cleanly, or
// unknown. Afterwards the stored state must agree with every acknowledged
// outcome and be consistent in itself, and the history must be
// linearizable (see chaos_linearizability_test.go).

// fixedPool is a Manual pool that only fixed-address requests draw from, in
// small blocks: a node claims such a block when it is first asked for one
// of its addresses, and other nodes then write to it (their own fixed
// addresses, releases), so its owner's cached copy goes stale.
func fixedPool() (*api.IPPool, []netip.Addr) {
	p := newTestPool("fixed", "10.30.0.0/26", 28)
	p.Spec.AssignmentMode = api.AssignmentManual
	var addrs []netip.Addr
	for i := 1; i < 63; i += 2 { // 31 addresses in the 4 blocks
		addrs = append(addrs, addrAt(netip.MustParsePrefix("10.30.0.0/26"), i))
	}
	return p, addrs
}

func chaosOps(t *testing.T, n int) int {
	if testing.Short() || raceEnabled {
		t.Logf("%d operations instead of %d (-short or -race); make test runs the full count without -race too", n/8, n)
		return n / 8
	}
	return n
}

func TestChaosFaultsLargePool(t *testing.T) {
	fp, fixed := fixedPool()
	cfg := chaosConfig{
		pools:            []*api.IPPool{newTestPool("big", "10.0.0.0/16", 26), fp},
		config:           Config{MaxBlocksPerNode: 20, AutoAllocateBlocks: true},
		nodes:            10,
		perNode:          3,
		ops:              chaosOps(t, 20000),
		maxLive:          20,
		fixedFrac:        0.1,
		fixed:            fixed,
		idleRelease:      300 * time.Millisecond,
		chaosMin:         300 * time.Millisecond,
		chaosMax:         1200 * time.Millisecond,
		allocRestartFrac: 0.3,
		seed:             uint64(time.Now().UnixNano()),
	}
	r := runFaultTest(t, cfg)
	if c, _ := r.counts(); c[acked] < cfg.ops/3 {
		t.Errorf("only %d of %d operations acknowledged: the run tested little", c[acked], len(r.history))
	}
}

// A pool of 8 blocks for 10 nodes with one block each: two nodes have no
// block at all and every node borrows once its block is full.
func TestChaosFaultsBorrowing(t *testing.T) {
	fp, fixed := fixedPool()
	cfg := chaosConfig{
		pools:            []*api.IPPool{newTestPool("small", "10.1.0.0/26", 29), fp},
		config:           Config{MaxBlocksPerNode: 1, AutoAllocateBlocks: true},
		nodes:            10,
		perNode:          3,
		ops:              chaosOps(t, 20000),
		maxLive:          3,
		fixedFrac:        0.1,
		fixed:            fixed,
		chaosMin:         300 * time.Millisecond,
		chaosMax:         1200 * time.Millisecond,
		allocRestartFrac: 0.3,
		seed:             uint64(time.Now().UnixNano()),
	}
	r := runFaultTest(t, cfg)
	borrowed := 0
	for _, op := range r.history {
		if op.kind == kAssign && op.out == acked && op.borrowed {
			borrowed++
		}
	}
	t.Logf("%d acknowledged automatic assignments were borrowed", borrowed)
	if borrowed == 0 {
		t.Errorf("no address was borrowed: the pool is not small enough to test borrowing")
	}
}

// Strict affinity: every node has one block of 8 and may not borrow, so
// exhaustion is frequent and must be a clean error that says why.
func TestChaosFaultsStrictAffinity(t *testing.T) {
	fp, fixed := fixedPool()
	cfg := chaosConfig{
		pools:            []*api.IPPool{newTestPool("strict", "10.2.0.0/25", 29), fp},
		config:           Config{MaxBlocksPerNode: 1, AutoAllocateBlocks: true, StrictAffinity: true},
		nodes:            10,
		perNode:          3,
		ops:              chaosOps(t, 20000),
		maxLive:          4,
		fixedFrac:        0.1,
		fixed:            fixed,
		chaosMin:         300 * time.Millisecond,
		chaosMax:         1200 * time.Millisecond,
		allocRestartFrac: 0.3,
		seed:             uint64(time.Now().UnixNano()),
	}
	r := runFaultTest(t, cfg)
	exhausted := 0
	for _, op := range r.history {
		if op.kind == kAssign && op.out == acked && op.borrowed {
			t.Errorf("%s got borrowed address %v under strictAffinity", op.handle, op.addrs)
		}
		if op.reason == "exhausted" {
			exhausted++
			if !strings.Contains(op.err.Error(), "strictAffinity is on") {
				t.Errorf("exhaustion error does not say strictAffinity is on: %v", op.err)
			}
		}
	}
	t.Logf("%d clean exhaustion errors", exhausted)
	if exhausted == 0 {
		t.Errorf("no request was refused for exhaustion: the blocks are not small enough")
	}
}

// runFaultTest runs cfg and checks the result.
func runFaultTest(t *testing.T, cfg chaosConfig) *chaosRun {
	t.Helper()
	t.Logf("seed %d", cfg.seed)
	r := startChaosRun(t, cfg)
	r.warmUp()
	r.run()
	r.report(t.Name())
	r.repairHalfClaims()
	st := readStoreState(t, r.admin)
	st.checkConsistency(t, cfg.pools)
	r.checkAcknowledged(st)
	if cfg.config.MaxBlocksPerNode > 0 {
		perNode := map[string]int{}
		for _, b := range st.blocks {
			if b.Affinity != "" && !strings.HasPrefix(b.CIDR.String(), "10.30.") {
				perNode[b.Affinity]++
			}
		}
		for node, n := range perNode {
			if n > cfg.config.MaxBlocksPerNode {
				t.Errorf("node %s has %d blocks, maxBlocksPerNode is %d", node, n, cfg.config.MaxBlocksPerNode)
			}
		}
	}
	r.checkLinearizable(st, time.Minute)
	return r
}

// checkAcknowledged compares the stored state with the history, handle by
// handle (every handle belongs to one worker, which used it sequentially):
// acknowledged assignments are stored with their handle unless an
// acknowledged release followed; acknowledged releases freed every address
// the handle was acknowledged and left nothing stored; nothing is stored
// for a handle that no assignment of it could explain.
func (r *chaosRun) checkAcknowledged(st *storeState) {
	t := r.t
	type life struct {
		node           string
		acked          []netip.Addr
		assignUnknown  bool
		released       *histOp // the acknowledged release
		releaseUnknown bool
		borrowed       map[netip.Addr]bool
	}
	lives := map[string]*life{}
	for i := range r.history {
		op := &r.history[i]
		if op.kind == kReleaseIP {
			t.Fatalf("fault tests do not expect operator releases")
		}
		l := lives[op.handle]
		if l == nil {
			l = &life{node: r.nodes[op.node].name, borrowed: map[netip.Addr]bool{}}
			lives[op.handle] = l
		}
		switch {
		case op.kind != kRelease && op.out == acked:
			l.acked = append(l.acked, op.addrs...)
			for _, a := range op.addrs {
				l.borrowed[a] = op.borrowed
			}
		case op.kind != kRelease && op.out == unknown:
			l.assignUnknown = true
		case op.kind == kRelease && op.out == acked:
			l.released = op
		case op.kind == kRelease && op.out == unknown:
			l.releaseUnknown = true
		}
	}
	var lateLeaks, unknownHeld int
	for name, l := range lives {
		stored := st.byHandle[name]
		for _, a := range stored {
			if attr := st.owner[a]; attr.Node != l.node || attr.Pod != name || attr.Namespace != "chaos" {
				t.Errorf("%s is stored for handle %s with attributes %+v, want node %s, pod chaos/%s", a, name, attr, l.node, name)
			}
		}
		extra := 0
		for _, a := range stored {
			if !slices.Contains(l.acked, a) {
				extra++
			}
		}
		switch {
		case l.released != nil:
			for _, a := range l.acked {
				// A release whose outcome is unknown may have freed it
				// before the acknowledged one ran; nothing may be stored
				// either way (checked below).
				if !l.releaseUnknown && !slices.Contains(l.released.addrs, a) {
					t.Errorf("handle %s: acknowledged release freed %v, not its acknowledged %s", name, l.released.addrs, a)
				}
			}
			if !l.assignUnknown {
				for _, a := range l.released.addrs {
					if !slices.Contains(l.acked, a) {
						t.Errorf("handle %s: release freed %s, which no assignment of it gave", name, a)
					}
				}
			}
			if len(stored) > 0 {
				if l.assignUnknown {
					// An assignment that gave up client-side was applied
					// by etcd after the release: a leak, as the checker
					// reports it.
					lateLeaks++
				} else {
					t.Errorf("handle %s: acknowledged release, yet %v still stored", name, stored)
				}
			}
		case l.releaseUnknown:
			// Either a release was applied (nothing acknowledged left) or
			// none was (all of it left).
			left := 0
			for _, a := range l.acked {
				if slices.Contains(stored, a) {
					left++
				}
			}
			if left != 0 && left != len(l.acked) {
				t.Errorf("handle %s: %d of its acknowledged %v stored after releases of unknown outcome", name, left, l.acked)
			}
			if extra > 0 && !l.assignUnknown {
				t.Errorf("handle %s holds %v, acknowledged %v", name, stored, l.acked)
			}
			if len(stored) > 0 {
				unknownHeld++
			}
		default:
			for _, a := range l.acked {
				if !slices.Contains(stored, a) {
					t.Errorf("handle %s: acknowledged %s is not stored (stored: %v)", name, a, stored)
				}
			}
			if extra > 0 && !l.assignUnknown {
				t.Errorf("handle %s holds %v, acknowledged only %v", name, stored, l.acked)
			}
		}
		// Borrowed addresses are marked: an acknowledged assignment
		// (automatic or fixed) still held is borrowed exactly when its
		// block is another node's.
		for _, a := range stored {
			b, isBorrowed := st.blocks[blockFor(a, blockBitsOf(st, a))], l.borrowed[a]
			if slices.Contains(l.acked, a) && b != nil && r.cfg.idleRelease == 0 && isBorrowed != (b.Affinity != l.node) {
				t.Errorf("%s of handle %s on %s: borrowed=%v, block %s is affine to %q", a, name, l.node, isBorrowed, b.CIDR, b.Affinity)
			}
		}
	}
	for name := range st.byHandle {
		if lives[name] == nil {
			t.Errorf("handle %s holds %v, but no operation used it", name, st.byHandle[name])
		}
	}
	t.Logf("handles: %d; still holding addresses after releases of unknown outcome: %d; leaked by assignments applied after an acknowledged release: %d",
		len(lives), unknownHeld, lateLeaks)
}

// blockBitsOf is the block size of the stored block holding a.
func blockBitsOf(st *storeState, a netip.Addr) int {
	for c := range st.blocks {
		if c.Contains(a) {
			return c.Bits()
		}
	}
	return 32
}

// This file is over 600 lines on purpose: it is one harness (cluster of
// allocators, fault injection, the porcupine model and the history
// recorder) that the chaos tests share, and its parts only make sense
// together.

package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// This file is the harness of the fault and linearizability tests
// (chaos_concurrency_test.go, chaos_linearizability_test.go): nodes with
// their own etcd clients and allocators working against one embedded etcd,
// while the test goroutine restarts etcd and the allocators at random
// moments; a history of every operation with its outcome; and a reading of
// the final store state.

// outcome is what a client knows about an operation once it returned.
type outcome int

const (
	// acked: the operation succeeded and said so.
	acked outcome = iota
	// refused: the operation failed cleanly; nothing was applied.
	refused
	// unknown: a timeout, a cancellation, an unreachable store or a stopped
	// allocator; the operation may or may not have been applied (and may
	// still be applied after the client gave up).
	unknown
)

func (o outcome) String() string {
	return [...]string{"acked", "refused", "unknown"}[o]
}

type histKind int

const (
	kAssign    histKind = iota // AutoAssign(handle)
	kAssignIP                  // AssignIP(addr, handle)
	kRelease                   // ReleaseHandle(handle)
	kReleaseIP                 // operator ReleaseIPs(addr)
)

func (k histKind) String() string {
	return [...]string{"assign", "assignIP", "release", "releaseIP"}[k]
}

// histOp is one operation of the history.
type histOp struct {
	client int // worker number; the operator is -1
	node   int
	kind   histKind
	handle string
	addr   netip.Addr // kAssignIP, kReleaseIP: the address asked for
	// call and ret are nanoseconds since the run started; ret is
	// math.MaxInt64 for unknown outcomes (the effect may come at any later
	// time, as in etcd's robustness tests).
	call, ret int64
	out       outcome
	// addrs: assigned (acked assign) or freed (acked release) addresses.
	addrs    []netip.Addr
	borrowed bool   // acked AutoAssign: the assignment was marked borrowed
	reason   string // refused: "exhausted", "in use", "conflict"
	owner    string // refused as in use: the owner's handle named by the error; kReleaseIP: the handle freed
	err      error
}

// inUseOwner finds the owner's handle in an ErrAddressInUse message
// ("... is held by pod ns/p (handle h)").
var inUseOwner = regexp.MustCompile(`is held by (?:pod \S+ )?\(?handle ([^)\s]+)\)?$`)

// classify sorts an operation's error into an outcome. Clean refusals are
// the pool being exhausted, the address being in use, and a lost guard
// after the allocator's retries (nothing written). Timeouts, cancellations,
// an unreachable etcd and a stopped allocator are unknown outcomes. Anything
// else is unexpected and fails the test.
func classify(err error) (outcome, string, bool) {
	switch {
	case err == nil:
		return acked, "", true
	case errors.Is(err, ErrExhausted):
		return refused, "exhausted", true
	case errors.Is(err, ErrAddressInUse):
		return refused, "in use", true
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, datastore.ErrUnavailable), errors.Is(err, ErrAllocatorDown):
		return unknown, "", true
	case errors.Is(err, datastore.ErrConflict), errors.Is(err, datastore.ErrExists):
		return refused, "conflict", true
	}
	return unknown, "", false
}

// chaosConfig describes one run.
type chaosConfig struct {
	pools     []*api.IPPool
	config    Config
	nodes     int
	perNode   int // workers per node
	ops       int // operations in total
	maxLive   int // handles a worker keeps at most
	fixedFrac float64
	// fixed lists the addresses AssignIP asks for; nil = chosen after the
	// warm-up from the first block of every node (so nodes ask for
	// addresses in each other's blocks).
	fixed []netip.Addr
	// operatorEvery > 0: an operator releases a random fixed address
	// (ReleaseIPs) that often.
	operatorEvery time.Duration
	idleRelease   time.Duration
	// chaos: etcd restarts and allocator restarts at random intervals in
	// [chaosMin, chaosMax]; allocRestartFrac of the events restart an
	// allocator instead of etcd.
	chaosMin, chaosMax time.Duration
	allocRestartFrac   float64
	seed               uint64
}

type chaosNode struct {
	name  string
	store *datastore.Etcd
	opts  []Option
	alloc atomic.Pointer[Allocator]
}

// chaosRun is one run: the cluster, the history and the counters.
type chaosRun struct {
	t     *testing.T
	cfg   chaosConfig
	srv   *etcdtest.Server
	admin datastore.Store
	nodes []*chaosNode
	fixed []netip.Addr
	epoch time.Time

	issued        atomic.Int64 // operations started
	etcdRestarts  int
	allocRestarts int
	duration      time.Duration

	mu      sync.Mutex
	history []histOp
	// owners is the online duplicate check: address -> handle of the last
	// acknowledged assignment whose handle has not started a release.
	owners    map[netip.Addr]string
	releasing map[string]bool
}

func (r *chaosRun) now() int64 { return int64(time.Since(r.epoch)) }

// startChaosRun starts etcd, writes the pools and the configuration, and
// starts one allocator per node, each with its own etcd client.
func startChaosRun(t *testing.T, cfg chaosConfig) *chaosRun {
	t.Helper()
	srv := etcdtest.Start(t)
	r := &chaosRun{t: t, cfg: cfg, srv: srv, admin: srv.Store(t), owners: map[netip.Addr]string{}, releasing: map[string]bool{}}
	res := datastore.NewResources(r.admin)
	ctx := context.Background()
	for _, p := range cfg.pools {
		if _, _, err := res.Apply(ctx, p); err != nil {
			t.Fatalf("apply pool %s: %v", p.Name, err)
		}
	}
	if err := WriteConfig(ctx, r.admin, cfg.config); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(cfg.seed, 7))
	for i := range cfg.nodes {
		n := &chaosNode{name: fmt.Sprintf("node-%02d", i), store: srv.Store(t)}
		// Write timeouts from 50 ms to 2 s: short ones give up on a
		// transaction mid-request (unknown outcome at the allocator).
		n.opts = []Option{
			WithWriteTimeout(time.Duration(50+rng.IntN(1950)) * time.Millisecond),
			WithIdleRelease(cfg.idleRelease),
		}
		a, err := NewAllocator(ctx, n.store, n.name, n.opts...)
		if err != nil {
			t.Fatalf("allocator %s: %v", n.name, err)
		}
		n.alloc.Store(a)
		r.nodes = append(r.nodes, n)
	}
	t.Cleanup(func() {
		for _, n := range r.nodes {
			if a := n.alloc.Load(); a != nil {
				a.Close()
			}
		}
	})
	return r
}

// warmUp gives every node its first block (one address each, released
// again) and picks the fixed addresses when none are configured.
func (r *chaosRun) warmUp() {
	r.t.Helper()
	ctx := context.Background()
	var firsts []netip.Prefix
	for _, n := range r.nodes {
		as, err := n.alloc.Load().AutoAssign(ctx, Request{Handle: "warm-" + n.name})
		if err != nil {
			r.t.Fatalf("warm-up on %s: %v", n.name, err)
		}
		if !as[0].Borrowed {
			firsts = append(firsts, as[0].Block)
		}
		if _, err := n.alloc.Load().ReleaseHandle(ctx, "warm-"+n.name); err != nil {
			r.t.Fatalf("warm-up on %s: %v", n.name, err)
		}
	}
	r.fixed = r.cfg.fixed
	if r.fixed == nil {
		// The last four ordinals of each first block: automatic
		// allocation reaches them last.
		for _, b := range firsts {
			n := blockLen(b)
			for i := max(n-5, 1); i < n-1; i++ {
				r.fixed = append(r.fixed, addrAt(b, i))
			}
		}
	}
}

// run runs the workers and, in the calling (test) goroutine, the chaos
// until cfg.ops operations were issued; then it closes the allocators.
func (r *chaosRun) run() {
	r.t.Helper()
	r.epoch = time.Now()
	var wg sync.WaitGroup
	for i, n := range r.nodes {
		for j := range r.cfg.perNode {
			id := i*r.cfg.perNode + j
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.worker(id, i, n)
			}()
		}
	}
	done := make(chan struct{})
	if r.cfg.operatorEvery > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.operator(done)
		}()
	}
	workersDone := make(chan struct{})
	go func() {
		// The operator stops when the workers have.
		for r.issued.Load() < int64(r.cfg.ops) {
			time.Sleep(5 * time.Millisecond)
		}
		close(done)
		wg.Wait()
		close(workersDone)
	}()
	r.chaos(workersDone)
	r.duration = time.Since(r.epoch)
	for _, n := range r.nodes {
		n.alloc.Load().Close()
	}
}

// chaos restarts etcd (down for up to 100 ms) or one allocator (an agent
// restart: the old one stops, in-flight requests fail, a new one loads
// the node's blocks) at random moments until done closes.
func (r *chaosRun) chaos(done <-chan struct{}) {
	rng := rand.New(rand.NewPCG(r.cfg.seed, 99))
	for {
		wait := r.cfg.chaosMin + time.Duration(rng.Int64N(int64(r.cfg.chaosMax-r.cfg.chaosMin)+1))
		select {
		case <-done:
			return
		case <-time.After(wait):
		}
		if rng.Float64() < r.cfg.allocRestartFrac {
			n := r.nodes[rng.IntN(len(r.nodes))]
			n.alloc.Load().Close()
			for attempt := 0; ; attempt++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				a, err := NewAllocator(ctx, n.store, n.name, n.opts...)
				cancel()
				if err == nil {
					n.alloc.Store(a)
					break
				}
				if attempt == 20 {
					r.t.Fatalf("restart allocator %s: %v", n.name, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			r.allocRestarts++
			continue
		}
		r.srv.Stop()
		time.Sleep(time.Duration(rng.IntN(100)) * time.Millisecond)
		r.srv.Restart(r.t)
		r.etcdRestarts++
	}
}

// opContext gives most operations a generous deadline, some a random short
// one (they often give up mid-request) and some a cancellation at a random
// moment.
func opContext(rng *rand.Rand) (context.Context, context.CancelFunc) {
	switch x := rng.Float64(); {
	case x < 0.08:
		return context.WithTimeout(context.Background(), time.Duration(rng.IntN(20000))*time.Microsecond)
	case x < 0.14:
		ctx, cancel := context.WithCancel(context.Background())
		t := time.AfterFunc(time.Duration(rng.IntN(5000))*time.Microsecond, cancel)
		return ctx, func() { t.Stop(); cancel() }
	}
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// handleLife is a worker's view of one of its handles.
type handleLife struct {
	name    string
	held    int  // acknowledged addresses
	unknown bool // an assign or release of it had an unknown outcome
}

// worker issues operations on its node until the run has issued cfg.ops:
// automatic assignments, fixed assignments, releases, and retries of
// assignments whose outcome was unknown (the same handle again, as a CNI
// ADD retried by the kubelet).
func (r *chaosRun) worker(id, node int, n *chaosNode) {
	rng := rand.New(rand.NewPCG(r.cfg.seed, uint64(id)))
	var live []*handleLife
	var retry *handleLife
	seq := 0
	for r.issued.Add(1) <= int64(r.cfg.ops) {
		switch x := rng.Float64(); {
		case retry != nil && x < 0.3:
			h := retry
			retry = nil
			r.assign(id, node, n, rng, h, netip.Addr{})
		case len(live) > 0 && (len(live) >= r.cfg.maxLive || x < 0.45):
			i := rng.IntN(len(live))
			h := live[i]
			if r.release(id, node, n, rng, h) {
				live = slices.Delete(live, i, i+1)
				if retry == h {
					retry = nil
				}
			}
		default:
			seq++
			h := &handleLife{name: fmt.Sprintf("w%02d.c%d", id, seq)}
			var fixed netip.Addr
			if len(r.fixed) > 0 && rng.Float64() < r.cfg.fixedFrac {
				fixed = r.fixed[rng.IntN(len(r.fixed))]
			}
			r.assign(id, node, n, rng, h, fixed)
			if h.held > 0 || h.unknown {
				live = append(live, h)
			}
			if h.unknown && h.held == 0 {
				retry = h
			}
		}
	}
	// Leave nothing in flight: release what is left, a few times if the
	// outcome stays unknown.
	for _, h := range live {
		for range 3 {
			if r.release(id, node, n, rng, h) {
				break
			}
		}
	}
}

func (r *chaosRun) record(op histOp) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.history = append(r.history, op)
}

func (r *chaosRun) assign(id, node int, n *chaosNode, rng *rand.Rand, h *handleLife, fixed netip.Addr) {
	ctx, cancel := opContext(rng)
	defer cancel()
	op := histOp{client: id, node: node, kind: kAssign, handle: h.name, call: r.now()}
	var err error
	if fixed.IsValid() {
		op.kind, op.addr = kAssignIP, fixed
		var as Assignment
		as, err = n.alloc.Load().AssignIP(ctx, fixed, Attribute{Handle: h.name, Namespace: "chaos", Pod: h.name})
		if err == nil {
			op.addrs, op.borrowed = []netip.Addr{as.Addr}, as.Borrowed
		}
	} else {
		var as []Assignment
		as, err = n.alloc.Load().AutoAssign(ctx, Request{Handle: h.name, Namespace: "chaos", Pod: h.name})
		for _, a := range as {
			op.addrs = append(op.addrs, a.Addr)
			op.borrowed = op.borrowed || a.Borrowed
		}
	}
	r.finish(&op, err)
	switch op.out {
	case acked:
		h.held += len(op.addrs)
		r.claimOwners(op)
	case unknown:
		h.unknown = true
	}
	if err != nil && errors.Is(err, ErrAllocatorDown) {
		time.Sleep(time.Millisecond) // the chaos is starting a new one
	}
}

// release releases a handle and reports whether the worker is done with
// it (an acknowledged release).
func (r *chaosRun) release(id, node int, n *chaosNode, rng *rand.Rand, h *handleLife) bool {
	r.mu.Lock()
	r.releasing[h.name] = true
	r.mu.Unlock()
	ctx, cancel := opContext(rng)
	defer cancel()
	op := histOp{client: id, node: node, kind: kRelease, handle: h.name, call: r.now()}
	freed, err := n.alloc.Load().ReleaseHandle(ctx, h.name)
	op.addrs = freed
	r.finish(&op, err)
	if err != nil && errors.Is(err, ErrAllocatorDown) {
		time.Sleep(time.Millisecond)
	}
	if op.out == unknown {
		h.unknown = true
		return false
	}
	return true
}

// operator frees a random fixed address now and then, as `rhizomectl ipam
// release --ip` does, through its own etcd client.
func (r *chaosRun) operator(done <-chan struct{}) {
	rng := rand.New(rand.NewPCG(r.cfg.seed, 1234))
	store := r.srv.Store(r.t)
	for {
		select {
		case <-done:
			return
		case <-time.After(r.cfg.operatorEvery):
		}
		if len(r.fixed) == 0 {
			continue
		}
		a := r.fixed[rng.IntN(len(r.fixed))]
		ctx, cancel := opContext(rng)
		op := histOp{client: -1, node: -1, kind: kReleaseIP, addr: a, call: r.now()}
		rel, err := ReleaseIPs(ctx, store, []netip.Addr{a}, nil)
		cancel()
		for _, x := range rel {
			op.addrs = append(op.addrs, x.Addr)
			op.owner = x.Owner.Handle
		}
		r.finish(&op, err)
		if op.out != refused {
			// The address may be free now: whoever is handed it next does
			// not take it from its former owner.
			r.mu.Lock()
			delete(r.owners, a)
			r.mu.Unlock()
		}
	}
}

func (r *chaosRun) finish(op *histOp, err error) {
	op.ret = r.now()
	op.err = err
	out, reason, ok := classify(err)
	if !ok {
		r.t.Errorf("%s %s on node %d: unexpected error: %v", op.kind, op.handle, op.node, err)
	}
	op.out, op.reason = out, reason
	if out == unknown {
		op.ret = math.MaxInt64
		op.addrs = nil
	}
	if reason == "in use" {
		if m := inUseOwner.FindStringSubmatch(err.Error()); m != nil {
			op.owner = m[1]
		} else {
			r.t.Errorf("in-use error does not name the owner's handle: %v", err)
		}
	}
	r.record(*op)
}

// claimOwners is the online duplicate check: an acknowledged address must
// not belong to another handle that has not started to release.
func (r *chaosRun) claimOwners(op histOp) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range op.addrs {
		if prev, ok := r.owners[a]; ok && prev != op.handle && !r.releasing[prev] {
			r.t.Errorf("address %s handed to %s while %s holds it (acknowledged, no release started)", a, op.handle, prev)
		}
		r.owners[a] = op.handle
	}
}

// storeState is everything IPAM keeps in etcd, decoded.
type storeState struct {
	blocks     map[netip.Prefix]*Block
	affinities map[string]Affinity // key: node/cidr-name
	handles    map[string]Handle
	// owner of every allocated address, and addresses by handle.
	owner    map[netip.Addr]Attribute
	byHandle map[string][]netip.Addr
}

func readStoreState(t *testing.T, s datastore.Store) *storeState {
	t.Helper()
	ctx := context.Background()
	st := &storeState{blocks: map[netip.Prefix]*Block{}, affinities: map[string]Affinity{}, handles: map[string]Handle{},
		owner: map[netip.Addr]Attribute{}, byHandle: map[string][]netip.Addr{}}
	kvs, _, err := s.List(ctx, blockPrefix)
	if err != nil {
		t.Fatalf("list blocks: %v", err)
	}
	for _, kv := range kvs {
		b, err := decodeBlock(kv.Value)
		if err != nil {
			t.Fatalf("block %s: %v", kv.Key, err)
		}
		st.blocks[b.CIDR] = b
		for n := range b.Allocations {
			if attr, ok := b.attributeOf(n); ok {
				a := addrAt(b.CIDR, n)
				if prev, dup := st.owner[a]; dup {
					t.Errorf("address %s has two owners: %s and %s", a, prev.Owner(), attr.Owner())
				}
				st.owner[a] = attr
				st.byHandle[attr.Handle] = append(st.byHandle[attr.Handle], a)
			}
		}
	}
	kvs, _, err = s.List(ctx, affinityPrefix)
	if err != nil {
		t.Fatalf("list affinities: %v", err)
	}
	for _, kv := range kvs {
		var a Affinity
		if err := jsonStrict(kv.Value, &a); err != nil {
			t.Fatalf("affinity %s: %v", kv.Key, err)
		}
		st.affinities[strings.TrimPrefix(kv.Key, affinityPrefix)] = a
	}
	kvs, _, err = s.List(ctx, handlePrefix)
	if err != nil {
		t.Fatalf("list handles: %v", err)
	}
	for _, kv := range kvs {
		var h Handle
		if err := jsonStrict(kv.Value, &h); err != nil {
			t.Fatalf("handle %s: %v", kv.Key, err)
		}
		st.handles[strings.TrimPrefix(kv.Key, handlePrefix)] = h
	}
	for _, as := range st.byHandle {
		sort.Slice(as, func(i, j int) bool { return as[i].Less(as[j]) })
	}
	return st
}

// checkConsistency asserts what must hold of any stored IPAM state once no
// claim is half done: every block passes verify, blocks lie in a pool and do
// not overlap, blocks and affinity records agree, and handle records match
// the blocks' contents.
func (st *storeState) checkConsistency(t *testing.T, pools []*api.IPPool) {
	t.Helper()
	var cidrs []netip.Prefix
	for c, b := range st.blocks {
		if err := b.verify(); err != nil {
			t.Errorf("verify: %v", err)
		}
		inPool := false
		for _, p := range pools {
			pc := netip.MustParsePrefix(p.Spec.CIDR)
			if pc.Contains(c.Addr()) && c.Bits() == p.Spec.BlockSize {
				inPool = true
			}
		}
		if !inPool {
			t.Errorf("block %s lies in no pool with its block size", c)
		}
		cidrs = append(cidrs, c)
		if b.Affinity != "" {
			a, ok := st.affinities[b.Affinity+"/"+blockKeyName(c)]
			switch {
			case !ok:
				t.Errorf("block %s is affine to %s, which has no affinity record for it", c, b.Affinity)
			case a.State != AffinityConfirmed:
				t.Errorf("block %s is affine to %s, whose affinity record is %s", c, b.Affinity, a.State)
			}
		}
	}
	for i := range cidrs {
		for j := i + 1; j < len(cidrs); j++ {
			if cidrs[i].Overlaps(cidrs[j]) {
				t.Errorf("blocks %s and %s overlap", cidrs[i], cidrs[j])
			}
		}
	}
	for key, a := range st.affinities {
		node, name, _ := strings.Cut(key, "/")
		cidr, err := parseBlockKeyName(name)
		if err != nil {
			t.Errorf("affinity %s: bad block name: %v", key, err)
			continue
		}
		b, ok := st.blocks[cidr]
		switch {
		case !ok:
			t.Errorf("affinity %s (%s) has no block", key, a.State)
		case b.Affinity != node:
			t.Errorf("affinity %s (%s): the block is affine to %q", key, a.State, b.Affinity)
		}
	}
	// Handle records against block contents, both ways.
	counted := map[string]map[string]int{}
	for c, b := range st.blocks {
		for n := range b.Allocations {
			if attr, ok := b.attributeOf(n); ok {
				if counted[attr.Handle] == nil {
					counted[attr.Handle] = map[string]int{}
				}
				counted[attr.Handle][c.String()]++
			}
		}
	}
	for name, h := range st.handles {
		if !mapsEqual(h.Blocks, counted[name]) {
			t.Errorf("handle %s records %v, the blocks hold %v", name, h.Blocks, counted[name])
		}
	}
	for name, c := range counted {
		if _, ok := st.handles[name]; !ok {
			t.Errorf("handle %s holds %v in blocks but has no handle record", name, c)
		}
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// repairHalfClaims opens and closes every node's allocator once, as an
// agent restart does: it finishes or removes claims an earlier run left
// half done (a pending affinity whose transaction never came back).
func (r *chaosRun) repairHalfClaims() {
	r.t.Helper()
	for _, n := range r.nodes {
		a, err := NewAllocator(context.Background(), n.store, n.name)
		if err != nil {
			r.t.Fatalf("reopen %s: %v", n.name, err)
		}
		a.Close()
	}
}

// counts summarises the history.
func (r *chaosRun) counts() (byOutcome [3]int, reasons map[string]int) {
	reasons = map[string]int{}
	for _, op := range r.history {
		byOutcome[op.out]++
		if op.out == refused {
			reasons[op.kind.String()+" "+op.reason]++
		}
	}
	return byOutcome, reasons
}

func (r *chaosRun) report(name string) {
	c, reasons := r.counts()
	r.t.Logf("%s: %d operations in %s (%.0f/s) by %d nodes × %d workers; %d etcd restarts, %d allocator restarts; "+
		"acked %d, refused %d %v, unknown outcome %d",
		name, len(r.history), r.duration.Round(time.Millisecond), float64(len(r.history))/r.duration.Seconds(),
		r.cfg.nodes, r.cfg.perNode, r.etcdRestarts, r.allocRestarts, c[acked], c[refused], reasons, c[unknown])
}

func jsonStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

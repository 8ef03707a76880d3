// This file is a little over 600 lines: the Allocator's behaviour tests,
// one per rule of docs/design.md §4, kept together.

package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

func newTestPool(name, cidr string, blockSize int) *api.IPPool {
	p := &api.IPPool{ObjectMeta: api.ObjectMeta{Name: name}, Spec: api.IPPoolSpec{CIDR: cidr, BlockSize: blockSize}}
	api.SetDefaults(p)
	return p
}

// cluster is a real etcd with resources written through the same validated
// path rhizomectl uses.
type cluster struct {
	t   *testing.T
	srv *etcdtest.Server
	res *datastore.Resources
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	srv := etcdtest.Start(t)
	return &cluster{t: t, srv: srv, res: datastore.NewResources(srv.Store(t))}
}

func (c *cluster) store() datastore.Store { return c.res.Store() }

func (c *cluster) apply(objs ...api.Object) {
	c.t.Helper()
	for _, o := range objs {
		if _, _, err := c.res.Apply(context.Background(), o); err != nil {
			c.t.Fatalf("apply %s: %v", o.GetObjectMeta().Name, err)
		}
	}
}

func (c *cluster) node(name string, labels map[string]string) {
	c.t.Helper()
	c.apply(&api.Node{ObjectMeta: api.ObjectMeta{Name: name, Labels: labels}})
}

func (c *cluster) config(cfg Config) {
	c.t.Helper()
	if err := WriteConfig(context.Background(), c.store(), cfg); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) allocator(node string, opts ...Option) *Allocator {
	c.t.Helper()
	a, err := NewAllocator(context.Background(), c.srv.Store(c.t), node, opts...)
	if err != nil {
		c.t.Fatalf("allocator for %s: %v", node, err)
	}
	c.t.Cleanup(a.Close)
	return a
}

func assign(t *testing.T, a *Allocator, handle string, mods ...func(*Request)) Assignment {
	t.Helper()
	req := Request{Handle: handle, Namespace: "default", Pod: handle}
	for _, m := range mods {
		m(&req)
	}
	as, err := a.AutoAssign(context.Background(), req)
	if err != nil {
		t.Fatalf("assign %s on %s: %v", handle, a.Node(), err)
	}
	if len(as) != max(req.Count, 1) {
		t.Fatalf("assign %s: got %d addresses, want %d", handle, len(as), max(req.Count, 1))
	}
	return as[0]
}

func wantErr(t *testing.T, err, sentinel error, parts ...string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %v, want %v", err, sentinel)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func readBlock(t *testing.T, s datastore.Store, cidr string) (*Block, int64) {
	t.Helper()
	kv, err := s.Get(context.Background(), blockKey(netip.MustParsePrefix(cidr)))
	if err != nil {
		t.Fatalf("block %s: %v", cidr, err)
	}
	b, err := decodeBlock(kv.Value)
	if err != nil {
		t.Fatal(err)
	}
	return b, kv.Revision
}

func TestAssignAndReleaseStoresBlockAndHandle(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("pool-a", "10.0.0.0/24", 26))
	a := c.allocator("node-a")

	got := assign(t, a, "net.c1")
	p := netip.MustParsePrefix("10.0.0.0/24")
	if !p.Contains(got.Addr) || got.Addr == p.Addr() || got.Pool != "pool-a" || got.Borrowed {
		t.Fatalf("assignment %+v: want a non-borrowed address of pool-a other than the network address", got)
	}
	b, _ := readBlock(t, c.store(), got.Block.String())
	if b.Affinity != "node-a" {
		t.Fatalf("block %s affinity %q, want node-a", got.Block, b.Affinity)
	}
	if attr, ok := b.attributeOf(ordinal(got.Block, got.Addr)); !ok || attr.Handle != "net.c1" || attr.Node != "node-a" || attr.Pod != "net.c1" {
		t.Fatalf("stored owner %+v ok=%v", attr, ok)
	}
	aff, err := c.store().Get(context.Background(), affinityKey("node-a", got.Block))
	if err != nil || !strings.Contains(string(aff.Value), string(AffinityConfirmed)) {
		t.Fatalf("affinity: %s %v", aff.Value, err)
	}
	if addrs, err := ByHandle(context.Background(), c.store(), "net.c1"); err != nil || len(addrs) != 1 || addrs[0] != got.Addr {
		t.Fatalf("ByHandle = %v, %v; want [%s]", addrs, err, got.Addr)
	}

	rel, err := a.ReleaseHandle(context.Background(), "net.c1")
	if err != nil || len(rel) != 1 || rel[0] != got.Addr {
		t.Fatalf("release = %v, %v", rel, err)
	}
	if _, err := c.store().Get(context.Background(), handleKey("net.c1")); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("handle still stored after release: %v", err)
	}
	// Idempotent.
	if rel, err := a.ReleaseHandle(context.Background(), "net.c1"); err != nil || len(rel) != 0 {
		t.Fatalf("second release = %v, %v", rel, err)
	}
	// FIFO: the released address is not handed out again at once.
	if next := assign(t, a, "net.c2"); next.Addr == got.Addr {
		t.Fatalf("released address %s handed out again at once", got.Addr)
	}
	b, _ = readBlock(t, c.store(), got.Block.String())
	if err := b.verify(); err != nil {
		t.Fatal(err)
	}
}

// rackPools stores seed 000's pools: rack-N-ippool 192.168.N.0/24 for
// nodes labelled rack=N.
func (c *cluster) rackPools() {
	c.t.Helper()
	rack0 := newTestPool("rack-0-ippool", "192.168.0.0/24", 26)
	rack0.Spec.NodeSelector = `rack == "0"`
	rack1 := newTestPool("rack-1-ippool", "192.168.1.0/24", 26)
	rack1.Spec.NodeSelector = `rack == "1"`
	c.apply(rack0, rack1)
}

// Seed 000: rack pools chosen by node labels.
func TestPoolChosenByNodeSelector(t *testing.T) {
	c := newCluster(t)
	c.rackPools()
	for i := range 4 {
		c.node(fmt.Sprintf("kube-node-%d", i), map[string]string{"rack": fmt.Sprint(i / 2)})
	}
	for i := range 4 {
		a := c.allocator(fmt.Sprintf("kube-node-%d", i))
		got := assign(t, a, fmt.Sprintf("net.pod%d", i))
		want := fmt.Sprintf("rack-%d-ippool", i/2)
		if got.Pool != want {
			t.Errorf("kube-node-%d got %s from %s, want pool %s", i, got.Addr, got.Pool, want)
		}
	}
	// A node without the label gets a clear error naming each pool.
	c.node("kube-node-9", nil)
	a := c.allocator("kube-node-9")
	_, err := a.AutoAssign(context.Background(), Request{Handle: "net.x", Namespace: "default", Pod: "x"})
	wantErr(t, err, ErrNoUsablePool, "kube-node-9", "rack-0-ippool", "rack-1-ippool", `rack == "0"`, "does not select this node")
}

// A fixed address (rhizome.io/ip-addrs) is given on any node, even from a
// pool whose nodeSelector does not select it, as Calico's AssignIP does:
// the selector steers automatic assignment only. A pod keeps its address
// when it moves to another rack; the address is then borrowed (or its block
// claimed) and advertised as a host route.
func TestFixedAddressIgnoresNodeSelector(t *testing.T) {
	c := newCluster(t)
	c.rackPools()
	c.node("kube-node-0", map[string]string{"rack": "0"})
	c.node("kube-node-2", map[string]string{"rack": "1"})
	ctx := context.Background()
	addr := netip.MustParseAddr("192.168.0.100")
	n0 := c.allocator("kube-node-0")
	got, err := n0.AssignIP(ctx, addr, Attribute{Handle: "h1", Namespace: "default", Pod: "fixed"})
	if err != nil || got.Addr != addr || got.Pool != "rack-0-ippool" {
		t.Fatalf("kube-node-0 (rack 0): AssignIP(%s) = %+v, %v", addr, got, err)
	}
	if _, err := n0.ReleaseHandle(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	n2 := c.allocator("kube-node-2")
	got, err = n2.AssignIP(ctx, addr, Attribute{Handle: "h2", Namespace: "default", Pod: "fixed"})
	if err != nil || got.Addr != addr || got.Pool != "rack-0-ippool" {
		t.Fatalf("kube-node-2 (rack 1, not selected by rack-0-ippool): AssignIP(%s) = %+v, %v; want the address", addr, got, err)
	}
	// Automatic assignment on kube-node-2 still only uses its rack's pool.
	if auto := assign(t, n2, "h3"); auto.Pool != "rack-1-ippool" {
		t.Errorf("automatic assignment on kube-node-2 got %s from %s, want rack-1-ippool", auto.Addr, auto.Pool)
	}
}

// A relabel the agent hands over with SetNodeLabels places the next pod at
// once, and a reload that still shows the old labels does not undo it; once
// the store shows them, later changes in the store win again.
func TestSetNodeLabelsAheadOfTheStore(t *testing.T) {
	c := newCluster(t)
	c.rackPools()
	c.node("kube-node-0", map[string]string{"rack": "0"})
	a := c.allocator("kube-node-0")
	ctx := context.Background()
	pool := func(handle string) string {
		t.Helper()
		return assign(t, a, handle).Pool
	}
	if p := pool("net.a"); p != "rack-0-ippool" {
		t.Fatalf("before the relabel: pool %s, want rack-0-ippool", p)
	}
	a.SetNodeLabels(map[string]string{"rack": "1"})
	if err := a.Refresh(ctx); err != nil { // the store still says rack=0
		t.Fatal(err)
	}
	if p := pool("net.b"); p != "rack-1-ippool" {
		t.Fatalf("after SetNodeLabels rack=1 and a stale reload: pool %s, want rack-1-ippool", p)
	}
	c.node("kube-node-0", map[string]string{"rack": "1"})
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	c.node("kube-node-0", map[string]string{"rack": "0"})
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if p := pool("net.c"); p != "rack-0-ippool" {
		t.Fatalf("after the store caught up and changed back to rack=0: pool %s, want rack-0-ippool", p)
	}
}

func TestRequestErrorsNameTheCause(t *testing.T) {
	c := newCluster(t)
	disabled := newTestPool("old", "10.1.0.0/24", 26)
	disabled.Spec.Disabled = true
	manual := newTestPool("manual", "10.2.0.0/24", 26)
	manual.Spec.AssignmentMode = api.AssignmentManual
	c.apply(newTestPool("tiny", "10.3.0.0/30", 30), disabled, manual,
		&api.IPReservation{ObjectMeta: api.ObjectMeta{Name: "r"}, Spec: api.IPReservationSpec{ReservedCIDRs: []string{"10.2.0.10-10.2.0.12"}}})
	a := c.allocator("node-a")
	ctx := context.Background()

	_, err := a.AutoAssign(ctx, Request{Handle: "h1", Pools: []string{"nope"}})
	wantErr(t, err, ErrNoUsablePool, "nope", "no such pool")
	_, err = a.AutoAssign(ctx, Request{Handle: "h1", Pools: []string{"old"}})
	wantErr(t, err, ErrNoUsablePool, "old", "disabled")

	// The manual pool serves a request that names it.
	if got := assign(t, a, "h2", func(r *Request) { r.Pools = []string{"manual"} }); got.Pool != "manual" {
		t.Fatalf("named manual pool: got %s from %s", got.Addr, got.Pool)
	}
	// tiny (10.3.0.0/30) has two usable addresses (.0 and .3 are reserved).
	assign(t, a, "h3")
	assign(t, a, "h4")
	_, err = a.AutoAssign(ctx, Request{Handle: "h5", Namespace: "ns", Pod: "p5"})
	wantErr(t, err, ErrExhausted, "pod ns/p5", "node-a", "tiny (10.3.0.0/30)", "old (10.1.0.0/24): disabled", "manual (10.2.0.0/24): assignmentMode Manual")

	// Fixed addresses.
	_, err = a.AssignIP(ctx, netip.MustParseAddr("10.9.9.9"), Attribute{Handle: "h6", Namespace: "ns", Pod: "p6"})
	wantErr(t, err, ErrNotInPool, "10.9.9.9", "ns/p6", "tiny 10.3.0.0/30")
	_, err = a.AssignIP(ctx, netip.MustParseAddr("10.1.0.5"), Attribute{Handle: "h6"})
	wantErr(t, err, ErrPoolDisabled, "old")
	_, err = a.AssignIP(ctx, netip.MustParseAddr("10.2.0.11"), Attribute{Handle: "h6"})
	wantErr(t, err, ErrReserved, "10.2.0.11", "IPReservation")
	_, err = a.AssignIP(ctx, netip.MustParseAddr("10.2.0.0"), Attribute{Handle: "h6"})
	wantErr(t, err, ErrReserved, "network or broadcast")
	fixed, err := a.AssignIP(ctx, netip.MustParseAddr("10.2.0.200"), Attribute{Handle: "h6", Namespace: "ns", Pod: "p6"})
	if err != nil || fixed.Addr != netip.MustParseAddr("10.2.0.200") {
		t.Fatalf("fixed address: %+v %v", fixed, err)
	}
	_, err = a.AssignIP(ctx, netip.MustParseAddr("10.2.0.200"), Attribute{Handle: "h7", Namespace: "ns", Pod: "p7"})
	wantErr(t, err, ErrAddressInUse, "10.2.0.200", "ns/p7", "held by pod ns/p6 (handle h6)")

	// Reserved addresses are never handed out automatically.
	for i := range 20 {
		got := assign(t, a, fmt.Sprintf("m%d", i), func(r *Request) { r.Pools = []string{"manual"} })
		if s := got.Addr.String(); s == "10.2.0.10" || s == "10.2.0.11" || s == "10.2.0.12" || s == "10.2.0.0" {
			t.Fatalf("reserved address %s handed out", s)
		}
	}
	_, err = a.AutoAssign(ctx, Request{Handle: "bad/handle"})
	wantErr(t, err, ErrBadRequest, "handle")
}

// Concurrent requests on one node share transactions (group commit).
func TestGroupCommitBatchesConcurrentRequests(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/16", 26))
	a := c.allocator("node-a")
	assign(t, a, "warm") // claim the first block outside the measurement

	_, before, _ := c.store().List(context.Background(), configKey)
	const n = 64
	var wg sync.WaitGroup
	addrs := make([]netip.Addr, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			as, err := a.AutoAssign(context.Background(), Request{Handle: fmt.Sprintf("h%d", i)})
			if err != nil {
				t.Error(err)
				return
			}
			addrs[i] = as[0].Addr
		}()
	}
	wg.Wait()
	_, after, _ := c.store().List(context.Background(), configKey)
	seen := map[netip.Addr]bool{}
	for _, ad := range addrs {
		if seen[ad] {
			t.Fatalf("address %s handed out twice", ad)
		}
		seen[ad] = true
	}
	// 64 allocations need at least one more block (claim: 3 writes); without
	// batching they would take 64 transactions.
	if writes := after - before; writes >= n/2 {
		t.Fatalf("%d concurrent allocations took %d store revisions; group commit should need far fewer", n, writes)
	} else {
		t.Logf("%d concurrent allocations in %d store revisions", n, writes)
	}
}

func TestBorrowingAndStrictAffinity(t *testing.T) {
	c := newCluster(t)
	// 10.5.0.0/29 in /30 blocks: two blocks, usable .1 .2 .3 | .4 .5 .6.
	c.apply(newTestPool("small", "10.5.0.0/29", 30))
	c.config(Config{MaxBlocksPerNode: 1, AutoAllocateBlocks: true})
	a := c.allocator("node-a")
	b := c.allocator("node-b")
	ctx := context.Background()
	for i := range 3 {
		assign(t, a, fmt.Sprintf("a%d", i))
	}
	for i := range 3 {
		assign(t, b, fmt.Sprintf("b%d", i))
	}
	// Both blocks are full; node-a gets nothing more.
	_, err := a.AutoAssign(ctx, Request{Handle: "a9"})
	wantErr(t, err, ErrExhausted, "small")

	// Free one in node-b's block: node-a borrows it.
	if _, err := b.ReleaseHandle(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	got := assign(t, a, "a-borrow")
	if !got.Borrowed {
		t.Fatalf("address %s from node-b's block not marked borrowed", got.Addr)
	}
	blk, _ := readBlock(t, c.store(), got.Block.String())
	if blk.Affinity != "node-b" {
		t.Fatalf("borrowed from block with affinity %q", blk.Affinity)
	}
	// node-b's allocator sees the change on its next write (conflict, re-read).
	if _, err := b.ReleaseHandle(ctx, "b2"); err != nil {
		t.Fatal(err)
	}
	// Strict affinity: no borrowing, and the error says so.
	c.config(Config{MaxBlocksPerNode: 1, AutoAllocateBlocks: true, StrictAffinity: true})
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = a.AutoAssign(ctx, Request{Handle: "a10"})
	wantErr(t, err, ErrExhausted, "strictAffinity")
	if got := assign(t, b, "b-again"); got.Borrowed {
		t.Fatalf("node-b got a borrowed address from its own block")
	}
}

func TestRestartAdoptsBlocksAndRepairsHalfClaims(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/24", 26))
	ctx := context.Background()
	a, err := NewAllocator(ctx, c.store(), "node-a")
	if err != nil {
		t.Fatal(err)
	}
	first := assign(t, a, "h1")
	a.Close()

	// A claim that died after its pending affinity: no block behind it.
	orphan := netip.MustParsePrefix("10.0.0.192/26")
	if orphan == first.Block {
		orphan = netip.MustParsePrefix("10.0.0.0/26")
	}
	pending, _ := json.Marshal(Affinity{State: AffinityPending})
	if _, err := c.store().Create(ctx, affinityKey("node-a", orphan), pending); err != nil {
		t.Fatal(err)
	}
	a2 := c.allocator("node-a")
	second := assign(t, a2, "h2")
	if second.Block != first.Block {
		t.Fatalf("after restart got block %s, want the adopted %s", second.Block, first.Block)
	}
	if _, err := c.store().Get(ctx, affinityKey("node-a", orphan)); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("pending affinity without a block survived the restart: %v", err)
	}
	kvs, _, _ := c.store().List(ctx, blockPrefix)
	if len(kvs) != 1 {
		t.Fatalf("%d blocks after restart, want 1 (no re-claim)", len(kvs))
	}
}

func TestIdleBlocksAreReleasedKeepingOne(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/24", 28))
	a := c.allocator("node-a", WithIdleRelease(50*time.Millisecond))
	for i := range 20 { // two /28 blocks
		assign(t, a, fmt.Sprintf("h%d", i))
	}
	kvs, _, _ := c.store().List(context.Background(), blockPrefix)
	if len(kvs) != 2 {
		t.Fatalf("%d blocks, want 2", len(kvs))
	}
	for i := range 20 {
		if _, err := a.ReleaseHandle(context.Background(), fmt.Sprintf("h%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		kvs, _, _ = c.store().List(context.Background(), blockPrefix)
		if len(kvs) == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(kvs) != 1 {
		t.Fatalf("%d blocks after the idle period, want 1", len(kvs))
	}
	affs, _, _ := c.store().List(context.Background(), affinityPrefix)
	if len(affs) != 1 {
		t.Fatalf("%d affinities, want 1", len(affs))
	}
	assign(t, a, "again")
}

// Deleting a pool gives back its empty affine blocks at once (not after
// the idle period, and the node's only block too); a block that still
// holds an address stays until the address is released.
func TestDeletedPoolsEmptyBlocksAreReleased(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	c.apply(newTestPool("old", "10.0.0.0/24", 26), newTestPool("busy", "10.1.0.0/24", 26))
	a := c.allocator("node-a", WithIdleRelease(time.Hour))
	assign(t, a, "gone", func(r *Request) { r.Pools = []string{"old"} })
	assign(t, a, "kept", func(r *Request) { r.Pools = []string{"busy"} })
	if _, err := a.ReleaseHandle(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	blocks := func() []string {
		kvs, _, err := c.store().List(ctx, affinityPrefix+"node-a/")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range kvs {
			out = append(out, kv.Key[strings.LastIndexByte(kv.Key, '/')+1:])
		}
		return out
	}
	if got := blocks(); len(got) != 2 {
		t.Fatalf("affinities before the pools are deleted: %v, want 2", got)
	}
	for _, p := range []string{"old", "busy"} {
		if _, err := c.res.Delete(ctx, api.KindIPPool, p, 0); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(what string, want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for len(blocks()) != want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if got := blocks(); len(got) != want {
			t.Fatalf("%s: affinities %v, want %d", what, got, want)
		}
	}
	waitFor("after the pools are deleted, only the block holding an address", 1)
	if got := blocks()[0]; !strings.HasPrefix(got, "10.1.0.0") {
		t.Errorf("the block left is %s, want the one of pool busy", got)
	}
	if _, err := a.ReleaseHandle(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	waitFor("after its last address is released", 0)
	if kvs, _, _ := c.store().List(ctx, blockPrefix); len(kvs) != 0 {
		t.Errorf("%d blocks left", len(kvs))
	}
}

func TestReleaseNodeAffinities(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/24", 26))
	ctx := context.Background()
	gone := c.allocator("gone")
	for i := range 3 {
		assign(t, gone, fmt.Sprintf("g%d", i))
	}
	gone.Close()
	deleted, kept, err := ReleaseNodeAffinities(ctx, c.store(), "gone")
	if err != nil || len(deleted) != 1 || len(kept) != 0 {
		t.Fatalf("ReleaseNodeAffinities = %v %v %v", deleted, kept, err)
	}
	for _, prefix := range []string{blockPrefix, affinityPrefix, handlePrefix} {
		if kvs, _, _ := c.store().List(ctx, prefix); len(kvs) != 0 {
			t.Errorf("%d keys left under %s", len(kvs), prefix)
		}
	}
}

func TestReleaseIPWithStaleSequenceFreesNothing(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/30", 30))
	a := c.allocator("node-a")
	ctx := context.Background()
	first := assign(t, a, "h1")
	if _, err := a.ReleaseHandle(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	// Only two usable addresses: after one more allocation the FIFO hands
	// the first address out again, with a new sequence number.
	assign(t, a, "h2")
	again := assign(t, a, "h3")
	if again.Addr != first.Addr || again.Seq == first.Seq {
		t.Fatalf("want %s again with a new sequence (old %d), got %+v", first.Addr, first.Seq, again)
	}
	rel, err := ReleaseIPs(ctx, c.store(), []netip.Addr{first.Addr}, []uint64{first.Seq})
	if err != nil || len(rel) != 0 {
		t.Fatalf("stale release freed %v (%v)", rel, err)
	}
	rel, err = ReleaseIPs(ctx, c.store(), []netip.Addr{first.Addr}, nil)
	if err != nil || len(rel) != 1 || rel[0].Owner.Handle != "h3" {
		t.Fatalf("operator release = %v, %v", rel, err)
	}
	if _, err := c.store().Get(ctx, handleKey("h3")); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("handle h3 still stored after its only address was released: %v", err)
	}
}

func TestIPv6Pool(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("v6", "fd00:10::/112", 122))
	a := c.allocator("node-a")
	got := assign(t, a, "h6", func(r *Request) { r.Family = 6 })
	if !got.Addr.Is6() || !netip.MustParsePrefix("fd00:10::/112").Contains(got.Addr) || got.Block.Bits() != 122 {
		t.Fatalf("IPv6 assignment %+v", got)
	}
	_, err := a.AutoAssign(context.Background(), Request{Handle: "h4"})
	wantErr(t, err, ErrNoUsablePool, "IPv4")
}

func TestMultipleAddressesPerHandle(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/24", 29))
	a := c.allocator("node-a")
	as, err := a.AutoAssign(context.Background(), Request{Handle: "multi", Count: 10})
	if err != nil || len(as) != 10 {
		t.Fatalf("10 addresses: %v %v", as, err)
	}
	addrs, err := ByHandle(context.Background(), c.store(), "multi")
	if err != nil || len(addrs) != 10 {
		t.Fatalf("ByHandle: %d addresses, %v", len(addrs), err)
	}
	rel, err := a.ReleaseHandle(context.Background(), "multi")
	if err != nil || len(rel) != 10 {
		t.Fatalf("release: %d, %v", len(rel), err)
	}
}

// A release by handle must not trust a cached block that lacks the
// handle's address: porcupine found an allocation whose write landed while
// its response was lost (etcd restarting) and whose release then freed
// nothing, dropped the handle and leaked the address. Here a second
// allocator of the same node, started before the allocation, stands in
// for the allocator that never learned of its own write (a fault that
// cannot be caused on demand otherwise).
func TestReleaseHandleDoesNotTrustAStaleCachedBlock(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/24", 26))
	ctx := context.Background()
	a := c.allocator("node-a")
	assign(t, a, "first") // claims the block
	stale := c.allocator("node-a")
	got := assign(t, a, "h")
	rel, err := stale.ReleaseHandle(ctx, "h")
	if err != nil {
		t.Fatal(err)
	}
	if len(rel) != 1 || rel[0] != got.Addr {
		t.Fatalf("release of h through the allocator with a stale cache freed %v, want [%s]", rel, got.Addr)
	}
	if info, err := LookupAddress(ctx, c.store(), got.Addr); err != nil || info.Status != AddressFree {
		t.Fatalf("after the release %s is %+v (%v), want free", got.Addr, info, err)
	}
}

package ipam

import (
	"context"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/datastore"
)

// waitView polls w until want accepts its view.
func waitView(t *testing.T, w *NodeWatcher, what string, want func(NodeView) bool) NodeView {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := w.View()
		if want(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: view after 10s: %+v", what, v)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A node's view holds its confirmed affine blocks, its addresses in other
// nodes' blocks, and its addresses by handle; another node's allocation in
// its own block is no change for it.
func TestWatchNodeView(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("pool", "10.20.0.0/24", 28))
	c.node("node-a", nil)
	c.node("node-b", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := c.allocator("node-a"), c.allocator("node-b")

	inB := assign(t, b, "net.b1.eth0")
	own := assign(t, a, "net.a1.eth0")
	fixed := netip.PrefixFrom(inB.Block.Addr(), inB.Block.Bits()).Addr().Next().Next().Next()
	if _, err := a.AssignIP(ctx, fixed, Attribute{Handle: "net.a2.eth0", Namespace: "default", Pod: "fixed"}); err != nil {
		t.Fatal(err)
	}

	var changes atomic.Int64
	w := WatchNode(ctx, c.store(), "node-a", func() { changes.Add(1) })
	select {
	case <-w.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("not synced after 10s")
	}
	want := NodeView{
		OwnBlocks:  []netip.Prefix{own.Block},
		Hosted:     []netip.Addr{fixed},
		Handles:    map[string][]netip.Addr{"net.a1.eth0": {own.Addr}, "net.a2.eth0": {fixed}},
		Affinities: map[netip.Prefix]string{own.Block: "node-a", inB.Block: "node-b"},
	}
	if got := w.View(); !reflect.DeepEqual(got, want) {
		t.Fatalf("view\n%+v, want\n%+v", got, want)
	}

	// The fixed address goes: it is no longer hosted.
	if _, err := a.ReleaseHandle(ctx, "net.a2.eth0"); err != nil {
		t.Fatal(err)
	}
	waitView(t, w, "after the release", func(v NodeView) bool { return len(v.Hosted) == 0 && len(v.Handles) == 1 })

	// node-b allocates in its own block (no change for node-a), then node-a
	// in its own (a change): the follow applies them in that order, so once
	// node-a's shows, exactly one change was reported.
	before := changes.Load()
	assign(t, b, "net.b2.eth0")
	second := assign(t, a, "net.a3.eth0")
	waitView(t, w, "after node-a's second pod", func(v NodeView) bool { return len(v.Handles["net.a3.eth0"]) == 1 })
	if got := changes.Load() - before; got != 1 {
		t.Errorf("%d changes reported for node-b's and node-a's allocations, want 1 (node-a's)", got)
	}
	if v := w.View(); !slices.Equal(v.Handles["net.a3.eth0"], []netip.Addr{second.Addr}) || !slices.Equal(v.OwnBlocks, []netip.Prefix{own.Block}) {
		t.Errorf("view %+v", v)
	}

	// A third node claims its first block: no address of node-a's, but a
	// new affinity, which VXLAN routing follows: a change, and the view
	// names the block's node.
	c.node("node-c", nil)
	before = changes.Load()
	third := assign(t, c.allocator("node-c"), "net.c1.eth0")
	v := waitView(t, w, "after node-c's first block", func(v NodeView) bool { return v.Affinities[third.Block] == "node-c" })
	if changes.Load() == before {
		t.Error("node-c's new block reported no change")
	}
	if len(v.Affinities) != 3 {
		t.Errorf("affinities %v, want node-a's, node-b's and node-c's block", v.Affinities)
	}
	cancel()
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("watcher still running 10s after its context ended")
	}
}

// Only a confirmed affinity makes a block the node's own: a block whose
// affinity record is still pending is not advertised.
func TestNodeViewNeedsConfirmedAffinity(t *testing.T) {
	cidr := netip.MustParsePrefix("10.1.0.0/26")
	blk := newBlock(cidr, "node-a")
	if _, err := blk.allocate(0, Attribute{Handle: "h", Node: "node-a"}); err != nil {
		t.Fatal(err)
	}
	blocks := map[netip.Prefix]*Block{cidr: blk}
	if v := nodeView("node-a", blocks, nil); len(v.OwnBlocks) != 0 || len(v.Hosted) != 0 || len(v.Handles["h"]) != 1 {
		t.Errorf("unconfirmed: %+v", v)
	}
	if v := nodeView("node-a", blocks, map[netip.Prefix]bool{cidr: true}); !slices.Equal(v.OwnBlocks, []netip.Prefix{cidr}) {
		t.Errorf("confirmed: %+v", v)
	}
	if v := nodeView("node-b", blocks, map[netip.Prefix]bool{cidr: true}); len(v.OwnBlocks)+len(v.Hosted)+len(v.Handles) != 0 {
		t.Errorf("another node: %+v", v)
	}
}

// countingStore is a counter around a real store (it fakes nothing): it
// records the key of every Get and the prefix of every List.
type countingStore struct {
	datastore.Store
	mu    sync.Mutex
	gets  []string
	lists []string
}

func (s *countingStore) Get(ctx context.Context, key string) (datastore.KV, error) {
	s.mu.Lock()
	s.gets = append(s.gets, key)
	s.mu.Unlock()
	return s.Store.Get(ctx, key)
}

func (s *countingStore) List(ctx context.Context, prefix string) ([]datastore.KV, int64, error) {
	s.mu.Lock()
	s.lists = append(s.lists, prefix)
	s.mu.Unlock()
	return s.Store.List(ctx, prefix)
}

func (s *countingStore) reset() (gets, lists []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gets, lists = s.gets, s.lists
	s.gets, s.lists = nil, nil
	return gets, lists
}

// NodeHandles (what CNI GC asks) lists one network's handle records and
// reads no block, however many blocks other nodes have; only a record
// written before records named their node costs a read of its blocks.
func TestNodeHandlesReadsNoBlocks(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("pool", "10.64.0.0/16", 26), newTestPool("foreign", "10.128.0.0/14", 26))
	c.node("node-a", nil)
	c.node("node-b", nil)
	ctx := context.Background()

	// Two thousand blocks of other nodes, half full.
	var foreign []*Block
	for i := range 2000 {
		cidr := netip.PrefixFrom(addrAt(netip.MustParsePrefix("10.128.0.0/26"), i*64), 26)
		b := newBlock(cidr, "other-"+string(rune('a'+i%26)))
		for n := range 32 {
			if _, err := b.allocate(n, Attribute{Handle: "net.foreign" + cidr.Addr().String() + "-" + string(rune('a'+n%26)), Node: b.Affinity}); err != nil {
				t.Fatal(err)
			}
		}
		foreign = append(foreign, b)
	}
	if err := ImportBlocks(ctx, c.store(), foreign); err != nil {
		t.Fatal(err)
	}

	a, b := c.allocator("node-a"), c.allocator("node-b")
	for _, h := range []string{"net.c1.eth0", "net.c2.eth0", "other.c3.eth0"} {
		assign(t, a, h, func(r *Request) { r.Pools = []string{"pool"} })
	}
	assign(t, b, "net.c4.eth0", func(r *Request) { r.Pools = []string{"pool"} })

	cs := &countingStore{Store: c.store()}
	got, err := NodeHandles(ctx, cs, "node-a", "net")
	if err != nil || !slices.Equal(got, []string{"net.c1.eth0", "net.c2.eth0"}) {
		t.Fatalf("NodeHandles(node-a, net) = %v, %v", got, err)
	}
	gets, lists := cs.reset()
	if len(gets) != 0 || !slices.Equal(lists, []string{handlePrefix + "net."}) {
		t.Fatalf("reads: gets %v, lists %v; want one list of %s", gets, lists, handlePrefix+"net.")
	}

	// Records without a node (written by an older agent): each costs a read
	// of the blocks it lists, and still answers right.
	for _, name := range []string{"net.c2.eth0", "net.c4.eth0"} {
		kv, err := c.store().Get(ctx, handleKey(name))
		if err != nil {
			t.Fatal(err)
		}
		h, _ := decodeHandle(kv.Value)
		if h.Node == "" {
			t.Fatalf("handle %s was written without its node", name)
		}
		h.Node = ""
		put(t, c.store(), handleKey(name), h)
	}
	got, err = NodeHandles(ctx, cs, "node-a", "net")
	if err != nil || !slices.Equal(got, []string{"net.c1.eth0", "net.c2.eth0"}) {
		t.Fatalf("with old records: NodeHandles(node-a, net) = %v, %v", got, err)
	}
	gets, _ = cs.reset()
	for _, k := range gets {
		if !strings.HasPrefix(k, blockPrefix) {
			t.Errorf("read %s, want only blocks of old records", k)
		}
	}
	if blocks := slices.Compact(slices.Sorted(slices.Values(gets))); len(blocks) > 2 {
		t.Errorf("read blocks %v for two old records", blocks)
	}

}

// Repair writes a missing handle record with the node that holds its
// addresses, so NodeHandles finds it without reading blocks.
func TestRepairedHandleNamesItsNode(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("pool", "10.64.0.0/24", 26))
	c.node("node-a", nil)
	ctx := context.Background()
	assign(t, c.allocator("node-a"), "net.c1.eth0")
	del(t, c.store(), handleKey("net.c1.eth0"))
	r, err := Check(ctx, c.store(), nil)
	if err != nil || len(r.HandleMismatches) != 1 || r.HandleMismatches[0].Node != "node-a" {
		t.Fatalf("check: %+v, %v", r, err)
	}
	if _, err := Repair(ctx, c.store(), r); err != nil {
		t.Fatal(err)
	}
	cs := &countingStore{Store: c.store()}
	got, err := NodeHandles(ctx, cs, "node-a", "net")
	if err != nil || !slices.Equal(got, []string{"net.c1.eth0"}) {
		t.Fatalf("after repair: NodeHandles = %v, %v", got, err)
	}
	if gets, _ := cs.reset(); len(gets) != 0 {
		t.Errorf("after repair NodeHandles read %v, want nothing", gets)
	}
}

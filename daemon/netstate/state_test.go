package netstate

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/daemon/netstate/netstatetest"
	"github.com/rhizome-net/rhizome/ipam"
)

// A relist after a compaction swaps in a complete view: while the
// datastore keeps changing and the follower's watches are compacted away
// again and again, no snapshot lacks the node itself, its own block, its
// pool or its BGP peers (an empty snapshot would withdraw the node's
// blocks and remove its peers).
func TestRelistAfterCompactionIsAtomic(t *testing.T) {
	srv, store, apply := netstatetest.Seeded(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const others = 60
	for i := range others + 1 {
		apply(&api.Node{ObjectMeta: api.ObjectMeta{Name: fmt.Sprintf("node-%d", i)},
			Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{IPv4Address: fmt.Sprintf("10.0.%d.%d/16", i/250, i%250+1)}}})
	}
	as := api.ASNumber(65001)
	for _, p := range []string{"127.0.0.2", "127.0.0.3"} {
		apply(&api.BGPPeer{ObjectMeta: api.ObjectMeta{Name: "tor-" + p}, Spec: api.BGPPeerSpec{PeerIP: p, ASNumber: &as}})
	}
	// Blocks of other nodes, and this node's.
	for i := 1; i <= others; i += 3 {
		a, err := ipam.NewAllocator(ctx, store, fmt.Sprintf("node-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.AutoAssign(ctx, ipam.Request{Handle: fmt.Sprintf("net.x%d", i), Namespace: "default", Pod: "x"}); err != nil {
			t.Fatal(err)
		}
		a.Close()
	}
	alloc, err := ipam.NewAllocator(ctx, store, "node-0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(alloc.Close)
	if _, err := alloc.AutoAssign(ctx, ipam.Request{Handle: "net.first", Namespace: "default", Pod: "first"}); err != nil {
		t.Fatal(err)
	}

	cs := &netstatetest.CuttableStore{Store: store}
	st := New("node-0")
	changes := st.Subscribe()
	done := make(chan struct{})
	go func() { defer close(done); st.Run(ctx, cs, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-st.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("the state did not sync")
	}
	check := func(in Snapshot) string {
		switch {
		case in.Self == nil:
			return "the node itself is missing"
		case len(in.OwnBlocks) == 0:
			return "the node's own block is missing"
		case len(in.Peers) != 2:
			return fmt.Sprintf("%d BGP peers, want 2", len(in.Peers))
		case len(in.Pools) != 1:
			return fmt.Sprintf("%d pools, want 1", len(in.Pools))
		case len(in.Nodes) != others+1:
			return fmt.Sprintf("%d nodes, want %d", len(in.Nodes), others+1)
		case len(in.Handles["net.first"]) != 1:
			return "the node's first pod's address is missing"
		}
		return ""
	}
	if p := check(st.Snapshot()); p != "" {
		t.Fatalf("after the first listing: %s", p)
	}
	var snapshots, bad atomic.Int64
	var firstBad atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				snapshots.Add(1)
				if p := check(st.Snapshot()); p != "" {
					bad.Add(1)
					firstBad.CompareAndSwap(nil, p)
				}
			}
		}()
	}

	const rounds = 10
	for round := range rounds {
		// The cluster changes while the watches are down: another pod on
		// this node, a label on another node.
		cs.CompactWhileCut(t, srv, 3, func() {
			if _, err := alloc.AutoAssign(ctx, ipam.Request{Handle: fmt.Sprintf("net.r%d", round), Namespace: "default", Pod: "r"}); err != nil {
				t.Fatal(err)
			}
			apply(&api.Node{ObjectMeta: api.ObjectMeta{Name: "node-1", Labels: map[string]string{"round": fmt.Sprint(round)}},
				Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{IPv4Address: "10.0.0.2/16"}}})
		})
	}
	// The last round's changes arrive.
	want := netip.Addr{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		in := st.Snapshot()
		if a := in.Handles[fmt.Sprintf("net.r%d", rounds-1)]; len(a) == 1 {
			want = a[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the last pod's address never showed up after the relists")
		}
		select {
		case <-changes:
		case <-time.After(100 * time.Millisecond):
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d snapshots during %d relists of every prefix; last pod at %s", snapshots.Load(), rounds, want)
	if bad.Load() > 0 {
		t.Fatalf("%d of %d snapshots taken during relists were incomplete; first: %s", bad.Load(), snapshots.Load(), firstBad.Load())
	}
}

package ipam

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
)

// Disabling a pool (seed 004's migration) stops new allocations from it and
// keeps the existing ones, which can still be released.
func TestDisabledPoolKeepsExistingAllocations(t *testing.T) {
	c := newCluster(t)
	old := newTestPool("old", "10.0.0.0/24", 26)
	c.apply(old)
	a := c.allocator("node-a")
	ctx := context.Background()
	kept := assign(t, a, "before")

	if _, err := c.res.Patch(ctx, api.KindIPPool, "old", []byte(`{"spec":{"disabled":true}}`)); err != nil {
		t.Fatal(err)
	}
	c.apply(newTestPool("new", "10.1.0.0/24", 26))
	waitFor(t, "the allocator to see the pool change", func() bool {
		got, err := a.AutoAssign(ctx, Request{Handle: "probe"})
		if err != nil {
			return false
		}
		_, _ = a.ReleaseHandle(ctx, "probe")
		return got[0].Pool == "new"
	})
	if got := assign(t, a, "after"); got.Pool != "new" {
		t.Fatalf("after disabling old, got %s from %s", got.Addr, got.Pool)
	}
	if addrs, err := ByHandle(ctx, c.store(), "before"); err != nil || len(addrs) != 1 || addrs[0] != kept.Addr {
		t.Fatalf("existing allocation in the disabled pool: %v %v, want %s", addrs, err, kept.Addr)
	}
	_, err := a.AutoAssign(ctx, Request{Handle: "named", Pools: []string{"old"}})
	wantErr(t, err, ErrNoUsablePool, "old", "disabled")
	if rel, err := a.ReleaseHandle(ctx, "before"); err != nil || len(rel) != 1 {
		t.Fatalf("release from the disabled pool: %v %v", rel, err)
	}
}

// The allocator's watch picks up pools created after it started and node
// label changes, without a restart.
func TestWatchSeesNewPoolsAndLabels(t *testing.T) {
	c := newCluster(t)
	c.node("node-a", nil)
	a := c.allocator("node-a")
	ctx := context.Background()
	_, err := a.AutoAssign(ctx, Request{Handle: "h"})
	wantErr(t, err, ErrNoUsablePool, "no IPv4 pools")

	rack := newTestPool("rack-0", "10.0.0.0/24", 26)
	rack.Spec.NodeSelector = `rack == "0"`
	c.apply(rack)
	waitFor(t, "the new pool to be seen", func() bool {
		_, err := a.AutoAssign(ctx, Request{Handle: "h"})
		return errors.Is(err, ErrNoUsablePool) && strings.Contains(err.Error(), "rack-0")
	})
	// kubectl label nodes node-a rack=0
	c.node("node-a", map[string]string{"rack": "0"})
	waitFor(t, "the label to be seen", func() bool {
		got, err := a.AutoAssign(ctx, Request{Handle: "h"})
		return err == nil && got[0].Pool == "rack-0"
	})
}

func TestNamespaceSelectorAndNamedPoolOrder(t *testing.T) {
	c := newCluster(t)
	team := newTestPool("team-a", "10.2.0.0/24", 26)
	team.Spec.NamespaceSelector = "team == 'a'"
	general := newTestPool("general", "10.3.0.0/24", 26)
	general.Spec.NamespaceSelector = "team != 'a'"
	first := newTestPool("first", "10.4.0.0/30", 30)
	first.Spec.AssignmentMode = api.AssignmentManual
	c.apply(team, general, first)
	a := c.allocator("node-a")

	for i := range 5 {
		got := assign(t, a, fmt.Sprintf("pa%d", i), func(r *Request) { r.Namespace = "ns-a"; r.NamespaceLabels = map[string]string{"team": "a"} })
		if got.Pool != "team-a" {
			t.Fatalf("namespace ns-a (team=a) got %s from %s, want team-a", got.Addr, got.Pool)
		}
		got = assign(t, a, fmt.Sprintf("pb%d", i), func(r *Request) { r.Namespace = "ns-b" })
		if got.Pool != "general" {
			t.Fatalf("namespace ns-b got %s from %s, want general", got.Addr, got.Pool)
		}
	}
	// Named pools are used in the order given: the manual pool "first" has
	// two usable addresses, then "general" serves.
	var pools []string
	for i := range 3 {
		got := assign(t, a, fmt.Sprintf("named%d", i), func(r *Request) { r.Pools = []string{"first", "general"} })
		pools = append(pools, got.Pool)
	}
	if want := []string{"first", "first", "general"}; !slices.Equal(pools, want) {
		t.Fatalf("named pools served %v, want %v", pools, want)
	}
}

// A fixed address inside another node's block is borrowed, and the block's
// owner never hands it out again.
func TestFixedAddressInAnotherNodesBlockIsBorrowed(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/24", 26))
	a := c.allocator("node-a")
	b := c.allocator("node-b")
	ga := assign(t, a, "a1")
	other := ga.Addr.Next()
	got, err := b.AssignIP(context.Background(), other, Attribute{Handle: "b-fixed", Namespace: "ns", Pod: "fixed"})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Borrowed || got.Block != ga.Block {
		t.Fatalf("fixed address %s in node-a's block %s: %+v, want borrowed", other, ga.Block, got)
	}
	blk, _ := readBlock(t, c.store(), ga.Block.String())
	if attr, ok := blk.attributeOf(ordinal(ga.Block, other)); !ok || attr.Node != "node-b" {
		t.Fatalf("owner of %s: %+v", other, attr)
	}
	// node-a's next allocation (stale cache, then a re-read) never hands
	// out node-b's fixed address.
	for i := range 5 {
		if g := assign(t, a, "a-more"+string(rune('0'+i))); g.Addr == other {
			t.Fatalf("node-a handed out %s, held by node-b", other)
		}
	}
	kvs, _, err := c.store().List(context.Background(), blockPrefix)
	if err != nil || len(kvs) != 1 {
		t.Fatalf("%d blocks (%v), want 1", len(kvs), err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

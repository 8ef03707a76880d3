package ipam

import (
	"context"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"testing"

	"github.com/rhizome-net/rhizome/api"
)

// showCluster builds a cluster whose blocks are fixed by address: pool p
// (10.0.0.0/24 in /26 blocks) with node-a's block 10.0.0.0/26 (.1 .2, and
// .3 borrowed by node-b) and node-b's block 10.0.0.64/26 (.65, and .100
// which was reserved after it was handed out); reservations .10-.19 and
// .254-.255; an empty IPv6 pool; and a block 10.9.0.0/26 whose pool was
// deleted.
func showCluster(t *testing.T) *cluster {
	t.Helper()
	c := newCluster(t)
	reservation := func(name string, cidrs ...string) *api.IPReservation {
		return &api.IPReservation{ObjectMeta: api.ObjectMeta{Name: name}, Spec: api.IPReservationSpec{ReservedCIDRs: cidrs}}
	}
	c.apply(newTestPool("p", "10.0.0.0/24", 26), newTestPool("old", "10.9.0.0/26", 26), newTestPool("v6", "fd00:10::/112", 122),
		reservation("r1", "10.0.0.10-10.0.0.19", "10.0.0.254-10.0.0.255", "10.1.0.0/16", "fd00:10::ff"))
	a, b := c.allocator("node-a"), c.allocator("node-b")
	ctx := context.Background()
	for _, x := range []struct {
		a    *Allocator
		addr string
	}{{a, "10.0.0.1"}, {a, "10.0.0.2"}, {b, "10.0.0.65"}, {b, "10.0.0.3"}, {b, "10.0.0.100"}, {a, "10.9.0.1"}} {
		if _, err := x.a.AssignIP(ctx, netip.MustParseAddr(x.addr), Attribute{Handle: "h-" + x.addr, Namespace: "ns", Pod: "pod-" + x.addr}); err != nil {
			t.Fatal(err)
		}
	}
	c.apply(reservation("r2", "10.0.0.100"))
	if _, err := c.res.Delete(ctx, api.KindIPPool, "old", 0); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestReadUsage(t *testing.T) {
	c := showCluster(t)
	u, err := ReadUsage(context.Background(), c.store())
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Pools) != 2 {
		t.Fatalf("%d pools, want 2: %+v", len(u.Pools), u.Pools)
	}
	for _, tc := range []struct {
		pool                         PoolUsage
		name                         string
		total, inUse, reserved, free int64
		blocks                       []BlockUsage
	}{
		// .0, .10-.19 and .254-.255 are reserved; .100 is reserved but in use.
		{u.Pools[0], "p", 256, 5, 13, 238, []BlockUsage{
			{CIDR: netip.MustParsePrefix("10.0.0.0/26"), Pool: "p", Affinity: "node-a", Total: 64, InUse: 3, Reserved: 11, Free: 50},
			{CIDR: netip.MustParsePrefix("10.0.0.64/26"), Pool: "p", Affinity: "node-b", Total: 64, InUse: 2, Reserved: 0, Free: 62},
		}},
		// The subnet-router anycast address and fd00:10::ff.
		{u.Pools[1], "v6", 65536, 0, 2, 65534, nil},
	} {
		p := tc.pool
		if p.Name != tc.name || p.Total.Cmp(big.NewInt(tc.total)) != 0 || p.InUse.Cmp(big.NewInt(tc.inUse)) != 0 ||
			p.Reserved.Cmp(big.NewInt(tc.reserved)) != 0 || p.Free.Cmp(big.NewInt(tc.free)) != 0 {
			t.Errorf("pool %s: total %s in use %s reserved %s free %s; want %s %d %d %d %d",
				p.Name, p.Total, p.InUse, p.Reserved, p.Free, tc.name, tc.total, tc.inUse, tc.reserved, tc.free)
		}
		if fmt.Sprint(p.Blocks) != fmt.Sprint(append([]BlockUsage{}, tc.blocks...)) {
			t.Errorf("pool %s blocks\n %+v\nwant\n %+v", p.Name, p.Blocks, tc.blocks)
		}
	}
	want := []BlockUsage{{CIDR: netip.MustParsePrefix("10.9.0.0/26"), Affinity: "node-a", Total: 64, InUse: 1, Free: 63}}
	if fmt.Sprint(u.Unpooled) != fmt.Sprint(want) {
		t.Errorf("unpooled blocks %+v, want %+v", u.Unpooled, want)
	}
}

func TestReservedCountMergesRanges(t *testing.T) {
	p := newTestPool("p", "10.0.0.0/24", 26)
	r := &api.IPReservation{Spec: api.IPReservationSpec{ReservedCIDRs: []string{
		"10.0.0.0/28", "10.0.0.8-10.0.0.20", "10.0.0.21", "9.0.0.0-10.0.0.1", "10.0.0.200-10.0.1.5", "fd00::/8",
	}}}
	s := newSnapshot([]*api.IPPool{p}, []*api.IPReservation{r}, DefaultConfig(), nil)
	// .0-.21 (22) and .200-.255 (56), the network and broadcast inside.
	if got := s.reservedCount(s.pools[0]); got.Cmp(big.NewInt(78)) != 0 {
		t.Fatalf("reserved %s, want 78", got)
	}
	p31 := newTestPool("p31", "10.1.0.0/31", 31)
	s = newSnapshot([]*api.IPPool{p31}, nil, DefaultConfig(), nil)
	if got := s.reservedCount(s.pools[0]); got.Sign() != 0 {
		t.Fatalf("a /31 pool has %s reserved addresses, want 0", got)
	}
}

func TestLookupAddress(t *testing.T) {
	c := showCluster(t)
	for _, tc := range []struct {
		addr, status, pool, block, affinity, owner, reserved string
	}{
		{addr: "10.0.0.3", status: "inUse", pool: "p", block: "10.0.0.0/26", affinity: "node-a", owner: "h-10.0.0.3 node-b"},
		{addr: "10.0.0.4", status: "free", pool: "p", block: "10.0.0.0/26", affinity: "node-a"},
		{addr: "10.0.0.130", status: "free", pool: "p"},
		{addr: "10.0.0.12", status: "reserved", pool: "p", block: "10.0.0.0/26", affinity: "node-a",
			reserved: "reserved by an IPReservation (10.0.0.10-10.0.0.19)"},
		{addr: "10.0.0.0", status: "reserved", pool: "p", block: "10.0.0.0/26", affinity: "node-a",
			reserved: "the network or broadcast address of pool p (10.0.0.0/24)"},
		{addr: "10.0.0.100", status: "inUse", pool: "p", block: "10.0.0.64/26", affinity: "node-b", owner: "h-10.0.0.100 node-b",
			reserved: "reserved by an IPReservation (10.0.0.100-10.0.0.100)"},
		{addr: "10.2.0.1", status: "outside"},
		{addr: "10.1.2.3", status: "outside", reserved: "reserved by an IPReservation (10.1.0.0-10.1.255.255)"},
		{addr: "10.9.0.1", status: "inUse", block: "10.9.0.0/26", affinity: "node-a", owner: "h-10.9.0.1 node-a"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			info, err := LookupAddress(context.Background(), c.store(), netip.MustParseAddr(tc.addr))
			if err != nil {
				t.Fatal(err)
			}
			var block, owner string
			if info.Block.IsValid() {
				block = info.Block.String()
			}
			if info.Owner != nil {
				owner = info.Owner.Handle + " " + info.Owner.Node
			}
			got := []string{string(info.Status), info.Pool, block, info.BlockAffinity, owner, info.Reserved}
			want := []string{tc.status, tc.pool, tc.block, tc.affinity, tc.owner, tc.reserved}
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
				t.Fatalf("lookup %s = %q, want %q", tc.addr, got, want)
			}
			if info.Status == AddressOutside && len(info.Pools) != 2 {
				t.Fatalf("outside: pools %v, want both", info.Pools)
			}
		})
	}
}

func TestReadNodeUsage(t *testing.T) {
	c := showCluster(t)
	u, err := ReadNodeUsage(context.Background(), c.store(), "node-b")
	if err != nil {
		t.Fatal(err)
	}
	if len(u.Blocks) != 1 || u.Blocks[0].CIDR != netip.MustParsePrefix("10.0.0.64/26") || u.Blocks[0].InUse != 2 {
		t.Fatalf("node-b blocks %+v", u.Blocks)
	}
	var got []string
	for _, a := range u.Addresses {
		got = append(got, fmt.Sprintf("%s %v", a.Addr, a.Borrowed))
	}
	if want := "[10.0.0.3 true 10.0.0.65 false 10.0.0.100 false]"; fmt.Sprint(got) != want {
		t.Fatalf("node-b addresses %v, want %s", got, want)
	}
	if u, _ := ReadNodeUsage(context.Background(), c.store(), "node-x"); len(u.Blocks)+len(u.Addresses) != 0 {
		t.Fatalf("unknown node holds %+v", u)
	}
}

// Allocator.Usage, the agent's cheap count for its Node status, agrees with
// the full view: the same blocks, in use and free (reserved ones left out).
func TestAllocatorUsage(t *testing.T) {
	c := showCluster(t)
	ctx := context.Background()
	for _, node := range []string{"node-a", "node-b", "node-c"} {
		u, err := ReadNodeUsage(ctx, c.store(), node)
		if err != nil {
			t.Fatal(err)
		}
		var wantBlocks []netip.Prefix
		wantInUse, wantFree := 0, 0
		for _, b := range u.Blocks {
			wantBlocks = append(wantBlocks, b.CIDR)
			wantInUse += b.InUse
			wantFree += b.Free
		}
		got, err := c.allocator(node).Usage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(got.Blocks, netip.Prefix.Compare)
		slices.SortFunc(wantBlocks, netip.Prefix.Compare)
		if !slices.Equal(got.Blocks, wantBlocks) || got.InUse != wantInUse || got.Free != wantFree {
			t.Errorf("%s: Usage = %+v; the full view has blocks %v, %d in use, %d free", node, got, wantBlocks, wantInUse, wantFree)
		}
		if node == "node-a" && (len(got.Blocks) == 0 || got.Free == 0 || got.InUse == 0) {
			t.Errorf("node-a holds addresses in its blocks, Usage = %+v", got)
		}
	}
}

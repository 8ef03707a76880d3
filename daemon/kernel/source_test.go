package kernel

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/dataplane"
)

// fakeSource is a hand-written fake route source with fixed answers.
type fakeSource struct {
	routes  []dataplane.LearnedRoute
	settled bool
}

func (f fakeSource) Routes() ([]dataplane.LearnedRoute, bool) { return f.routes, f.settled }
func (f fakeSource) Changed() <-chan struct{}                 { return nil }

func route(p, nh string) dataplane.LearnedRoute {
	return dataplane.LearnedRoute{Prefix: netip.MustParsePrefix(p), NextHop: netip.MustParseAddr(nh)}
}

// The kernel takes the routes of every source; a prefix two sources name
// comes from the first; nothing counts as settled while one source is not.
func TestUnionOfSources(t *testing.T) {
	bgp := fakeSource{routes: []dataplane.LearnedRoute{route("10.244.1.0/26", "10.0.0.2"), route("10.244.2.0/26", "10.0.0.3")}, settled: true}
	vxlan := fakeSource{routes: []dataplane.LearnedRoute{route("10.245.0.0/26", "10.0.0.4"), route("10.244.2.0/26", "10.0.0.9")}, settled: true}
	got, settled := union([]RouteSource{bgp, vxlan})
	want := []dataplane.LearnedRoute{route("10.244.1.0/26", "10.0.0.2"), route("10.244.2.0/26", "10.0.0.3"), route("10.245.0.0/26", "10.0.0.4")}
	if !settled || !slices.Equal(got, want) {
		t.Fatalf("union %v settled %v; want %v settled", got, settled, want)
	}
	vxlan.settled = false
	if _, settled := union([]RouteSource{bgp, vxlan}); settled {
		t.Fatal("settled although one source is not")
	}
	if got, settled := union(nil); !settled || len(got) != 0 {
		t.Fatalf("no sources: %v settled %v; want nothing, settled", got, settled)
	}
}

// Pools are converted once: a disabled pool keeps its routes, NAT and
// encapsulation (its pods still run); a pool that does not parse is left
// out.
func TestPools(t *testing.T) {
	pools := []*api.IPPool{
		{ObjectMeta: api.ObjectMeta{Name: "old"}, Spec: api.IPPoolSpec{CIDR: "10.1.0.0/16", IPIPMode: api.EncapAlways, NATOutgoing: true, Disabled: true}},
		{ObjectMeta: api.ObjectMeta{Name: "new"}, Spec: api.IPPoolSpec{CIDR: "10.2.0.0/16", VXLANMode: api.EncapCrossSubnet}},
		{ObjectMeta: api.ObjectMeta{Name: "bad"}, Spec: api.IPPoolSpec{CIDR: "nonsense"}},
	}
	got := Pools(pools)
	want := []dataplane.Pool{
		{Name: "old", CIDR: netip.MustParsePrefix("10.1.0.0/16"), IPIPMode: api.EncapAlways, NATOutgoing: true},
		{Name: "new", CIDR: netip.MustParsePrefix("10.2.0.0/16"), VXLANMode: api.EncapCrossSubnet},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pools %+v; want %+v", got, want)
	}
	if mtu := dataplane.PodMTU(1500, got); mtu != 1500-dataplane.VXLANOverhead {
		t.Fatalf("pod MTU %d; want the largest overhead of all pools, disabled ones too", mtu)
	}
}

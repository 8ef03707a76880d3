package bgp_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/bgp"
	"github.com/rhizome-net/rhizome/bgp/bgplab"
)

// block6 is node i's IPv6 pod block (/122, the IPv6 default).
func block6(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("fd10:244::%x/122", i*64)) }

// dualStack gives every node of c its IPv6 address in its Node record,
// as the agent's autodetection does.
func (c *cluster) dualStack() {
	for i, nd := range c.nodes {
		c.apiNodes[i].Spec.BGP.IPv6Address = nd.Addr6.String()
	}
}

// start6 starts node nd's speaker as the agent would on a dual-stack node:
// identity from LocalConfig, advertisements from Advertisements (an IPv4
// and an IPv6 block), then peers.
func (c *cluster) start6(nd *bgplab.Node, i int) *bgplab.Speaker {
	c.t.Helper()
	local, err := bgp.LocalConfig(c.topo(nd.Name))
	if err != nil {
		c.t.Fatal(err)
	}
	advs, err := bgp.Advertisements(bgp.Origin{NodeV4: nd.Addr.Addr(), NodeV6: nd.Addr6.Addr(), Blocks: []netip.Prefix{block(i), block6(i)}})
	if err != nil {
		c.t.Fatal(err)
	}
	sp := bgplab.StartSpeaker(c.t, nd, bgp.Config{AS: local.AS, ListenAddresses: local.Addresses, ListenPort: local.ListenPort})
	sp.SetAdvertisements(advs...)
	c.speakers[nd.Name] = sp
	c.sync(nd.Name)
	return sp
}

// hasDualBlocks is a wait condition: the view holds exactly the IPv4 and
// IPv6 blocks of the given nodes (1-based), each via its node's address
// of the block's family, learned from one of the peers via(i) names (its
// address of the same family).
func (c *cluster) hasDualBlocks(via func(origin int) []int, idx ...int) func(bgplab.View) bool {
	return func(v bgplab.View) bool {
		if len(v.Routes) != 2*len(idx) {
			return false
		}
		for _, i := range idx {
			nd := c.nodes[i-1]
			r4, ok4 := v.Routes[block(i)]
			r6, ok6 := v.Routes[block6(i)]
			if !ok4 || !ok6 || r4.NextHop != nd.Addr.Addr() || r6.NextHop != nd.Addr6.Addr() {
				return false
			}
			from4, from6 := false, false
			for _, j := range via(i) {
				from4 = from4 || r4.Peer == c.nodes[j-1].Addr.Addr()
				from6 = from6 || r6.Peer == c.nodes[j-1].Addr6.Addr()
			}
			if !from4 || !from6 {
				return false
			}
		}
		return true
	}
}

// TestPrivilegedDualStack runs 4 dual-stack nodes in namespaces: a mesh
// with one session per family between every pair (IPv6 blocks via the
// nodes' IPv6 addresses), then the mesh off with n3 and n4 as route
// reflectors sharing a cluster ID, which reflect the IPv6 blocks over
// their IPv6 sessions with the originators' next hops; a withdrawn IPv6
// block disappears everywhere (the reflectors accept only each other's
// own routes, in IPv6 too).
func TestPrivilegedDualStack(t *testing.T) {
	c := newCluster(t, "10.79.0.0/24", 4)
	c.dualStack()
	begin := time.Now()
	for i, nd := range c.nodes {
		c.start6(nd, i+1)
	}
	direct := func(origin int) []int { return []int{origin} }
	for i, nd := range c.nodes {
		c.speakers[nd.Name].Wait(30*time.Second, "dual-stack mesh converges", func(v bgplab.View) bool {
			return v.Established() == 6 && c.hasDualBlocks(direct, others(4, i+1)...)(v)
		})
	}
	t.Logf("dual-stack mesh of 4 converged in %v", time.Since(begin).Round(time.Millisecond))

	st := c.speakers["n1"].Status()
	var want []netip.Addr
	for _, nd := range c.nodes[1:] {
		want = append(want, nd.Addr.Addr())
	}
	for _, nd := range c.nodes[1:] {
		want = append(want, nd.Addr6.Addr())
	}
	if len(st) != len(want) {
		t.Fatalf("n1 status has %d peers, want %d (one per family per node): %+v", len(st), len(want), st)
	}
	for i, p := range st {
		if p.Address != want[i] || p.Type != bgp.TypeMesh || p.State != bgp.StateEstablished || p.PrefixesReceived != 1 || p.PrefixesAdvertised != 1 {
			t.Errorf("n1 peer %d: %+v, want %s established with 1 prefix each way (its family's block)", i, p, want[i])
		}
	}

	// Mesh off, n3 and n4 route reflectors of one cluster: n1 and n2 hear
	// each other through them in both families.
	off := false
	c.configs = []api.BGPConfiguration{{ObjectMeta: api.ObjectMeta{Name: "default"}, Spec: api.BGPConfigurationSpec{NodeToNodeMeshEnabled: &off}}}
	c.apiNode("n3").Spec.BGP.RouteReflectorClusterID = "244.0.0.3"
	c.apiNode("n4").Spec.BGP.RouteReflectorClusterID = "244.0.0.3"
	for _, nd := range c.nodes {
		c.sync(nd.Name)
	}
	viaRR := func(int) []int { return []int{3, 4} } // a reflector's own blocks may come reflected by the other one
	for _, tc := range []struct {
		name     string
		idx      []int
		via      func(int) []int
		sessions int
	}{{"n1", []int{2, 3, 4}, viaRR, 4}, {"n2", []int{1, 3, 4}, viaRR, 4}, {"n3", []int{1, 2, 4}, direct, 6}, {"n4", []int{1, 2, 3}, direct, 6}} {
		sp := c.speakers[tc.name]
		sp.Wait(30*time.Second, "routes through the route reflector", c.hasDualBlocks(tc.via, tc.idx...))
		if err := sp.WaitErr(30*time.Second, func(bgplab.View) bool {
			st := sp.Status()
			return countEstablished(st) == tc.sessions && len(st) == tc.sessions
		}); err != nil {
			t.Fatalf("%s: want %d established sessions (IPv4 and IPv6) and no others: %v; status %+v", tc.name, tc.sessions, err, sp.Status())
		}
	}
	for _, p := range c.speakers["n3"].Status() {
		wantType := bgp.TypeRRClient
		if p.Node == "n4" {
			wantType = bgp.TypeRR
		}
		if p.Type != wantType {
			t.Errorf("n3 peer %s (%s) type %q, want %q", p.Address, p.Node, p.Type, wantType)
		}
	}

	// n1 withdraws its IPv6 block: gone on n2 and on both reflectors, the
	// IPv4 block stays.
	sp1 := c.speakers["n1"]
	sp1.SetAdvertisements(bgp.Advertisement{Prefix: block(1), NextHop: c.nodes[0].Addr.Addr()})
	for _, name := range []string{"n2", "n3", "n4"} {
		c.speakers[name].Wait(20*time.Second, "n1's IPv6 block withdrawn, its IPv4 block kept", func(v bgplab.View) bool {
			_, has6 := v.Routes[block6(1)]
			r4, has4 := v.Routes[block(1)]
			return !has6 && has4 && r4.NextHop == c.nodes[0].Addr.Addr()
		})
	}
	// Stays withdrawn: no reflector keeps the other's reflected copy alive.
	time.Sleep(2 * time.Second)
	for _, name := range []string{"n2", "n3", "n4"} {
		if r, ok := c.speakers[name].View().Routes[block6(1)]; ok {
			t.Errorf("%s has n1's withdrawn IPv6 block again: %+v", name, r)
		}
	}
}

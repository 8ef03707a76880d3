package bgp_test

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/bgp"
	"github.com/rhizome-net/rhizome/bgp/bgplab"
)

func TestMain(m *testing.M) {
	bgplab.Main()
	os.Exit(m.Run())
}

// cluster is a lab of rhizome nodes and the resources that describe them.
type cluster struct {
	t        *testing.T
	net      *bgplab.Net
	nodes    []*bgplab.Node
	apiNodes []api.Node
	configs  []api.BGPConfiguration
	peers    []api.BGPPeer
	speakers map[string]*bgplab.Speaker
	password bgp.PasswordResolver
}

func newCluster(t *testing.T, subnet string, n int) *cluster {
	c := &cluster{t: t, net: bgplab.NewNet(t, subnet), speakers: map[string]*bgplab.Speaker{}}
	for i := 1; i <= n; i++ {
		c.addNode(fmt.Sprintf("n%d", i), i)
	}
	return c
}

func (c *cluster) addNode(name string, host int) *bgplab.Node {
	nd := c.net.AddNode(name, host)
	c.nodes = append(c.nodes, nd)
	c.apiNodes = append(c.apiNodes, api.Node{ObjectMeta: api.ObjectMeta{Name: name, Labels: map[string]string{}},
		Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{IPv4Address: nd.Addr.String()}}})
	return nd
}

func (c *cluster) apiNode(name string) *api.Node {
	for i := range c.apiNodes {
		if c.apiNodes[i].Name == name {
			return &c.apiNodes[i]
		}
	}
	c.t.Fatalf("no node %s", name)
	return nil
}

func (c *cluster) topo(self string) bgp.Topology {
	return bgp.Topology{Self: self, Nodes: c.apiNodes, Configs: c.configs, Peers: c.peers, Password: c.password}
}

// block is node i's pod block.
func block(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/26", i)) }

// start starts the speaker of node nd as the agent would: identity from
// LocalConfig, then advertisements, then peers.
func (c *cluster) start(nd *bgplab.Node, i int) *bgplab.Speaker {
	c.t.Helper()
	local, err := bgp.LocalConfig(c.topo(nd.Name))
	if err != nil {
		c.t.Fatal(err)
	}
	sp := bgplab.StartSpeaker(c.t, nd, bgp.Config{AS: local.AS, ListenPort: local.ListenPort})
	sp.SetAdvertisements(bgp.Advertisement{Prefix: block(i), NextHop: nd.Addr.Addr()})
	c.speakers[nd.Name] = sp
	c.sync(nd.Name)
	return sp
}

// sync gives node name the peers the resources say it should have.
func (c *cluster) sync(name string) []bgp.Peer {
	c.t.Helper()
	peers, err := bgp.Peers(c.topo(name))
	if err != nil {
		c.t.Fatal(err)
	}
	c.speakers[name].SetPeers(peers...)
	return peers
}

// hasBlocks is a wait condition: the view holds exactly the blocks of the
// given nodes (index into c.nodes, 1-based), each via its node's address.
func (c *cluster) hasBlocks(idx ...int) func(bgplab.View) bool {
	return func(v bgplab.View) bool {
		if len(v.Routes) != len(idx) {
			return false
		}
		for _, i := range idx {
			r, ok := v.Routes[block(i)]
			if !ok || r.NextHop != c.nodes[i-1].Addr.Addr() {
				return false
			}
		}
		return true
	}
}

func others(n, self int) []int {
	var out []int
	for i := 1; i <= n; i++ {
		if i != self {
			out = append(out, i)
		}
	}
	return out
}

// TestPrivilegedMeshThenRouteReflectors runs 5 speakers in a full mesh,
// turns the mesh off with two route reflectors (seed 004), and removes a
// node.
func TestPrivilegedMeshThenRouteReflectors(t *testing.T) {
	c := newCluster(t, "10.77.0.0/24", 5)
	begin := time.Now()
	for i, nd := range c.nodes {
		c.start(nd, i+1)
	}
	for i, nd := range c.nodes {
		sp := c.speakers[nd.Name]
		sp.Wait(30*time.Second, "mesh converges", func(v bgplab.View) bool {
			return v.Established() == 4 && c.hasBlocks(others(5, i+1)...)(v)
		})
	}
	t.Logf("mesh of 5 converged in %v", time.Since(begin).Round(time.Millisecond))

	st := c.speakers["n1"].Status()
	if len(st) != 4 {
		t.Fatalf("n1 status has %d peers, want 4: %+v", len(st), st)
	}
	for _, p := range st {
		if p.Type != bgp.TypeMesh || p.State != bgp.StateEstablished || p.Info != "Established" || p.PrefixesReceived != 1 || p.PrefixesAdvertised != 1 || p.Since.IsZero() {
			t.Errorf("n1 peer %+v, want an established mesh session with 1 prefix each way", p)
		}
	}

	// Unchanged peers are not touched: same peers again and one more block.
	c.sync("n1")
	sp1 := c.speakers["n1"]
	sp1.SetAdvertisements(bgp.Advertisement{Prefix: block(1), NextHop: c.nodes[0].Addr.Addr()},
		bgp.Advertisement{Prefix: block(11), NextHop: c.nodes[0].Addr.Addr()})
	c.speakers["n2"].Wait(10*time.Second, "second block of n1 arrives", func(v bgplab.View) bool { return v.Routes[block(11)].NextHop == c.nodes[0].Addr.Addr() })
	for i, p := range sp1.Status() {
		if p.State != bgp.StateEstablished || !p.Since.Equal(st[i].Since) || p.Flaps != 0 {
			t.Errorf("re-applying the same peers disturbed session %s: %+v (before: %+v)", p.Address, p, st[i])
		}
	}
	sp1.SetAdvertisements(bgp.Advertisement{Prefix: block(1), NextHop: c.nodes[0].Addr.Addr()})
	c.speakers["n2"].Wait(10*time.Second, "the second block of n1 is withdrawn", c.hasBlocks(1, 3, 4, 5))

	// Seed 004: n4 and n5 become route reflectors sharing a cluster ID, the
	// mesh goes off.
	off := false
	c.configs = []api.BGPConfiguration{{ObjectMeta: api.ObjectMeta{Name: "default"}, Spec: api.BGPConfigurationSpec{NodeToNodeMeshEnabled: &off}}}
	for _, rr := range []string{"n4", "n5"} {
		n := c.apiNode(rr)
		n.Labels["route-reflector"] = "true"
		n.Spec.BGP.RouteReflectorClusterID = "244.0.0.1"
	}
	c.peers = []api.BGPPeer{{ObjectMeta: api.ObjectMeta{Name: "peer-with-route-reflectors"},
		Spec: api.BGPPeerSpec{NodeSelector: "all()", PeerSelector: "route-reflector == 'true'"}}}
	for _, nd := range c.nodes {
		c.sync(nd.Name)
	}
	want := map[string]int{"n1": 2, "n2": 2, "n3": 2, "n4": 4, "n5": 4}
	for i, nd := range c.nodes {
		sp := c.speakers[nd.Name]
		sp.Wait(30*time.Second, "route reflector sessions only", func(v bgplab.View) bool {
			return c.hasBlocks(others(5, i+1)...)(v)
		})
		if err := sp.WaitErr(30*time.Second, func(bgplab.View) bool {
			return countEstablished(sp.Status()) == want[nd.Name] && len(sp.Status()) == want[nd.Name]
		}); err != nil {
			t.Fatalf("%s: want %d established sessions and no others: %v; status %+v", nd.Name, want[nd.Name], err, sp.Status())
		}
	}
	total := 0
	for _, nd := range c.nodes {
		total += countEstablished(c.speakers[nd.Name].Status())
	}
	if total/2 != 3*2+1 {
		t.Errorf("%d sessions, want clients x reflectors + reflector pairs = 3*2+1", total/2)
	}
	for _, p := range c.speakers["n4"].Status() {
		wantType := bgp.TypeNode // from the BGPPeer, as seed 004's node status shows
		if p.Type != wantType {
			t.Errorf("n4 peer %s type %q, want %q", p.Address, p.Type, wantType)
		}
	}

	// Node n3 is deleted: everyone drops it, its block disappears everywhere
	// (n3's own speaker keeps running, as a dead node's would).
	c.apiNodes = append(c.apiNodes[:2], c.apiNodes[3:]...)
	for _, name := range []string{"n1", "n2", "n4", "n5"} {
		c.sync(name)
	}
	for _, name := range []string{"n1", "n2", "n4", "n5"} {
		var i int
		fmt.Sscanf(name, "n%d", &i)
		var rest []int
		for _, j := range []int{1, 2, 4, 5} {
			if j != i {
				rest = append(rest, j)
			}
		}
		c.speakers[name].Wait(20*time.Second, "n3's block withdrawn", c.hasBlocks(rest...))
	}
}

func countEstablished(st []bgp.PeerStatus) int {
	n := 0
	for _, p := range st {
		if p.State == bgp.StateEstablished {
			n++
		}
	}
	return n
}

// TestPrivilegedUnreachablePeer adds a peer nobody answers for: it shows
// Active or Connect with the last error, and the other session stays up.
func TestPrivilegedUnreachablePeer(t *testing.T) {
	c := newCluster(t, "10.77.0.0/24", 2)
	c.start(c.nodes[0], 1)
	c.start(c.nodes[1], 2)
	sp := c.speakers["n1"]
	sp.Wait(30*time.Second, "session up", func(v bgplab.View) bool { return c.hasBlocks(2)(v) && v.Established() == 1 })
	before := sp.Status()

	ghost := netip.MustParseAddr("10.77.0.99")
	c.peers = []api.BGPPeer{{ObjectMeta: api.ObjectMeta{Name: "ghost"}, Spec: api.BGPPeerSpec{Node: "n1", PeerIP: ghost.String(), ASNumber: api.NewASNumber(65099)}}}
	c.sync("n1")
	var g bgp.PeerStatus
	if err := sp.WaitErr(30*time.Second, func(bgplab.View) bool {
		for _, p := range sp.Status() {
			if p.Address == ghost {
				g = p
			}
		}
		return g.Info != ""
	}); err != nil {
		t.Fatalf("unreachable peer never showed an error: %+v", g)
	}
	if (g.State != bgp.StateActive && g.State != bgp.StateConnect) || !strings.Contains(g.Info, "failed to connect") || g.Type != bgp.TypeNode {
		t.Errorf("unreachable peer status = %+v, want Active or Connect with the connection error", g)
	}
	t.Logf("unreachable peer: state %s, info %q", g.State, g.Info)
	for _, p := range sp.Status() {
		if p.Address == c.nodes[1].Addr.Addr() && (p.State != bgp.StateEstablished || !p.Since.Equal(before[0].Since)) {
			t.Errorf("the unreachable peer disturbed the session with n2: %+v", p)
		}
	}
	if v := sp.View(); !c.hasBlocks(2)(v) {
		t.Errorf("routes changed: %v", v.Routes)
	}
	// An invalid peer is refused by the speaker, and nothing changes.
	if err := sp.TrySetPeers(bgp.Peer{Address: ghost}); err == nil || !strings.Contains(err.Error(), "AS 0") {
		t.Errorf("SetPeers with AS 0: err = %v", err)
	}
}

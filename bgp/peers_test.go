package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/rhizome-net/rhizome/api"
)

// node builds an api.Node; extra sets labels as "k=v" and the special
// "as=N", "rr=ID" and "v6=ADDR/LEN".
func node(name, v4 string, extra ...string) api.Node {
	n := api.Node{ObjectMeta: api.ObjectMeta{Name: name, Labels: map[string]string{}},
		Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{IPv4Address: v4}}}
	for _, e := range extra {
		k, v, _ := strings.Cut(e, "=")
		switch k {
		case "as":
			var as uint32
			fmt.Sscan(v, &as)
			n.Spec.BGP.ASNumber = api.NewASNumber(as)
		case "rr":
			n.Spec.BGP.RouteReflectorClusterID = v
		case "v6":
			n.Spec.BGP.IPv6Address = v
		default:
			n.Labels[k] = v
		}
	}
	return n
}

func meshOff(as uint32) api.BGPConfiguration {
	off := false
	c := api.BGPConfiguration{ObjectMeta: api.ObjectMeta{Name: "default"}, Spec: api.BGPConfigurationSpec{NodeToNodeMeshEnabled: &off}}
	if as != 0 {
		c.Spec.ASNumber = api.NewASNumber(as)
	}
	return c
}

// racks is the seeds' 4 nodes in 2 racks, all on one /24.
func racks(extra map[string][]string) []api.Node {
	names := []string{"rke-node1", "rke-node2", "rke-node3", "rke-node4"}
	var nodes []api.Node
	for i, n := range names {
		nodes = append(nodes, node(n, fmt.Sprintf("10.0.0.%d/24", i+1), append([]string{"rack=" + fmt.Sprint(i/2)}, extra[n]...)...))
	}
	return nodes
}

// row is one peer as a test expects it, written compactly.
type row struct {
	addr string
	typ  PeerType
	as   uint32
	// flags: P passive, C route reflector client, E eBGP, M multihop, W password,
	// O own routes only
	flags string
}

func rowOf(p Peer) row {
	var f strings.Builder
	for _, b := range []struct {
		on bool
		c  byte
	}{{p.Passive, 'P'}, {p.RouteReflectorClient, 'C'}, {p.EBGP, 'E'}, {p.Multihop, 'M'}, {p.Password != "", 'W'}, {p.OwnRoutesOnly, 'O'}} {
		if b.on {
			f.WriteByte(b.c)
		}
	}
	return row{addr: p.Address.String(), typ: p.Type, as: p.AS, flags: f.String()}
}

func secrets(src api.SecretSource) (string, error) {
	if src.SecretKeyRef != nil && src.SecretKeyRef.Name == "bgp" {
		return "pw-" + src.SecretKeyRef.Key, nil
	}
	if src.File == "/etc/rhizome/tor" {
		return "tor-secret", nil
	}
	return "", errors.New("not found")
}

func TestPeers(t *testing.T) {
	seedPeer := api.BGPPeer{ObjectMeta: api.ObjectMeta{Name: "peer-with-route-reflectors"},
		Spec: api.BGPPeerSpec{NodeSelector: "all()", PeerSelector: "route-reflector == 'true'"}}
	tor := func(name, sel, ip string, as uint32) api.BGPPeer {
		return api.BGPPeer{ObjectMeta: api.ObjectMeta{Name: name}, Spec: api.BGPPeerSpec{
			NodeSelector: sel, PeerIP: ip, ASNumber: api.NewASNumber(as), KeepaliveSeconds: 10, HoldSeconds: 30,
			Password: &api.SecretSource{File: "/etc/rhizome/tor"}}}
	}
	rr4 := map[string][]string{"rke-node4": {"rr=244.0.0.1", "route-reflector=true"}}
	tests := []struct {
		name    string
		topo    Topology
		want    map[string][]row // per node
		clients int              // sessions expected overall (each counted once)
	}{{
		name: "4 nodes in 2 racks, mesh",
		topo: Topology{Nodes: racks(nil)},
		want: map[string][]row{
			"rke-node1": {{"10.0.0.2", TypeMesh, 64512, ""}, {"10.0.0.3", TypeMesh, 64512, ""}, {"10.0.0.4", TypeMesh, 64512, ""}},
			"rke-node3": {{"10.0.0.1", TypeMesh, 64512, "P"}, {"10.0.0.2", TypeMesh, 64512, "P"}, {"10.0.0.4", TypeMesh, 64512, ""}},
		},
		clients: 6,
	}, {
		name: "mesh of 5 nodes",
		topo: Topology{Nodes: append(racks(nil), node("rke-node5", "10.0.0.5/24"))},
		want: map[string][]row{
			"rke-node5": {{"10.0.0.1", TypeMesh, 64512, "P"}, {"10.0.0.2", TypeMesh, 64512, "P"}, {"10.0.0.3", TypeMesh, 64512, "P"}, {"10.0.0.4", TypeMesh, 64512, "P"}},
		},
		clients: 10,
	}, {
		name: "mesh off, one route reflector from routeReflectorClusterID",
		topo: Topology{Nodes: racks(map[string][]string{"rke-node4": {"rr=244.0.0.1"}}), Configs: []api.BGPConfiguration{meshOff(63400)}},
		want: map[string][]row{
			"rke-node1": {{"10.0.0.4", TypeRR, 63400, ""}},
			"rke-node4": {{"10.0.0.1", TypeRRClient, 63400, "PC"}, {"10.0.0.2", TypeRRClient, 63400, "PC"}, {"10.0.0.3", TypeRRClient, 63400, "PC"}},
		},
		clients: 3,
	}, {
		name: "mesh off, route reflector from the rhizome.io/route-reflector label",
		topo: Topology{Nodes: racks(map[string][]string{"rke-node2": {RouteReflectorLabel + "=true"}}), Configs: []api.BGPConfiguration{meshOff(0)}},
		want: map[string][]row{
			"rke-node1": {{"10.0.0.2", TypeRR, 64512, ""}},
			"rke-node2": {{"10.0.0.1", TypeRRClient, 64512, "PC"}, {"10.0.0.3", TypeRRClient, 64512, "C"}, {"10.0.0.4", TypeRRClient, 64512, "C"}},
		},
		clients: 3,
	}, {
		name: "seed 004: mesh off, BGPPeer nodeSelector all() peerSelector route-reflector == 'true'",
		topo: Topology{Nodes: racks(rr4), Configs: []api.BGPConfiguration{meshOff(63400)}, Peers: []api.BGPPeer{seedPeer}},
		want: map[string][]row{
			"rke-node1": {{"10.0.0.4", TypeNode, 63400, ""}},
			"rke-node2": {{"10.0.0.4", TypeNode, 63400, ""}},
			"rke-node4": {{"10.0.0.1", TypeNode, 63400, "PC"}, {"10.0.0.2", TypeNode, 63400, "PC"}, {"10.0.0.3", TypeNode, 63400, "PC"}},
		},
		clients: 3,
	}, {
		name: "seed 004 BGPPeer without a cluster ID: plain iBGP sessions to the labelled node",
		topo: Topology{Nodes: racks(map[string][]string{"rke-node4": {"route-reflector=true"}}), Configs: []api.BGPConfiguration{meshOff(0)}, Peers: []api.BGPPeer{seedPeer}},
		want: map[string][]row{
			"rke-node1": {{"10.0.0.4", TypeNode, 64512, ""}},
			"rke-node4": {{"10.0.0.1", TypeNode, 64512, "P"}, {"10.0.0.2", TypeNode, 64512, "P"}, {"10.0.0.3", TypeNode, 64512, "P"}},
		},
		clients: 3,
	}, {
		name: "two route reflectors sharing a cluster ID",
		topo: Topology{Nodes: racks(map[string][]string{"rke-node1": {"rr=244.0.0.1"}, "rke-node4": {"rr=244.0.0.1"}}), Configs: []api.BGPConfiguration{meshOff(0)}},
		want: map[string][]row{
			"rke-node1": {{"10.0.0.2", TypeRRClient, 64512, "C"}, {"10.0.0.3", TypeRRClient, 64512, "C"}, {"10.0.0.4", TypeRR, 64512, "O"}},
			"rke-node2": {{"10.0.0.1", TypeRR, 64512, "P"}, {"10.0.0.4", TypeRR, 64512, ""}},
			"rke-node4": {{"10.0.0.1", TypeRR, 64512, "PO"}, {"10.0.0.2", TypeRRClient, 64512, "PC"}, {"10.0.0.3", TypeRRClient, 64512, "PC"}},
		},
		clients: 5, // 2 clients x 2 reflectors + 1 reflector pair
	}, {
		name: "global AS 63400 and node-1 in AS 64514: eBGP on one subnet, no multihop",
		topo: Topology{Nodes: racks(map[string][]string{"rke-node1": {"as=64514"}}), Configs: []api.BGPConfiguration{{ObjectMeta: api.ObjectMeta{Name: "default"},
			Spec: api.BGPConfigurationSpec{ASNumber: api.NewASNumber(63400)}}}},
		want: map[string][]row{
			"rke-node1": {{"10.0.0.2", TypeMesh, 63400, "E"}, {"10.0.0.3", TypeMesh, 63400, "E"}, {"10.0.0.4", TypeMesh, 63400, "E"}},
			"rke-node2": {{"10.0.0.1", TypeMesh, 64514, "PE"}, {"10.0.0.3", TypeMesh, 63400, ""}, {"10.0.0.4", TypeMesh, 63400, ""}},
		},
		clients: 6,
	}, {
		name: "per-node AS from a node.<name> BGPConfiguration, node in another subnet: eBGP multihop",
		topo: Topology{Nodes: []api.Node{node("a", "10.0.0.1/24"), node("b", "10.0.1.1/24")},
			Configs: []api.BGPConfiguration{{ObjectMeta: api.ObjectMeta{Name: "node.b"}, Spec: api.BGPConfigurationSpec{ASNumber: api.NewASNumber(65001)}}}},
		want: map[string][]row{
			"a": {{"10.0.1.1", TypeMesh, 65001, "EM"}},
			"b": {{"10.0.0.1", TypeMesh, 64512, "PEM"}},
		},
		clients: 1,
	}, {
		name: "ToR per rack (node specific) and a global external peer, with passwords",
		topo: Topology{Nodes: racks(nil), Configs: []api.BGPConfiguration{meshOff(64512)}, Peers: []api.BGPPeer{
			tor("rack0-tor", `rack == "0"`, "10.0.0.254", 65000),
			tor("rack1-tor", `rack == "1"`, "10.0.0.253", 65000),
			tor("edge", "", "192.168.9.1:1179", 65100),
		}},
		want: map[string][]row{
			"rke-node1": {{"10.0.0.254", TypeNode, 65000, "EW"}, {"192.168.9.1", TypeGlobal, 65100, "EMW"}},
			"rke-node3": {{"10.0.0.253", TypeNode, 65000, "EW"}, {"192.168.9.1", TypeGlobal, 65100, "EMW"}},
		},
		clients: -1,
	}, {
		name: "a node-specific BGPPeer for a mesh address wins over the mesh",
		topo: Topology{Nodes: racks(nil), Peers: []api.BGPPeer{{ObjectMeta: api.ObjectMeta{Name: "n2"},
			Spec: api.BGPPeerSpec{Node: "rke-node1", PeerIP: "10.0.0.2", ASNumber: api.NewASNumber(64512), HoldSeconds: 9}}}},
		want: map[string][]row{
			"rke-node1": {{"10.0.0.2", TypeNode, 64512, ""}, {"10.0.0.3", TypeMesh, 64512, ""}, {"10.0.0.4", TypeMesh, 64512, ""}},
		},
		clients: -1,
	}, {
		name: "dual stack mesh: one session per family",
		topo: Topology{Nodes: []api.Node{node("a", "10.0.0.1/24", "v6=fd00::1/64"), node("b", "10.0.0.2/24", "v6=fd00::2/64"), node("c", "10.0.0.3/24")}},
		want: map[string][]row{
			"a": {{"10.0.0.2", TypeMesh, 64512, ""}, {"10.0.0.3", TypeMesh, 64512, ""}, {"fd00::2", TypeMesh, 64512, ""}},
			"b": {{"10.0.0.1", TypeMesh, 64512, "P"}, {"10.0.0.3", TypeMesh, 64512, ""}, {"fd00::1", TypeMesh, 64512, "P"}},
		},
		clients: 4,
	}, {
		name: "dual stack, mesh off, route reflector: its clients peer with it in each family",
		topo: Topology{Nodes: []api.Node{node("a", "10.0.0.1/24", "v6=fd00::1/64", "rr=244.0.0.1"), node("b", "10.0.0.2/24", "v6=fd00::2/64"),
			node("c", "10.0.0.3/24", "v6=fd00::3/64")}, Configs: []api.BGPConfiguration{meshOff(0)}},
		want: map[string][]row{
			"a": {{"10.0.0.2", TypeRRClient, 64512, "C"}, {"10.0.0.3", TypeRRClient, 64512, "C"}, {"fd00::2", TypeRRClient, 64512, "C"}, {"fd00::3", TypeRRClient, 64512, "C"}},
			"b": {{"10.0.0.1", TypeRR, 64512, "P"}, {"fd00::1", TypeRR, 64512, "P"}},
		},
		clients: 4,
	}, {
		name: "dual stack, seed 004 peerSelector: sessions with the reflectors in both families",
		topo: Topology{Nodes: []api.Node{node("a", "10.0.0.1/24", "v6=fd00::1/64"), node("b", "10.0.0.2/24", "v6=fd00::2/64"),
			node("rr1", "10.0.0.9/24", "v6=fd00::9/64", "rr=244.0.0.1", "route-reflector=true"),
			node("rr2", "10.0.0.10/24", "v6=fd00::a/64", "rr=244.0.0.1", "route-reflector=true")},
			Configs: []api.BGPConfiguration{meshOff(0)}, Peers: []api.BGPPeer{seedPeer}},
		want: map[string][]row{
			"a":   {{"10.0.0.9", TypeNode, 64512, ""}, {"10.0.0.10", TypeNode, 64512, ""}, {"fd00::9", TypeNode, 64512, ""}, {"fd00::a", TypeNode, 64512, ""}},
			"rr1": {{"10.0.0.1", TypeNode, 64512, "PC"}, {"10.0.0.2", TypeNode, 64512, "PC"}, {"10.0.0.10", TypeNode, 64512, "O"}, {"fd00::1", TypeNode, 64512, "PC"}, {"fd00::2", TypeNode, 64512, "PC"}, {"fd00::a", TypeNode, 64512, "O"}},
		},
		clients: 10, // per family: 2 clients x 2 reflectors + 1 reflector pair
	}, {
		name: "BGPPeers with IPv6 peerIPs: from the node's IPv6 address, none on a node without one",
		topo: Topology{Nodes: []api.Node{node("a", "10.0.0.1/24", "v6=fd00::1/64", "rack=0"), node("b", "10.0.0.2/24", "v6=fd00::2/64", "rack=1"),
			node("c", "10.0.0.3/24", "rack=0")}, Configs: []api.BGPConfiguration{meshOff(0)}, Peers: []api.BGPPeer{
			tor("rack0-tor6", `rack == "0"`, "fd00::fe", 65000),
			tor("edge6", "", "[fd99::1]:1179", 65100),
		}},
		want: map[string][]row{
			"a": {{"fd00::fe", TypeNode, 65000, "EW"}, {"fd99::1", TypeGlobal, 65100, "EMW"}},
			"b": {{"fd99::1", TypeGlobal, 65100, "EMW"}},
			"c": nil,
		},
		clients: -1,
	}, {
		name: "IPv6 mesh across subnets in different ASes: eBGP multihop in IPv6 too",
		topo: Topology{Nodes: []api.Node{node("a", "10.0.0.1/24", "v6=fd00::1/64"), node("b", "10.0.1.1/24", "v6=fd00:1::1/64", "as=65001")}},
		want: map[string][]row{
			"a": {{"10.0.1.1", TypeMesh, 65001, "EM"}, {"fd00:1::1", TypeMesh, 65001, "EM"}},
			"b": {{"10.0.0.1", TypeMesh, 64512, "PEM"}, {"fd00::1", TypeMesh, 64512, "PEM"}},
		},
		clients: 2,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.topo.Password = secrets
			all := make(map[string][]Peer)
			for _, n := range tc.topo.Nodes {
				topo := tc.topo
				topo.Self = n.Name
				peers, err := Peers(topo)
				if err != nil {
					t.Fatalf("Peers(%s): %v", n.Name, err)
				}
				all[n.Name] = peers
				for _, p := range peers {
					if p.SourceAddress.Is4() != p.Address.Is4() {
						t.Errorf("%s: peer %s from source address %s: a session must stay in one family", n.Name, p.Address, p.SourceAddress)
					}
				}
			}
			for name, want := range tc.want {
				var got []row
				for _, p := range all[name] {
					got = append(got, rowOf(p))
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("peers of %s:\n got  %v\n want %v", name, got, want)
				}
			}
			if tc.clients >= 0 {
				if n := checkSessions(t, tc.topo.Nodes, all); n != tc.clients {
					t.Errorf("%d sessions between nodes, want %d", n, tc.clients)
				}
			}
		})
	}
}

// checkSessions checks that sessions between rhizome nodes are mutual
// (a peers with b exactly when b peers with a), that exactly one side
// dials, and that AS numbers and route reflector roles agree; it returns
// the number of sessions.
func checkSessions(t *testing.T, nodes []api.Node, all map[string][]Peer) int {
	t.Helper()
	byAddr := make(map[netip.Addr]string)
	for _, n := range nodes {
		for _, a := range []string{n.Spec.BGP.IPv4Address, n.Spec.BGP.IPv6Address} {
			if p, err := netip.ParsePrefix(a); err == nil {
				byAddr[p.Addr()] = n.Name
			}
		}
	}
	type key struct{ a, b netip.Addr }
	seen := make(map[key]Peer)
	for name, peers := range all {
		for _, p := range peers {
			if _, ok := byAddr[p.Address]; !ok {
				continue // an external peer
			}
			if p.Node != byAddr[p.Address] {
				t.Errorf("%s: peer %s names node %q, want %q", name, p.Address, p.Node, byAddr[p.Address])
			}
			seen[key{p.SourceAddress, p.Address}] = p
		}
	}
	sessions := 0
	for k, p := range seen {
		back, ok := seen[key{k.b, k.a}]
		if !ok {
			t.Errorf("%s peers with %s but not the other way round", k.a, k.b)
			continue
		}
		if p.Passive == back.Passive {
			t.Errorf("session %s-%s: passive on both sides or on neither (%v)", k.a, k.b, p.Passive)
		}
		if p.AS != back.LocalAS || p.LocalAS != back.AS {
			t.Errorf("session %s-%s: AS numbers disagree: %d/%d vs %d/%d", k.a, k.b, p.LocalAS, p.AS, back.LocalAS, back.AS)
		}
		if p.RouteReflectorClient && back.RouteReflectorClient {
			t.Errorf("session %s-%s: each side is the other's route reflector client", k.a, k.b)
		}
		if k.a.Less(k.b) {
			sessions++
		}
	}
	return sessions
}

func TestPeersDetails(t *testing.T) {
	nodes := racks(map[string][]string{"rke-node4": {"rr=244.0.0.9"}})
	gr := api.BGPConfiguration{ObjectMeta: api.ObjectMeta{Name: "default"}, Spec: api.BGPConfigurationSpec{
		GracefulRestartSeconds: 300, ListenPort: 1179, MeshPassword: &api.SecretSource{SecretKeyRef: &api.SecretKeySelector{Name: "bgp", Key: "mesh"}}}}
	peers, err := Peers(Topology{Self: "rke-node4", Nodes: nodes, Configs: []api.BGPConfiguration{gr}, Password: secrets})
	if err != nil {
		t.Fatal(err)
	}
	p := peers[0]
	if p.Type != TypeMesh || p.Port != 1179 || p.GracefulRestartSeconds != 300 || p.Password != "pw-mesh" ||
		p.PasswordSource != "secret bgp key mesh" || p.SourceAddress != netip.MustParseAddr("10.0.0.4") || p.RouteReflectorClient {
		t.Errorf("mesh peer from node with cluster ID = %+v", p)
	}
	if s := fmt.Sprint(p); strings.Contains(s, "pw-mesh") {
		t.Errorf("Peer.String() shows the password: %s", s)
	}
	// Default graceful restart time is 120 s.
	peers, _ = Peers(Topology{Self: "rke-node1", Nodes: nodes})
	if peers[0].GracefulRestartSeconds != api.DefaultGracefulRestartSeconds || peers[0].Port != 179 {
		t.Errorf("defaults: %+v", peers[0])
	}
	l, err := LocalConfig(Topology{Self: "rke-node4", Nodes: nodes, Configs: []api.BGPConfiguration{meshOff(63400), {ObjectMeta: api.ObjectMeta{Name: "node.rke-node4"}, Spec: api.BGPConfigurationSpec{ListenPort: 1790}}}})
	if err != nil {
		t.Fatal(err)
	}
	if l.RouterID.String() != "10.0.0.4" || l.AS != 63400 || l.ListenPort != 1790 || l.ClusterID != "244.0.0.9" || l.GracefulRestartSeconds != 120 {
		t.Errorf("LocalConfig = %+v", l)
	}
	// BGPPeer settings: timers, source address None, passive, next hop mode.
	bp := api.BGPPeer{ObjectMeta: api.ObjectMeta{Name: "tor"}, Spec: api.BGPPeerSpec{Node: "rke-node1", PeerIP: "10.0.0.254", ASNumber: api.NewASNumber(64512),
		KeepaliveSeconds: 3, HoldSeconds: 9, GracefulRestartSeconds: 30, Passive: true, NextHopMode: api.NextHopSelf, SourceAddress: api.SourceAddressNone}}
	peers, _ = Peers(Topology{Self: "rke-node1", Nodes: nodes, Configs: []api.BGPConfiguration{meshOff(0)}, Peers: []api.BGPPeer{bp}})
	var tor Peer
	for _, p := range peers {
		if p.BGPPeer == "tor" {
			tor = p
		}
	}
	if tor.KeepaliveSeconds != 3 || tor.HoldSeconds != 9 || tor.GracefulRestartSeconds != 30 || !tor.Passive || tor.EBGP ||
		tor.NextHopMode != api.NextHopSelf || tor.SourceAddress.IsValid() || tor.Type != TypeNode || tor.Port != 179 {
		t.Errorf("BGPPeer settings not carried: %+v", tor)
	}
}

func TestPeersErrors(t *testing.T) {
	nodes := racks(nil)
	pwPeer := api.BGPPeer{ObjectMeta: api.ObjectMeta{Name: "tor"}, Spec: api.BGPPeerSpec{PeerIP: "10.0.0.254", ASNumber: api.NewASNumber(65000),
		Password: &api.SecretSource{SecretKeyRef: &api.SecretKeySelector{Name: "missing", Key: "k"}}}}
	tests := []struct {
		name string
		topo Topology
		want string
	}{
		{"unknown node", Topology{Self: "nope", Nodes: nodes}, `node "nope" is not among the 4 nodes`},
		{"no address", Topology{Self: "x", Nodes: []api.Node{{ObjectMeta: api.ObjectMeta{Name: "x"}}}}, "set spec.bgp.ipv4Address"},
		{"bad address", Topology{Self: "x", Nodes: []api.Node{node("x", "10.0.0.300/24")}}, `node "x" spec.bgp.ipv4Address`},
		{"bad peerIP", Topology{Self: "rke-node1", Nodes: nodes, Peers: []api.BGPPeer{{ObjectMeta: api.ObjectMeta{Name: "p"}, Spec: api.BGPPeerSpec{PeerIP: "10.0.0", ASNumber: api.NewASNumber(1)}}}}, `BGPPeer "p" spec.peerIP`},
		{"AS 0", Topology{Self: "rke-node1", Nodes: nodes, Peers: []api.BGPPeer{{ObjectMeta: api.ObjectMeta{Name: "p"}, Spec: api.BGPPeerSpec{PeerIP: "10.0.0.9", ASNumber: api.NewASNumber(0)}}}}, "spec.asNumber is required"},
		{"bad nodeSelector", Topology{Self: "rke-node1", Nodes: nodes, Peers: []api.BGPPeer{{ObjectMeta: api.ObjectMeta{Name: "p"}, Spec: api.BGPPeerSpec{NodeSelector: "rack in {", PeerIP: "10.0.0.9", ASNumber: api.NewASNumber(1)}}}}, `BGPPeer "p" spec.nodeSelector`},
		{"bad peerSelector", Topology{Self: "rke-node1", Nodes: nodes, Peers: []api.BGPPeer{{ObjectMeta: api.ObjectMeta{Name: "p"}, Spec: api.BGPPeerSpec{PeerSelector: "a == 'x' || b"}}}}, `BGPPeer "p" spec.peerSelector`},
		{"password not found", Topology{Self: "rke-node1", Nodes: nodes, Peers: []api.BGPPeer{pwPeer}, Password: secrets}, "BGPPeer tor: password from secret missing key k: not found"},
		{"no resolver", Topology{Self: "rke-node1", Nodes: nodes, Peers: []api.BGPPeer{pwPeer}}, "no password resolver"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Peers(tc.topo)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := Peers(Topology{Self: "x", Nodes: []api.Node{{ObjectMeta: api.ObjectMeta{Name: "x"}}}}); !errors.Is(err, ErrNoNodeAddress) {
		t.Errorf("err = %v, want ErrNoNodeAddress", err)
	}
}

// TestPeersSymmetricRandom checks the mutual-session invariants over many
// generated topologies: mesh on and off, random reflectors, AS numbers and
// the seed's BGPPeer.
func TestPeersSymmetricRandom(t *testing.T) {
	for seed := 0; seed < 200; seed++ {
		n := 2 + seed%7
		var nodes []api.Node
		for i := 0; i < n; i++ {
			var extra []string
			if (seed>>uint(i))&1 == 1 {
				extra = append(extra, "rr=244.0.0.1", "route-reflector=true")
			}
			if seed%5 == 0 && i == 0 {
				extra = append(extra, "as=65010")
			}
			nodes = append(nodes, node(fmt.Sprintf("n%d", i), fmt.Sprintf("10.1.%d.%d/16", i%3, 10+(i*37+seed)%200), extra...))
		}
		topo := Topology{Nodes: nodes}
		if seed%2 == 1 {
			topo.Configs = []api.BGPConfiguration{meshOff(0)}
		}
		if seed%3 == 0 {
			topo.Peers = []api.BGPPeer{{ObjectMeta: api.ObjectMeta{Name: "rr"}, Spec: api.BGPPeerSpec{NodeSelector: "all()", PeerSelector: "route-reflector == 'true'"}}}
		}
		all := make(map[string][]Peer)
		for _, nd := range nodes {
			topo.Self = nd.Name
			peers, err := Peers(topo)
			if err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			if !sort.SliceIsSorted(peers, func(i, j int) bool { return peers[i].Address.Less(peers[j].Address) }) {
				t.Fatalf("seed %d: peers of %s not sorted", seed, nd.Name)
			}
			all[nd.Name] = peers
		}
		checkSessions(t, nodes, all)
		if t.Failed() {
			t.Fatalf("seed %d failed", seed)
		}
	}
}

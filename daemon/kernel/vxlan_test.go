package kernel

import (
	"net/netip"
	"testing"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/daemon/netstate"
	"github.com/rhizome-net/rhizome/dataplane"
)

func vxlanNode(name, addr, tunnel, mac string) api.Node {
	n := api.Node{ObjectMeta: api.ObjectMeta{Name: name}, Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{IPv4Address: addr},
		IPv4VXLANTunnelAddr: tunnel, VXLANTunnelMACAddr: mac}}
	return n
}

// The VXLAN routes come from the node records and the blocks' affinities
// alone: a block of another node in a VXLAN pool is routed via that
// node's tunnel address on vxlan.rhizome, with its neighbour and
// forwarding entries; this node's block, a block of an IPIP pool and a
// block of a node whose record has no tunnel address yet are not routed
// (the last is reported).
func TestVXLANRoutesFromTheDatastore(t *testing.T) {
	pfx := netip.MustParsePrefix
	in := netstate.Snapshot{
		Nodes: []api.Node{
			vxlanNode("node-1", "10.77.0.1/24", "10.244.0.1", "02:00:00:00:00:01"),
			vxlanNode("node-2", "10.77.0.2/24", "10.244.0.65", "02:00:00:00:00:02"),
			vxlanNode("node-3", "10.77.0.3/24", "", ""),
		},
		Affinities: map[netip.Prefix]string{
			pfx("10.244.0.0/26"):   "node-1",
			pfx("10.244.0.64/26"):  "node-2",
			pfx("10.244.0.128/26"): "node-3",
			pfx("10.250.0.0/26"):   "node-2",
		},
	}
	pools := []dataplane.Pool{
		{Name: "vx", CIDR: pfx("10.244.0.0/16"), VXLANMode: api.EncapAlways},
		{Name: "ipip", CIDR: pfx("10.250.0.0/16"), IPIPMode: api.EncapAlways},
	}
	up := dataplane.Uplink{Link: dataplane.Link{Name: "eth0", Index: 2}, Addrs: []netip.Prefix{pfx("10.77.0.1/24")}, MTU: 1500}
	dev := dataplane.Link{Name: dataplane.VXLANDevice, Index: 7}
	p := dataplane.VXLANPlan(vxlanInput("node-1", in, pools, up, nil, dev))
	if len(p.Routes) != 1 || p.Routes[0].String() != (dataplane.Route{Prefix: pfx("10.244.0.64/26"), Kind: dataplane.VXLAN,
		Gateway: netip.MustParseAddr("10.244.0.65"), Link: dev}).String() {
		t.Errorf("routes %v, want node-2's block via its tunnel address on %s", p.Routes, dataplane.VXLANDevice)
	}
	if len(p.Neighbors) != 1 || p.Neighbors[0].String() != "10.244.0.65 lladdr 02:00:00:00:00:02 dev vxlan.rhizome permanent" {
		t.Errorf("neighbours %v", p.Neighbors)
	}
	if len(p.FDB) != 1 || p.FDB[0].String() != "02:00:00:00:00:02 dev vxlan.rhizome dst 10.77.0.2 self permanent" {
		t.Errorf("forwarding entries %v", p.FDB)
	}
	if len(p.Unroutable) != 1 || p.Unroutable[0].Prefix != pfx("10.244.0.128/26") {
		t.Errorf("unroutable %v, want node-3's block (no tunnel address in its record)", p.Unroutable)
	}
}

package dataplane

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/rhizome-net/rhizome/api"
)

// vxlanFamily is the address plan of one family for the VXLANPlan tables:
// this node (node1) and node2 share the uplink's subnet, node3 is on
// another one.
type vxlanFamily struct {
	name                 string
	v6                   bool
	uplink               Uplink
	dev                  Link
	pool                 string
	addr2, addr3         string // node addresses
	tun2, tun3           string // tunnel addresses
	block1, block2       string
	block2b, block3      string
	outside              string // a block in no pool
	ipipPool, ipipBlock2 string
}

var vxlanFamilies = []vxlanFamily{
	{
		name: "v4", uplink: Uplink{Link: eth0, Addrs: []netip.Prefix{pfx("10.0.1.5/24")}, MTU: 1500},
		dev: Link{Name: VXLANDevice, Index: 9}, pool: "192.168.0.0/16",
		addr2: "10.0.1.6", addr3: "10.0.2.7", tun2: "192.168.2.0", tun3: "192.168.3.0",
		block1: "192.168.1.0/26", block2: "192.168.2.0/26", block2b: "192.168.2.64/26", block3: "192.168.3.0/26",
		outside: "172.16.0.0/26", ipipPool: "10.244.0.0/16", ipipBlock2: "10.244.2.0/26",
	},
	{
		name: "v6", v6: true, uplink: Uplink{Link: eth0, Addrs: []netip.Prefix{pfx("fd00:1::5/64")}, MTU: 1500},
		dev: Link{Name: VXLANDeviceV6, Index: 10}, pool: "fd10::/48",
		addr2: "fd00:1::6", addr3: "fd00:2::7", tun2: "fd10:0:0:2::", tun3: "fd10:0:0:3::",
		block1: "fd10:0:0:1::/122", block2: "fd10:0:0:2::/122", block2b: "fd10:0:0:2::40/122", block3: "fd10:0:0:3::/122",
		outside: "fd99::/122", ipipPool: "fd20::/48", ipipBlock2: "fd20:0:0:2::/122",
	},
}

var (
	mac1 = net.HardwareAddr{0x66, 0, 0, 0, 0, 1}
	mac2 = net.HardwareAddr{0x66, 0, 0, 0, 0, 2}
	mac3 = net.HardwareAddr{0x66, 0, 0, 0, 0, 3}
)

// input builds the VXLANPlan input of node1 with node1, node2 and node3
// and one pool in mode; edit adjusts it per case.
func (f vxlanFamily) input(mode api.EncapMode, edit func(*VXLANInput)) VXLANInput {
	ep := func(addr, tun string, mac net.HardwareAddr) (VXLANEndpoint, VXLANEndpoint) {
		e := VXLANEndpoint{Addr: ip(addr), TunnelAddr: ip(tun), MAC: mac}
		if f.v6 {
			return VXLANEndpoint{}, e
		}
		return e, VXLANEndpoint{}
	}
	n1v4, n1v6 := ep(f.uplink.Addrs[0].Addr().String(), f.uplink.Addrs[0].Addr().String(), mac1)
	n2v4, n2v6 := ep(f.addr2, f.tun2, mac2)
	n3v4, n3v6 := ep(f.addr3, f.tun3, mac3)
	in := VXLANInput{
		Self: "node1",
		Nodes: []VXLANNode{
			{Name: "node3", V4: n3v4, V6: n3v6, Blocks: []netip.Prefix{pfx(f.block3)}},
			{Name: "node1", V4: n1v4, V6: n1v6, Blocks: []netip.Prefix{pfx(f.block1)}},
			{Name: "node2", V4: n2v4, V6: n2v6, Blocks: []netip.Prefix{pfx(f.block2), pfx(f.outside), pfx(f.ipipBlock2)}},
		},
		Pools: []Pool{
			{Name: "vx", CIDR: pfx(f.pool), VXLANMode: mode, IPIPMode: api.EncapNever},
			{Name: "other", CIDR: pfx(f.ipipPool), VXLANMode: api.EncapNever},
		},
		Uplink: f.uplink,
	}
	if f.v6 {
		in.DeviceV6 = f.dev
	} else {
		in.Device = f.dev
	}
	if edit != nil {
		edit(&in)
	}
	return in
}

func (f vxlanFamily) node(in *VXLANInput, name string) *VXLANNode {
	for i := range in.Nodes {
		if in.Nodes[i].Name == name {
			return &in.Nodes[i]
		}
	}
	panic(name)
}

func (f vxlanFamily) ep(n *VXLANNode) *VXLANEndpoint {
	if f.v6 {
		return &n.V6
	}
	return &n.V4
}

func stringsOf[T interface{ String() string }](xs []T) []string {
	var out []string
	for _, x := range xs {
		out = append(out, x.String())
	}
	return out
}

func TestVXLANPlan(t *testing.T) {
	for _, f := range vxlanFamilies {
		r := func(s string) string { // fills the family's addresses into a row
			return strings.NewReplacer("B2b", f.block2b, "B2", f.block2, "B3", f.block3, "T2", f.tun2, "T3", f.tun3,
				"A2", f.addr2, "A3", f.addr3, "DEV", f.dev.Name).Replace(s)
		}
		rs := func(ss ...string) []string {
			var out []string
			for _, s := range ss {
				out = append(out, r(s))
			}
			return out
		}
		tests := []struct {
			name       string
			mode       api.EncapMode
			edit       func(*VXLANInput)
			routes     []string
			neighbors  []string
			fdb        []string
			unroutable []string // one substring per entry, in order
		}{
			{
				name:      "Always: every other node's block via its tunnel address, also on the same subnet",
				mode:      api.EncapAlways,
				routes:    rs("B2 via T2 dev DEV onlink", "B3 via T3 dev DEV onlink"),
				neighbors: rs("T2 lladdr 66:00:00:00:00:02 dev DEV permanent", "T3 lladdr 66:00:00:00:00:03 dev DEV permanent"),
				fdb:       rs("66:00:00:00:00:02 dev DEV dst A2 self permanent", "66:00:00:00:00:03 dev DEV dst A3 self permanent"),
			},
			{
				name:      "CrossSubnet: same subnet plain via the node address, other subnet encapsulated",
				mode:      api.EncapCrossSubnet,
				routes:    rs("B2 via A2 dev eth0", "B3 via T3 dev DEV onlink"),
				neighbors: rs("T3 lladdr 66:00:00:00:00:03 dev DEV permanent"),
				fdb:       rs("66:00:00:00:00:03 dev DEV dst A3 self permanent"),
			},
			{
				name: "Never: nothing, the blocks are left to BGP",
				mode: api.EncapNever,
			},
			{
				name: "two blocks of one node: one neighbour and one forwarding entry",
				mode: api.EncapAlways,
				edit: func(in *VXLANInput) {
					n := f.node(in, "node2")
					n.Blocks = append(n.Blocks, pfx(f.block2b))
				},
				routes:    rs("B2 via T2 dev DEV onlink", "B2b via T2 dev DEV onlink", "B3 via T3 dev DEV onlink"),
				neighbors: rs("T2 lladdr 66:00:00:00:00:02 dev DEV permanent", "T3 lladdr 66:00:00:00:00:03 dev DEV permanent"),
				fdb:       rs("66:00:00:00:00:02 dev DEV dst A2 self permanent", "66:00:00:00:00:03 dev DEV dst A3 self permanent"),
			},
			{
				name: "a node whose record has no tunnel address and MAC yet is reported, the others served",
				mode: api.EncapAlways,
				edit: func(in *VXLANInput) {
					e := f.ep(f.node(in, "node3"))
					e.TunnelAddr, e.MAC = netip.Addr{}, nil
				},
				routes:     rs("B2 via T2 dev DEV onlink"),
				neighbors:  rs("T2 lladdr 66:00:00:00:00:02 dev DEV permanent"),
				fdb:        rs("66:00:00:00:00:02 dev DEV dst A2 self permanent"),
				unroutable: []string{"VXLAN tunnel address and MAC in its record yet"},
			},
			{
				name: "CrossSubnet needs no tunnel address for a same-subnet node",
				mode: api.EncapCrossSubnet,
				edit: func(in *VXLANInput) {
					e := f.ep(f.node(in, "node2"))
					e.TunnelAddr, e.MAC = netip.Addr{}, nil
				},
				routes:    rs("B2 via A2 dev eth0", "B3 via T3 dev DEV onlink"),
				neighbors: rs("T3 lladdr 66:00:00:00:00:03 dev DEV permanent"),
				fdb:       rs("66:00:00:00:00:03 dev DEV dst A3 self permanent"),
			},
			{
				name: "a node without an address of the family is reported",
				mode: api.EncapAlways,
				edit: func(in *VXLANInput) {
					f.ep(f.node(in, "node3")).Addr = netip.Addr{}
				},
				routes:     rs("B2 via T2 dev DEV onlink"),
				neighbors:  rs("T2 lladdr 66:00:00:00:00:02 dev DEV permanent"),
				fdb:        rs("66:00:00:00:00:02 dev DEV dst A2 self permanent"),
				unroutable: []string{"node node3 has no IPv"},
			},
			{
				name: "the VXLAN device is not up: every encapsulated block reported",
				mode: api.EncapCrossSubnet,
				edit: func(in *VXLANInput) {
					in.Device, in.DeviceV6 = Link{}, Link{}
				},
				routes:     rs("B2 via A2 dev eth0"),
				unroutable: []string{r("DEV is not up on this node")},
			},
			{
				name: "a block affine to two nodes: the first by name is routed, the other reported",
				mode: api.EncapAlways,
				edit: func(in *VXLANInput) {
					n := f.node(in, "node3")
					n.Blocks = append(n.Blocks, pfx(f.block2))
				},
				routes:     rs("B2 via T2 dev DEV onlink", "B3 via T3 dev DEV onlink"),
				neighbors:  rs("T2 lladdr 66:00:00:00:00:02 dev DEV permanent", "T3 lladdr 66:00:00:00:00:03 dev DEV permanent"),
				fdb:        rs("66:00:00:00:00:02 dev DEV dst A2 self permanent", "66:00:00:00:00:03 dev DEV dst A3 self permanent"),
				unroutable: []string{"block is also affine to node node2"},
			},
			{
				name: "two nodes with one MAC: the second is refused rather than stealing the first's traffic",
				mode: api.EncapAlways,
				edit: func(in *VXLANInput) {
					f.ep(f.node(in, "node3")).MAC = mac2
				},
				routes:     rs("B2 via T2 dev DEV onlink"),
				neighbors:  rs("T2 lladdr 66:00:00:00:00:02 dev DEV permanent"),
				fdb:        rs("66:00:00:00:00:02 dev DEV dst A2 self permanent"),
				unroutable: []string{"node node3 has the VXLAN MAC 66:00:00:00:00:02 of node node2"},
			},
		}
		for _, tc := range tests {
			t.Run(f.name+"/"+tc.name, func(t *testing.T) {
				in := f.input(tc.mode, tc.edit)
				got := VXLANPlan(in)
				check := func(what string, got, want []string) {
					t.Helper()
					if !slices.Equal(got, want) {
						t.Errorf("%s:\n got %q\nwant %q", what, got, want)
					}
				}
				check("routes", stringsOf(got.Routes), tc.routes)
				check("neighbours", stringsOf(got.Neighbors), tc.neighbors)
				check("forwarding entries", stringsOf(got.FDB), tc.fdb)
				var un []string
				for _, u := range got.Unroutable {
					un = append(un, u.Prefix.String()+": "+u.Reason)
				}
				if len(un) != len(tc.unroutable) {
					t.Fatalf("unroutable %q, want entries containing %q", un, tc.unroutable)
				}
				for i, w := range tc.unroutable {
					if !strings.Contains(un[i], w) {
						t.Errorf("unroutable %q lacks %q", un[i], w)
					}
				}
				// Pure and independent of the order the datastore listed
				// the nodes in.
				slices.Reverse(in.Nodes)
				if again := VXLANPlan(in); !slices.Equal(stringsOf(again.Routes), stringsOf(got.Routes)) ||
					!slices.Equal(stringsOf(again.FDB), stringsOf(got.FDB)) {
					t.Errorf("plan depends on the order of the nodes: %q then %q", stringsOf(got.Routes), stringsOf(again.Routes))
				}
			})
		}
	}
}

// TestDesiredTakesVXLANRoutes checks the merge the agent does: VXLAN
// routes win over a BGP-learned route for the same block, and a learned
// block of a VXLAN pool with no VXLAN route is reported.
func TestDesiredTakesVXLANRoutes(t *testing.T) {
	for _, f := range vxlanFamilies {
		t.Run(f.name, func(t *testing.T) {
			vx := VXLANPlan(f.input(api.EncapAlways, nil))
			in := Input{
				Pools:     f.input(api.EncapAlways, nil).Pools,
				Uplink:    f.uplink,
				OwnBlocks: []netip.Prefix{pfx(f.block1)},
				VXLAN:     vx.Routes,
				Learned: []LearnedRoute{
					{pfx(f.block2), ip(f.addr2)},          // also a VXLAN route: VXLAN wins
					{pfx(f.block2b), ip(f.addr2)},         // VXLAN pool, no VXLAN route
					{pfx(f.ipipBlock2), ip(f.addr2)},      // plain pool: direct
					{pfx(f.block1), ip(f.addr2)},          // own block: blackhole stays
					{pfx(f.block3).Masked(), ip(f.addr3)}, // VXLAN route
				},
			}
			plan := Desired(in)
			want := []string{
				"blackhole " + f.block1,
				f.block2 + " via " + f.tun2 + " dev " + f.dev.Name + " onlink",
				f.block3 + " via " + f.tun3 + " dev " + f.dev.Name + " onlink",
				f.ipipBlock2 + " via " + f.addr2 + " dev eth0",
			}
			slices.SortFunc(want, func(a, b string) int {
				return comparePrefix(pfx(strings.Fields(strings.TrimPrefix(a, "blackhole "))[0]), pfx(strings.Fields(strings.TrimPrefix(b, "blackhole "))[0]))
			})
			if got := routeStrings(plan); !slices.Equal(got, want) {
				t.Errorf("routes:\n got %q\nwant %q", got, want)
			}
			if u := unroutableStrings(plan); len(u) != 1 || !strings.Contains(u[0], f.block2b) || !strings.Contains(u[0], "needs VXLAN (vxlanMode Always)") {
				t.Errorf("unroutable = %q, want %s needing VXLAN", u, f.block2b)
			}
		})
	}
}

func TestVXLANDeviceHelpers(t *testing.T) {
	if VXLANMTU(1500, false) != 1450 || VXLANMTU(9000, true) != 8930 {
		t.Errorf("VXLANMTU(1500, v4) = %d, VXLANMTU(9000, v6) = %d; want 1450 and 8930", VXLANMTU(1500, false), VXLANMTU(9000, true))
	}
	for _, name := range []string{VXLANDevice, VXLANDeviceV6} {
		if len(name) > 15 {
			t.Errorf("device name %q is longer than the kernel's 15 bytes", name)
		}
	}
	a, b := VXLANMAC("rack0-node1", false), VXLANMAC("rack0-node1", false)
	if a.String() != b.String() {
		t.Errorf("VXLANMAC not deterministic: %s then %s", a, b)
	}
	if a[0]&1 != 0 || a[0]&2 == 0 {
		t.Errorf("VXLANMAC %s is not a locally administered unicast address", a)
	}
	if c, d := VXLANMAC("rack0-node2", false), VXLANMAC("rack0-node1", true); c.String() == a.String() || d.String() == a.String() {
		t.Errorf("VXLANMAC collides across nodes or families: %s %s %s", a, c, d)
	}
	pools := []Pool{
		{CIDR: pfx("192.168.0.0/16"), VXLANMode: api.EncapCrossSubnet},
		{CIDR: pfx("fd10::/48"), VXLANMode: api.EncapNever, IPIPMode: api.EncapNever},
	}
	if !NeedsVXLAN(pools, false) || NeedsVXLAN(pools, true) {
		t.Errorf("NeedsVXLAN(v4, v6) = %v, %v; want true, false", NeedsVXLAN(pools, false), NeedsVXLAN(pools, true))
	}
	if got := PodMTU(1500, pools); got != 1450 {
		t.Errorf("PodMTU with a VXLAN pool = %d, want 1450", got)
	}
}

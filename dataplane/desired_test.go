package dataplane

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/rhizome-net/rhizome/api"
)

var (
	eth0  = Link{Name: "eth0", Index: 2}
	tunl0 = Link{Name: "tunl0", Index: 7}
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

// routeStrings renders a plan the way `ip route` would show it, so a table
// row reads like what an operator sees on the node.
func routeStrings(p Plan) []string {
	var out []string
	for _, r := range p.Routes {
		out = append(out, r.String())
	}
	return out
}

func unroutableStrings(p Plan) []string {
	var out []string
	for _, u := range p.Unroutable {
		out = append(out, u.Prefix.String()+" via "+u.NextHop.String()+": "+u.Reason)
	}
	return out
}

func TestDesired(t *testing.T) {
	v4Uplink := Uplink{Link: eth0, Addrs: []netip.Prefix{pfx("10.0.1.5/24")}, MTU: 1500}
	v6Uplink := Uplink{Link: eth0, Addrs: []netip.Prefix{pfx("fd00:1::5/64")}, MTU: 1500}
	pool := func(cidr string, ipip, vxlan api.EncapMode) Pool {
		return Pool{Name: "p-" + cidr, CIDR: pfx(cidr), IPIPMode: ipip, VXLANMode: vxlan}
	}
	tests := []struct {
		name       string
		in         Input
		routes     []string
		unroutable []string // substrings, in order
	}{
		{
			name: "v4 IPIP Always: every learned block via tunl0 onlink, also on the same subnet",
			in: Input{
				Pools:   []Pool{pool("192.168.0.0/16", api.EncapAlways, "")},
				Uplink:  v4Uplink,
				Tunnel:  tunl0,
				Learned: []LearnedRoute{{pfx("192.168.1.0/26"), ip("10.0.1.6")}, {pfx("192.168.2.0/26"), ip("10.0.2.7")}},
			},
			routes: []string{
				"192.168.1.0/26 via 10.0.1.6 dev tunl0 onlink",
				"192.168.2.0/26 via 10.0.2.7 dev tunl0 onlink",
			},
		},
		{
			name: "v4 CrossSubnet: same subnet direct, other subnet via tunl0",
			in: Input{
				Pools:   []Pool{pool("192.168.0.0/16", api.EncapCrossSubnet, "")},
				Uplink:  v4Uplink,
				Tunnel:  tunl0,
				Learned: []LearnedRoute{{pfx("192.168.1.0/26"), ip("10.0.1.6")}, {pfx("192.168.2.0/26"), ip("10.0.2.7")}},
			},
			routes: []string{
				"192.168.1.0/26 via 10.0.1.6 dev eth0",
				"192.168.2.0/26 via 10.0.2.7 dev tunl0 onlink",
			},
		},
		{
			name: "router between racks: a next hop on another device's subnet goes through that device",
			in: Input{
				Pools:  []Pool{pool("192.168.0.0/16", api.EncapNever, "")},
				Uplink: v4Uplink,
				Others: []Uplink{{Link: Link{Name: "rack1", Index: 7}, Addrs: []netip.Prefix{pfx("10.0.2.254/24")}}},
				Learned: []LearnedRoute{{pfx("192.168.1.0/26"), ip("10.0.1.6")}, {pfx("192.168.2.0/26"), ip("10.0.2.7")},
					{pfx("192.168.3.0/26"), ip("10.0.3.8")}},
			},
			routes: []string{
				"192.168.1.0/26 via 10.0.1.6 dev eth0",
				"192.168.2.0/26 via 10.0.2.7 dev rack1",
			},
			unroutable: []string{"192.168.3.0/26"},
		},
		{
			name: "v4 Never: on-link direct, off-link reported and not installed",
			in: Input{
				Pools:   []Pool{pool("192.168.0.0/16", api.EncapNever, "")},
				Uplink:  v4Uplink,
				Learned: []LearnedRoute{{pfx("192.168.1.0/26"), ip("10.0.1.6")}, {pfx("192.168.2.0/26"), ip("10.0.2.7")}},
			},
			routes:     []string{"192.168.1.0/26 via 10.0.1.6 dev eth0"},
			unroutable: []string{"192.168.2.0/26 via 10.0.2.7: next hop 10.0.2.7 is not on a local subnet of eth0"},
		},
		{
			name: "v4 Never, off-link next hop: left to the fabric unless a route of this node covers it, then via the gateway",
			in: Input{
				Pools:     []Pool{pool("192.168.0.0/16", api.EncapNever, "")},
				Uplink:    Uplink{Link: eth0, Addrs: []netip.Prefix{pfx("10.0.1.5/24")}, MTU: 1500, Gateways: []netip.Addr{ip("10.0.1.254")}},
				OwnBlocks: []netip.Prefix{pfx("192.168.0.64/26")},
				Learned: []LearnedRoute{
					{pfx("192.168.2.0/26"), ip("10.0.2.7")},   // the fabric has it: the default route takes it there
					{pfx("192.168.0.100/32"), ip("10.0.2.7")}, // borrowed from our block, hosted in another rack
					{pfx("192.168.1.0/26"), ip("10.0.1.6")},   // a block on link...
					{pfx("192.168.1.10/32"), ip("10.0.3.8")},  // ...with an address hosted in a third rack
					{pfx("fd10::1/128"), ip("fd00:9::1")},     // no IPv6 gateway: stays unroutable
				},
			},
			routes: []string{
				"blackhole 192.168.0.64/26",
				"192.168.0.100/32 via 10.0.1.254 dev eth0",
				"192.168.1.0/26 via 10.0.1.6 dev eth0",
				"192.168.1.10/32 via 10.0.1.254 dev eth0",
			},
			unroutable: []string{"192.168.2.0/26 via 10.0.2.7: next hop 10.0.2.7 is not on a local subnet", "fd10::1/128 via fd00:9::1"},
		},
		{
			name: "v4 own blocks are blackholes; a borrowed /32 of another node inside one is routed",
			in: Input{
				Pools:     []Pool{pool("192.168.0.0/16", api.EncapNever, "")},
				Uplink:    v4Uplink,
				OwnBlocks: []netip.Prefix{pfx("192.168.0.0/26"), pfx("192.168.0.64/26")},
				Learned: []LearnedRoute{
					{pfx("192.168.0.0/26"), ip("10.0.1.6")}, // our own block, echoed back: ours wins
					{pfx("192.168.0.9/32"), ip("10.0.1.6")},
				},
			},
			routes: []string{
				"blackhole 192.168.0.0/26",
				"192.168.0.9/32 via 10.0.1.6 dev eth0",
				"blackhole 192.168.0.64/26",
			},
		},
		{
			name: "v4 /32s of other nodes follow their pool's mode",
			in: Input{
				Pools:  []Pool{pool("192.168.0.0/16", api.EncapCrossSubnet, "")},
				Uplink: v4Uplink,
				Tunnel: tunl0,
				Learned: []LearnedRoute{
					{pfx("192.168.7.3/32"), ip("10.0.1.6")},
					{pfx("192.168.7.4/32"), ip("10.0.9.9")},
				},
			},
			routes: []string{
				"192.168.7.3/32 via 10.0.1.6 dev eth0",
				"192.168.7.4/32 via 10.0.9.9 dev tunl0 onlink",
			},
		},
		{
			name: "several pools with different modes at once; most specific pool decides",
			in: Input{
				Pools: []Pool{
					pool("192.168.0.0/16", api.EncapAlways, ""),
					pool("192.168.128.0/17", api.EncapNever, ""),
					pool("172.16.0.0/16", api.EncapCrossSubnet, ""),
				},
				Uplink: v4Uplink,
				Tunnel: tunl0,
				Learned: []LearnedRoute{
					{pfx("192.168.1.0/26"), ip("10.0.1.6")},
					{pfx("192.168.129.0/26"), ip("10.0.1.6")},
					{pfx("172.16.1.0/26"), ip("10.0.1.6")},
					{pfx("172.16.2.0/26"), ip("10.0.3.3")},
				},
			},
			routes: []string{
				"172.16.1.0/26 via 10.0.1.6 dev eth0",
				"172.16.2.0/26 via 10.0.3.3 dev tunl0 onlink",
				"192.168.1.0/26 via 10.0.1.6 dev tunl0 onlink",
				"192.168.129.0/26 via 10.0.1.6 dev eth0",
			},
		},
		{
			name: "no ipip in the kernel: IPIP pools reported with the reason, other pools still served",
			in: Input{
				Pools: []Pool{
					pool("192.168.0.0/16", api.EncapAlways, ""),
					pool("172.16.0.0/16", api.EncapNever, ""),
				},
				Uplink:        v4Uplink,
				TunnelProblem: ErrNoIPIP.Error(),
				Learned: []LearnedRoute{
					{pfx("192.168.1.0/26"), ip("10.0.1.6")},
					{pfx("172.16.1.0/26"), ip("10.0.1.6")},
				},
			},
			routes:     []string{"172.16.1.0/26 via 10.0.1.6 dev eth0"},
			unroutable: []string{"192.168.1.0/26 via 10.0.1.6: needs IPIP (ipipMode Always): kernel has no ipip support: load module ipip, or use ipipMode: Never"},
		},
		{
			name: "prefix outside every pool is treated as Never",
			in: Input{
				Uplink:  v4Uplink,
				Tunnel:  tunl0,
				Learned: []LearnedRoute{{pfx("203.0.113.0/24"), ip("10.0.1.1")}, {pfx("198.51.100.0/24"), ip("10.9.9.9")}},
			},
			routes:     []string{"203.0.113.0/24 via 10.0.1.1 dev eth0"},
			unroutable: []string{"198.51.100.0/24 via 10.9.9.9: next hop 10.9.9.9 is not on a local subnet"},
		},
		{
			name: "several next hops: the lowest usable one wins whatever the order",
			in: Input{
				Pools:  []Pool{pool("192.168.0.0/16", api.EncapNever, "")},
				Uplink: v4Uplink,
				Learned: []LearnedRoute{
					{pfx("192.168.1.0/26"), ip("10.0.1.9")},
					{pfx("192.168.1.0/26"), ip("10.0.0.1")}, // off link
					{pfx("192.168.1.0/26"), ip("10.0.1.7")},
				},
			},
			routes: []string{"192.168.1.0/26 via 10.0.1.7 dev eth0"},
		},
		{
			name: "bad next hops are reported",
			in: Input{
				Pools:  []Pool{pool("192.168.0.0/16", api.EncapAlways, "")},
				Uplink: v4Uplink,
				Tunnel: tunl0,
				Learned: []LearnedRoute{
					{pfx("192.168.1.0/26"), ip("10.0.1.5")},
					{pfx("192.168.2.0/26"), ip("fd00::1")},
				},
			},
			unroutable: []string{"is this node's own address", "is of the other address family"},
		},
		{
			name: "VXLAN is reported, not silently dropped; VXLAN CrossSubnet on link is direct",
			in: Input{
				Pools:  []Pool{pool("192.168.0.0/16", "", api.EncapCrossSubnet)},
				Uplink: v4Uplink,
				Learned: []LearnedRoute{
					{pfx("192.168.1.0/26"), ip("10.0.1.6")},
					{pfx("192.168.2.0/26"), ip("10.0.2.6")},
				},
			},
			routes:     []string{"192.168.1.0/26 via 10.0.1.6 dev eth0"},
			unroutable: []string{"needs VXLAN (vxlanMode CrossSubnet)"},
		},
		{
			name: "local pods get scope-link routes on their veth",
			in: Input{
				Uplink:    v4Uplink,
				LocalPods: []LocalPod{{Addr: ip("192.168.0.3"), Link: Link{Name: "rz1234", Index: 9}}},
			},
			routes: []string{"192.168.0.3/32 dev rz1234 scope link"},
		},
		// IPv6: IPIP does not apply (ipipMode is IPv4 only), so v6 prefixes
		// follow the Never rule even in a pool that says Always.
		{
			name: "v6 Never: on-link direct, off-link reported",
			in: Input{
				Pools:   []Pool{pool("fd10::/48", api.EncapNever, "")},
				Uplink:  v6Uplink,
				Learned: []LearnedRoute{{pfx("fd10:0:0:1::/122"), ip("fd00:1::6")}, {pfx("fd10:0:0:2::/122"), ip("fd00:2::6")}},
			},
			routes:     []string{"fd10:0:0:1::/122 via fd00:1::6 dev eth0"},
			unroutable: []string{"fd10:0:0:2::/122 via fd00:2::6: next hop fd00:2::6 is not on a local subnet"},
		},
		{
			name: "v6 ipipMode is ignored; own blocks blackholed; /128 of another node routed",
			in: Input{
				Pools:     []Pool{pool("fd10::/48", api.EncapAlways, "")},
				Uplink:    v6Uplink,
				Tunnel:    tunl0,
				OwnBlocks: []netip.Prefix{pfx("fd10::/122")},
				Learned:   []LearnedRoute{{pfx("fd10::7/128"), ip("fd00:1::6")}},
			},
			routes: []string{"blackhole fd10::/122", "fd10::7/128 via fd00:1::6 dev eth0"},
		},
		{
			name: "v6 several next hops: lowest usable wins",
			in: Input{
				Pools:   []Pool{pool("fd10::/48", api.EncapNever, "")},
				Uplink:  v6Uplink,
				Learned: []LearnedRoute{{pfx("fd10::40/122"), ip("fd00:1::9")}, {pfx("fd10::40/122"), ip("fd00:1::7")}},
			},
			routes: []string{"fd10::40/122 via fd00:1::7 dev eth0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := Desired(tt.in)
			if got := routeStrings(plan); !slices.Equal(got, tt.routes) {
				t.Errorf("routes:\n got %q\nwant %q", got, tt.routes)
			}
			got := unroutableStrings(plan)
			if len(got) != len(tt.unroutable) {
				t.Fatalf("unroutable: got %q, want %d entries matching %q", got, len(tt.unroutable), tt.unroutable)
			}
			for i, want := range tt.unroutable {
				if !strings.Contains(got[i], want) {
					t.Errorf("unroutable[%d] = %q, want it to contain %q", i, got[i], want)
				}
			}
			// Pure: the learned order must not matter.
			rev := tt.in
			rev.Learned = slices.Clone(tt.in.Learned)
			slices.Reverse(rev.Learned)
			if again := routeStrings(Desired(rev)); !slices.Equal(again, routeStrings(plan)) {
				t.Errorf("learned order changed the plan: %q vs %q", again, routeStrings(plan))
			}
		})
	}
}

// TestDesiredModeChange walks a pool through Always → CrossSubnet → Never
// (seed 004) and checks each plan holds only routes of the current mode.
func TestDesiredModeChange(t *testing.T) {
	in := Input{
		Uplink:  Uplink{Link: eth0, Addrs: []netip.Prefix{pfx("10.0.1.5/24")}},
		Tunnel:  tunl0,
		Learned: []LearnedRoute{{pfx("192.168.1.0/26"), ip("10.0.1.6")}, {pfx("192.168.2.0/26"), ip("10.0.2.7")}},
	}
	steps := []struct {
		mode   api.EncapMode
		routes []string
	}{
		{api.EncapAlways, []string{"192.168.1.0/26 via 10.0.1.6 dev tunl0 onlink", "192.168.2.0/26 via 10.0.2.7 dev tunl0 onlink"}},
		{api.EncapCrossSubnet, []string{"192.168.1.0/26 via 10.0.1.6 dev eth0", "192.168.2.0/26 via 10.0.2.7 dev tunl0 onlink"}},
		{api.EncapNever, []string{"192.168.1.0/26 via 10.0.1.6 dev eth0"}},
	}
	for _, s := range steps {
		in.Pools = []Pool{{Name: "default", CIDR: pfx("192.168.0.0/16"), IPIPMode: s.mode}}
		if got := routeStrings(Desired(in)); !slices.Equal(got, s.routes) {
			t.Errorf("mode %s:\n got %q\nwant %q", s.mode, got, s.routes)
		}
	}
}

func TestPodMTU(t *testing.T) {
	tests := []struct {
		name  string
		pools []Pool
		want  int
	}{
		{"no encapsulation", []Pool{{CIDR: pfx("10.0.0.0/16"), IPIPMode: api.EncapNever}}, 1500},
		{"IPIP Always", []Pool{{CIDR: pfx("10.0.0.0/16"), IPIPMode: api.EncapAlways}}, 1480},
		{"IPIP CrossSubnet", []Pool{{CIDR: pfx("10.0.0.0/16"), IPIPMode: api.EncapCrossSubnet}}, 1480},
		{"VXLAN", []Pool{{CIDR: pfx("10.0.0.0/16"), VXLANMode: api.EncapAlways}}, 1450},
		{"IPIP and VXLAN pools: the larger overhead", []Pool{
			{CIDR: pfx("10.0.0.0/16"), IPIPMode: api.EncapAlways},
			{CIDR: pfx("10.1.0.0/16"), VXLANMode: api.EncapCrossSubnet},
		}, 1450},
		{"v6 pool with ipipMode set: IPIP does not apply", []Pool{{CIDR: pfx("fd10::/48"), IPIPMode: api.EncapAlways}}, 1500},
		{"v6 VXLAN: over the IPv6 underlay, 70", []Pool{{CIDR: pfx("fd10::/48"), VXLANMode: api.EncapAlways}}, 1430},
		{"v4 and v6 VXLAN pools: one pod MTU for both", []Pool{
			{CIDR: pfx("10.0.0.0/16"), VXLANMode: api.EncapAlways},
			{CIDR: pfx("fd10::/48"), VXLANMode: api.EncapCrossSubnet},
		}, 1430},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PodMTU(1500, tt.pools); got != tt.want {
				t.Errorf("PodMTU(1500) = %d, want %d", got, tt.want)
			}
		})
	}
	if got := TunnelMTU(9000); got != 8980 {
		t.Errorf("TunnelMTU(9000) = %d, want 8980", got)
	}
	if NeedsIPIP([]Pool{{CIDR: pfx("fd10::/48"), IPIPMode: api.EncapAlways}}) {
		t.Error("NeedsIPIP: a v6 pool cannot need IPIP")
	}
	if !NeedsIPIP([]Pool{{CIDR: pfx("10.0.0.0/16"), IPIPMode: api.EncapCrossSubnet}}) {
		t.Error("NeedsIPIP: a v4 CrossSubnet pool needs tunl0")
	}
}

// This file is over 600 lines on purpose: it holds the real-kernel VXLAN
// tests (device, traffic in both modes and families, repair, restart,
// removal) with the small lab they share; split, each part would need the
// lab's helpers exported across files anyway.

package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/rhizome-net/rhizome/api"
)

// vxlanDevice reads the family's VXLAN device in ns.
func vxlanDevice(t *testing.T, ns netns.NsHandle, v6 bool) *netlink.Vxlan {
	t.Helper()
	l, err := nsHandle(t, ns).LinkByName(VXLANDeviceName(v6))
	if err != nil {
		t.Fatalf("%s: %v", VXLANDeviceName(v6), err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("%s is a %s", VXLANDeviceName(v6), l.Type())
	}
	return vx
}

// checkVXLANDevice asserts what an operator would check with `ip -d link
// show vxlan.rhizome` and `ip addr show`.
func checkVXLANDevice(t *testing.T, ns netns.NsHandle, v6 bool, local netip.Addr, parent, mtu int, addr netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	vx := vxlanDevice(t, ns, v6)
	if vx.VxlanId != VXLANVNI || vx.Port != VXLANPort || !vx.SrcAddr.Equal(local.AsSlice()) || vx.Learning || vx.VtepDevIndex != parent {
		t.Errorf("%s: vni %d port %d local %s learning %v dev %d; want vni 4096 port 4789 local %s nolearning dev %d",
			vx.Name, vx.VxlanId, vx.Port, vx.SrcAddr, vx.Learning, vx.VtepDevIndex, local, parent)
	}
	if vx.MTU != mtu || vx.Flags&net.FlagUp == 0 || vx.HardwareAddr.String() != mac.String() {
		t.Errorf("%s: mtu %d up %v mac %s; want mtu %d, up, mac %s", vx.Name, vx.MTU, vx.Flags&net.FlagUp != 0, vx.HardwareAddr, mtu, mac)
	}
	fam, bits := netlink.FAMILY_V4, 32
	if v6 {
		fam, bits = netlink.FAMILY_V6, 128
	}
	addrs, err := nsHandle(t, ns).AddrList(vx, fam)
	must(t, err)
	var got []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			got = append(got, a.IPNet.String())
		}
	}
	if want := netip.PrefixFrom(addr, bits).String(); !slices.Equal(got, []string{want}) {
		t.Errorf("%s addresses %q, want only %s", vx.Name, got, want)
	}
}

func TestPrivilegedVXLANDevice(t *testing.T) {
	requireRoot(t)
	for _, fam := range []struct {
		name          string
		v6            bool
		uplink, local string
		addr, other   string
		mtu           int
		wantMTU       int
		deviceName    string
	}{
		{"v4", false, "10.9.0.2/24", "10.9.0.2", "192.168.5.1", "192.168.5.2", 9000, 8950, "vxlan.rhizome"},
		{"v6", true, "fd00:9::2/64", "fd00:9::2", "fd10::1", "fd10::2", 9000, 8930, "vxlan6.rhizome"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			ns, peer := newNS(t), newNS(t)
			eth0, _ := veth(t, ns, "eth0", peer, "peer", fam.mtu)
			addAddr(t, ns, "eth0", fam.uplink)
			parent := eth0.Attrs().Index
			m, err := NewVXLANManager(ns)
			must(t, err)
			t.Cleanup(m.Close)
			h := nsHandle(t, ns)
			local, addr := ip(fam.local), ip(fam.addr)
			cfg := VXLANConfig{Local: local, Parent: parent, MTU: VXLANMTU(fam.mtu, fam.v6), Addr: addr, Node: "rack0-node1"}

			dev, err := m.Ensure(cfg)
			must(t, err)
			mac := VXLANMAC("rack0-node1", fam.v6)
			if dev.Name != fam.deviceName || dev.MAC.String() != mac.String() {
				t.Fatalf("Ensure = %+v, want device %s with MAC %s", dev, fam.deviceName, mac)
			}
			checkVXLANDevice(t, ns, fam.v6, local, parent, fam.wantMTU, addr, mac)

			t.Run("second Ensure writes nothing", func(t *testing.T) {
				// The kernel announces an IPv6 address (and the link-local
				// one it adds) from a work queue after the first Ensure
				// returned: let that pass first.
				time.Sleep(300 * time.Millisecond)
				links := make(chan netlink.LinkUpdate, 16)
				addrs := make(chan netlink.AddrUpdate, 16)
				done := make(chan struct{})
				defer close(done)
				must(t, netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: &ns}))
				must(t, netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: &ns}))
				again, err := m.Ensure(cfg)
				must(t, err)
				if again.Index != dev.Index || again.MAC.String() != dev.MAC.String() {
					t.Errorf("second Ensure = %+v, want %+v", again, dev)
				}
				select {
				case u := <-links:
					t.Errorf("second Ensure changed the link: %+v", u.Attrs())
				case u := <-addrs:
					if !u.LinkAddress.IP.IsLinkLocalUnicast() {
						t.Errorf("second Ensure changed an address: %+v", u)
					}
				case <-time.After(200 * time.Millisecond):
				}
			})

			t.Run("wrong MTU, address, state and MAC are fixed in place", func(t *testing.T) {
				l, err := h.LinkByName(fam.deviceName)
				must(t, err)
				must(t, h.LinkSetDown(l)) // on IPv6 this already drops the addresses
				must(t, h.LinkSetMTU(l, 1280))
				must(t, h.LinkSetHardwareAddr(l, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}))
				if err := h.AddrDel(l, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(addr, addr.BitLen()))}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
					t.Fatal(err)
				}
				addAddr(t, ns, fam.deviceName, netip.PrefixFrom(ip(fam.other), addr.BitLen()).String())
				// The record's MAC is the one to have (without it, Ensure
				// keeps the device's: see the next case).
				c := cfg
				c.MAC = mac
				again, err := m.Ensure(c)
				must(t, err)
				if again.Index != dev.Index {
					t.Errorf("device recreated (index %d, was %d); it could be fixed in place", again.Index, dev.Index)
				}
				checkVXLANDevice(t, ns, fam.v6, local, parent, fam.wantMTU, addr, mac)
			})

			t.Run("wrong tunnel parameters: recreated, keeping the MAC", func(t *testing.T) {
				must(t, m.Remove(fam.v6))
				kept := net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
				must(t, h.LinkAdd(&netlink.Vxlan{
					LinkAttrs: netlink.LinkAttrs{Name: fam.deviceName, HardwareAddr: kept},
					VxlanId:   42, Port: 8472, Learning: true, SrcAddr: local.AsSlice(),
				}))
				again, err := m.Ensure(cfg)
				must(t, err)
				if again.MAC.String() != kept.String() {
					t.Errorf("MAC after recreating = %s, want the old device's %s", again.MAC, kept)
				}
				checkVXLANDevice(t, ns, fam.v6, local, parent, fam.wantMTU, addr, kept)
			})

			t.Run("the record's MAC wins, a new tunnel address replaces the old", func(t *testing.T) {
				c := cfg
				c.MAC, c.Addr = mac, ip(fam.other)
				again, err := m.Ensure(c)
				must(t, err)
				if again.MAC.String() != mac.String() {
					t.Errorf("MAC = %s, want the record's %s", again.MAC, mac)
				}
				checkVXLANDevice(t, ns, fam.v6, local, parent, fam.wantMTU, ip(fam.other), mac)
			})

			t.Run("Remove deletes the device, twice is fine", func(t *testing.T) {
				must(t, m.Remove(fam.v6))
				if _, err := h.LinkByName(fam.deviceName); err == nil {
					t.Error("device still there after Remove")
				}
				must(t, m.Remove(fam.v6))
			})

			t.Run("a foreign device with the name is refused", func(t *testing.T) {
				must(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fam.deviceName}}))
				_, err := m.Ensure(cfg)
				if err == nil || !strings.Contains(err.Error(), "is of type bridge, not vxlan") {
					t.Errorf("Ensure over a bridge device = %v, want a type error", err)
				}
				if err := m.Remove(fam.v6); err == nil {
					t.Error("Remove deleted a device that is not rhizome's")
				}
			})
		})
	}
}

// vxlanLab is the bridge lab (node1 and node2 on one subnet, node3 behind
// a router) with a VXLAN device on every node, and the routes, neighbour
// and forwarding entries of VXLANPlan applied by the two reconcilers.
type vxlanLab struct {
	*bridgeLab
	pools []Pool
	devs  map[*labNode]VXLANLink
	neigh map[*labNode]*NeighborReconciler
}

func newVXLANLab(t *testing.T, mode api.EncapMode) *vxlanLab {
	t.Helper()
	l := &vxlanLab{
		bridgeLab: newBridgeLab(t),
		pools:     []Pool{{Name: "vx", CIDR: pfx("192.168.0.0/16"), IPIPMode: api.EncapNever, VXLANMode: mode}},
		devs:      map[*labNode]VXLANLink{},
		neigh:     map[*labNode]*NeighborReconciler{},
	}
	for _, n := range l.nodes {
		m, err := NewVXLANManager(n.ns)
		must(t, err)
		t.Cleanup(m.Close)
		up := n.uplink(t)
		dev, err := m.Ensure(VXLANConfig{
			Local: n.addr.Addr(), Parent: up.Index, MTU: VXLANMTU(up.MTU, false), Addr: n.tunnelAddr(), Node: n.name,
		})
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		l.devs[n] = dev
	}
	for _, n := range l.nodes {
		vx := l.plan(t, n)
		n.start(t, l.routes(t, n, vx))
		l.startNeighbors(t, n, vx)
	}
	for _, n := range l.nodes {
		l.waitSynced(t, n)
	}
	return l
}

func (n *labNode) tunnelAddr() netip.Addr { return n.block.Addr().Next() }

// records are the node records as the agent would read them from the
// datastore.
func (l *vxlanLab) records() []VXLANNode {
	var out []VXLANNode
	for _, n := range l.nodes {
		out = append(out, VXLANNode{
			Name:   n.name,
			V4:     VXLANEndpoint{Addr: n.addr.Addr(), TunnelAddr: n.tunnelAddr(), MAC: l.devs[n].MAC},
			Blocks: []netip.Prefix{n.block},
		})
	}
	return out
}

func (l *vxlanLab) plan(t *testing.T, n *labNode) VXLANRoutes {
	t.Helper()
	return VXLANPlan(VXLANInput{Self: n.name, Nodes: l.records(), Pools: l.pools, Uplink: n.uplink(t), Device: l.devs[n].Link})
}

// routes is what the agent hands the route reconciler: Desired with the
// VXLAN routes merged in (no BGP: nothing learned).
func (l *vxlanLab) routes(t *testing.T, n *labNode, vx VXLANRoutes) []Route {
	t.Helper()
	plan := Desired(Input{
		Pools: l.pools, Uplink: n.uplink(t), OwnBlocks: []netip.Prefix{n.block},
		LocalPods: []LocalPod{{Addr: n.pod.addr, Link: n.pod.host}}, VXLAN: vx.Routes,
	})
	if len(plan.Unroutable) > 0 || len(vx.Unroutable) > 0 {
		t.Fatalf("%s: unroutable %+v %+v", n.name, plan.Unroutable, vx.Unroutable)
	}
	return plan.Routes
}

func (l *vxlanLab) startNeighbors(t *testing.T, n *labNode, vx VXLANRoutes) {
	t.Helper()
	rec, err := NewNeighborReconciler(n.ns, WithLogger(testLogger(t, n.name)), WithResync(time.Hour))
	must(t, err)
	rec.Set(vx.Neighbors, vx.FDB)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := rec.Run(ctx); err != nil {
			t.Errorf("%s neighbour reconciler: %v", n.name, err)
		}
	}()
	l.neigh[n] = rec
	t.Cleanup(func() {
		cancel()
		<-done
		rec.Close()
	})
}

func (l *vxlanLab) waitSynced(t *testing.T, n *labNode) {
	t.Helper()
	vx := l.plan(t, n)
	waitSynced(t, n, len(l.routes(t, n, vx)))
	want := len(vx.Neighbors) + len(vx.FDB)
	if !eventually(3*time.Second, func() bool {
		s := l.neigh[n].Status()
		return !s.Time.IsZero() && s.Owned == want && len(s.Errors) == 0
	}) {
		t.Fatalf("%s: neighbour reconciler not in sync (want %d entries): %+v", n.name, want, l.neigh[n].Status())
	}
}

// vxlanPackets returns the VXLAN device's transmitted and received packets.
func vxlanPackets(t *testing.T, n *labNode) (tx, rx uint64) {
	t.Helper()
	s := vxlanDevice(t, n.ns, false).Statistics
	return s.TxPackets, s.RxPackets
}

// pingVia pings a's pod from b's pod five times and checks on the VXLAN
// devices' counters whether the packets were encapsulated (want) or not.
func pingVia(t *testing.T, a, b *labNode, encapsulated bool) {
	t.Helper()
	aTx, _ := vxlanPackets(t, a)
	_, bRx := vxlanPackets(t, b)
	p := newPinger(t, a.pod.ns, b.pod.addr)
	const count = 5
	for seq := uint16(1); seq <= count; seq++ {
		if err := p.ping(seq, 2*time.Second); err != nil {
			t.Fatalf("%s pod -> %s pod: %v", a.name, b.name, err)
		}
	}
	aTx2, _ := vxlanPackets(t, a)
	_, bRx2 := vxlanPackets(t, b)
	sent, got := aTx2-aTx, bRx2-bRx
	if encapsulated && (sent < count || got < count) {
		t.Errorf("%s -> %s: %s sent %d, %s received %d through VXLAN; want >= %d each", a.name, b.name, a.name, sent, b.name, got, count)
	}
	if !encapsulated && (sent != 0 || got != 0) {
		t.Errorf("%s -> %s: %d packets sent, %d received through VXLAN; want none (same subnet, unencapsulated)", a.name, b.name, sent, got)
	}
	t.Logf("%s -> %s: VXLAN tx %d rx %d", a.name, b.name, sent, got)
}

func TestPrivilegedVXLANAlways(t *testing.T) {
	l := newVXLANLab(t, api.EncapAlways)
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	want := []string{
		"192.168.1.2/32 dev rzpod0 proto 94 scope link",
		"192.168.2.0/26 via 192.168.2.1 dev vxlan.rhizome proto 94 onlink",
		"192.168.3.0/26 via 192.168.3.1 dev vxlan.rhizome proto 94 onlink",
		"blackhole 192.168.1.0/26 proto 94",
	}
	if got := ownedRoutes(t, n1.ns); !slices.Equal(got, want) {
		t.Errorf("node1 routes:\n got %q\nwant %q", got, want)
	}
	logIPRoute(t, "node1 (VXLAN Always)", n1.ns)
	for _, a := range l.nodes {
		for _, b := range l.nodes {
			if a != b {
				pingVia(t, a, b, true)
			}
		}
	}
	for _, pair := range [][2]*labNode{{n1, n2}, {n1, n3}, {n3, n2}} {
		if src, err := tcpCheck(t, pair[0].pod.ns, pair[1].pod.ns, pair[1].pod.addr); err != nil || src != pair[0].pod.addr {
			t.Errorf("TCP %s pod -> %s pod: source %s, err %v; want the pod's own address", pair[0].name, pair[1].name, src, err)
		}
	}
}

func TestPrivilegedVXLANCrossSubnet(t *testing.T) {
	l := newVXLANLab(t, api.EncapCrossSubnet)
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	want := []string{
		"192.168.1.2/32 dev rzpod0 proto 94 scope link",
		"192.168.2.0/26 via 10.0.1.12 dev eth0 proto 94",
		"192.168.3.0/26 via 192.168.3.1 dev vxlan.rhizome proto 94 onlink",
		"blackhole 192.168.1.0/26 proto 94",
	}
	if got := ownedRoutes(t, n1.ns); !slices.Equal(got, want) {
		t.Errorf("node1 routes:\n got %q\nwant %q", got, want)
	}
	logIPRoute(t, "node1 (VXLAN CrossSubnet)", n1.ns)
	pingVia(t, n1, n2, false)
	pingVia(t, n2, n1, false)
	pingVia(t, n1, n3, true)
	pingVia(t, n3, n2, true)
	if _, err := tcpCheck(t, n2.pod.ns, n3.pod.ns, n3.pod.addr); err != nil {
		t.Error(err)
	}
}

// neighborOf finds node1's permanent neighbour entry for addr, or its
// forwarding entry for mac (bridge), on vxlan.rhizome.
func findNeigh(t *testing.T, ns netns.NsHandle, family int, match func(netlink.Neigh) bool) *netlink.Neigh {
	t.Helper()
	h := nsHandle(t, ns)
	l, err := h.LinkByName(VXLANDevice)
	must(t, err)
	ks, err := h.NeighList(l.Attrs().Index, family)
	must(t, err)
	for _, k := range ks {
		if k.State&netlink.NUD_PERMANENT != 0 && match(k) {
			return &k
		}
	}
	return nil
}

func TestPrivilegedVXLANRepairRestartAndRemoval(t *testing.T) {
	l := newVXLANLab(t, api.EncapAlways)
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	h := nsHandle(t, n1.ns)
	neigh2 := func() *netlink.Neigh {
		return findNeigh(t, n1.ns, unix.AF_INET, func(k netlink.Neigh) bool { return k.IP.Equal(n2.tunnelAddr().AsSlice()) })
	}
	fdb2 := func() *netlink.Neigh {
		return findNeigh(t, n1.ns, unix.AF_BRIDGE, func(k netlink.Neigh) bool {
			return k.HardwareAddr.String() == l.devs[n2].MAC.String() && k.IP.Equal(n2.addr.Addr().AsSlice())
		})
	}
	route2 := func() *netlink.Route {
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: prefixToIPNet(n2.block), Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		must(t, err)
		for _, r := range rs {
			if r.Protocol == api.RouteProtocol && r.LinkIndex == l.devs[n1].Index {
				return &r
			}
		}
		return nil
	}
	for _, c := range []struct {
		what   string
		find   func() bool
		remove func() error
	}{
		{"neighbour entry", func() bool { return neigh2() != nil }, func() error { return h.NeighDel(neigh2()) }},
		{"forwarding entry", func() bool { return fdb2() != nil }, func() error { return h.NeighDel(fdb2()) }},
		{"route", func() bool { return route2() != nil }, func() error { return h.RouteDel(route2()) }},
		{"neighbour entry changed to another MAC", func() bool {
			k := neigh2()
			return k != nil && k.HardwareAddr.String() == l.devs[n2].MAC.String()
		}, func() error {
			return h.NeighSet(neighbor(l.devs[n1].Index, n2.tunnelAddr(), net.HardwareAddr{2, 0, 0, 0, 0, 1}))
		}},
	} {
		t.Run(c.what+" deleted by hand comes back", func(t *testing.T) {
			if !c.find() {
				t.Fatalf("%s missing before the test", c.what)
			}
			must(t, c.remove())
			start := time.Now()
			if !eventually(2*time.Second, c.find) {
				t.Fatalf("%s not repaired within 2s", c.what)
			}
			t.Logf("%s repaired in %s", c.what, time.Since(start).Round(time.Millisecond))
			pingVia(t, n1, n2, true)
		})
	}

	t.Run("a stale entry added by hand goes", func(t *testing.T) {
		stale := netip.MustParseAddr("192.168.9.1")
		must(t, h.NeighSet(neighbor(l.devs[n1].Index, stale, net.HardwareAddr{2, 0, 0, 0, 0, 9})))
		must(t, h.NeighSet(fdbNeigh(l.devs[n1].Index, net.HardwareAddr{2, 0, 0, 0, 0, 9}, netip.MustParseAddr("10.0.1.99"))))
		if !eventually(2*time.Second, func() bool {
			return findNeigh(t, n1.ns, unix.AF_INET, func(k netlink.Neigh) bool { return k.IP.Equal(stale.AsSlice()) }) == nil &&
				findNeigh(t, n1.ns, unix.AF_BRIDGE, func(k netlink.Neigh) bool { return k.HardwareAddr[5] == 9 }) == nil
		}) {
			t.Error("stale neighbour or forwarding entry not removed within 2s")
		}
	})

	t.Run("a restarted reconciler adopts everything and writes nothing", func(t *testing.T) {
		rec, err := NewNeighborReconciler(n1.ns, WithLogger(testLogger(t, "node1-restarted")))
		must(t, err)
		defer rec.Close()
		vx := l.plan(t, n1)
		rec.Set(vx.Neighbors, vx.FDB)
		res, err := rec.Sync()
		must(t, err)
		if res.Added+res.Replaced+res.Deleted != 0 || res.Owned != 4 || len(res.Errors) != 0 {
			t.Errorf("first sync after restart: %+v; want 4 entries in place and no writes", res)
		}
	})

	t.Run("Never removes the VXLAN routes and entries, then the device goes", func(t *testing.T) {
		l.pools[0].VXLANMode = api.EncapNever
		vx := l.plan(t, n1)
		n1.rec.Set(l.routes(t, n1, vx))
		l.neigh[n1].Set(vx.Neighbors, vx.FDB)
		local := []string{"192.168.1.2/32 dev rzpod0 proto 94 scope link", "blackhole 192.168.1.0/26 proto 94"}
		if !eventually(2*time.Second, func() bool { return slices.Equal(ownedRoutes(t, n1.ns), local) }) {
			t.Errorf("routes after Never: %q, want only %q", ownedRoutes(t, n1.ns), local)
		}
		if !eventually(2*time.Second, func() bool { return neigh2() == nil && fdb2() == nil }) {
			t.Error("neighbour or forwarding entry left after Never")
		}
		if NeedsVXLAN(l.pools, false) {
			t.Fatal("NeedsVXLAN with only a Never pool")
		}
		m, err := NewVXLANManager(n1.ns)
		must(t, err)
		defer m.Close()
		must(t, m.Remove(false))
		if _, err := h.LinkByName(VXLANDevice); err == nil {
			t.Error("vxlan.rhizome still there")
		}
		_ = n3
	})
}

// v6Node is the IPv6 side of a lab node: its uplink address, block, pod
// address and VXLAN device.
type v6Node struct {
	*labNode
	addr  netip.Prefix
	block netip.Prefix
	pod   netip.Addr
	dev   VXLANLink
	neigh *NeighborReconciler
}

// addrNoDAD adds an IPv6 address that is usable at once (no duplicate
// address detection: the namespaces are the test's own).
func addrNoDAD(t *testing.T, ns netns.NsHandle, dev, cidr string) {
	t.Helper()
	h := nsHandle(t, ns)
	l, err := h.LinkByName(dev)
	must(t, err)
	a, err := netlink.ParseAddr(cidr)
	must(t, err)
	a.Flags = unix.IFA_F_NODAD
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, dev, err)
	}
}

// newVXLANLab6 gives the bridge lab IPv6: fd00:1::/64 for node1 and
// node2, fd00:2::/64 for node3 behind the router, blocks
// fd10:0:0:<n>::/122 with a pod each (default route via fe80::1 on the
// host side of its veth), and vxlan6.rhizome on every node with the plan
// of a pool fd10::/48 in mode applied by the two reconcilers.
func newVXLANLab6(t *testing.T, mode api.EncapMode) []*v6Node {
	t.Helper()
	l := newBridgeLab(t)
	must(t, WriteSysctl(l.router, "net/ipv6/conf/all/forwarding", "1"))
	addrNoDAD(t, l.router, "r1", "fd00:1::1/64")
	addrNoDAD(t, l.router, "r2", "fd00:2::1/64")
	pools := []Pool{{Name: "vx6", CIDR: pfx("fd10::/48"), IPIPMode: api.EncapNever, VXLANMode: mode}}
	var nodes []*v6Node
	for i, n := range l.nodes {
		num := i + 1
		subnet := 1
		if num == 3 {
			subnet = 2
		}
		v := &v6Node{
			labNode: n,
			addr:    pfx(fmt.Sprintf("fd00:%d::1%d/64", subnet, num)),
			block:   pfx(fmt.Sprintf("fd10:0:0:%d::/122", num)),
		}
		v.pod = v.block.Addr().Next().Next()
		addrNoDAD(t, n.ns, "eth0", v.addr.String())
		other := "fd00:2::/64"
		if subnet == 2 {
			other = "fd00:1::/64"
		}
		addStatic(t, n.ns, other, fmt.Sprintf("fd00:%d::1", subnet), "eth0")
		addrNoDAD(t, n.ns, "rzpod0", "fe80::1/64")
		addrNoDAD(t, n.pod.ns, "eth0", v.pod.String()+"/128")
		addStatic(t, n.pod.ns, "::/0", "fe80::1", "eth0")
		m, err := NewVXLANManager(n.ns)
		must(t, err)
		t.Cleanup(m.Close)
		v.dev, err = m.Ensure(VXLANConfig{Local: v.addr.Addr(), Parent: n.uplink(t).Index, MTU: VXLANMTU(1500, true),
			Addr: v.block.Addr().Next(), Node: n.name})
		must(t, err)
		nodes = append(nodes, v)
	}
	// A node or router forwarding a packet from another source solicits
	// its next hop from its link-local address, which the kernel only uses
	// once duplicate address detection let it go.
	spaces := []netns.NsHandle{l.router}
	for _, n := range l.nodes {
		spaces = append(spaces, n.ns, n.pod.ns)
	}
	for _, ns := range spaces {
		waitNoTentative(t, ns)
	}
	var records []VXLANNode
	for _, v := range nodes {
		records = append(records, VXLANNode{Name: v.name, V6: VXLANEndpoint{Addr: v.addr.Addr(), TunnelAddr: v.block.Addr().Next(), MAC: v.dev.MAC},
			Blocks: []netip.Prefix{v.block}})
	}
	for _, v := range nodes {
		up := v.uplink(t)
		vx := VXLANPlan(VXLANInput{Self: v.name, Nodes: records, Pools: pools, Uplink: up, DeviceV6: v.dev.Link})
		plan := Desired(Input{Pools: pools, Uplink: up, OwnBlocks: []netip.Prefix{v.block},
			LocalPods: []LocalPod{{Addr: v.pod, Link: v.labNode.pod.host}}, VXLAN: vx.Routes})
		if len(plan.Unroutable) > 0 || len(vx.Unroutable) > 0 {
			t.Fatalf("%s: unroutable %+v %+v", v.name, plan.Unroutable, vx.Unroutable)
		}
		v.start(t, plan.Routes)
		rec, err := NewNeighborReconciler(v.ns, WithLogger(testLogger(t, v.name)))
		must(t, err)
		t.Cleanup(rec.Close)
		rec.Set(vx.Neighbors, vx.FDB)
		res, err := rec.Sync()
		must(t, err)
		if len(res.Errors) > 0 || res.Owned != len(vx.Neighbors)+len(vx.FDB) {
			t.Fatalf("%s: neighbour sync %+v", v.name, res)
		}
		v.neigh = rec
		waitSynced(t, v.labNode, len(plan.Routes))
	}
	// The kernel reports IPv6 routes and entries as they were written:
	// a full sync after the install finds everything in place.
	for _, v := range nodes {
		r, err := v.rec.Sync()
		must(t, err)
		nb, err := v.neigh.Sync()
		must(t, err)
		if w := r.Added + r.Replaced + r.Deleted + nb.Added + nb.Replaced + nb.Deleted; w != 0 {
			t.Errorf("%s: a full sync after the install wrote %d times (routes %+v, entries %+v)", v.name, w, r, nb)
		}
	}
	return nodes
}

func vxlan6Packets(t *testing.T, n *v6Node) uint64 {
	t.Helper()
	return vxlanDevice(t, n.ns, true).Statistics.TxPackets
}

// tcpVia6 connects a's pod to b's pod over IPv6 and checks on a's
// vxlan6.rhizome counter whether the packets were encapsulated.
func tcpVia6(t *testing.T, a, b *v6Node, encapsulated bool) {
	t.Helper()
	before := vxlan6Packets(t, a)
	src, err := tcpCheck(t, a.labNode.pod.ns, b.labNode.pod.ns, b.pod)
	if err != nil || src != a.pod {
		t.Fatalf("TCP over IPv6 %s pod -> %s pod: source %s, err %v; want the pod's own %s", a.name, b.name, src, err, a.pod)
	}
	sent := vxlan6Packets(t, a) - before
	if encapsulated != (sent > 0) {
		t.Errorf("%s -> %s over IPv6: %d packets through %s; want encapsulated=%v", a.name, b.name, sent, VXLANDeviceV6, encapsulated)
	}
	t.Logf("%s -> %s over IPv6: %s tx %d", a.name, b.name, VXLANDeviceV6, sent)
}

func TestPrivilegedVXLANIPv6(t *testing.T) {
	t.Run("Always", func(t *testing.T) {
		n := newVXLANLab6(t, api.EncapAlways)
		tcpVia6(t, n[0], n[1], true)
		tcpVia6(t, n[0], n[2], true)
		tcpVia6(t, n[2], n[1], true)
	})
	t.Run("CrossSubnet", func(t *testing.T) {
		n := newVXLANLab6(t, api.EncapCrossSubnet)
		tcpVia6(t, n[0], n[1], false)
		tcpVia6(t, n[1], n[0], false)
		tcpVia6(t, n[0], n[2], true)
	})
}

// waitNoTentative waits until no IPv6 address in ns is still tentative.
func waitNoTentative(t *testing.T, ns netns.NsHandle) {
	t.Helper()
	h := nsHandle(t, ns)
	if !eventually(5*time.Second, func() bool {
		addrs, err := h.AddrList(nil, netlink.FAMILY_V6)
		must(t, err)
		return !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.Flags&unix.IFA_F_TENTATIVE != 0 })
	}) {
		t.Fatal("IPv6 addresses still tentative after 5s")
	}
}

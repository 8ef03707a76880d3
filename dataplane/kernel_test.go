package dataplane

import (
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
)

// TestKernel... tests need a kernel with the ipip module. The CI machine's
// kernel has none: `make test-kernel` runs them under a qemu-booted Debian
// kernel (docs/design.md §9) through a `go test -exec` wrapper. They use netlink
// only (no `ip`, no iptables), since the guest is busybox and a static test
// binary. On a kernel without ipip they skip with that reason, and
// TestPrivilegedNoIPIPError covers what the agent does there.

func requireIPIP(t *testing.T) {
	t.Helper()
	requireRoot(t)
	if !ipipAvailable(t) {
		t.Skip("kernel has no ipip support (load module ipip); run these with `make test-kernel`, which boots a kernel that has it")
	}
}

// ensureTunnel brings up tunl0 on n with the uplink MTU − 20 and the
// node's tunnel address (the first address of its block), and checks both.
func ensureTunnel(t *testing.T, n *labNode) Link {
	t.Helper()
	m, err := NewTunnelManager(n.ns)
	must(t, err)
	t.Cleanup(m.Close)
	up := n.uplink(t)
	addr := n.block.Addr().Next()
	tun, err := m.Ensure(TunnelMTU(up.MTU), addr)
	if err != nil {
		t.Fatalf("%s: ensure tunl0: %v", n.name, err)
	}
	// Ensure is idempotent: a second call changes nothing.
	if again, err := m.Ensure(TunnelMTU(up.MTU), addr); err != nil || again != tun {
		t.Fatalf("%s: second Ensure = %+v, %v; want %+v", n.name, again, err, tun)
	}
	h := nsHandle(t, n.ns)
	l, err := h.LinkByName(TunnelDevice)
	must(t, err)
	if l.Attrs().MTU != up.MTU-20 || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: tunl0 MTU %d up=%v; want %d and up", n.name, l.Attrs().MTU, l.Attrs().Flags&net.FlagUp != 0, up.MTU-20)
	}
	addrs, err := h.AddrList(l, 2 /* AF_INET */)
	must(t, err)
	if len(addrs) != 1 || addrs[0].IPNet.String() != addr.String()+"/32" {
		t.Errorf("%s: tunl0 addresses %v, want only %s/32", n.name, addrs, addr)
	}
	return tun
}

// tunnelPackets returns tunl0's transmitted and received packet counters.
func tunnelPackets(t *testing.T, n *labNode) (tx, rx uint64) {
	t.Helper()
	l, err := nsHandle(t, n.ns).LinkByName(TunnelDevice)
	must(t, err)
	s := l.Attrs().Statistics
	return s.TxPackets, s.RxPackets
}

// pingThroughTunnel pings from a's pod to b's pod and checks that the
// packets went through tunl0 on both ends (IPIP encapsulation).
func pingThroughTunnel(t *testing.T, a, b *labNode) {
	t.Helper()
	aTx, _ := tunnelPackets(t, a)
	_, bRx := tunnelPackets(t, b)
	p := newPinger(t, a.pod.ns, b.pod.addr)
	const count = 5
	for seq := uint16(1); seq <= count; seq++ {
		if err := p.ping(seq, 2*time.Second); err != nil {
			t.Fatalf("%s pod -> %s pod: %v", a.name, b.name, err)
		}
	}
	aTx2, _ := tunnelPackets(t, a)
	_, bRx2 := tunnelPackets(t, b)
	if aTx2-aTx < count || bRx2-bRx < count {
		t.Errorf("tunl0 counters: %s sent %d, %s received %d through the tunnel; want >= %d each (not encapsulated?)",
			a.name, aTx2-aTx, b.name, bRx2-bRx, count)
	}
	if _, err := tcpCheck(t, a.pod.ns, b.pod.ns, b.pod.addr); err != nil {
		t.Errorf("TCP %s pod -> %s pod: %v", a.name, b.name, err)
	}
}

func TestKernelIPIPAlways(t *testing.T) {
	requireIPIP(t)
	n1, n2 := newLabNodePair(t, "10.0.1.11/24", "192.168.1.0/26", "10.0.1.12/24", "192.168.2.0/26")
	nodes := []*labNode{n1, n2}
	pools := pools1(api.EncapAlways)
	tunnels := map[*labNode]Link{}
	for _, n := range nodes {
		tunnels[n] = ensureTunnel(t, n)
		plan := Desired(n.input(t, nodes, pools, tunnels[n], ""))
		n.start(t, plan.Routes)
		waitSynced(t, n, len(plan.Routes))
	}
	if got, want := ownedRoutes(t, n1.ns), "192.168.2.0/26 via 10.0.1.12 dev tunl0 proto 94 onlink"; !slices.Contains(got, want) {
		t.Fatalf("node1 routes %q lack %q", got, want)
	}
	pingThroughTunnel(t, n1, n2)
	pingThroughTunnel(t, n2, n1)

	// Seed 004: Always → CrossSubnet → Never. The nodes share a subnet, so
	// from CrossSubnet on the route is direct and no tunnel route remains.
	for _, mode := range []api.EncapMode{api.EncapCrossSubnet, api.EncapNever} {
		for _, n := range nodes {
			n.rec.Set(Desired(n.input(t, nodes, pools1(mode), tunnels[n], "")).Routes)
		}
		want := []string{
			"192.168.1.2/32 dev rzpod0 proto 94 scope link",
			"192.168.2.0/26 via 10.0.1.12 dev eth0 proto 94",
			"blackhole 192.168.1.0/26 proto 94",
		}
		if !eventually(time.Second, func() bool { return slices.Equal(ownedRoutes(t, n1.ns), want) }) {
			t.Errorf("mode %s: node1 routes %q, want %q", mode, ownedRoutes(t, n1.ns), want)
		}
		tx, _ := tunnelPackets(t, n1)
		pingOK(t, n1.pod.ns, n2.pod.addr)
		if tx2, _ := tunnelPackets(t, n1); tx2 != tx {
			t.Errorf("mode %s: traffic still went through tunl0 (%d packets)", mode, tx2-tx)
		}
	}

	// No IPIP pool any more: the tunnel address is released.
	m, err := NewTunnelManager(n1.ns)
	must(t, err)
	defer m.Close()
	must(t, m.Release())
	h := nsHandle(t, n1.ns)
	l, err := h.LinkByName(TunnelDevice)
	must(t, err)
	if addrs, _ := h.AddrList(l, 2); len(addrs) != 0 {
		t.Errorf("tunl0 still has %v after Release", addrs)
	}
}

func TestKernelIPIPCrossSubnet(t *testing.T) {
	requireIPIP(t)
	router := newNS(t)
	must(t, WriteSysctl(router, "net/ipv4/ip_forward", "1"))
	n1 := newLabNode(t, "node1", router, "r1", "10.0.1.11/24", "192.168.1.0/26", 1500)
	n3 := newLabNode(t, "node3", router, "r3", "10.0.2.13/24", "192.168.3.0/26", 1500)
	addAddr(t, router, "r1", "10.0.1.1/24")
	addAddr(t, router, "r3", "10.0.2.1/24")
	addStatic(t, n1.ns, "10.0.2.0/24", "10.0.1.1", "eth0")
	addStatic(t, n3.ns, "10.0.1.0/24", "10.0.2.1", "eth0")
	nodes := []*labNode{n1, n3}
	for _, n := range nodes {
		tun := ensureTunnel(t, n)
		plan := Desired(n.input(t, nodes, pools1(api.EncapCrossSubnet), tun, ""))
		if len(plan.Unroutable) != 0 {
			t.Fatalf("%s: unroutable %+v", n.name, plan.Unroutable)
		}
		n.start(t, plan.Routes)
		waitSynced(t, n, len(plan.Routes))
	}
	if got, want := ownedRoutes(t, n1.ns), "192.168.3.0/26 via 10.0.2.13 dev tunl0 proto 94 onlink"; !slices.Contains(got, want) {
		t.Fatalf("node1 routes %q lack the cross-subnet tunnel route %q", got, want)
	}
	pingThroughTunnel(t, n1, n3)
	pingThroughTunnel(t, n3, n1)

	// The router sees only node addresses: pod addresses travel inside.
	// Take the tunnel route away (Never) and the pods cannot talk, since
	// the router knows no pod routes.
	n1.rec.Set(Desired(n1.input(t, nodes, pools1(api.EncapNever), Link{}, "")).Routes)
	if !eventually(time.Second, func() bool {
		for _, r := range ownedRoutes(t, n1.ns) {
			if strings.HasPrefix(r, "192.168.3.0/26 ") {
				return false
			}
		}
		return true
	}) {
		t.Errorf("tunnel route left after switching to Never: %q", ownedRoutes(t, n1.ns))
	}
}

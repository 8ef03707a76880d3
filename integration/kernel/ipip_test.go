package kernel

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/rhizome-net/rhizome/api"
)

// ipipNode is one side of the tunnel: its uplink address and the tunnel
// address on tunl0 from which it reaches the other side's pods.
type ipipNode struct {
	*node
	uplink  netip.Prefix // on the veth both nodes share
	tunnel  netip.Addr   // /32 on tunl0
	podCIDR netip.Prefix // its block, holding tunnel; the other node routes it through the tunnel
}

// TestKernelIPIPTunnelCarriesTCP joins two nodes with a veth pair (one
// subnet), gives each tunl0 a tunnel address and routes the other's block
// `via <peer> dev tunl0 onlink`, as the agent does for an IPIP Always pool,
// and checks that a TCP connection between the tunnel addresses works and
// went through tunl0 on both sides.
func TestKernelIPIPTunnelCarriesTCP(t *testing.T) {
	requireRoot(t)
	a := &ipipNode{node: newNode(t), uplink: netip.MustParsePrefix("192.0.2.1/24"),
		tunnel: netip.MustParseAddr("10.244.1.1"), podCIDR: netip.MustParsePrefix("10.244.1.0/24")}
	b := &ipipNode{node: newNode(t), uplink: netip.MustParsePrefix("192.0.2.2/24"),
		tunnel: netip.MustParseAddr("10.244.2.1"), podCIDR: netip.MustParsePrefix("10.244.2.0/24")}
	tunA, tunB := a.tunl0(t), b.tunl0(t)

	// The veth pair is made in a with its peer straight in b.
	err := a.h.LinkAdd(&netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "uplink0"},
		PeerName:      "uplink0",
		PeerNamespace: netlink.NsFd(int(b.ns)),
	})
	if err != nil {
		t.Fatalf("create veth pair between the nodes: %v", err)
	}
	for _, n := range []*ipipNode{a, b} {
		setUp(t, n.node, "uplink0", n.uplink)
		setUp(t, n.node, "tunl0", netip.PrefixFrom(n.tunnel, 32))
	}
	addTunnelRoute(t, a, b, tunA)
	addTunnelRoute(t, b, a, tunB)

	// The route the kernel picks must be the tunnel, with a's tunnel address
	// as the source: that is what the other node's pods see.
	routes, err := a.h.RouteGet(b.tunnel.AsSlice())
	if err != nil {
		t.Fatalf("route lookup for %s on node a: %v", b.tunnel, err)
	}
	if len(routes) != 1 || routes[0].LinkIndex != tunA.Attrs().Index || !routes[0].Src.Equal(a.tunnel.AsSlice()) {
		t.Fatalf("route to %s on node a = %+v, want dev tunl0 (index %d) src %s", b.tunnel, routes, tunA.Attrs().Index, a.tunnel)
	}

	beforeA, beforeB := a.stats(t, "tunl0"), b.stats(t, "tunl0")
	peer := exchange(t, a.node, b.node, netip.AddrPortFrom(b.tunnel, 7946))
	if peer != a.tunnel {
		t.Errorf("node b saw the connection come from %s, want node a's tunnel address %s", peer, a.tunnel)
	}
	afterA, afterB := a.stats(t, "tunl0"), b.stats(t, "tunl0")

	// Node a sent at least SYN, ACK and the request and received SYN-ACK
	// and the echo; the closes may still be in flight. All of it must have
	// been encapsulated.
	for _, c := range []struct {
		what          string
		before, after uint64
	}{
		{"node a tunl0 tx", beforeA.TxPackets, afterA.TxPackets},
		{"node a tunl0 rx", beforeA.RxPackets, afterA.RxPackets},
		{"node b tunl0 tx", beforeB.TxPackets, afterB.TxPackets},
		{"node b tunl0 rx", beforeB.RxPackets, afterB.RxPackets},
	} {
		if c.after < c.before+2 {
			t.Errorf("%s packets went from %d to %d, want at least 2 more", c.what, c.before, c.after)
		}
	}
	if afterA.TxErrors != beforeA.TxErrors || afterB.TxErrors != beforeB.TxErrors {
		t.Errorf("tunl0 tx errors grew: node a %d→%d, node b %d→%d", beforeA.TxErrors, afterA.TxErrors, beforeB.TxErrors, afterB.TxErrors)
	}
	t.Logf("tunl0 packets tx/rx: node a %d/%d, node b %d/%d",
		afterA.TxPackets-beforeA.TxPackets, afterA.RxPackets-beforeA.RxPackets,
		afterB.TxPackets-beforeB.TxPackets, afterB.RxPackets-beforeB.RxPackets)
}

// setUp gives a node's link one address and brings it up.
func setUp(t *testing.T, n *node, name string, addr netip.Prefix) {
	t.Helper()
	link, err := n.h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	ipnet := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), addr.Addr().BitLen())}
	if err := n.h.AddrAdd(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		t.Fatalf("add %s to %s: %v", addr, name, err)
	}
	if err := n.h.LinkSetUp(link); err != nil {
		t.Fatalf("bring %s up: %v", name, err)
	}
}

// addTunnelRoute routes to's pod block on from as docs/design.md §6 says for
// an IPIP pool: `P via N dev tunl0 onlink`, with rhizome's route protocol.
func addTunnelRoute(t *testing.T, from, to *ipipNode, tunl0 netlink.Link) {
	t.Helper()
	p := to.podCIDR
	r := &netlink.Route{
		Dst:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
		Gw:        to.uplink.Addr().AsSlice(),
		LinkIndex: tunl0.Attrs().Index,
		Flags:     int(netlink.FLAG_ONLINK),
		Protocol:  netlink.RouteProtocol(api.RouteProtocol),
	}
	if err := from.h.RouteAdd(r); err != nil {
		t.Fatalf("add route %s via %s dev tunl0 onlink: %v", p, to.uplink.Addr(), err)
	}
}

// exchange listens on addr in server, connects from client, sends a line
// and reads the echo, and returns the address the server saw the
// connection come from.
func exchange(t *testing.T, client, server *node, addr netip.AddrPort) netip.Addr {
	t.Helper()
	var ln net.Listener
	err := server.do(func() (err error) {
		ln, err = net.Listen("tcp4", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in node b: %v", addr, err)
	}
	defer ln.Close()
	type accepted struct {
		from netip.Addr
		err  error
	}
	acc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- accepted{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil {
			_, err = fmt.Fprint(c, line)
		}
		acc <- accepted{from: from, err: err}
	}()

	var reply string
	err = client.do(func() error {
		// TCG is slow: generous, but a lost tunnel still fails in time.
		c, err := net.DialTimeout("tcp4", addr.String(), 20*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := fmt.Fprintln(c, "hello through tunl0"); err != nil {
			return err
		}
		reply, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if err != nil {
		t.Fatalf("TCP from node a to %s through the tunnel: %v", addr, err)
	}
	if reply != "hello through tunl0\n" {
		t.Fatalf("echo through the tunnel = %q", reply)
	}
	a := <-acc
	if a.err != nil {
		t.Fatalf("server in node b: %v", a.err)
	}
	return a.from
}

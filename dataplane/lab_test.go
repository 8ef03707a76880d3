package dataplane

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The helpers below build small networks of "nodes" and "pods" out of real
// network namespaces and veth pairs, using netlink only (no `ip` binary), so
// they also run in the minimal qemu guest of `make test-kernel`. Namespaces
// are anonymous (no /run/netns entry): they cannot collide with another
// run, and they vanish when the test closes its handles, even on failure.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth pairs and routes")
	}
}

// newNS makes an anonymous network namespace with lo up.
func newNS(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get namespace: %v", err)
	}
	ns, err := netns.New()
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("return to the test's namespace: %v", serr) // thread stays locked: retired
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("new namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	h := nsHandle(t, ns)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("lo: %v", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatalf("lo up: %v", err)
	}
	return ns
}

func nsHandle(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := newHandle(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// veth makes a pair aName (in a) — bName (in b), both up.
func veth(t *testing.T, a netns.NsHandle, aName string, b netns.NsHandle, bName string, mtu int) (netlink.Link, netlink.Link) {
	t.Helper()
	ha, hb := nsHandle(t, a), nsHandle(t, b)
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName, MTU: mtu},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b)),
	}
	if err := ha.LinkAdd(v); err != nil {
		t.Fatalf("veth %s-%s: %v", aName, bName, err)
	}
	la, err := ha.LinkByName(aName)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := hb.LinkByName(bName)
	if err != nil {
		t.Fatal(err)
	}
	must(t, ha.LinkSetUp(la))
	must(t, hb.LinkSetUp(lb))
	return la, lb
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func addAddr(t *testing.T, ns netns.NsHandle, dev, cidr string) {
	t.Helper()
	h := nsHandle(t, ns)
	l, err := h.LinkByName(dev)
	must(t, err)
	a, err := netlink.ParseAddr(cidr)
	must(t, err)
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, dev, err)
	}
}

// addStatic adds a route of protocol "static" (not rhizome's): dst via gw,
// or dst dev dev scope link when gw is empty.
func addStatic(t *testing.T, ns netns.NsHandle, dst, gw, dev string) {
	t.Helper()
	h := nsHandle(t, ns)
	l, err := h.LinkByName(dev)
	must(t, err)
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Protocol: unix.RTPROT_STATIC}
	if dst != "default" {
		_, r.Dst, err = net.ParseCIDR(dst)
		must(t, err)
	}
	if gw != "" {
		r.Gw = net.ParseIP(gw)
		r.Flags = int(netlink.FLAG_ONLINK)
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("route %s via %q dev %s: %v", dst, gw, dev, err)
	}
}

// labNode is a simulated node: a namespace with an uplink eth0, forwarding
// on, one pod, and its own reconciler when started.
type labNode struct {
	name  string
	ns    netns.NsHandle
	addr  netip.Prefix // uplink address with its subnet
	block netip.Prefix // the node's affine block
	pod   labPod
	rec   *RouteReconciler
	stop  context.CancelFunc
	done  chan struct{}
}

type labPod struct {
	ns   netns.NsHandle
	addr netip.Addr
	host Link // host side of the veth, in the node's namespace
}

// newLabNode makes a node namespace whose eth0 is the peer of peerName in
// peerNS, with addr on it, and one pod with the second address of block.
func newLabNode(t *testing.T, name string, peerNS netns.NsHandle, peerName, addr, block string, mtu int) *labNode {
	t.Helper()
	ns := newNS(t)
	veth(t, ns, "eth0", peerNS, peerName, mtu)
	return setupLabNode(t, name, ns, addr, block, mtu)
}

// newLabNodePair makes two nodes whose eth0s are the two ends of one veth
// pair (one subnet without a bridge, for minimal guest kernels).
func newLabNodePair(t *testing.T, addr1, block1, addr2, block2 string) (*labNode, *labNode) {
	t.Helper()
	ns1, ns2 := newNS(t), newNS(t)
	veth(t, ns1, "eth0", ns2, "eth0", 1500)
	return setupLabNode(t, "node1", ns1, addr1, block1, 1500), setupLabNode(t, "node2", ns2, addr2, block2, 1500)
}

// setupLabNode gives a namespace with an eth0 the rest of a node: the
// uplink address, forwarding, and a pod.
func setupLabNode(t *testing.T, name string, ns netns.NsHandle, addr, block string, mtu int) *labNode {
	t.Helper()
	n := &labNode{name: name, ns: ns, addr: netip.MustParsePrefix(addr), block: netip.MustParsePrefix(block)}
	addAddr(t, n.ns, "eth0", addr)
	if err := EnsureNodeSysctls(n.ns); err != nil {
		t.Fatal(err)
	}
	n.pod.ns = newNS(t)
	n.pod.addr = n.block.Addr().Next().Next()
	host, _ := veth(t, n.ns, "rzpod0", n.pod.ns, "eth0", mtu-IPIPOverhead)
	n.pod.host = Link{Name: "rzpod0", Index: host.Attrs().Index}
	// Calico-style pod wiring: the pod reaches everything through a
	// link-local gateway that the host side answers for.
	addAddr(t, n.ns, "rzpod0", "169.254.1.1/32")
	addAddr(t, n.pod.ns, "eth0", n.pod.addr.String()+"/32")
	addStatic(t, n.pod.ns, "169.254.1.1/32", "", "eth0")
	addStatic(t, n.pod.ns, "default", "169.254.1.1", "eth0")
	return n
}

func (n *labNode) uplink(t *testing.T) Uplink {
	t.Helper()
	up, err := DiscoverUplink(n.ns, "eth0")
	must(t, err)
	return up
}

// input is the Desired input of node n in a lab of nodes, as the agent
// would build it from BGP (each other node advertises its block with its
// uplink address as next hop).
func (n *labNode) input(t *testing.T, nodes []*labNode, pools []Pool, tunnel Link, tunnelProblem string) Input {
	in := Input{
		Pools:         pools,
		Uplink:        n.uplink(t),
		OwnBlocks:     []netip.Prefix{n.block},
		LocalPods:     []LocalPod{{Addr: n.pod.addr, Link: n.pod.host}},
		Tunnel:        tunnel,
		TunnelProblem: tunnelProblem,
	}
	for _, o := range nodes {
		if o != n {
			in.Learned = append(in.Learned, LearnedRoute{Prefix: o.block, NextHop: o.addr.Addr()})
		}
	}
	return in
}

// start runs a reconciler for n with routes, until the test ends or
// n.restart is called.
func (n *labNode) start(t *testing.T, routes []Route) {
	t.Helper()
	rec, err := NewRouteReconciler(n.ns, WithLogger(testLogger(t, n.name)), WithResync(time.Hour))
	must(t, err)
	rec.Set(routes)
	ctx, cancel := context.WithCancel(context.Background())
	n.rec, n.stop, n.done = rec, cancel, make(chan struct{})
	go func() {
		defer close(n.done)
		if err := rec.Run(ctx); err != nil {
			t.Errorf("%s reconciler: %v", n.name, err)
		}
	}()
	t.Cleanup(n.halt)
}

func (n *labNode) halt() {
	if n.stop == nil {
		return
	}
	n.stop()
	<-n.done
	n.rec.Close()
	n.stop = nil
}

func testLogger(t *testing.T, node string) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", node)
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// ownedRoutes dumps the routes of rhizome's protocol in ns, rendered as
// sorted strings (a stable picture to compare before and after).
func ownedRoutes(t *testing.T, ns netns.NsHandle) []string {
	t.Helper()
	h := nsHandle(t, ns)
	routes, err := listMain(h)
	must(t, err)
	var out []string
	for _, r := range routes {
		if r.Protocol == 94 {
			out = append(out, routeLine(h, r))
		}
	}
	slices.Sort(out)
	return out
}

// routeLine renders a route like `ip route` does, for assertions and for
// the README.
func routeLine(h *netlink.Handle, r netlink.Route) string {
	var b strings.Builder
	if r.Type == unix.RTN_BLACKHOLE {
		b.WriteString("blackhole ")
	}
	b.WriteString(r.Dst.String())
	if r.Gw != nil {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	if r.Type != unix.RTN_BLACKHOLE {
		dev := fmt.Sprintf("if%d", r.LinkIndex)
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		fmt.Fprintf(&b, " dev %s", dev)
	}
	fmt.Fprintf(&b, " proto %d", r.Protocol)
	if r.Scope == netlink.SCOPE_LINK {
		b.WriteString(" scope link")
	}
	if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
		b.WriteString(" onlink")
	}
	return b.String()
}

// logIPRoute logs `ip route show proto 94` as run in ns, when the ip
// binary exists (the README quotes this output; it asserts nothing).
func logIPRoute(t *testing.T, name string, ns netns.NsHandle) {
	t.Helper()
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		return
	}
	_ = inNS(ns, func() error {
		out, err := exec.Command(ipBin, "route", "show", "proto", "94").CombinedOutput()
		t.Logf("%s$ ip route show proto 94\n%s(err %v)", name, out, err)
		return nil
	})
}

// eventually polls cond every 10 ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return cond()
}

// pinger sends ICMP echo requests from a namespace with a raw socket (the
// guest has no ping binary) and counts the replies.
type pinger struct {
	fd  int
	id  uint16
	dst netip.Addr
}

func newPinger(t *testing.T, ns netns.NsHandle, dst netip.Addr) *pinger {
	t.Helper()
	var fd int
	err := inNS(ns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		return err
	})
	if err != nil {
		t.Fatalf("raw ICMP socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &pinger{fd: fd, id: uint16(os.Getpid()) ^ uint16(fd), dst: dst}
}

// ping sends one echo request with seq and waits up to timeout for its reply.
func (p *pinger) ping(seq uint16, timeout time.Duration) error {
	msg := make([]byte, 16)
	msg[0] = 8 // echo request
	binary.BigEndian.PutUint16(msg[4:], p.id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
	sa := &unix.SockaddrInet4{Addr: p.dst.As4()}
	if err := unix.Sendto(p.fd, msg, 0, sa); err != nil {
		return fmt.Errorf("send echo to %s: %w", p.dst, err)
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1500)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("no echo reply from %s (seq %d) within %s", p.dst, seq, timeout)
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(p.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		n, _, err := unix.Recvfrom(p.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive echo reply: %w", err)
		}
		if n < 20 {
			continue
		}
		ihl := int(buf[0]&0x0f) * 4
		m := buf[ihl:n]
		if len(m) >= 8 && m[0] == 0 && binary.BigEndian.Uint16(m[4:]) == p.id && binary.BigEndian.Uint16(m[6:]) == seq {
			return nil
		}
	}
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// tcpCheck listens on to (in namespace toNS), connects from fromNS, sends a
// line and returns the source address the listener saw.
func tcpCheck(t *testing.T, fromNS netns.NsHandle, toNS netns.NsHandle, to netip.Addr) (netip.Addr, error) {
	t.Helper()
	var ln net.Listener
	must(t, inNS(toNS, func() error {
		var err error
		ln, err = net.Listen(tcpNet(to), netip.AddrPortFrom(to, 0).String())
		return err
	}))
	defer ln.Close()
	var (
		wg   sync.WaitGroup
		seen netip.Addr
		got  string
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		seen = c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b := make([]byte, 5)
		n, _ := io.ReadFull(c, b)
		got = string(b[:n])
	}()
	var c net.Conn
	err := inNS(fromNS, func() error {
		var err error
		c, err = net.DialTimeout(tcpNet(to), ln.Addr().String(), 2*time.Second)
		return err
	})
	if err != nil {
		ln.Close()
		wg.Wait()
		return netip.Addr{}, fmt.Errorf("connect to %s: %w", ln.Addr(), err)
	}
	_, _ = c.Write([]byte("hello"))
	c.Close()
	wg.Wait()
	if got != "hello" {
		return seen, fmt.Errorf("listener at %s received %q, want hello", ln.Addr(), got)
	}
	return seen, nil
}

// tcpNet is the network of a TCP connection to a.
func tcpNet(a netip.Addr) string {
	if a.Is6() && !a.Is4In6() {
		return "tcp6"
	}
	return "tcp4"
}

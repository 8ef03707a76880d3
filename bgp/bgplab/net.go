// Package bgplab builds small BGP labs for tests: network namespaces on a
// bridge, a rhizome speaker per namespace running as its own process, and
// BIRD and FRR daemons started by hand. Everything it creates is removed
// in t.Cleanup, also when the test fails. It needs root.
//
// A test binary that uses StartSpeaker must call Main from TestMain:
//
//	func TestMain(m *testing.M) { bgplab.Main(); os.Exit(m.Run()) }
//
// Each simulated node runs as its own process because a socket belongs to
// the namespace it was opened in and GoBGP dials from its own goroutines.
package bgplab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// Privileged skips t unless the test runs as root, saying why.
func Privileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates network namespaces, a bridge and veth pairs (run as root, e.g. in CI via make test)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command (iproute2) to create network namespaces")
	}
}

// Net is a bridge in its own namespace (the hub) with nodes attached by
// veth pairs, all on one /24 (and one IPv6 /64).
type Net struct {
	t      testing.TB
	prefix string // unique per Net: "rzb" + 6 hex digits
	hub    string
	subnet netip.Prefix

	mu    sync.Mutex
	nodes []*Node
}

// Node is one namespace on the Net.
type Node struct {
	Name   string
	NS     string       // namespace name
	Addr   netip.Prefix // IPv4 address with the subnet's length
	Addr6  netip.Prefix // IPv6 address
	net    *Net
	ifname string
}

// NewNet creates the hub namespace and its bridge. subnet is the IPv4
// subnet nodes get addresses from, e.g. 10.77.0.0/24; it exists only
// inside the lab's namespaces.
func NewNet(t testing.TB, subnet string) *Net {
	t.Helper()
	Privileged(t)
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	n := &Net{t: t, prefix: "rzb" + hex.EncodeToString(b), subnet: netip.MustParsePrefix(subnet)}
	n.hub = n.prefix + "-hub"
	t.Cleanup(n.destroy)
	n.ip("netns", "add", n.hub)
	n.ip("-n", n.hub, "link", "add", "br0", "type", "bridge")
	n.ip("-n", n.hub, "link", "set", "br0", "up")
	n.ip("-n", n.hub, "link", "set", "lo", "up")
	return n
}

// ip runs the ip command and fails the test on error.
func (n *Net) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// AddNode adds a namespace with the host address number host in the
// subnet (and fd77::host in IPv6).
func (n *Net) AddNode(name string, host int) *Node {
	n.t.Helper()
	n.mu.Lock()
	idx := len(n.nodes)
	n.mu.Unlock()
	addr := n.subnet.Addr().As4()
	addr[3] = byte(host)
	nd := &Node{
		Name:   name,
		NS:     fmt.Sprintf("%s-%d", n.prefix, idx),
		Addr:   netip.PrefixFrom(netip.AddrFrom4(addr), n.subnet.Bits()),
		Addr6:  netip.MustParsePrefix(fmt.Sprintf("fd77::%x/64", host)),
		net:    n,
		ifname: fmt.Sprintf("v%s%d", n.prefix[3:], idx), // at most 15 bytes
	}
	n.mu.Lock()
	n.nodes = append(n.nodes, nd)
	n.mu.Unlock()
	n.ip("netns", "add", nd.NS)
	n.ip("-n", nd.NS, "link", "set", "lo", "up")
	n.ip("link", "add", nd.ifname, "netns", n.hub, "type", "veth", "peer", "name", "eth0", "netns", nd.NS)
	n.ip("-n", n.hub, "link", "set", nd.ifname, "master", "br0", "up")
	n.ip("-n", nd.NS, "addr", "add", nd.Addr.String(), "dev", "eth0")
	n.ip("-n", nd.NS, "addr", "add", nd.Addr6.String(), "dev", "eth0", "nodad")
	n.ip("-n", nd.NS, "link", "set", "eth0", "up")
	return nd
}

// Detach pulls the node's cable out of the bridge (and Attach puts it
// back): the node stays up but nobody can reach it.
func (nd *Node) Detach() { nd.net.ip("-n", nd.net.hub, "link", "set", nd.ifname, "down") }

// Attach reconnects a detached node.
func (nd *Node) Attach() { nd.net.ip("-n", nd.net.hub, "link", "set", nd.ifname, "up") }

// Command returns a command that runs inside the node's namespace.
func (nd *Node) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", nd.NS, name}, args...)...)
}

// Output runs a command in the node's namespace and returns its output.
func (nd *Node) Output(name string, args ...string) (string, error) {
	out, err := nd.Command(name, args...).CombinedOutput()
	return string(out), err
}

func (n *Net) destroy() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, nd := range n.nodes {
		// Deleting the namespace removes the veth pair with it.
		_ = exec.Command("ip", "netns", "del", nd.NS).Run()
	}
	_ = exec.Command("ip", "netns", "del", n.hub).Run()
}

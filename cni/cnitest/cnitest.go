// Package cnitest drives CNI plugins the way a container runtime does, for
// rhizome's tests and benchmarks: libcni executes the real plugin binaries
// inside a host network namespace the test owns, against pod namespaces the
// test owns, so nothing touches the machine's own network.
package cnitest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/internal/toolcache"
)

// NeedRoot skips tb unless it runs as root.
func NeedRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates network namespaces and veth pairs")
	}
}

// BuildPlugins builds rhizome-cni and rhizome-ipam into dir.
func BuildPlugins(dir string) error {
	return Build(dir, "github.com/rhizome-net/rhizome/cmd/rhizome-cni", "github.com/rhizome-net/rhizome/cmd/rhizome-ipam")
}

// Build builds the commands pkgs (import paths) into dir, static (no
// cgo), each named after the last element of its path. The flags are
// those of `make build` and the image test (CGO_ENABLED=0, -trimpath), so
// under `make test` the commands' packages are compiled once, and with
// -trimpath the build cache serves every checkout on the machine.
func Build(dir string, pkgs ...string) error {
	for _, pkg := range pkgs {
		name := path.Base(pkg)
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, name), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", name, err, out)
		}
	}
	return nil
}

// NewNS makes a network namespace that is deleted when the test ends.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() { DeleteNS(n) })
	return n
}

func DeleteNS(n ns.NetNS) {
	n.Close()
	_ = testutils.UnmountNS(n)
}

// nsExec runs plugins inside the test's host namespace, so the host side
// of every veth and every host route stays in a namespace the test owns.
// A child process inherits the network namespace of the thread that
// forks it, and ns.Do runs on a thread locked into host.
type nsExec struct {
	host ns.NetNS
	raw  invoke.RawExec
	version.PluginDecoder
}

func (e *nsExec) ExecPlugin(ctx context.Context, path string, stdin []byte, env []string) ([]byte, error) {
	var out []byte
	var runErr error
	if err := e.host.Do(func(ns.NetNS) error {
		out, runErr = e.raw.ExecPlugin(ctx, path, stdin, env)
		return nil
	}); err != nil {
		return nil, err
	}
	return out, runErr
}

func (e *nsExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// Exec is a libcni executor that runs plugins inside host, for runtimes
// outside tests (the lab).
func Exec(host ns.NetNS) invoke.Exec {
	return &nsExec{host: host, raw: invoke.RawExec{Stderr: os.Stderr}}
}

// Node is a host namespace with a libcni runtime that runs plugins in it.
type Node struct {
	t    testing.TB
	Host ns.NetNS
	CNI  *libcni.CNIConfig
}

func NewNode(t testing.TB, paths ...string) *Node {
	t.Helper()
	host := NewNS(t)
	ex := Exec(host)

	n := &Node{t: t, Host: host, CNI: libcni.NewCNIConfigWithCacheDir(paths, t.TempDir(), ex)}
	n.InHost(func() error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

func (n *Node) InHost(f func() error) {
	n.t.Helper()
	if err := n.Host.Do(func(ns.NetNS) error { return f() }); err != nil {
		n.t.Fatal(err)
	}
}

func ConfList(t testing.TB, name string, plugins ...map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	b, err := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": name, "plugins": plugins})
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("conflist: %v", err)
	}
	return l
}

// Pod is one sandbox: its namespace and runtime configuration.
type Pod struct {
	NetNS ns.NetNS
	RT    *libcni.RuntimeConf
}

func (n *Node) NewPod(k8sNS, name string) *Pod {
	n.t.Helper()
	p := &Pod{NetNS: NewNS(n.t)}
	p.RT = &libcni.RuntimeConf{
		ContainerID: "ctr-" + name,
		NetNS:       p.NetNS.Path(),
		IfName:      "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", k8sNS}, {"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", "ctr-" + name}, {"K8S_POD_UID", "uid-" + name}},
	}
	return p
}

func (n *Node) Add(l *libcni.NetworkConfigList, p *Pod) *types100.Result {
	n.t.Helper()
	r, err := n.CNI.AddNetworkList(context.Background(), l, p.RT)
	if err != nil {
		n.t.Fatalf("ADD %s: %v", p.RT.ContainerID, err)
	}
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		n.t.Fatal(err)
	}
	return res
}

func (n *Node) Del(l *libcni.NetworkConfigList, p *Pod) {
	n.t.Helper()
	if err := n.CNI.DelNetworkList(context.Background(), l, p.RT); err != nil {
		n.t.Fatalf("DEL %s: %v", p.RT.ContainerID, err)
	}
}

func PodAddr(t testing.TB, r *types100.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) == 0 {
		t.Fatalf("result has no address: %v", r)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	return a.Unmap()
}

// HostState lists the host namespace's links (but lo) and rhizome routes.
func (n *Node) HostState() (links []string, routes []string) {
	n.t.Helper()
	n.InHost(func() error {
		ls, err := netlinksafe.LinkList()
		if err != nil {
			return err
		}
		for _, l := range ls {
			if l.Attrs().Name != "lo" {
				links = append(links, l.Attrs().Name)
			}
		}
		rs, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: api.RouteProtocol, Table: 0}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return err
		}
		for _, r := range rs {
			routes = append(routes, r.String())
		}
		return nil
	})
	return links, routes
}

// Ping sends ICMP echo requests from inside from to dst until one is
// answered or timeout passes.
func Ping(from ns.NetNS, dst netip.Addr, timeout time.Duration) error {
	var conn *icmp.PacketConn
	if err := from.Do(func(ns.NetNS) error {
		var err error
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return fmt.Errorf("icmp socket in %s: %w", from.Path(), err)
	}
	defer conn.Close()
	id := os.Getpid() & 0xffff
	deadline := time.Now().Add(timeout)
	for seq := 1; time.Now().Before(deadline); seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("rhizome")}}
		b, _ := msg.Marshal(nil)
		if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			return fmt.Errorf("send echo to %s: %w", dst, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 1500)
		for {
			n, peer, err := conn.ReadFrom(buf)
			if err != nil {
				break
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.Seq == seq && peer.String() == dst.String() {
				return nil
			}
		}
	}
	return fmt.Errorf("no echo reply from %s within %s", dst, timeout)
}

func WantErrText(t testing.TB, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func HostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// ReferenceVersion is the containernetworking/plugins release whose
// reference plugins (bridge, ptp, host-local) the tests and the benchmark
// run next to rhizome's.
const ReferenceVersion = "v1.9.1"

// ReferencePlugins builds the named reference plugins once into
// cni-plugins-<version>/ of the per-user tools cache (package toolcache),
// shared by every checkout on the machine, and returns the directory.
func ReferencePlugins(t testing.TB, names ...string) string {
	t.Helper()
	dir, err := toolcache.In("cni-plugins-" + ReferenceVersion)
	if err != nil {
		t.Fatalf("reference plugins: %v", err)
	}
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			continue
		}
		t.Logf("building reference plugin %s %s into %s", name, ReferenceVersion, dir)
		if err := installReference(dir, name); err != nil {
			t.Fatalf("build reference plugin %s: %v", name, err)
		}
	}
	return dir
}

// installReference builds the reference plugin name into a directory of
// its own next to dir and renames it into dir, so a test of another
// package or checkout never runs a half-written file.
func installReference(dir, name string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".cni-plugins-build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.Command("go", "install", "github.com/containernetworking/plugins/plugins/"+kindOf(name)+"/"+name+"@"+ReferenceVersion)
	cmd.Dir = os.TempDir() // outside this module: the plugins' own go.mod applies
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go install: %w\n%s", err, out)
	}
	return os.Rename(filepath.Join(tmp, name), filepath.Join(dir, name))
}

func kindOf(name string) string {
	switch name {
	case "host-local", "static", "dhcp":
		return "ipam"
	}
	return "main"
}

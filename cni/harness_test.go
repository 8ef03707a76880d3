package cni_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
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
)

// pluginDir holds rhizome-cni and rhizome-ipam, built once by TestMain.
var pluginDir string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "rhizome-cni-bin")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			for _, b := range []string{"rhizome-cni", "rhizome-ipam"} {
				cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b), "../cmd/"+b)
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
				if out, err := cmd.CombinedOutput(); err != nil {
					fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b, err, out)
					return 1
				}
			}
			pluginDir = dir
		}
		return m.Run()
	}()
	os.Exit(code)
}

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veth pairs")
	}
}

// newNS makes a network namespace that is deleted when the test ends.
func newNS(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() { deleteNS(n) })
	return n
}

func deleteNS(n ns.NetNS) {
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

// node is a host namespace with a libcni runtime that runs plugins in it.
type node struct {
	t    testing.TB
	host ns.NetNS
	cni  *libcni.CNIConfig
}

func newNode(t testing.TB, paths ...string) *node {
	t.Helper()
	host := newNS(t)
	ex := &nsExec{host: host, raw: invoke.RawExec{Stderr: os.Stderr}}
	paths = append([]string{pluginDir}, paths...)
	n := &node{t: t, host: host, cni: libcni.NewCNIConfigWithCacheDir(paths, t.TempDir(), ex)}
	n.inHost(func() error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

func (n *node) inHost(f func() error) {
	n.t.Helper()
	if err := n.host.Do(func(ns.NetNS) error { return f() }); err != nil {
		n.t.Fatal(err)
	}
}

func confList(t testing.TB, name string, plugins ...map[string]any) *libcni.NetworkConfigList {
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

// pod is one sandbox: its namespace and runtime configuration.
type pod struct {
	netns ns.NetNS
	rt    *libcni.RuntimeConf
}

func (n *node) newPod(k8sNS, name string) *pod {
	n.t.Helper()
	p := &pod{netns: newNS(n.t)}
	p.rt = &libcni.RuntimeConf{
		ContainerID: "ctr-" + name,
		NetNS:       p.netns.Path(),
		IfName:      "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", k8sNS}, {"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", "ctr-" + name}, {"K8S_POD_UID", "uid-" + name}},
	}
	return p
}

func (n *node) add(l *libcni.NetworkConfigList, p *pod) *types100.Result {
	n.t.Helper()
	r, err := n.cni.AddNetworkList(context.Background(), l, p.rt)
	if err != nil {
		n.t.Fatalf("ADD %s: %v", p.rt.ContainerID, err)
	}
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		n.t.Fatal(err)
	}
	return res
}

func (n *node) del(l *libcni.NetworkConfigList, p *pod) {
	n.t.Helper()
	if err := n.cni.DelNetworkList(context.Background(), l, p.rt); err != nil {
		n.t.Fatalf("DEL %s: %v", p.rt.ContainerID, err)
	}
}

func podAddr(t testing.TB, r *types100.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) == 0 {
		t.Fatalf("result has no address: %v", r)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	return a.Unmap()
}

// hostState lists the host namespace's links (but lo) and rhizome routes.
func (n *node) hostState() (links []string, routes []string) {
	n.t.Helper()
	n.inHost(func() error {
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

// ping sends ICMP echo requests from inside from to dst until one is
// answered or timeout passes.
func ping(from ns.NetNS, dst netip.Addr, timeout time.Duration) error {
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

func wantErrText(t testing.TB, err error, parts ...string) {
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

func hostNetOf(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

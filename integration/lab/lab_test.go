package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/dataplane"
)

func TestSeed000TopologyAndErrors(t *testing.T) {
	topo := Seed000()
	if len(topo.Racks) != 2 || len(topo.Nodes) != 4 || topo.Router.RouteReflectorClusterID != "244.0.0.1" || topo.Workloads[0].Replicas != 5 {
		t.Fatalf("seed 000 topology: %+v", topo)
	}
	for _, c := range []struct{ yaml, want string }{
		{"racks: [{name: r, subnet: 10.0.0.1/24}]\nrouter: {name: x}\nnodes: [{name: node-a, rack: r}]", `rack "r": subnet "10.0.0.1/24"`},
		{"racks: [{name: r, subnet: 10.0.0.0/24}]\nrouter: {name: x}\nnodes: [{name: node-a, rack: q}]", `node "node-a": rack "q" is not among the racks`},
		{"racks: [{name: r, subnet: 10.0.0.0/24}]\nrouter: {name: x}\nnodes: [{name: x, rack: r}]", `node name "x" is empty, repeated`},
		{"racks: [{name: r, subnet: 10.0.0.0/24}]\nrouter: {name: x}\nnodes: [{name: node-a, rack: r}]\nworkloads: [{name: w, replicas: 1}]", `workload "w"`},
		{"racks: []\nrouter: {name: x}\nnodes: [{name: node-a, rack: r}]\nbogus: 1", `unknown field "bogus"`},
	} {
		_, err := ParseTopology([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseTopology(%q) = %v, want an error with %q", c.yaml, err, c.want)
		}
	}
	if got := rackAddr("10.0.1.0/24", -2); got != netip.MustParsePrefix("10.0.1.254/24") {
		t.Errorf("router address of 10.0.1.0/24: %s", got)
	}
}

var (
	binDir string       // the lab's binaries, once needBinaries built them (or prebuilt)
	labs   atomic.Int32 // numbers the labs of one run: unique namespace names

	buildDir  string // where needBinaries builds them
	buildOnce sync.Once
	buildErr  error
)

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // the privileged tests skip with the reason
		}
		if dir := os.Getenv(binDirEnv); dir != "" {
			binDir = dir // prebuilt: in the qemu guest there is no go build
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "rhizome-lab-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		buildDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

// upLab brings the seed 000 lab up for one test and takes it down after,
// checking that no namespace is left.
func upLab(t *testing.T) (*Lab, context.Context) {
	t.Helper()
	return upLabWith(t, Seed000())
}

// needBinaries builds the lab's binaries on first use, so a run that skips
// every privileged test (make test-unit) builds none.
func needBinaries(tb testing.TB) {
	tb.Helper()
	buildOnce.Do(func() {
		if binDir != "" || buildDir == "" {
			return // prebuilt, or not root (NeedRoot skipped already)
		}
		const cmd = "github.com/rhizome-net/rhizome/cmd/"
		buildErr = cnitest.Build(buildDir, cmd+"rhizome-node", cmd+"rhizome-cni", cmd+"rhizome-ipam", cmd+"rhizomectl",
			"github.com/rhizome-net/rhizome/integration/lab/cmd/rhizome-lab")
		if buildErr == nil {
			binDir = buildDir
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
}

func upLabWith(t *testing.T, topo *Topology) (*Lab, context.Context) {
	t.Helper()
	cnitest.NeedRoot(t)
	needBinaries(t)
	var log strings.Builder
	opts := Options{BinDir: binDir, StateDir: filepath.Join(t.TempDir(), "lab"), Prefix: fmt.Sprintf("rzt%d-%d-", os.Getpid()%100000, labs.Add(1)), Log: &log}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	l, err := Up(ctx, topo, opts)
	if err != nil {
		t.Fatalf("lab up: %v\n%s", err, log.String())
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), opts.Prefix) {
			t.Errorf("namespaces left after lab down:\n%s", out)
		}
	})
	return l, ctx
}

func waitConnected(t *testing.T, ctx context.Context, l *Lab, what string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if took, fails := l.WaitConnected(wctx); len(fails) > 0 {
		t.Fatalf("%s: after %s, %d pod pairs cannot connect: %v", what, took, len(fails), fails)
	}
}

// TestPrivilegedSeed000Lab is end-to-end scenario 1: the seed 000 lab with
// the real binaries. Pods get addresses from their rack's pool only, every
// pod reaches every other over TCP, and the router (the route reflector)
// has one route per block, through the rack the block lives in.
func TestPrivilegedSeed000Lab(t *testing.T) {
	l, ctx := upLab(t)
	rackPool := map[string]string{"kube-node-0": "192.168.0.0/24", "kube-node-1": "192.168.0.0/24", "kube-node-2": "192.168.1.0/24", "kube-node-3": "192.168.1.0/24"}
	blocks := map[netip.Prefix]string{}
	for _, p := range l.State().Pods {
		if !netip.MustParsePrefix(rackPool[p.Node]).Contains(p.IP) {
			t.Errorf("pod %s on %s got %s, outside its rack's pool %s", p.Name, p.Node, p.IP, rackPool[p.Node])
		}
		b, _ := p.IP.Prefix(26)
		blocks[b] = p.Node
	}
	waitConnected(t, ctx, l, "seed 000")
	routes, err := l.Routes("router")
	if err != nil {
		t.Fatal(err)
	}
	for b, node := range blocks {
		var addr netip.Prefix
		for _, n := range l.State().Nodes {
			if n.Name == node {
				addr = n.Addr
			}
		}
		rack := "rack-0"
		if rackPool[node] == "192.168.1.0/24" {
			rack = "rack-1"
		}
		if want := fmt.Sprintf("%s via %s dev %s", b, addr.Addr(), rack); strings.Count(routes, b.String()+" ") != 1 || !strings.Contains(routes, want) {
			t.Errorf("router: want exactly one route for block %s (%s); routes:\n%s", b, want, routes)
		}
	}
	var report strings.Builder
	if err := l.Report(&report); err != nil {
		t.Fatalf("report: %v\n%s", err, report.String())
	}
	for _, want := range []string{"nginx-4", "rack-1-ippool", "IPv4 BGP status", "route reflector", "blackhole"} {
		if !strings.Contains(report.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, report.String())
		}
	}

	// Uninstall kube-node-1 (issue 8): its pods gone, its agent stopped,
	// `rhizome-node --cleanup` leaves no rhizome route, pod link, NAT rule
	// or file (install-cni's files go to this test's directories, never
	// the host's).
	n1 := nodeByName(l, "kube-node-1")
	for _, p := range l.State().Pods {
		if p.Node == n1.Name {
			if err := l.DeletePod(ctx, p.Name); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := l.Stop(n1.Name); err != nil {
		t.Fatal(err)
	}
	cniBin, cniConf := t.TempDir(), t.TempDir()
	dirs := []string{"--cni-bin-dir", cniBin, "--cni-conf-dir", cniConf, "--cni-socket", n1.Socket}
	if out, err := exec.Command(filepath.Join(binDir, "rhizome-node"), append([]string{"install-cni", "--src-dir", binDir}, dirs...)...).CombinedOutput(); err != nil {
		t.Fatalf("install-cni: %v\n%s", err, out)
	}
	h, err := netns.GetFromName(n1.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if n, err := dataplane.NewNATManager(h).NATRuleCount(); err != nil || n == 0 {
		t.Fatalf("kube-node-1 has %d natOutgoing rules before the clean-up (%v); want some", n, err)
	}
	if out, err := exec.Command("ip", append([]string{"netns", "exec", n1.NetNS, filepath.Join(binDir, "rhizome-node"), "--cleanup"}, dirs...)...).CombinedOutput(); err != nil {
		t.Fatalf("rhizome-node --cleanup: %v\n%s", err, out)
	}
	if routes, _ := l.Routes(n1.Name); strings.TrimSpace(routes) != "" {
		t.Errorf("rhizome routes left on kube-node-1 after --cleanup:\n%s", routes)
	}
	if links, _ := exec.Command("ip", "-n", n1.NetNS, "-o", "link", "show").CombinedOutput(); strings.Contains(string(links), ": rz") {
		t.Errorf("pod links left on kube-node-1:\n%s", links)
	}
	if n, err := dataplane.NewNATManager(h).NATRuleCount(); err != nil || n != 0 {
		t.Errorf("natOutgoing rules left on kube-node-1: %d (%v)", n, err)
	}
	for _, dir := range []string{cniBin, cniConf} {
		if left, _ := os.ReadDir(dir); len(left) > 0 {
			t.Errorf("--cleanup left files in %s: %v", dir, left)
		}
	}
	if _, err := os.Stat(n1.Socket); !os.IsNotExist(err) {
		t.Errorf("--cleanup left the agent's socket %s", n1.Socket)
	}
}

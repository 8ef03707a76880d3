package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// The tests run the real binaries: rhizome-node against an embedded etcd,
// rhizome-cni driven by libcni into real network namespaces, rhizomectl
// for what an operator checks.

var (
	binDir    string // where needRoot builds the binaries on first use
	buildOnce sync.Once
	buildErr  error
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "rhizome-agent-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

// needRoot skips the test unless it runs as root, then builds the binaries
// once: a run that skips every test here (make test-unit) builds none.
func needRoot(t testing.TB) {
	t.Helper()
	cnitest.NeedRoot(t)
	buildOnce.Do(func() {
		const cmd = "github.com/rhizome-net/rhizome/cmd/"
		buildErr = cnitest.Build(binDir, cmd+"rhizome-node", cmd+"rhizome-cni", cmd+"rhizome-ipam", cmd+"rhizomectl")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// cluster is one etcd and the agents started against it.
type cluster struct {
	t    testing.TB
	etcd *etcdtest.Server
	dir  string
	// agentEndpoints is what agents dial: etcd's TCP address, or its unix
	// socket for agents in other network namespaces.
	agentEndpoints string
}

func newCluster(t testing.TB, opts ...etcdtest.Option) *cluster {
	c := &cluster{t: t, etcd: etcdtest.Start(t, opts...), dir: t.TempDir()}
	c.agentEndpoints = c.endpoints()
	return c
}

func (c *cluster) endpoints() string { return strings.Join(c.etcd.Endpoints(), ",") }

// ctl runs rhizomectl and returns its output; it fails the test on error.
func (c *cluster) ctl(args ...string) string {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "rhizomectl"), args...)
	cmd.Env = append(os.Environ(), "RHIZOME_ETCD_ENDPOINTS="+c.endpoints())
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("rhizomectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ctlStdin runs rhizomectl with stdin; it fails the test on error.
func (c *cluster) ctlStdin(stdin string, args ...string) string {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "rhizomectl"), args...)
	cmd.Env = append(os.Environ(), "RHIZOME_ETCD_ENDPOINTS="+c.endpoints())
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("rhizomectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// agent is one rhizome-node process.
type agent struct {
	t      testing.TB
	name   string
	args   []string
	socket string
	status string
	// host is the network namespace the agent runs in; nil: the test's.
	host ns.NetNS

	mu   sync.Mutex
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan error
}

// syncBuffer is the agent's output: written by exec's copying goroutine,
// read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (c *cluster) agent(name string, extra ...string) *agent {
	c.t.Helper()
	return c.agentIn(nil, name, extra...)
}

// agentIn runs the agent inside the network namespace host (nil: the
// test's own).
func (c *cluster) agentIn(host ns.NetNS, name string, extra ...string) *agent {
	c.t.Helper()
	dir := filepath.Join(c.dir, name)
	a := &agent{t: c.t, name: name, socket: filepath.Join(dir, "run", "cni.sock"), status: freeAddr(c.t), host: host}
	a.args = append([]string{
		"--node-name", name, "--etcd-endpoints", c.agentEndpoints, "--kubernetes", "false", "--networking", "none",
		"--cni-socket", a.socket, "--status-addr", a.status, "--heartbeat-interval", "500ms",
		"--default-ipv4-pool-cidr", "10.244.0.0/16", "--default-ipv4-pool-ipip", "Never",
	}, extra...)
	a.start()
	c.t.Cleanup(func() { a.kill() })
	return a
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs the agent and waits until /readyz says it is ready.
func (a *agent) start() {
	a.t.Helper()
	a.mu.Lock()
	a.cmd = exec.Command(filepath.Join(binDir, "rhizome-node"), a.args...)
	if a.host != nil { // ip execs the agent: the PID stays the agent's
		a.cmd = exec.Command("ip", append([]string{"netns", "exec", filepath.Base(a.host.Path()), a.cmd.Path}, a.args...)...)
	}
	a.log = &syncBuffer{}
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		a.mu.Unlock()
		a.t.Fatal(err)
	}
	a.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(a.cmd, a.done)
	a.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := a.get("/readyz"); code == http.StatusOK {
			return
		}
		select {
		case err := <-a.done:
			a.t.Fatalf("rhizome-node %s exited at start: %v\n%s", a.name, err, a.logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
	a.t.Fatalf("rhizome-node %s not ready within 20s\n%s", a.name, a.logs())
}

func (a *agent) logs() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.log.String()
}

// stop sends SIGTERM and waits for a clean exit.
func (a *agent) stop() {
	a.t.Helper()
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		a.t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			a.t.Fatalf("rhizome-node %s did not exit cleanly on SIGTERM: %v\n%s", a.name, err, a.logs())
		}
	case <-time.After(10 * time.Second):
		a.t.Fatalf("rhizome-node %s still running 10s after SIGTERM\n%s", a.name, a.logs())
	}
}

// kill stops the agent the hard way (SIGKILL), as a crash or a lost node
// would; it is also the clean-up. Only the process this test started.
func (a *agent) kill() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

func (a *agent) get(path string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	if a.host != nil { // the status address is in the agent's namespace
		c.Transport = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := a.host.Do(func(ns.NetNS) error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}}
	}
	resp, err := c.Get("http://" + a.status + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// runtime is a container runtime on the node: libcni running the plugin
// inside a host namespace the test owns (cnitest.Node), so the host ends
// of the veths stay there.
type runtime struct {
	t    testing.TB
	node *cnitest.Node
	cni  *libcni.CNIConfig
	conf *libcni.NetworkConfigList
}

func (a *agent) runtime() *runtime {
	a.t.Helper()
	return a.runtimeOn(cnitest.NewNode(a.t, binDir))
}

// runtimeOn is a runtime whose plugins run in n's host namespace.
func (a *agent) runtimeOn(n *cnitest.Node) *runtime {
	a.t.Helper()
	conf := cnitest.ConfList(a.t, "k8s-pod-network", map[string]any{"type": "rhizome-cni", "socket": a.socket, "mtu": 1400})
	return &runtime{t: a.t, node: n, cni: n.CNI, conf: conf}
}

type pod = cnitest.Pod

func (r *runtime) pod(namespace, name string) *pod { return r.node.NewPod(namespace, name) }

func (r *runtime) add(p *pod) (netip.Addr, error) {
	res, err := r.cni.AddNetworkList(context.Background(), r.conf, p.RT)
	if err != nil {
		return netip.Addr{}, err
	}
	res100, err := types100.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(res100.IPs) == 0 {
		return netip.Addr{}, fmt.Errorf("ADD result without an address: %v", res100)
	}
	a, _ := netip.AddrFromSlice(res100.IPs[0].Address.IP)
	return a.Unmap(), nil
}

func (r *runtime) mustAdd(p *pod) netip.Addr {
	r.t.Helper()
	a, err := r.add(p)
	if err != nil {
		r.t.Fatalf("ADD %s: %v", p.RT.ContainerID, err)
	}
	return a
}

func (r *runtime) del(p *pod) error {
	return r.cni.DelNetworkList(context.Background(), r.conf, p.RT)
}

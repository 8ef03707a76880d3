package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/rhizome-net/rhizome/daemon/nodestatus"
)

// Options say where the lab keeps its state and finds the binaries.
type Options struct {
	// BinDir holds rhizome-node, rhizome-cni, rhizomectl and rhizome-lab.
	BinDir string
	// StateDir holds state.json, etcd's data, sockets and logs.
	StateDir string
	// Prefix starts every network namespace name ("rzlab-" by default), so
	// nothing else on the machine is touched.
	Prefix string
	// Log receives progress and the operator session, line by line.
	Log io.Writer
	// Kubernetes runs the lab with a real kube-apiserver, controller
	// manager and scheduler, a lab kubelet per node, and the agents on the
	// Kubernetes API (kube.go).
	Kubernetes bool
	// KubeBinDir holds kube-apiserver, kube-controller-manager,
	// kube-scheduler and kubectl (make kube-tools) for Kubernetes.
	KubeBinDir string
}

// State is what a lab is made of; it is written to StateDir/state.json as
// the lab grows, so Down can remove a lab that failed half-way or that
// another process built.
type State struct {
	Prefix     string      `json:"prefix"`
	IPIP       bool        `json:"ipip"`
	Racks      []Rack      `json:"racks"`
	Namespaces []string    `json:"namespaces"`
	Procs      []Proc      `json:"procs"`
	Nodes      []NodeState `json:"nodes"`
	Pods       []Pod       `json:"pods"`
	Etcd       string      `json:"etcd"`
	Kube       *KubeState  `json:"kube,omitempty"`
}

// Proc is a process the lab started.
type Proc struct {
	Name  string   `json:"name"`
	PID   int      `json:"pid"`
	NetNS string   `json:"netns"`
	Args  []string `json:"args"` // binary and arguments, for a restart
}

// NodeState is one node (or the router) as built.
type NodeState struct {
	Name   string       `json:"name"`
	NetNS  string       `json:"netns"`
	Addr   netip.Prefix `json:"addr"`
	Socket string       `json:"socket"`
	Router bool         `json:"router,omitempty"`
}

// Pod is one workload replica.
type Pod struct {
	Name      string     `json:"name"`
	Namespace string     `json:"namespace"`
	Node      string     `json:"node"`
	NetNS     string     `json:"netns"`
	IP        netip.Addr `json:"ip"`
	Port      int        `json:"port"`
}

// statusAddr is where every agent serves its status, inside its own
// namespace.
const statusAddr = "127.0.0.1:9099"

// Lab is a lab being built or running.
type Lab struct {
	opts Options
	mu   sync.Mutex // guards st while pods are added concurrently
	st   State
}

func (o *Options) defaults() {
	if o.Prefix == "" {
		o.Prefix = "rzlab-"
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

func (l *Lab) logf(format string, args ...any) { fmt.Fprintf(l.opts.Log, format+"\n", args...) }

func statePath(dir string) string { return filepath.Join(dir, "state.json") }

// Open reads the state of a lab that is up.
func Open(opts Options) (*Lab, error) {
	opts.defaults()
	b, err := os.ReadFile(statePath(opts.StateDir))
	if err != nil {
		return nil, fmt.Errorf("no lab is up at %s: %w", opts.StateDir, err)
	}
	l := &Lab{opts: opts}
	if err := json.Unmarshal(b, &l.st); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", statePath(opts.StateDir), err)
	}
	l.opts.Prefix = l.st.Prefix
	return l, nil
}

// State returns what the lab is made of.
func (l *Lab) State() State { return l.st }

func (l *Lab) save() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, err := json.MarshalIndent(&l.st, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(statePath(l.opts.StateDir), b, 0o600)
}

func (l *Lab) bin(name string) string { return filepath.Join(l.opts.BinDir, name) }

// netns creates a network namespace with its loopback up.
func (l *Lab) netns(name string) (string, error) {
	full := l.opts.Prefix + name
	if err := run("ip", "netns", "add", full); err != nil {
		return "", err
	}
	l.mu.Lock()
	l.st.Namespaces = append(l.st.Namespaces, full)
	l.mu.Unlock()
	if err := l.save(); err != nil {
		return "", err
	}
	return full, run("ip", "-n", full, "link", "set", "lo", "up")
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// start runs bin with args inside namespace netns, in its own session so
// it outlives the lab command (lab-up), logging to StateDir/<name>.log.
func (l *Lab) start(name, netns, bin string, args ...string) error {
	f, err := os.OpenFile(filepath.Join(l.opts.StateDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	argv := append([]string{bin}, args...)
	if netns != "" { // else in the host's namespace
		argv = append([]string{"ip", "netns", "exec", netns}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := Proc{Name: name, PID: cmd.Process.Pid, NetNS: netns, Args: append([]string{bin}, args...)}
	replaced := false
	l.mu.Lock()
	for i := range l.st.Procs {
		if l.st.Procs[i].Name == name {
			l.st.Procs[i], replaced = p, true
		}
	}
	if !replaced {
		l.st.Procs = append(l.st.Procs, p)
	}
	l.mu.Unlock()
	go func() { _ = cmd.Wait() }() // reap it if it ends while we run
	return l.save()
}

// Kill stops a process of the lab the hard way (SIGKILL), as a lost node
// would stop.
func (l *Lab) Kill(name string) error {
	for _, p := range l.st.Procs {
		if p.Name == name && l.ours(p.PID) {
			return syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
	return fmt.Errorf("no running process %q in the lab", name)
}

// Stop stops a process of the lab with SIGTERM and waits for it to end.
func (l *Lab) Stop(name string) (Proc, error) {
	var p Proc
	for _, q := range l.st.Procs {
		if q.Name == name {
			p = q
		}
	}
	if p.PID == 0 {
		return p, fmt.Errorf("no process %q in the lab", name)
	}
	if l.ours(p.PID) {
		if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil {
			return p, err
		}
	}
	for deadline := time.Now().Add(10 * time.Second); l.ours(p.PID); {
		if time.Now().After(deadline) {
			return p, fmt.Errorf("%s (pid %d) still runs 10s after SIGTERM", name, p.PID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p, nil
}

// Restart stops a process of the lab (SIGTERM, as a DaemonSet update
// would) and starts it again with the same arguments; for an agent it
// waits until the new one is ready.
func (l *Lab) Restart(ctx context.Context, name string) error {
	p, err := l.Stop(name)
	if err != nil {
		return err
	}
	if err := l.start(name, p.NetNS, p.Args[0], p.Args[1:]...); err != nil {
		return err
	}
	for _, n := range l.st.Nodes {
		if n.Name == name {
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			return agentReady(rctx, n.NetNS)
		}
	}
	return nil
}

// inNS runs f on a thread inside the namespace: sockets it opens stay
// there.
func inNS(netns string, f func() error) error {
	h, err := ns.GetNS("/var/run/netns/" + netns)
	if err != nil {
		return err
	}
	defer h.Close()
	return h.Do(func(ns.NetNS) error { return f() })
}

// dialIn opens a TCP connection from inside a namespace.
func dialIn(ctx context.Context, netns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNS(netns, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// statusClient talks to the agent's status address inside its namespace.
func statusClient(netns string) *http.Client {
	return &http.Client{Timeout: time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dialIn(ctx, netns, addr) }}}
}

// agentStatus reads the agent's status report.
func agentStatus(netns string) (*nodestatus.Report, error) {
	resp, err := statusClient(netns).Get("http://" + statusAddr + nodestatus.Path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r nodestatus.Report
	return &r, json.NewDecoder(resp.Body).Decode(&r)
}

// agentReady polls the agent's /readyz inside its namespace.
func agentReady(ctx context.Context, netns string) error {
	client := statusClient(netns)
	var last string
	for ctx.Err() == nil {
		resp, err := client.Get("http://" + statusAddr + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = strings.TrimSpace(string(b))
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready: %s", last)
}

// Down stops every process of the lab and deletes its namespaces, last
// made first, then removes the state directory. Only processes the lab
// started are signalled, by PID, and only while they still run one of the
// lab's binaries.
func (l *Lab) Down() error {
	var errs []error
	// etcd last: kube-apiserver does not finish stopping without it.
	for _, wave := range []func(Proc) bool{func(p Proc) bool { return p.Name != "etcd" }, func(p Proc) bool { return p.Name == "etcd" }} {
		for i := len(l.st.Procs) - 1; i >= 0; i-- {
			p := l.st.Procs[i]
			if wave(p) && l.ours(p.PID) {
				_ = syscall.Kill(p.PID, syscall.SIGTERM)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for _, p := range l.st.Procs {
			for wave(p) && l.ours(p.PID) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if wave(p) && l.ours(p.PID) {
				_ = syscall.Kill(p.PID, syscall.SIGKILL)
			}
		}
	}
	if err := l.downSandboxes(); err != nil {
		errs = append(errs, err)
	}
	for i := len(l.st.Namespaces) - 1; i >= 0; i-- {
		if err := run("ip", "netns", "del", l.st.Namespaces[i]); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(l.opts.StateDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ours says whether pid is alive and runs a binary of the lab's BinDir
// (directly or through `ip netns exec`).
func (l *Lab) ours(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err == nil {
		// A zombie waits to be reaped by the process that started it.
		if f := strings.Fields(string(stat)); len(f) > 2 && f[2] == "Z" {
			return false
		}
	}
	for _, dir := range []string{l.opts.BinDir, l.kubeBinDir()} {
		abs, _ := filepath.Abs(dir)
		if dir != "" && (strings.Contains(string(b), abs+"/") || strings.Contains(string(b), dir+"/")) {
			return true
		}
	}
	return false
}

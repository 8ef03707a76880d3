package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/rhizome-net/rhizome/datastore"
)

// Up builds the topology. On failure it removes what it built.
func Up(ctx context.Context, topo *Topology, opts Options) (*Lab, error) {
	opts.defaults()
	if _, err := os.Stat(statePath(opts.StateDir)); err == nil {
		return nil, fmt.Errorf("a lab is already up at %s: take it down first (make lab-down)", opts.StateDir)
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, err
	}
	l := &Lab{opts: opts, st: State{Prefix: opts.Prefix}}
	if err := l.save(); err != nil {
		return nil, err
	}
	steps := []func(context.Context, *Topology) error{l.startEtcd, l.network, l.agents, l.configure, l.workloads, l.settled}
	if opts.Kubernetes {
		steps = l.kubeSteps()
	}
	for _, step := range steps {
		if err := step(ctx, topo); err != nil {
			l.logf("lab: %v; removing what was built", err)
			if derr := l.Down(); derr != nil {
				l.logf("lab down: %v", derr)
			}
			return nil, err
		}
	}
	return l, nil
}

// ctl runs rhizomectl against the lab's etcd and echoes it as an operator
// session.
func (l *Lab) ctl(stdin string, args ...string) (string, error) {
	cmd := exec.Command(l.bin("rhizomectl"), args...)
	cmd.Env = append(os.Environ(), "RHIZOME_ETCD_ENDPOINTS="+l.st.Etcd)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rhizomectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func (l *Lab) session(stdin string, args ...string) error {
	shown := "$ rhizomectl " + strings.Join(quoteArgs(args), " ")
	if stdin != "" {
		shown += " <<EOF\n" + strings.TrimRight(stdin, "\n") + "\nEOF"
	}
	out, err := l.ctl(stdin, args...)
	l.logf("%s\n%s", shown, strings.TrimRight(out, "\n"))
	return err
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if strings.ContainsAny(a, " {\"'") {
			out[i] = "'" + a + "'"
		}
	}
	return out
}

// startEtcd runs etcd in a namespace of its own; everything reaches it on
// its unix socket.
func (l *Lab) startEtcd(ctx context.Context, _ *Topology) error {
	netns, err := l.netns("etcd")
	if err != nil {
		return err
	}
	sock := filepath.Join(l.opts.StateDir, "etcd.sock")
	abs, err := filepath.Abs(sock)
	if err != nil {
		return err
	}
	l.st.Etcd = "unix://" + abs
	if err := l.start("etcd", netns, l.bin("rhizome-lab"), "etcd", "--dir", filepath.Join(abs+".data"), "--socket", abs); err != nil {
		return err
	}
	store, err := datastore.New(datastore.Config{Endpoints: []string{l.st.Etcd}})
	if err != nil {
		return err
	}
	defer store.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, _, err := store.List(ctx, "/rhizome/")
		if err == nil {
			l.logf("etcd is up in namespace %s, clients on %s", netns, l.st.Etcd)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd did not answer within 20s (see %s): %w", filepath.Join(l.opts.StateDir, "etcd.log"), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// network makes a bridge per rack in a hub namespace, the router with a
// leg in every rack, and a namespace per node with eth0 in its rack and a
// default route through the router.
func (l *Lab) network(_ context.Context, topo *Topology) error {
	hub, err := l.netns("hub")
	if err != nil {
		return err
	}
	l.st.IPIP = kernelHasIPIP(hub)
	l.st.Racks = topo.Racks
	router, err := l.netns(topo.Router.Name)
	if err != nil {
		return err
	}
	gateway := map[string]netip.Prefix{}
	for i, r := range topo.Racks {
		br, leg := fmt.Sprintf("br%d", i), fmt.Sprintf("rt%d", i)
		gw := rackAddr(r.Subnet, -2)
		gateway[r.Name] = gw
		for _, c := range [][]string{
			{"-n", hub, "link", "add", br, "type", "bridge"},
			{"-n", hub, "link", "set", br, "up"},
			{"-n", hub, "link", "add", leg, "type", "veth", "peer", "name", r.Name, "netns", router},
			{"-n", hub, "link", "set", leg, "master", br, "up"},
			{"-n", router, "addr", "add", gw.String(), "dev", r.Name},
			{"-n", router, "link", "set", r.Name, "up"},
		} {
			if err := run("ip", c...); err != nil {
				return err
			}
		}
	}
	first := topo.Racks[0]
	l.st.Nodes = append(l.st.Nodes, NodeState{Name: topo.Router.Name, NetNS: router, Addr: gateway[first.Name], Router: true})
	count := map[string]int{}
	for i, n := range topo.Nodes {
		netns, err := l.netns(n.Name)
		if err != nil {
			return err
		}
		var rack Rack
		for ri, r := range topo.Racks {
			if r.Name == n.Rack {
				rack = topo.Racks[ri]
			}
		}
		count[rack.Name]++
		addr := rackAddr(rack.Subnet, count[rack.Name])
		port := fmt.Sprintf("n%d", i)
		bridge := ""
		for ri, r := range topo.Racks {
			if r.Name == rack.Name {
				bridge = fmt.Sprintf("br%d", ri)
			}
		}
		for _, c := range [][]string{
			{"-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns},
			{"-n", hub, "link", "set", port, "master", bridge, "up"},
			{"-n", netns, "addr", "add", addr.String(), "dev", "eth0"},
			{"-n", netns, "link", "set", "eth0", "up"},
			{"-n", netns, "route", "add", "default", "via", gateway[rack.Name].Addr().String()},
		} {
			if err := run("ip", c...); err != nil {
				return err
			}
		}
		l.st.Nodes = append(l.st.Nodes, NodeState{Name: n.Name, NetNS: netns, Addr: addr})
	}
	return l.save()
}

// kernelHasIPIP says whether namespaces get the kernel's tunl0 (the ipip
// module is loaded, or loads on demand).
func kernelHasIPIP(netns string) bool {
	if run("ip", "-n", netns, "link", "show", "tunl0") == nil {
		return true
	}
	_ = run("modprobe", "ipip")
	return run("ip", "-n", netns, "link", "add", "rzprobe0", "type", "ipip") == nil &&
		run("ip", "-n", netns, "link", "del", "rzprobe0") == nil
}

// agents starts rhizome-node on the router and on every node.
func (l *Lab) agents(ctx context.Context, topo *Topology) error {
	ipip := "Always"
	if !l.st.IPIP {
		ipip = "Never"
	}
	for i, n := range l.st.Nodes {
		dir := filepath.Join(l.opts.StateDir, n.Name)
		abs, err := filepath.Abs(filepath.Join(dir, "cni.sock"))
		if err != nil {
			return err
		}
		l.st.Nodes[i].Socket = abs
		args := append(l.kubeFlags(n), "--node-name", n.Name, "--etcd-endpoints", l.st.Etcd,
			"--networking", "bgp", "--cni-socket", abs, "--status-addr", statusAddr,
			"--ip", n.Addr.String(), "--default-ipv4-pool-cidr", topo.DefaultPoolCIDR, "--default-ipv4-pool-ipip", ipip,
			"--heartbeat-interval", "5s", "--node-ttl", "30s", "--controller-interval", "5s")
		if err := l.start(n.Name, n.NetNS, l.bin("rhizome-node"), args...); err != nil {
			return err
		}
	}
	for _, n := range l.st.Nodes {
		rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := agentReady(rctx, n.NetNS)
		cancel()
		if err != nil {
			return fmt.Errorf("rhizome-node on %s: %w; the end of its log:\n%s", n.Name, err, l.logTail(n.Name, 15))
		}
	}
	l.logf("rhizome-node is ready on %d nodes and the router", len(topo.Nodes))
	return l.save()
}

// logTail is the end of a process's log, for errors: Down removes the
// state directory with the logs.
func (l *Lab) logTail(name string, lines int) string {
	b, err := os.ReadFile(filepath.Join(l.opts.StateDir, name+".log"))
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

// configure is the seed's operator session: delete the default pool,
// label the nodes, make the router the route reflector, apply the pools.
func (l *Lab) configure(_ context.Context, topo *Topology) error {
	res := topo.Resources
	if !l.st.IPIP {
		l.logf("This kernel has no ipip support: the pools use ipipMode: Never and the router routes pod prefixes.")
		res = strings.ReplaceAll(res, "ipipMode: Always", "ipipMode: Never")
	} else {
		l.logf("This kernel has ipip: the pools keep their ipipMode (tunl0 routes for IPIP pools).")
	}
	steps := [][]string{{"get", "ippool", "-o", "wide"}}
	if topo.DefaultPoolCIDR != "" {
		steps = append(steps, []string{"delete", "ippool", "default-ipv4-ippool"})
	}
	for _, n := range topo.Nodes {
		if len(n.Labels) > 0 && l.st.Kube == nil { // with Kubernetes: kubectl label (kubeLabels)
			b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": n.Labels}})
			steps = append(steps, []string{"patch", "node", n.Name, "-p", string(b)})
		}
	}
	if id := topo.Router.RouteReflectorClusterID; id != "" {
		steps = append(steps, []string{"patch", "node", topo.Router.Name, "-p", fmt.Sprintf(`{"spec": {"bgp": {"routeReflectorClusterID": %q}}}`, id)})
	}
	for _, s := range steps {
		if err := l.session("", s...); err != nil {
			return err
		}
	}
	if res != "" {
		if err := l.session(res, "apply", "-f", "-"); err != nil {
			return err
		}
	}
	return nil
}

// workloads creates the pods, spread over the nodes in turn.
func (l *Lab) workloads(ctx context.Context, topo *Topology) error {
	nodes := l.podNodes()
	k := 0
	for _, w := range topo.Workloads {
		for r := range w.Replicas {
			node := nodes[k%len(nodes)]
			k++
			if _, err := l.AddPod(ctx, fmt.Sprintf("%s-%d", w.Name, r), w.Namespace, node, w.Port); err != nil {
				return err
			}
		}
	}
	return nil
}

// settled waits until every agent has programmed its routes (BGP settled
// after its start), so the report shows the steady state.
func (l *Lab) settled(ctx context.Context, _ *Topology) error {
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range l.st.Nodes {
		for {
			r, err := agentStatus(n.NetNS)
			if err == nil && r.Routes != nil && r.Routes.Programmed {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("rhizome-node on %s has not programmed its routes within 60s (BGP not settled): %v", n.Name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

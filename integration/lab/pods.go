package lab

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/rhizome-net/rhizome/cni/cnitest"
)

// podNodes are the nodes that host pods (all but the router).
func (l *Lab) podNodes() []string {
	var out []string
	for _, n := range l.st.Nodes {
		if !n.Router {
			out = append(out, n.Name)
		}
	}
	return out
}

// AddPod creates a pod on node the way a kubelet's runtime does: a
// namespace, CNI ADD through libcni and rhizome-cni in the node's
// namespace, and (port > 0) a responder answering TCP with the pod's name.
func (l *Lab) AddPod(ctx context.Context, name, namespace, node string, port int) (Pod, error) {
	n := nodeState(l, node)
	if n.Name == "" || n.Router {
		return Pod{}, fmt.Errorf("pod %s: no node %q that hosts pods", name, node)
	}
	p := Pod{Name: name, Namespace: namespace, Node: node, Port: port}
	netns, err := l.netns("pod-" + name)
	if err != nil {
		return Pod{}, err
	}
	p.NetNS = netns
	if p.IP, err = l.cniAdd(ctx, n, p); err != nil {
		return Pod{}, fmt.Errorf("pod %s on %s: %w", name, node, err)
	}
	l.mu.Lock()
	l.st.Pods = append(l.st.Pods, p)
	l.mu.Unlock()
	if port > 0 {
		if err := l.start("responder-"+name, netns, l.bin("rhizome-lab"), "responder", "--port", fmt.Sprint(port), "--name", name); err != nil {
			return Pod{}, err
		}
	}
	return p, l.save()
}

// DeletePod is the runtime's teardown: CNI DEL, the responder stopped, the
// namespace deleted.
func (l *Lab) DeletePod(ctx context.Context, name string) error {
	i := -1
	for j, p := range l.st.Pods {
		if p.Name == name {
			i = j
		}
	}
	if i < 0 {
		return fmt.Errorf("no pod %q in the lab", name)
	}
	p := l.st.Pods[i]
	cni, conf, rt, closeNS, err := l.runtime(nodeState(l, p.Node), p)
	if err != nil {
		return err
	}
	defer closeNS()
	if err := cni.DelNetworkList(ctx, conf, rt); err != nil {
		return fmt.Errorf("CNI DEL of pod %s: %w", name, err)
	}
	for j, q := range l.st.Procs {
		if q.Name == "responder-"+name {
			if l.ours(q.PID) {
				_ = syscall.Kill(q.PID, syscall.SIGKILL)
			}
			l.st.Procs = append(l.st.Procs[:j], l.st.Procs[j+1:]...)
			break
		}
	}
	if err := run("ip", "netns", "del", p.NetNS); err != nil {
		return err
	}
	for j, n := range l.st.Namespaces {
		if n == p.NetNS {
			l.st.Namespaces = append(l.st.Namespaces[:j], l.st.Namespaces[j+1:]...)
			break
		}
	}
	l.st.Pods = append(l.st.Pods[:i], l.st.Pods[i+1:]...)
	return l.save()
}

func nodeState(l *Lab, name string) NodeState {
	for _, n := range l.st.Nodes {
		if n.Name == name {
			return n
		}
	}
	return NodeState{}
}

// podNetwork is the CNI configuration list of every node: rhizome-cni
// talking to the node's agent on socket.
func podNetwork(socket string) (*libcni.NetworkConfigList, error) {
	return libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "k8s-pod-network",
		"plugins": [{"type": "rhizome-cni", "socket": %q}]}`, socket)))
}

// runtime is libcni set up as the node's container runtime for pod p.
func (l *Lab) runtime(node NodeState, p Pod) (*libcni.CNIConfig, *libcni.NetworkConfigList, *libcni.RuntimeConf, func(), error) {
	conf, err := podNetwork(node.Socket)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	host, err := ns.GetNS("/var/run/netns/" + node.NetNS)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{l.opts.BinDir}, filepath.Join(l.opts.StateDir, "cni-cache"), cnitest.Exec(host))
	rt := &libcni.RuntimeConf{ContainerID: "ctr-" + p.Name, NetNS: "/var/run/netns/" + p.NetNS, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name}}}
	return cni, conf, rt, func() { host.Close() }, nil
}

// cniAdd runs CNI ADD for the pod. The agent may not have seen pools
// applied or deleted a moment ago, so an error is retried for a while, as
// a kubelet retries a sandbox; the last error is returned.
func (l *Lab) cniAdd(ctx context.Context, node NodeState, p Pod) (netip.Addr, error) {
	cni, conf, rt, closeNS, err := l.runtime(node, p)
	if err != nil {
		return netip.Addr{}, err
	}
	defer closeNS()
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := cni.AddNetworkList(ctx, conf, rt)
		if err == nil {
			r, err := types100.NewResultFromResult(res)
			if err != nil || len(r.IPs) == 0 {
				return netip.Addr{}, fmt.Errorf("ADD result without an address: %v %v", res, err)
			}
			a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
			return a.Unmap(), nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return netip.Addr{}, err
		}
		l.logf("CNI ADD of pod %s on %s: %v (retrying)", p.Name, node.Name, err)
		time.Sleep(200 * time.Millisecond)
	}
}

// AddServer puts a host outside every pool on a rack: a namespace with
// host number host of the rack's subnet, routed through the router, that
// answers TCP on port with the address the connection came from (to see
// natOutgoing at work).
func (l *Lab) AddServer(name, rack string, host, port int) (netip.Addr, error) {
	var subnet, bridge string
	for i, n := range l.st.Racks {
		if n.Name == rack {
			subnet, bridge = n.Subnet, fmt.Sprintf("br%d", i)
		}
	}
	if subnet == "" {
		return netip.Addr{}, fmt.Errorf("server %s: no rack %q", name, rack)
	}
	netns, err := l.netns(name)
	if err != nil {
		return netip.Addr{}, err
	}
	addr, gw := rackAddr(subnet, host), rackAddr(subnet, -2)
	hub := l.opts.Prefix + "hub"
	port0 := "s" + fmt.Sprint(len(l.st.Namespaces))
	for _, c := range [][]string{
		{"-n", hub, "link", "add", port0, "type", "veth", "peer", "name", "eth0", "netns", netns},
		{"-n", hub, "link", "set", port0, "master", bridge, "up"},
		{"-n", netns, "addr", "add", addr.String(), "dev", "eth0"},
		{"-n", netns, "link", "set", "eth0", "up"},
		{"-n", netns, "route", "add", "default", "via", gw.Addr().String()},
	} {
		if err := run("ip", c...); err != nil {
			return netip.Addr{}, err
		}
	}
	return addr.Addr(), l.start(name, netns, l.bin("rhizome-lab"), "responder", "--port", fmt.Sprint(port), "--peer")
}

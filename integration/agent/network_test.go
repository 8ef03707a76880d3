package agent_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"

	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/dataplane"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// lab is a few rhizome nodes, each a network namespace with a real
// rhizome-node (networking: bgp) and a container runtime, cabled to one
// bridge: the seed 000/004 set-up on one machine.
type lab struct {
	t     testing.TB
	c     *cluster
	hub   ns.NetNS
	nodes []*labNode
}

type labNode struct {
	name  string
	addr  netip.Prefix
	cni   *cnitest.Node
	agent *agent
	rt    *runtime
}

func (n *labNode) ns() string { return filepath.Base(n.cni.Host.Path()) }

func ipCmd(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newLab makes count nodes node-1..node-count on 10.77.0.0/24 and starts
// their agents with extra flags.
func newLab(t *testing.T, count int, extra ...string) *lab {
	needRoot(t)
	l := &lab{t: t, c: newCluster(t, etcdtest.WithUnixSocket()), hub: cnitest.NewNS(t)}
	l.c.agentEndpoints = l.c.etcd.UnixEndpoint()
	hub := filepath.Base(l.hub.Path())
	ipCmd(t, "-n", hub, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", hub, "link", "set", "br0", "up")
	for i := 1; i <= count; i++ {
		n := &labNode{name: fmt.Sprintf("node-%d", i), addr: netip.MustParsePrefix(fmt.Sprintf("10.77.0.%d/24", i)), cni: cnitest.NewNode(t, binDir)}
		port := fmt.Sprintf("port%d", i)
		ipCmd(t, "-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n.ns())
		ipCmd(t, "-n", hub, "link", "set", port, "master", "br0", "up")
		ipCmd(t, "-n", n.ns(), "addr", "add", n.addr.String(), "dev", "eth0")
		ipCmd(t, "-n", n.ns(), "link", "set", "eth0", "up")
		l.nodes = append(l.nodes, n)
	}
	for _, n := range l.nodes {
		n.agent = l.c.agentIn(n.cni.Host, n.name, append([]string{"--ip", n.addr.String(), "--networking", "bgp"}, extra...)...)
		n.rt = n.agent.runtimeOn(n.cni)
	}
	return l
}

// routes is the node's rhizome routes (protocol 94), as `ip route` prints them.
func (n *labNode) routes(t testing.TB) string {
	return ipCmd(t, "-n", n.ns(), "route", "show", "proto", "94")
}

// status runs `rhizomectl node status` on the node.
func (n *labNode) status(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.ns(), filepath.Join(binDir, "rhizomectl"), "node", "status",
		"--status-addr", n.agent.status}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("rhizomectl node status on %s: %v\n%s", n.name, err, out)
	}
	return string(out)
}

// block is the /26 that holds a.
func block(a netip.Addr) netip.Prefix { p, _ := a.Prefix(26); return p }

func ping(t testing.TB, from *pod, to netip.Addr) error {
	t.Helper()
	return cnitest.Ping(from.NetNS, to, 5*time.Second)
}

var upRow = regexp.MustCompile(`(?m)^\| (\S+)\s+\| ([a-z -]+?)\s+\| up\s+\|`)

// upPeers are the rows of `node status` in state up: address -> type.
func upPeers(out string) map[string]string {
	m := map[string]string{}
	for _, r := range upRow.FindAllStringSubmatch(out, -1) {
		m[r[1]] = r[2]
	}
	return m
}

// TestPrivilegedBGPNetworking runs three real agents with BGP on a bridge:
// the node-to-node mesh comes up, every node routes every other node's
// block straight over the bridge (ipipMode Never), pods on different
// nodes talk; then seed 004's route reflector set-up (mesh off, a labelled
// node with a cluster ID, the BGPPeer from the seed) moves every session to
// the reflector and pods keep talking; an agent restart keeps the routes.
func TestPrivilegedBGPNetworking(t *testing.T) {
	l := newLab(t, 3)
	pods := make([]*pod, len(l.nodes))
	addrs := make([]netip.Addr, len(l.nodes))
	for i, n := range l.nodes {
		pods[i] = n.rt.pod("default", "web-"+n.name)
		addrs[i] = n.rt.mustAdd(pods[i])
		if !inPool(addrs[i], "10.244.0.0/16") {
			t.Fatalf("pod on %s got %s, want an address of default-ipv4-ippool", n.name, addrs[i])
		}
	}

	// Mesh: each node routes the others' blocks via their addresses on
	// eth0, and blackholes its own.
	for i, n := range l.nodes {
		eventually(t, n.name+" routes every other node's block", func() (bool, string) {
			out := n.routes(t)
			for j, m := range l.nodes {
				want := fmt.Sprintf("%s via %s dev eth0", block(addrs[j]), m.addr.Addr())
				if i == j {
					want = fmt.Sprintf("blackhole %s", block(addrs[j]))
				}
				if !strings.Contains(out, want) {
					return false, out
				}
			}
			return true, out
		})
	}
	for i := range l.nodes {
		for j := range l.nodes {
			if i != j {
				if err := ping(t, pods[i], addrs[j]); err != nil {
					t.Fatalf("pod %s on %s cannot reach pod %s on %s: %v", addrs[i], l.nodes[i].name, addrs[j], l.nodes[j].name, err)
				}
			}
		}
	}
	n1 := l.nodes[0]
	t.Logf("ip route show proto 94 on node-1 (mesh):\n%s", n1.routes(t))
	var out string
	eventually(t, "node-1 shows two mesh peers up", func() (bool, string) {
		out = n1.status(t)
		up := upPeers(out)
		return len(up) == 2 && up["10.77.0.2"] == "node-to-node mesh" && up["10.77.0.3"] == "node-to-node mesh", out
	})
	if !strings.HasPrefix(out, "rhizome-node is running.\n") || !strings.Contains(out, "IPv4 BGP status") || !strings.Contains(out, "No IPv6 peers found.") {
		t.Errorf("node status output:\n%s", out)
	}
	t.Logf("rhizomectl node status (mesh):\n%s", out)
	eventually(t, "node-1's Node status counts its sessions", func() (bool, string) {
		y := l.c.ctl("get", "node", "node-1", "-o", "yaml")
		return strings.Contains(y, "bgpPeersUp: 2") && strings.Contains(y, "bgpPeers: 2"), y
	})
	// ... and its block and addresses: one pod in use, the rest of the /26
	// free but for the pool's network and broadcast addresses.
	own := block(addrs[0])
	pool := netip.MustParsePrefix("10.244.0.0/16")
	wantFree := 64 - 1
	if own.Contains(pool.Addr()) || own.Contains(netip.MustParseAddr("10.244.255.255")) {
		wantFree--
	}
	eventually(t, "node-1's Node status lists its block and counts its addresses", func() (bool, string) {
		y := l.c.ctl("get", "node", "node-1", "-o", "yaml")
		return strings.Contains(y, "blocks:") && strings.Contains(y, "- "+own.String()+"\n") && strings.Contains(y, "ipsInUse: 1\n") &&
			strings.Contains(y, fmt.Sprintf("ipsFree: %d\n", wantFree)), y
	})

	// Seed 004: turn the mesh off, make node-3 a route reflector, and peer
	// every node with it through the seed's BGPPeer.
	l.c.ctlStdin(`apiVersion: rhizome.io/v1
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 63400
`, "apply", "-f", "-")
	l.c.ctl("patch", "node", "node-3", "-p", `{"spec": {"bgp": {"routeReflectorClusterID": "244.0.0.1"}}}`)
	l.c.ctl("patch", "node", "node-3", "-p", `{"metadata": {"labels": {"route-reflector": "true"}}}`)
	l.c.ctlStdin(`kind: BGPPeer
apiVersion: rhizome.io/v1
metadata:
  name: peer-with-route-reflectors
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
`, "apply", "-f", "-")
	eventually(t, "node-1 peers only with the route reflector", func() (bool, string) {
		out = n1.status(t)
		up := upPeers(out)
		return len(up) == 1 && up["10.77.0.3"] != "", out
	})
	t.Logf("rhizomectl node status on node-1 (route reflector node-3):\n%s", out)
	rr := l.nodes[2]
	// As with calicoctl, sessions a BGPPeer asks for show as node specific
	// on both sides; the reflector treats the non-reflectors as clients.
	eventually(t, "the route reflector has a session up with both nodes", func() (bool, string) {
		out = rr.status(t)
		up := upPeers(out)
		return len(up) == 2 && up["10.77.0.1"] != "" && up["10.77.0.2"] != "", out
	})
	t.Logf("rhizomectl node status on node-3 (the route reflector):\n%s", out)
	// Reflected routes keep the originating node's next hop.
	eventually(t, "node-1 routes node-2's block via node-2 through the reflector", func() (bool, string) {
		out := n1.routes(t)
		return strings.Contains(out, fmt.Sprintf("%s via %s dev eth0", block(addrs[1]), l.nodes[1].addr.Addr())), out
	})
	if err := ping(t, pods[0], addrs[1]); err != nil {
		t.Fatalf("after the move to the route reflector, node-1's pod cannot reach node-2's: %v", err)
	}

	// Restart node-2's agent: peers keep its routes (graceful restart) and
	// its own routes stay in its kernel, so pods keep talking throughout.
	before := l.nodes[1].routes(t)
	n2 := l.nodes[1]
	if err := n2.agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-n2.agent.done
	time.Sleep(2 * time.Second)
	if out := n1.routes(t); !strings.Contains(out, block(addrs[1]).String()) {
		t.Errorf("node-1 dropped node-2's block while node-2's agent restarts (graceful restart):\n%s", out)
	}
	if err := ping(t, pods[0], addrs[1]); err != nil {
		t.Errorf("pods cannot talk while node-2's agent is down: %v", err)
	}
	n2.agent.start()
	// What an operator checks after the restart: node-2's sessions are
	// back up and it programs routes again (the kernel keeping the old
	// routes must not hide a session stuck Idle).
	restarted := time.Now()
	eventually(t, "node-2's sessions Established and its routes programmed after its agent's restart", func() (bool, string) {
		out := n2.status(t, "-o", "json")
		var st struct {
			Peers []struct {
				Address, State string
			} `json:"peers"`
			Routes *struct {
				Programmed bool `json:"programmed"`
			} `json:"routes"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return false, fmt.Sprintf("%v\n%s", err, out)
		}
		up := 0
		for _, p := range st.Peers {
			if p.State == "Established" {
				up++
			}
		}
		return len(st.Peers) == 1 && st.Peers[0].Address == rr.addr.Addr().String() && up == 1 &&
			st.Routes != nil && st.Routes.Programmed, out
	})
	t.Logf("node-2 Established with the reflector and programming routes %v after its agent's restart", time.Since(restarted).Round(100*time.Millisecond))
	eventually(t, "the route reflector has its session with node-2 up again", func() (bool, string) {
		out := rr.status(t)
		up := upPeers(out)
		return len(up) == 2 && up["10.77.0.1"] != "" && up["10.77.0.2"] != "", out
	})
	if after := n2.routes(t); after != before {
		t.Errorf("node-2's routes changed across its agent's restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := ping(t, pods[0], addrs[1]); err != nil {
		t.Errorf("pods cannot talk after node-2's agent restarted: %v", err)
	}

	// An IPIP pool: the node gets a tunnel address from it (use Tunnel,
	// recorded in the Node). Where this kernel has no ipip module, the
	// node reports it as a condition and keeps routing the other pool.
	l.c.ctlStdin(`apiVersion: rhizome.io/v1
kind: IPPool
metadata:
  name: ipip-ippool
spec:
  cidr: 10.250.0.0/16
  ipipMode: Always
  natOutgoing: true
`, "apply", "-f", "-")
	var tunnelAddr netip.Addr
	eventually(t, "node-1 has a tunnel address from ipip-ippool", func() (bool, string) {
		y := l.c.ctl("get", "node", "node-1", "-o", "yaml")
		m := regexp.MustCompile(`ipv4TunnelAddr: (\S+)`).FindStringSubmatch(y)
		if m == nil {
			return false, y
		}
		tunnelAddr = netip.MustParseAddr(strings.Trim(m[1], `"'`))
		return inPool(tunnelAddr, "10.250.0.0/16"), y
	})
	if out := l.c.ctl("ipam", "show", "--ip", tunnelAddr.String()); !strings.Contains(out, "Tunnel") {
		t.Errorf("ipam show --ip %s does not show use Tunnel:\n%s", tunnelAddr, out)
	}
	if _, err := exec.Command("ip", "-n", n1.ns(), "link", "show", "tunl0").CombinedOutput(); err != nil {
		eventually(t, "node-1 reports that the kernel has no ipip", func() (bool, string) {
			y := l.c.ctl("get", "node", "node-1", "-o", "yaml")
			return strings.Contains(y, "IPIPUnavailable") && strings.Contains(y, "pools [ipip-ippool]: kernel has no ipip support"), y
		})
		if out := n1.status(t); !strings.Contains(out, "kernel has no ipip support") {
			t.Errorf("node status does not show the ipip problem:\n%s", out)
		}
	} else {
		eventually(t, "tunl0 on node-1 carries the tunnel address", func() (bool, string) {
			out := ipCmd(t, "-n", n1.ns(), "addr", "show", "tunl0")
			return strings.Contains(out, tunnelAddr.String()+"/32"), out
		})
	}
	if err := ping(t, pods[0], addrs[2]); err != nil {
		t.Errorf("with an IPIP pool added, the Never pool's pods cannot talk: %v", err)
	}

	// Seed 004's mode changes on the default pool: Always, CrossSubnet,
	// Never. Every change rewrites node-1's route to node-2's block and
	// leaves no route of the old mode behind.
	_, noIPIP := exec.Command("ip", "-n", n1.ns(), "link", "show", "tunl0").CombinedOutput()
	direct := fmt.Sprintf("%s via %s dev eth0", block(addrs[1]), l.nodes[1].addr.Addr())
	for _, mode := range []string{"Always", "CrossSubnet", "Never"} {
		l.c.ctl("patch", "ippool", "default-ipv4-ippool", "-p", fmt.Sprintf(`{"spec": {"ipipMode": %q}}`, mode))
		eventually(t, "node-1's route to node-2's block in mode "+mode, func() (bool, string) {
			out := n1.routes(t)
			has := strings.Count(out, block(addrs[1]).String()+" ")
			switch {
			case mode != "Always":
				return has == 1 && strings.Contains(out, direct), out
			case noIPIP != nil: // this kernel: reported, not installed
				st := n1.status(t)
				return has == 0 && strings.Contains(st, "not installed: "+block(addrs[1]).String()), out + st
			default:
				return has == 1 && strings.Contains(out, "dev tunl0 onlink"), out
			}
		})
	}

	// A VXLAN pool with BGP on: the VXLAN routes, computed from the
	// datastore, win over BGP's for the pool's blocks, which BGP still
	// advertises; back to Never, BGP's direct route returns.
	l.c.ctl("patch", "ippool", "default-ipv4-ippool", "-p", `{"spec": {"vxlanMode": "Always"}}`)
	eventually(t, "node-1 routes node-2's block through vxlan.rhizome with BGP on", func() (bool, string) {
		tun, _, y := l.vxlanRecord(l.nodes[1])
		out := n1.routes(t)
		return tun.IsValid() && strings.Count(out, block(addrs[1]).String()+" ") == 1 &&
			strings.Contains(out, fmt.Sprintf("%s via %s dev %s onlink", block(addrs[1]), tun, dataplane.VXLANDevice)), y + out
	})
	if err := ping(t, pods[0], addrs[1]); err != nil {
		t.Errorf("vxlanMode Always with BGP on: node-1's pod cannot reach node-2's: %v", err)
	}
	if _, body := l.nodes[1].agent.get("/status"); !strings.Contains(body, `"`+block(addrs[1]).String()+" via ") {
		t.Errorf("node-2 no longer advertises its block %s in vxlanMode Always:\n%s", block(addrs[1]), body)
	}
	l.c.ctl("patch", "ippool", "default-ipv4-ippool", "-p", `{"spec": {"vxlanMode": "Never"}}`)
	eventually(t, "node-1 routes node-2's block directly again", func() (bool, string) {
		out := n1.routes(t)
		_, err := exec.Command("ip", "-n", n1.ns(), "link", "show", "dev", dataplane.VXLANDevice).CombinedOutput()
		return err != nil && strings.Count(out, block(addrs[1]).String()+" ") == 1 && strings.Contains(out, direct), out
	})

	// The IPIP pool no longer selects node-1: its tunnel address is
	// released and the Node forgets it.
	l.c.ctl("patch", "ippool", "ipip-ippool", "-p", `{"spec": {"nodeSelector": "rack == 'none'"}}`)
	eventually(t, "node-1's tunnel address released", func() (bool, string) {
		y := l.c.ctl("get", "node", "node-1", "-o", "yaml")
		return !strings.Contains(y, "ipv4TunnelAddr"), y
	})
	if out := l.c.ctl("ipam", "show", "--ip", tunnelAddr.String()); strings.Contains(out, "Tunnel") {
		t.Errorf("the tunnel address %s is still allocated after the pool stopped selecting node-1:\n%s", tunnelAddr, out)
	}

	// Uninstall: rhizome-node --cleanup removes the routes it made (not
	// the pods' own) and the natOutgoing table.
	h, err := netns.GetFromPath(n1.cni.Host.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nat := dataplane.NewNATManager(h)
	if n, err := nat.NATRuleCount(); err != nil || n == 0 {
		t.Errorf("natOutgoing rules on node-1 before the clean-up: %d, %v; want some (natOutgoing pools)", n, err)
	}
	n1.agent.stop()
	// install-cni into this test's directories (never the host's), so the
	// clean-up has the node's CNI files to remove too.
	cniBin, cniConf := t.TempDir(), t.TempDir()
	dirs := []string{"--cni-bin-dir", cniBin, "--cni-conf-dir", cniConf, "--cni-socket", n1.agent.socket}
	if out, err := exec.Command(filepath.Join(binDir, "rhizome-node"), append([]string{"install-cni", "--src-dir", binDir}, dirs...)...).CombinedOutput(); err != nil {
		t.Fatalf("rhizome-node install-cni: %v\n%s", err, out)
	}
	if out, err := exec.Command("ip", append([]string{"netns", "exec", n1.ns(), filepath.Join(binDir, "rhizome-node"), "--cleanup"}, dirs...)...).CombinedOutput(); err != nil {
		t.Fatalf("rhizome-node --cleanup: %v\n%s", err, out)
	}
	for _, dir := range []string{cniBin, cniConf} {
		if left, _ := os.ReadDir(dir); len(left) > 0 {
			t.Errorf("rhizome-node --cleanup left files in %s: %v", dir, left)
		}
	}
	out = n1.routes(t)
	if strings.Contains(out, "via") || strings.Contains(out, "blackhole") || !strings.Contains(out, addrs[0].String()+" dev rz") {
		t.Errorf("after rhizome-node --cleanup node-1 should keep only its pod's route:\n%s", out)
	}
	if n, err := nat.NATRuleCount(); err != nil || n != 0 {
		t.Errorf("natOutgoing rules after the clean-up: %d, %v; want none", n, err)
	}
}

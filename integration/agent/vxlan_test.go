package agent_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/dataplane"
)

// vxlanPackets are the packets vxlan.rhizome on the node sent and
// received, as `ip -s link` counts them.
func (n *labNode) vxlanPackets(t testing.TB) (tx, rx uint64) {
	t.Helper()
	var links []struct {
		Stats64 struct {
			RX struct{ Packets uint64 } `json:"rx"`
			TX struct{ Packets uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	out := ipCmd(t, "-n", n.ns(), "-j", "-s", "link", "show", "dev", dataplane.VXLANDevice)
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -s link show %s: %v\n%s", dataplane.VXLANDevice, err, out)
	}
	return links[0].Stats64.TX.Packets, links[0].Stats64.RX.Packets
}

// vxlanRecord is the VXLAN tunnel address and MAC in the node's record.
func (l *lab) vxlanRecord(n *labNode) (netip.Addr, string, string) {
	y := l.c.ctl("get", "node", n.name, "-o", "yaml")
	a := regexp.MustCompile(`ipv4VXLANTunnelAddr: (\S+)`).FindStringSubmatch(y)
	m := regexp.MustCompile(`vxlanTunnelMACAddr: (\S+)`).FindStringSubmatch(y)
	if a == nil || m == nil {
		return netip.Addr{}, "", y
	}
	addr, _ := netip.ParseAddr(strings.Trim(a[1], `"'`))
	return addr, strings.Trim(m[1], `"'`), y
}

// TestPrivilegedVXLANNetworking runs three real agents with --networking
// vxlan (no BGP speaker) on a bridge, the default pool in vxlanMode
// Always: every node brings up vxlan.rhizome with a tunnel address from
// the pool and records it and its MAC in its Node; every node routes
// every other node's block via that node's tunnel address on
// vxlan.rhizome, computed from the datastore alone; pods on different
// nodes talk through the tunnel (its counters grow); a neighbour entry
// deleted by hand comes back, an agent restart changes nothing. In
// CrossSubnet the same-subnet nodes are routed on eth0 unencapsulated.
// Back to vxlanMode Never, the device, its routes and the tunnel
// addresses go.
func TestPrivilegedVXLANNetworking(t *testing.T) {
	l := newLab(t, 3, "--networking", "vxlan")
	l.c.ctl("patch", "ippool", "default-ipv4-ippool", "-p", `{"spec": {"vxlanMode": "Always"}}`)

	tunnels := make([]netip.Addr, len(l.nodes))
	for i, n := range l.nodes {
		eventually(t, n.name+" records its VXLAN tunnel address and MAC", func() (bool, string) {
			a, mac, y := l.vxlanRecord(n)
			tunnels[i] = a
			if !inPool(a, "10.244.0.0/16") {
				return false, y
			}
			out := ipCmd(t, "-n", n.ns(), "addr", "show", "dev", dataplane.VXLANDevice)
			return strings.Contains(out, "link/ether "+mac) && strings.Contains(out, a.String()+"/32"), y + out
		})
	}
	if out := l.c.ctl("ipam", "show", "--ip", tunnels[0].String()); !strings.Contains(out, "Tunnel") {
		t.Errorf("ipam show --ip %s does not show use Tunnel:\n%s", tunnels[0], out)
	}

	pods := make([]*pod, len(l.nodes))
	addrs := make([]netip.Addr, len(l.nodes))
	for i, n := range l.nodes {
		pods[i] = n.rt.pod("default", "web-"+n.name)
		addrs[i] = n.rt.mustAdd(pods[i])
		if block(addrs[i]) != block(tunnels[i]) {
			t.Fatalf("pod on %s got %s, outside its node's block %s", n.name, addrs[i], block(tunnels[i]))
		}
	}
	for i, n := range l.nodes {
		eventually(t, n.name+" routes every other node's block through vxlan.rhizome", func() (bool, string) {
			out := n.routes(t)
			for j := range l.nodes {
				want := fmt.Sprintf("%s via %s dev %s onlink", block(addrs[j]), tunnels[j], dataplane.VXLANDevice)
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
	n1 := l.nodes[0]
	t.Logf("ip route show proto 94 on node-1:\n%s", n1.routes(t))
	t.Logf("ip neigh / bridge fdb on node-1's %s:\n%s%s", dataplane.VXLANDevice,
		ipCmd(t, "-n", n1.ns(), "neigh", "show", "dev", dataplane.VXLANDevice),
		must(exec.Command("bridge", "-n", n1.ns(), "fdb", "show", "dev", dataplane.VXLANDevice).CombinedOutput()))

	tx0, rx0 := n1.vxlanPackets(t)
	for i := range l.nodes {
		for j := range l.nodes {
			if i != j {
				if err := ping(t, pods[i], addrs[j]); err != nil {
					t.Fatalf("pod %s on %s cannot reach pod %s on %s: %v", addrs[i], l.nodes[i].name, addrs[j], l.nodes[j].name, err)
				}
			}
		}
	}
	tx1, rx1 := n1.vxlanPackets(t)
	t.Logf("%s on node-1: tx %d -> %d packets, rx %d -> %d", dataplane.VXLANDevice, tx0, tx1, rx0, rx1)
	// node-1's pod pings two pods and answers two: at least 4 each way.
	if tx1-tx0 < 4 || rx1-rx0 < 4 {
		t.Errorf("%s on node-1 sent %d and received %d packets during the pings; want 4 or more each", dataplane.VXLANDevice, tx1-tx0, rx1-rx0)
	}
	out := n1.status(t)
	if !strings.Contains(out, "BGP is off on this node (networking: vxlan): routes come from the datastore.") {
		t.Errorf("node status with --networking vxlan:\n%s", out)
	}

	// A neighbour entry deleted by hand comes back; a restarted agent
	// adopts the device, its routes and entries as they are.
	ipCmd(t, "-n", n1.ns(), "neigh", "del", tunnels[1].String(), "dev", dataplane.VXLANDevice)
	eventually(t, "node-1 repairs the neighbour entry of node-2's tunnel address", func() (bool, string) {
		out := ipCmd(t, "-n", n1.ns(), "neigh", "show", "dev", dataplane.VXLANDevice)
		return strings.Contains(out, tunnels[1].String()+" lladdr") && strings.Contains(out, "PERMANENT"), out
	})
	n2 := l.nodes[1]
	before := n2.routes(t) + ipCmd(t, "-n", n2.ns(), "-d", "link", "show", "dev", dataplane.VXLANDevice)
	n2.agent.stop()
	n2.agent.start()
	time.Sleep(2 * time.Second)
	if after := n2.routes(t) + ipCmd(t, "-n", n2.ns(), "-d", "link", "show", "dev", dataplane.VXLANDevice); after != before {
		t.Errorf("node-2's routes or vxlan.rhizome changed across its agent's restart:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := ping(t, pods[0], addrs[1]); err != nil {
		t.Errorf("pods cannot talk after node-2's agent restarted: %v", err)
	}

	// CrossSubnet: the nodes share eth0's subnet, so their blocks are
	// routed on it unencapsulated; the device stays for other subnets.
	l.c.ctl("patch", "ippool", "default-ipv4-ippool", "-p", `{"spec": {"vxlanMode": "CrossSubnet"}}`)
	eventually(t, "node-1 routes node-2's and node-3's blocks on eth0 in CrossSubnet", func() (bool, string) {
		out := n1.routes(t)
		for j := 1; j < len(l.nodes); j++ {
			if !strings.Contains(out, fmt.Sprintf("%s via %s dev eth0", block(addrs[j]), l.nodes[j].addr.Addr())) {
				return false, out
			}
		}
		return !strings.Contains(out, dataplane.VXLANDevice), out
	})
	tx0, rx0 = n1.vxlanPackets(t)
	for j := 1; j < len(l.nodes); j++ {
		if err := ping(t, pods[0], addrs[j]); err != nil {
			t.Errorf("CrossSubnet: node-1's pod cannot reach %s on %s: %v", addrs[j], l.nodes[j].name, err)
		}
	}
	if tx1, rx1 := n1.vxlanPackets(t); tx1 != tx0 || rx1 != rx0 {
		t.Errorf("CrossSubnet: same-subnet pings went through %s (tx %d -> %d, rx %d -> %d)", dataplane.VXLANDevice, tx0, tx1, rx0, rx1)
	}

	// rhizome-node --cleanup (into this test's CNI directories, never the
	// host's) removes the device; the agent's next start brings it back.
	n3 := l.nodes[2]
	n3.agent.stop()
	cniBin, cniConf := t.TempDir(), t.TempDir()
	dirs := []string{"--cni-bin-dir", cniBin, "--cni-conf-dir", cniConf, "--cni-socket", n3.agent.socket}
	if out, err := exec.Command("ip", append([]string{"netns", "exec", n3.ns(), filepath.Join(binDir, "rhizome-node"), "--cleanup"}, dirs...)...).CombinedOutput(); err != nil {
		t.Fatalf("rhizome-node --cleanup: %v\n%s", err, out)
	}
	if out, err := exec.Command("ip", "-n", n3.ns(), "link", "show", "dev", dataplane.VXLANDevice).CombinedOutput(); err == nil {
		t.Errorf("rhizome-node --cleanup left %s:\n%s", dataplane.VXLANDevice, out)
	}
	n3.agent.start()
	eventually(t, "node-3's agent brings vxlan.rhizome back", func() (bool, string) {
		out, err := exec.Command("ip", "-n", n3.ns(), "addr", "show", "dev", dataplane.VXLANDevice).CombinedOutput()
		return err == nil && strings.Contains(string(out), tunnels[2].String()+"/32"), string(out)
	})

	// vxlanMode Never: no pool needs VXLAN any more. The device goes and
	// with it every route through it; the tunnel addresses are released
	// and the records forget them.
	l.c.ctl("patch", "ippool", "default-ipv4-ippool", "-p", `{"spec": {"vxlanMode": "Never"}}`)
	for _, n := range l.nodes {
		eventually(t, n.name+" removes vxlan.rhizome and its tunnel address", func() (bool, string) {
			y := l.c.ctl("get", "node", n.name, "-o", "yaml")
			link, err := exec.Command("ip", "-n", n.ns(), "link", "show", "dev", dataplane.VXLANDevice).CombinedOutput()
			routes := n.routes(t)
			return err != nil && !strings.Contains(routes, dataplane.VXLANDevice) && !strings.Contains(y, "VXLANTunnel") &&
				!strings.Contains(y, "vxlanTunnel"), y + string(link) + routes
		})
	}
	if out := l.c.ctl("ipam", "show", "--ip", tunnels[0].String()); strings.Contains(out, "Tunnel") {
		t.Errorf("the tunnel address %s is still allocated after vxlanMode Never:\n%s", tunnels[0], out)
	}
}

func must(out []byte, err error) string {
	if err != nil {
		return fmt.Sprintf("%s(%v)\n", out, err)
	}
	return string(out)
}

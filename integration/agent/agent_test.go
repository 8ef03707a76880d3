package agent_test

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// TestPrivilegedAgentLifecycle is a node's life without Kubernetes: the
// agent registers the node and creates the default pool, serves ADD (the
// same address for a repeated ADD), keeps everything across a restart,
// makes the plugin fail fast while it is down, and finishes a DEL the
// runtime retries after the restart.
func TestPrivilegedAgentLifecycle(t *testing.T) {
	needRoot(t)
	c := newCluster(t)
	a := c.agent("node-a", "--ip", "10.99.0.1/24")

	node := c.ctl("get", "node", "node-a", "-o", "yaml")
	for _, want := range []string{"ipv4Address: 10.99.0.1/24", "agentVersion: dev", "lastHeartbeat:"} {
		if !strings.Contains(node, want) {
			t.Errorf("Node node-a lacks %q:\n%s", want, node)
		}
	}
	if pools := c.ctl("get", "ippool", "-o", "wide"); !strings.Contains(pools, "default-ipv4-ippool   10.244.0.0/16   26          true   Never") {
		t.Errorf("the agent should create default-ipv4-ippool from RHIZOME_DEFAULT_IPV4_POOL_CIDR:\n%s", pools)
	}

	rt := a.runtime()
	p1 := rt.pod("default", "web-0")
	ip1 := rt.mustAdd(p1)
	if !netip.MustParsePrefix("10.244.0.0/16").Contains(ip1) {
		t.Fatalf("ADD gave %s, outside the default pool", ip1)
	}
	if again := rt.mustAdd(p1); again != ip1 {
		t.Errorf("a repeated ADD gave %s, the first gave %s", again, ip1)
	}
	if err := rt.cni.CheckNetworkList(t.Context(), rt.conf, p1.RT); err != nil {
		t.Errorf("CHECK after ADD: %v", err)
	}
	blocks := c.ctl("ipam", "show", "--node", "node-a")
	if !strings.Contains(blocks, "Node node-a: 1 block, 1 address.") || !strings.Contains(blocks, ip1.String()) {
		t.Fatalf("ipam show --node node-a:\n%s", blocks)
	}

	// Down: the plugin fails fast and says why.
	a.stop()
	if _, err := os.Stat(a.socket); !os.IsNotExist(err) {
		t.Errorf("the socket %s is still there after a clean stop (%v)", a.socket, err)
	}
	p2 := rt.pod("default", "web-1")
	start := time.Now()
	_, err := rt.add(p2)
	if err == nil || !strings.Contains(err.Error(), "rhizome-node is not reachable at "+a.socket) {
		t.Errorf("ADD with the agent down: %v, want it to say the agent is not reachable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("ADD with the agent down took %s: it should fail fast", d)
	}
	if err := rt.del(p1); err == nil {
		t.Errorf("DEL with the agent down succeeded: the address would leak (the runtime retries a failed DEL)")
	}

	// Up again: nothing was released or claimed anew.
	a.start()
	if again := c.ctl("ipam", "show", "--node", "node-a"); again != blocks {
		t.Errorf("the restart changed the node's IPAM:\nbefore:\n%s\nafter:\n%s", blocks, again)
	}
	ip2 := rt.mustAdd(p2)
	if b1, b2 := blockOf(ip1), blockOf(ip2); b1 != b2 {
		t.Errorf("after the restart the pod got %s in block %s, not the node's block %s", ip2, b2, b1)
	}
	if err := rt.del(p1); err != nil {
		t.Fatalf("the retried DEL after the restart: %v", err)
	}
	if out := c.ctl("ipam", "show", "--ip", ip1.String()); !strings.HasPrefix(out, ip1.String()+" is free") {
		t.Errorf("after DEL, %s should be free:\n%s", ip1, out)
	}
	if err := rt.del(p1); err != nil {
		t.Errorf("a second DEL must succeed too (DEL is idempotent): %v", err)
	}

	code, metrics := a.get("/metrics")
	if code != http.StatusOK || !strings.Contains(metrics, `rhizome_cni_requests_total{op="add",result="ok"} 1`) {
		t.Errorf("/metrics should count the ADD since the restart (%d):\n%s", code, grepLines(metrics, "rhizome_"))
	}
	if code, body := a.get("/livez"); code != http.StatusOK {
		t.Errorf("/livez = %d %s", code, body)
	}
}

// TestPrivilegedControllerReleasesGoneNode: without Kubernetes, a node
// whose agent stopped beating for the TTL is gone; the elected agent frees
// its addresses and blocks.
func TestPrivilegedControllerReleasesGoneNode(t *testing.T) {
	needRoot(t)
	c := newCluster(t)
	ttl := []string{"--node-ttl", "3s", "--controller-interval", "300ms"}
	a := c.agent("node-a", append([]string{"--ip", "10.99.0.1/24"}, ttl...)...)
	b := c.agent("node-b", append([]string{"--ip", "10.99.0.2/24"}, ttl...)...)
	rtA, rtB := a.runtime(), b.runtime()
	ipA := rtA.mustAdd(rtA.pod("default", "a-0"))
	ipB := rtB.mustAdd(rtB.pod("default", "b-0"))
	if blockOf(ipA) == blockOf(ipB) {
		t.Fatalf("both nodes allocated from block %s", blockOf(ipA))
	}

	b.kill() // node-b is lost: no clean stop, no more heartbeats
	// If node-b was the elected one, node-a takes over when its etcd lease
	// (15s) runs out.
	deadline := time.Now().Add(30 * time.Second)
	var out string
	for time.Now().Before(deadline) {
		if out = c.ctl("ipam", "show", "--node", "node-b"); out == "Node node-b holds no blocks and no addresses.\n" {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out != "Node node-b holds no blocks and no addresses.\n" {
		t.Fatalf("node-b's addresses and blocks not released 30s after it stopped (TTL 3s):\n%s\nnode-a's log:\n%s", out, a.logs())
	}
	if !strings.Contains(a.logs(), "released a gone node's addresses and blocks") {
		t.Errorf("node-a's log does not say it released node-b:\n%s", a.logs())
	}
	// node-a is untouched.
	if out := c.ctl("ipam", "show", "--ip", ipA.String()); !strings.HasPrefix(out, ipA.String()+" is in use") {
		t.Errorf("node-a's pod address was touched:\n%s", out)
	}
}

func blockOf(a netip.Addr) netip.Prefix {
	p, _ := a.Prefix(26)
	return p
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return fmt.Sprint(strings.Join(out, "\n"))
}

// An agent whose etcd is gone still stops promptly and cleanly on SIGTERM
// (a node drained while the datastore is down): the controller election
// used to hang resigning on an unreachable etcd.
func TestPrivilegedAgentStopsWithoutEtcd(t *testing.T) {
	needRoot(t)
	c := newCluster(t)
	a := c.agent("node-a")
	b := c.agent("node-b") // one of the two campaigns without winning
	c.etcd.Stop()
	time.Sleep(time.Second)
	for _, ag := range []*agent{a, b} {
		start := time.Now()
		ag.stop() // fails the test unless it exits cleanly within 10s
		if d := time.Since(start); d > 8*time.Second {
			t.Errorf("rhizome-node %s took %s to stop without etcd", ag.name, d)
		}
	}
}

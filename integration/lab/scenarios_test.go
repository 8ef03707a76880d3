package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func podByName(l *Lab, name string) Pod {
	for _, p := range l.State().Pods {
		if p.Name == name {
			return p
		}
	}
	return Pod{}
}

func nodeByName(l *Lab, name string) NodeState {
	for _, n := range l.State().Nodes {
		if n.Name == name {
			return n
		}
	}
	return NodeState{}
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
	}
	t.Fatalf("%s: not within 90s; last seen:\n%s", what, last)
}

// Scenario 8: agents restart (a DaemonSet update) while pods on different
// nodes keep opening TCP connections to each other: none may fail, since
// routes stay in the kernel and peers keep the restarting node's routes
// (graceful restart).
func TestPrivilegedLabAgentRestartUnderTraffic(t *testing.T) {
	l, ctx := upLab(t)
	waitConnected(t, ctx, l, "before the restarts")
	from := podByName(l, "nginx-0") // kube-node-0, rack 0
	targets := []Pod{podByName(l, "nginx-1"), podByName(l, "nginx-2"), podByName(l, "nginx-3")}
	tctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	tries, fails := 0, []string{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for tctx.Err() == nil {
			for _, to := range targets {
				err := ask(ctx, from.NetNS, to)
				mu.Lock()
				tries++
				if err != nil {
					fails = append(fails, fmt.Sprintf("%s -> %s: %v", from.Name, to.Name, err))
				}
				mu.Unlock()
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	for _, name := range []string{"kube-node-0", "router", "kube-node-2"} {
		if err := l.Restart(ctx, name); err != nil {
			t.Fatalf("restart the agent on %s: %v", name, err)
		}
		time.Sleep(2 * time.Second) // BGP re-established, routes refreshed
	}
	stop()
	wg.Wait()
	t.Logf("%d TCP connections across three agent restarts, %d failed", tries, len(fails))
	if len(fails) > 0 || tries < 100 {
		t.Errorf("connections failed during the agent restarts (%d of %d): %v", len(fails), tries, fails)
	}
	waitConnected(t, ctx, l, "after the restarts")
}

var wideRow = regexp.MustCompile(`(?m)^\| (\S+)\s+\| [a-z -]+?\s+\| up\s+\|[^|]*\|[^|]*\| (\d+)\s+\|`)

// upPeersAS are the established sessions of `node status -o wide`:
// address -> the peer's AS.
func upPeersAS(out string) map[string]string {
	m := map[string]string{}
	for _, r := range wideRow.FindAllStringSubmatch(out, -1) {
		m[r[1]] = r[2]
	}
	return m
}

// Scenario 6 (seed 004, per-node AS): kube-node-3 moves to AS 64514; its
// session with the route reflector becomes eBGP and routes still flow.
func TestPrivilegedLabPerNodeAS(t *testing.T) {
	l, ctx := upLab(t)
	waitConnected(t, ctx, l, "before the AS change")
	if _, err := l.Ctl("patch", "node", "kube-node-3", "-p", `{"spec": {"bgp": {"asNumber": "64514"}}}`); err != nil {
		t.Fatal(err)
	}
	n3, router := nodeByName(l, "kube-node-3"), nodeByName(l, "router")
	eventually(t, "the router's session with kube-node-3 is up with AS 64514", func() (bool, string) {
		out, err := l.nodeStatusWide("router")
		return err == nil && upPeersAS(out)[n3.Addr.Addr().String()] == "64514", out
	})
	eventually(t, "kube-node-3 sees the router in AS 64512", func() (bool, string) {
		out, err := l.nodeStatusWide("kube-node-3")
		return err == nil && upPeersAS(out)[router.Addr.Addr().String()] == "64512", out
	})
	if out, err := l.Ctl("get", "node", "kube-node-3", "-o", "wide"); err != nil || !strings.Contains(out, "64514") {
		t.Errorf("rhizomectl get node kube-node-3 -o wide does not show AS 64514 (%v):\n%s", err, out)
	}
	waitConnected(t, ctx, l, "after kube-node-3 moved to AS 64514")
}

// Scenario 9: a node is lost (its agent killed, its heartbeat stops).
// Without Kubernetes the controller releases its addresses and blocks once
// the heartbeat is older than the node TTL (30 s in the lab) and keeps the
// Node, which may come back; the operator then deletes the Node, as with
// calicoctl delete node, and its sessions and routes go everywhere.
func TestPrivilegedLabNodeRemoval(t *testing.T) {
	l, ctx := upLab(t)
	waitConnected(t, ctx, l, "before the node is lost")
	var gone []Pod
	for _, p := range l.State().Pods {
		if p.Node == "kube-node-3" {
			gone = append(gone, p)
		}
	}
	if len(gone) == 0 {
		t.Fatal("no pod on kube-node-3")
	}
	block, _ := gone[0].IP.Prefix(26)
	if err := l.Kill("kube-node-3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "kube-node-3's block is released by the controller", func() (bool, string) {
		out, err := l.Ctl("ipam", "show", "--show-blocks")
		return err == nil && !strings.Contains(out, "kube-node-3") && !strings.Contains(out, block.String()), out
	})
	for _, p := range gone {
		if out, err := l.Ctl("ipam", "show", "--ip", p.IP.String()); err != nil || strings.Contains(out, p.Name) {
			t.Errorf("%s of the lost node's pod %s is still allocated (%v):\n%s", p.IP, p.Name, err, out)
		}
	}
	if _, err := l.Ctl("delete", "node", "kube-node-3"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"router", "kube-node-0", "kube-node-1", "kube-node-2"} {
		eventually(t, n+" has no route to the lost node's block", func() (bool, string) {
			out, err := l.Routes(n)
			return err == nil && !strings.Contains(out, block.String()+" "), out
		})
	}
	out, err := l.NodeStatus("router")
	if err != nil || strings.Contains(out, nodeByName(l, "kube-node-3").Addr.Addr().String()+" ") {
		t.Errorf("the route reflector still has a session with the deleted node (%v):\n%s", err, out)
	}
}

// Scenario 7 (seed 004, natOutgoing): a server outside the pools, on rack
// 0, sees a rack-1 pod's connection come from the pod's node while the
// pool has natOutgoing, and from the pod itself once it is turned off.
func TestPrivilegedLabNATOutgoing(t *testing.T) {
	l, ctx := upLab(t)
	waitConnected(t, ctx, l, "before")
	server, err := l.AddServer("server", "rack-0", 200, 8080)
	if err != nil {
		t.Fatal(err)
	}
	pod := podByName(l, "nginx-2") // kube-node-2, rack 1
	node := nodeByName(l, pod.Node)
	addr := server.String() + ":8080"
	eventually(t, "with natOutgoing the server sees the node's address", func() (bool, string) {
		got, err := Ask(ctx, pod.NetNS, addr)
		return err == nil && got == node.Addr.Addr().String(), fmt.Sprintf("%q %v", got, err)
	})
	if _, err := l.Ctl("patch", "ippool", "rack-1-ippool", "-p", `{"spec": {"natOutgoing": false}}`); err != nil {
		t.Fatal(err)
	}
	eventually(t, "without natOutgoing the server sees the pod's own address", func() (bool, string) {
		got, err := Ask(ctx, pod.NetNS, addr)
		return err == nil && got == pod.IP.String(), fmt.Sprintf("%q %v", got, err)
	})
}

// Scenario 4 (seed 004, pool migration): a new pool for rack 0, the old
// one disabled; pods recreated one by one get addresses from the new pool
// while the others keep working; the old pool is then deleted and
// `rhizomectl ipam check` finds nothing wrong.
func TestPrivilegedLabPoolMigration(t *testing.T) {
	l, ctx := upLab(t)
	waitConnected(t, ctx, l, "before the migration")
	if _, err := l.ctl(`apiVersion: rhizome.io/v1
kind: IPPool
metadata:
  name: rack-0-ippool-v2
spec:
  cidr: 192.168.10.0/24
  blockSize: 28
  ipipMode: Never
  natOutgoing: true
  nodeSelector: rack == "0"
`, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Ctl("patch", "ippool", "rack-0-ippool", "-p", `{"spec": {"disabled": true}}`); err != nil {
		t.Fatal(err)
	}
	newPool := netip.MustParsePrefix("192.168.10.0/24")
	var rack0 []Pod
	for _, p := range l.State().Pods {
		if p.Node == "kube-node-0" || p.Node == "kube-node-1" {
			rack0 = append(rack0, p)
		}
	}
	for i, old := range rack0 {
		if err := l.DeletePod(ctx, old.Name); err != nil {
			t.Fatal(err)
		}
		p, err := l.AddPod(ctx, old.Name, old.Namespace, old.Node, old.Port)
		if err != nil {
			t.Fatal(err)
		}
		if !newPool.Contains(p.IP) {
			t.Errorf("recreated pod %s got %s, want an address of rack-0-ippool-v2 %s", p.Name, p.IP, newPool)
		}
		// Pods not yet recreated still have old addresses and still work.
		waitConnected(t, ctx, l, fmt.Sprintf("after recreating %d of %d rack-0 pods", i+1, len(rack0)))
	}
	if out, err := l.Ctl("delete", "ippool", "rack-0-ippool"); err != nil {
		t.Fatalf("delete the old pool: %v\n%s", err, out)
	}
	waitConnected(t, ctx, l, "after deleting the old pool")
	if out, err := l.Ctl("ipam", "check"); err != nil || !strings.Contains(out, "No problems found.") {
		t.Errorf("ipam check after the migration (%v):\n%s", err, out)
	}
}

// Scenario 10: 500 pods created and deleted across the nodes through
// libcni; afterwards `rhizomectl ipam check` finds no problem and no pod's
// link or route is left on any node.
func TestPrivilegedLabChurn(t *testing.T) {
	l, ctx := upLab(t)
	nodes := l.podNodes()
	start := time.Now()
	const pods = 500
	for i := range pods {
		name := fmt.Sprintf("churn-%d", i)
		if _, err := l.AddPod(ctx, name, "churn", nodes[i%len(nodes)], 0); err != nil {
			t.Fatal(err)
		}
		if i >= 20 { // keep about 20 alive at a time
			if err := l.DeletePod(ctx, fmt.Sprintf("churn-%d", i-20)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := pods - 20; i < pods; i++ {
		if err := l.DeletePod(ctx, fmt.Sprintf("churn-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d pods added and deleted in %s", pods, time.Since(start).Round(time.Millisecond))
	out, err := l.Ctl("ipam", "check")
	if err != nil {
		t.Fatalf("ipam check: %v\n%s", err, out)
	}
	t.Logf("rhizomectl ipam check:\n%s", out)
	if !strings.Contains(out, "No problems found.") {
		t.Errorf("ipam check found problems after the churn:\n%s", out)
	}
	usage, err := l.Ctl("ipam", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		want := 0 // the workload's pods stay
		for _, p := range l.State().Pods {
			if p.Node == n {
				want++
			}
		}
		routes, err := l.Routes(n)
		if err != nil {
			t.Fatal(err)
		}
		if c := strings.Count(routes, "scope link"); c != want {
			t.Errorf("%s has %d pod routes after the churn, want %d (its workload pods):\n%s", n, c, want, routes)
		}
		links, err := exec.Command("ip", "-n", nodeByName(l, n).NetNS, "-o", "link", "show").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		if c := strings.Count(string(links), ": rz"); c != want {
			t.Errorf("%s has %d pod links after the churn, want %d:\n%s", n, c, want, links)
		}
	}
	t.Logf("rhizomectl ipam show:\n%s", usage)
}

// Scenario 3 (seed 004, route reflector): the lab starts with the
// node-to-node mesh (the router a plain member), then the operator turns
// the mesh off and makes the router the reflector while pods keep
// connecting across racks. Sessions become client <-> reflector only, every
// pair connects afterwards, and the connections that failed during the
// switch are counted: there must be none, since every agent keeps its
// learned routes while its sessions change until BGP has settled again.
func TestPrivilegedLabMeshToRouteReflector(t *testing.T) {
	topo := Seed000()
	topo.Router.RouteReflectorClusterID = ""
	topo.Resources = topo.Resources[strings.Index(topo.Resources, "---\n")+4:] // no BGPConfiguration: the mesh is on
	l, ctx := upLabWith(t, topo)
	waitConnected(t, ctx, l, "with the mesh")
	if out, err := l.NodeStatus("kube-node-0"); err != nil || strings.Count(out, "node-to-node mesh") != 4 {
		t.Fatalf("kube-node-0 should have 4 mesh sessions (3 nodes and the router) (%v):\n%s", err, out)
	}
	// Both ways across the racks, and within rack 0.
	pairs := [][2]Pod{{podByName(l, "nginx-0"), podByName(l, "nginx-2")}, {podByName(l, "nginx-3"), podByName(l, "nginx-1")},
		{podByName(l, "nginx-1"), podByName(l, "nginx-4")}}
	tctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	tries, fails := make([]int, len(pairs)), make([][]string, len(pairs))
	for i, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tctx.Err() == nil {
				err := ask(ctx, p[0].NetNS, p[1])
				tries[i]++
				if err != nil {
					fails[i] = append(fails[i], time.Now().Format("15:04:05.000")+" "+err.Error())
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	if _, err := l.ctl("apiVersion: rhizome.io/v1\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMeshEnabled: false}\n", "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Ctl("patch", "node", "router", "-p", `{"spec": {"bgp": {"routeReflectorClusterID": "244.0.0.1"}}}`); err != nil {
		t.Fatal(err)
	}
	router := nodeByName(l, "router").Addr.Addr().String()
	for _, n := range []string{"kube-node-0", "kube-node-1", "kube-node-2", "kube-node-3"} {
		eventually(t, n+" peers with the reflector only", func() (bool, string) {
			out, err := l.NodeStatus(n)
			return err == nil && strings.Count(out, "| up ") == 1 && strings.Contains(out, "| "+router+" ") && strings.Contains(out, "route reflector"), out
		})
	}
	time.Sleep(2 * time.Second)
	stop()
	wg.Wait()
	for i, p := range pairs {
		t.Logf("during the switch from the mesh to the route reflector: %d of %d connections from %s to %s failed", len(fails[i]), tries[i], p[0].Name, p[1].Name)
		if len(fails[i]) > 0 {
			t.Errorf("%s -> %s lost connections during the switch:\n%s", p[0].Name, p[1].Name, strings.Join(fails[i], "\n"))
		}
	}
	waitConnected(t, ctx, l, "after the switch to the route reflector")
}

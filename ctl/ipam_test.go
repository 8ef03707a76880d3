package ctl_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/ipam"
)

// The seed 000 cluster with pods: the rack pools select nodes by label,
// kube-node-0 and kube-node-1 (rack 0) and kube-node-2 (rack 1) run pods
// through their own allocators, and an IPReservation keeps ten addresses of
// rack 0 out of automatic allocation.
const seedNodes = `apiVersion: rhizome.io/v1
kind: Node
metadata:
  name: kube-node-0
  labels: {rack: "0"}
---
apiVersion: rhizome.io/v1
kind: Node
metadata:
  name: kube-node-1
  labels: {rack: "0"}
---
apiVersion: rhizome.io/v1
kind: Node
metadata:
  name: kube-node-2
  labels: {rack: "1"}
---
apiVersion: rhizome.io/v1
kind: IPReservation
metadata:
  name: rack-0-gateways
spec:
  reservedCIDRs: ["192.168.0.240-192.168.0.249"]
`

type pod struct{ node, name string }

// ipamCluster applies the seed's pools and nodes and starts pods in order;
// it returns each pod's address.
func ipamCluster(t *testing.T, c *cli, pods []pod) map[string]netip.Addr {
	t.Helper()
	c.ok(rack0Pool+"---\n"+rack1Pool+"---\n"+seedNodes, "apply", "-f", "-")
	ctx := context.Background()
	store := c.etcd.Store(t)
	allocators := map[string]*ipam.Allocator{}
	addrs := map[string]netip.Addr{}
	for _, p := range pods {
		a := allocators[p.node]
		if a == nil {
			var err error
			if a, err = ipam.NewAllocator(ctx, store, p.node); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(a.Close)
			allocators[p.node] = a
		}
		got, err := a.AutoAssign(ctx, ipam.Request{Handle: "k8s-pod-network." + p.name, Namespace: "default", Pod: p.name, Count: 1})
		if err != nil {
			t.Fatalf("allocate for %s on %s: %v", p.name, p.node, err)
		}
		addrs[p.name] = got[0].Addr
	}
	return addrs
}

var seedPods = []pod{
	{"kube-node-0", "nginx-a"}, {"kube-node-0", "nginx-b"}, {"kube-node-1", "nginx-c"},
	{"kube-node-2", "nginx-d"}, {"kube-node-2", "nginx-e"},
}

// TestIPAMShow checks the numbers an operator reads in ipam show against
// what the allocators handed out: five pods, two nodes of rack 0 with a
// block each, one node of rack 1.
func TestIPAMShow(t *testing.T) {
	c := newCLI(t)
	addrs := ipamCluster(t, c, seedPods)
	for name, a := range addrs {
		want := "192.168.0."
		if name == "nginx-d" || name == "nginx-e" {
			want = "192.168.1."
		}
		if !strings.HasPrefix(a.String(), want) {
			t.Errorf("%s got %s, want an address of %s0/24 (its node's rack pool)", name, a, want)
		}
	}

	// The calicoctl ipam show layout. rack 0: 256 addresses, 3 in use,
	// network and broadcast plus ten reserved, the rest free; rack 1: 2 in
	// use, network and broadcast reserved.
	wantOutput(t, "ipam show", c.ok("", "ipam", "show"), ""+
		"GROUPING   CIDR             POOL            IPS TOTAL   IPS IN USE   IPS RESERVED   IPS FREE\n"+
		"IP Pool    192.168.0.0/24   rack-0-ippool   256         3 (1%)       12 (5%)        241 (94%)\n"+
		"IP Pool    192.168.1.0/24   rack-1-ippool   256         2 (1%)       2 (1%)         252 (98%)\n")

	out := c.ok("", "ipam", "show", "--show-blocks")
	rows := strings.Split(strings.TrimSpace(out), "\n")
	var blockRows []string
	for _, r := range rows {
		if strings.HasPrefix(r, "Block ") {
			blockRows = append(blockRows, strings.Join(strings.Fields(r), " "))
		}
	}
	if len(blockRows) != 3 {
		t.Fatalf("ipam show --show-blocks: want 3 block rows (one per node that allocated), got:\n%s", out)
	}
	for _, p := range []struct{ pod, node string }{{"nginx-a", "kube-node-0"}, {"nginx-c", "kube-node-1"}, {"nginx-d", "kube-node-2"}} {
		block := blockOf(addrs[p.pod])
		found := false
		for _, r := range blockRows {
			if f := strings.Fields(r); f[1] == block {
				found = true
				if f[3] != p.node {
					t.Errorf("block %s (of %s) should be affine to %s: %q", block, p.pod, p.node, r)
				}
			}
		}
		if !found {
			t.Errorf("no row for block %s (holding %s):\n%s", block, p.pod, out)
		}
	}

	// --ip: an owned address, a free one, a reserved one, one outside the pools.
	b := addrs["nginx-b"]
	wantOutput(t, "ipam show --ip (in use)", c.ok("", "ipam", "show", "--ip", b.String()), ""+
		b.String()+" is in use\n"+
		"  namespace:  default\n"+
		"  pod:        nginx-b\n"+
		"  handle:     k8s-pod-network.nginx-b\n"+
		"  node:       kube-node-0\n"+
		"  use:        Workload\n"+
		"  seq:        2\n"+
		"  block:      "+blockOf(b)+" (affinity kube-node-0)\n"+
		"  pool:       rack-0-ippool (192.168.0.0/24)\n")
	if free := c.ok("", "ipam", "show", "--ip", "192.168.1.100"); !strings.HasPrefix(free, "192.168.1.100 is free") {
		t.Errorf("ipam show --ip 192.168.1.100 should say the address is free:\n%s", free)
	}
	if res := c.ok("", "ipam", "show", "--ip", "192.168.0.245"); !strings.HasPrefix(res, "192.168.0.245 is reserved") ||
		!strings.Contains(res, "IPReservation (192.168.0.240-192.168.0.249)") {
		t.Errorf("ipam show --ip 192.168.0.245 should say an IPReservation reserves it:\n%s", res)
	}
	if out := c.ok("", "ipam", "show", "--ip", "10.1.2.3"); !strings.HasPrefix(out, "10.1.2.3 is outside every IP pool") {
		t.Errorf("ipam show --ip 10.1.2.3 should say it is in no pool:\n%s", out)
	}
	c.fails("", []string{"ipam", "show", "--ip", "300.1.1.1"}, `--ip "300.1.1.1" is not an IP address`)

	// --node: the node's block and both of its pods, nothing of others.
	a := addrs["nginx-a"]
	wantOutput(t, "ipam show --node kube-node-0", c.ok("", "ipam", "show", "--node", "kube-node-0"), ""+
		"Node kube-node-0: 1 block, 2 addresses.\n"+
		"\n"+
		"BLOCK            POOL            IPS TOTAL   IPS IN USE   IPS RESERVED   IPS FREE\n"+
		blockOf(a)+"   rack-0-ippool   64          2 (3%)       1 (2%)         61 (95%)\n"+
		"\n"+
		"ADDRESS       BLOCK            BORROWED   NAMESPACE   POD       HANDLE                    SEQ\n"+
		a.String()+"   "+blockOf(a)+"   no         default     nginx-a   k8s-pod-network.nginx-a   1\n"+
		b.String()+"   "+blockOf(b)+"   no         default     nginx-b   k8s-pod-network.nginx-b   2\n")
	wantOutput(t, "ipam show --node unknown", c.ok("", "ipam", "show", "--node", "kube-node-9"), "Node kube-node-9 holds no blocks and no addresses.\n")
}

func blockOf(a netip.Addr) string {
	p, _ := a.Prefix(26)
	return p.String()
}

// TestIPAMCheckAndRelease is the leak workflow: a pod deleted without CNI
// DEL keeps its address; ipam check with the live pods finds it, writes a
// report, and ipam release --from-report frees exactly that address.
func TestIPAMCheckAndRelease(t *testing.T) {
	c := newCLI(t)
	addrs := ipamCluster(t, c, seedPods)
	dir := t.TempDir()

	var live []ipam.Workload
	for _, p := range seedPods {
		if p.name != "nginx-c" { // nginx-c's pod is gone, its address leaked
			live = append(live, ipam.Workload{Namespace: "default", Pod: p.name, Node: p.node})
		}
	}
	liveFile := filepath.Join(dir, "pods.json")
	data, _ := json.Marshal(live)
	if err := os.WriteFile(liveFile, data, 0o644); err != nil {
		t.Fatal(err)
	}

	// Without live workloads only structure is checked: all is well.
	if out := c.ok("", "ipam", "check"); !strings.Contains(out, "No problems found.") {
		t.Errorf("ipam check on a healthy store should find no problems:\n%s", out)
	}

	report := filepath.Join(dir, "report.json")
	r := c.run("", "ipam", "check", "--live", liveFile, "-o", report)
	if r.code != 1 {
		t.Fatalf("ipam check with a leak: exit %d, want 1\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	leaked := addrs["nginx-c"].String()
	for _, w := range []string{leaked, "default/nginx-c", "kube-node-1"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("ipam check report does not name %q:\n%s", w, r.stdout)
		}
	}
	for _, p := range []string{"nginx-a", "nginx-b", "nginx-d", "nginx-e"} {
		if strings.Contains(r.stdout, addrs[p].String()+" ") || strings.Contains(r.stdout, "/"+p) {
			t.Errorf("ipam check lists live pod %s (%s) as a problem:\n%s", p, addrs[p], r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "ipam check found 1 problems") || !strings.Contains(r.stderr, "--from-report "+report) {
		t.Errorf("ipam check should end with a one-line summary naming the fix, got:\n%s", r.stderr)
	}
	var rep ipam.Report
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatalf("report.json is not a report: %v\n%s", err, data)
	}
	if len(rep.LeakedAddresses) != 1 || rep.LeakedAddresses[0].Addr.String() != leaked {
		t.Fatalf("report.json leaked addresses = %+v, want only %s", rep.LeakedAddresses, leaked)
	}

	// Releasing a live pod's address by hand is refused, naming the owner;
	// nothing is freed.
	inUse := addrs["nginx-a"].String()
	c.fails("", []string{"ipam", "release", "--ip", inUse, "--ip", leaked}, inUse, "in use", "default/nginx-a", "--force")
	if out := c.ok("", "ipam", "show", "--ip", leaked); !strings.Contains(out, "in use") {
		t.Errorf("a refused release freed %s anyway:\n%s", leaked, out)
	}

	out := c.ok("", "ipam", "release", "--from-report", report)
	if !strings.Contains(out, leaked) || !strings.Contains(out, "default/nginx-c") {
		t.Errorf("ipam release --from-report should print the freed address and its former owner:\n%s", out)
	}
	if out := c.ok("", "ipam", "show", "--ip", leaked); !strings.Contains(out, "free") {
		t.Errorf("after the release, %s should be free:\n%s", leaked, out)
	}
	// A second run frees nothing: the address is no longer held by the
	// allocation the report saw.
	if out := c.ok("", "ipam", "release", "--from-report", report); strings.Contains(out, "default/nginx-c") {
		t.Errorf("releasing from the same report twice freed something again:\n%s", out)
	}
	if r := c.run("", "ipam", "check", "--live", liveFile); r.code != 0 {
		t.Errorf("ipam check after the release: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// --force frees an address in use; the numbers in ipam show follow.
	c.ok("", "ipam", "release", "--ip", inUse, "--force")
	wantOutput(t, "ipam show after two releases", c.ok("", "ipam", "show"), ""+
		"GROUPING   CIDR             POOL            IPS TOTAL   IPS IN USE   IPS RESERVED   IPS FREE\n"+
		"IP Pool    192.168.0.0/24   rack-0-ippool   256         1 (0%)       12 (5%)        243 (95%)\n"+
		"IP Pool    192.168.1.0/24   rack-1-ippool   256         2 (1%)       2 (1%)         252 (98%)\n")

	c.fails("", []string{"ipam", "release"}, "--ip ADDRESS", "--from-report")
}

// TestIPAMConfig reads and patches the IPAM configuration: defaults when
// nothing is stored, a patch that the allocators then follow, and bad
// patches refused with the field named and nothing written.
func TestIPAMConfig(t *testing.T) {
	c := newCLI(t)
	wantOutput(t, "get ipamconfig (defaults)", c.ok("", "get", "ipamconfig"), ""+
		"STRICTAFFINITY   MAXBLOCKSPERNODE   AUTOALLOCATEBLOCKS\n"+
		"false            20                 true\n")
	wantOutput(t, "patch ipamconfig", c.ok("", "patch", "ipamconfig", "-p", `{"strictAffinity":true,"maxBlocksPerNode":1}`), "ipamconfig/default patched\n")
	wantOutput(t, "get ipamconfig (patched)", c.ok("", "get", "ipamconfig", "default"), ""+
		"STRICTAFFINITY   MAXBLOCKSPERNODE   AUTOALLOCATEBLOCKS\n"+
		"true             1                  true\n")
	var cfg map[string]any
	if err := json.Unmarshal([]byte(c.ok("", "get", "ipamconfig", "-o", "json")), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["strictAffinity"] != true || cfg["maxBlocksPerNode"] != float64(1) {
		t.Errorf("get ipamconfig -o json = %v", cfg)
	}

	c.fails("", []string{"patch", "ipamconfig", "-p", `{"maxBlocksPerNode":-1}`}, "maxBlocksPerNode")
	c.fails("", []string{"patch", "ipamconfig", "-p", `{"strictAfinity":true}`}, "strictAfinity")
	c.fails("", []string{"get", "ipamconfig", "other"}, "one ipamconfig, named default")
	wantOutput(t, "get ipamconfig after bad patches", c.ok("", "get", "ipamconfig"), ""+
		"STRICTAFFINITY   MAXBLOCKSPERNODE   AUTOALLOCATEBLOCKS\n"+
		"true             1                  true\n")

	// The allocators follow it: with one block per node and strict
	// affinity, a node whose block is full gets a clean error instead of
	// borrowing.
	c.ok(`apiVersion: rhizome.io/v1
kind: IPPool
metadata: {name: tiny}
spec: {cidr: 10.5.0.0/28, blockSize: 29}
`, "apply", "-f", "-")
	ctx := context.Background()
	a, err := ipam.NewAllocator(ctx, c.etcd.Store(t), "node-x")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, err = a.AutoAssign(ctx, ipam.Request{Handle: "h", Namespace: "default", Pod: "p", Count: 9})
	if err == nil {
		t.Fatal("9 addresses from one /29 block with maxBlocksPerNode 1 succeeded")
	}
	if _, err := a.AutoAssign(ctx, ipam.Request{Handle: "h", Namespace: "default", Pod: "p", Count: 1}); err != nil {
		t.Fatalf("one address: %v", err)
	}
	_ = api.KindIPPool
}

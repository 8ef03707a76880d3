package agent_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/rhizome-net/rhizome/integration/kubetest"
)

// The seed 000 pools, the rack ones by node label, and a Manual pool that
// only a namespace annotation asks for.
const kubePools = `apiVersion: rhizome.io/v1
kind: IPPool
metadata: {name: rack-0-ippool}
spec: {cidr: 192.168.0.0/24, ipipMode: Never, natOutgoing: true, nodeSelector: rack == "0"}
---
apiVersion: rhizome.io/v1
kind: IPPool
metadata: {name: rack-1-ippool}
spec: {cidr: 192.168.1.0/24, ipipMode: Never, natOutgoing: true, nodeSelector: rack == "1"}
---
apiVersion: rhizome.io/v1
kind: IPPool
metadata: {name: apps-ippool}
spec: {cidr: 10.60.0.0/24, ipipMode: Never, assignmentMode: Manual}
`

type kubeEnv struct {
	*cluster
	kube   *kubetest.Cluster
	client kubernetes.Interface
}

func newKubeEnv(t *testing.T, opts ...kubetest.Option) *kubeEnv {
	c := newCluster(t)
	k := kubetest.Start(t, append([]kubetest.Option{kubetest.WithEtcd(c.etcd)}, opts...)...)
	c.ctl("apply", "-f", writeFile(t, kubePools))
	return &kubeEnv{cluster: c, kube: k, client: k.Client()}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := t.TempDir() + "/f.yaml"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *kubeEnv) node(name string, labels map[string]string) {
	e.t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := e.client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// kubeAgent runs rhizome-node for a Kubernetes node, with the admin
// kubeconfig (the manifests' least-privilege account is tested with the
// manifests).
func (e *kubeEnv) kubeAgent(name, ip string, extra ...string) *agent {
	return e.agent(name, append([]string{"--ip", ip, "--kubernetes", "true", "--kubeconfig", e.kube.Kubeconfig(),
		"--default-ipv4-pool-cidr", ""}, extra...)...)
}

func (e *kubeEnv) pod(namespace, name, node string, annotations map[string]string) {
	e.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Annotations: annotations},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "nginx", Image: "nginx"}}},
	}
	if _, err := e.client.CoreV1().Pods(namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// eventually polls cond until it holds or 30s pass.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within 30s; last seen:\n%s", what, last)
}

func inPool(a netip.Addr, cidr string) bool { return netip.MustParsePrefix(cidr).Contains(a) }

// TestPrivilegedKubernetesMode is seed 000 and seed 002 with a real API
// server: the Node label picks the rack pool and a relabel moves new pods
// to the other rack's pool; namespace and pod annotations choose pools and
// fixed addresses; bad annotations fail the ADD with their name; a pod
// deleted without CNI DEL has its address collected; a deleted Kubernetes
// Node has its blocks released and its rhizome Node deleted.
func TestPrivilegedKubernetesMode(t *testing.T) {
	needRoot(t)
	e := newKubeEnv(t)
	ctx := context.Background()
	e.node("kube-node-0", map[string]string{"rack": "0"})
	e.node("kube-node-1", map[string]string{"rack": "1"})
	grace := []string{"--leak-grace-period", "1s", "--controller-interval", "300ms"}
	a0 := e.kubeAgent("kube-node-0", "10.99.0.1/24", grace...)
	a1 := e.kubeAgent("kube-node-1", "10.99.0.2/24", grace...)

	// The Kubernetes Node's labels are mirrored.
	if out := e.ctl("get", "node", "kube-node-0", "-o", "yaml"); !strings.Contains(out, "rack: \"0\"") {
		t.Fatalf("rhizome Node kube-node-0 does not carry the Kubernetes label rack=0:\n%s", out)
	}

	rt := a0.runtime()
	e.pod("default", "web-0", "kube-node-0", nil)
	web0 := rt.pod("default", "web-0")
	if ip := rt.mustAdd(web0); !inPool(ip, "192.168.0.0/24") {
		t.Errorf("pod on rack 0 got %s, want an address of rack-0-ippool", ip)
	}

	// Relabel the node (kubectl label --overwrite): new pods come from
	// rack 1's pool.
	if out, err := e.kube.Kubectl(t, "label", "node", "kube-node-0", "rack=1", "--overwrite"); err != nil {
		t.Fatalf("kubectl label: %v\n%s", err, out)
	}
	eventually(t, "rhizome Node kube-node-0 follows the relabel", func() (bool, string) {
		out := e.ctl("get", "node", "kube-node-0", "-o", "yaml")
		return strings.Contains(out, "rack: \"1\""), out
	})
	e.pod("default", "web-1", "kube-node-0", nil)
	if ip := rt.mustAdd(rt.pod("default", "web-1")); !inPool(ip, "192.168.1.0/24") {
		t.Errorf("after the relabel to rack=1 a new pod got %s, want an address of rack-1-ippool", ip)
	}

	// Namespace annotation names the Manual pool; a pod annotation fixes
	// the address (seed 002).
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Annotations: map[string]string{"rhizome.io/ipv4-pools": `["apps-ippool"]`}}}
	if _, err := e.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.pod("apps", "api-0", "kube-node-0", nil)
	if ip := rt.mustAdd(rt.pod("apps", "api-0")); !inPool(ip, "10.60.0.0/24") {
		t.Errorf("pod in namespace apps got %s, want an address of apps-ippool (namespace annotation)", ip)
	}
	e.pod("apps", "db-0", "kube-node-0", map[string]string{"rhizome.io/ip-addrs": `["10.60.0.50"]`})
	if ip := rt.mustAdd(rt.pod("apps", "db-0")); ip != netip.MustParseAddr("10.60.0.50") {
		t.Errorf("pod with rhizome.io/ip-addrs [10.60.0.50] got %s", ip)
	}
	for _, bad := range []struct{ pod, ann, want string }{
		{"db-1", `["10.60.0.50"]`, "db-0"}, // taken: the error names the owner
		{"db-2", `["10.200.0.1"]`, "outside every IP pool"},
		{"db-3", `10.60.0.51`, "rhizome.io/ip-addrs"}, // not a JSON list
	} {
		e.pod("apps", bad.pod, "kube-node-0", map[string]string{"rhizome.io/ip-addrs": bad.ann})
		_, err := rt.add(rt.pod("apps", bad.pod))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("ADD of %s with rhizome.io/ip-addrs %s: %v, want an error naming %q", bad.pod, bad.ann, err, bad.want)
		}
	}

	// A pod deleted without CNI DEL: its address is collected after the
	// grace period.
	leaked := addrOf(t, e, "default", "web-0")
	// No kubelet here confirms a graceful deletion: delete at once, as a
	// kubelet would once the containers are gone.
	zero := int64(0)
	now := metav1.DeleteOptions{GracePeriodSeconds: &zero}
	if err := e.client.CoreV1().Pods("default").Delete(ctx, "web-0", now); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the address of deleted pod web-0 is collected", func() (bool, string) {
		out := e.ctl("ipam", "show", "--ip", leaked.String())
		return strings.HasPrefix(out, leaked.String()+" is free"), out
	})

	// node-1 allocates, then its Kubernetes Node is deleted (and its agent
	// is gone): kube-node-0's controller releases it.
	rt1 := a1.runtime()
	e.pod("default", "other-0", "kube-node-1", nil)
	rt1.mustAdd(rt1.pod("default", "other-0"))
	a1.kill()
	if err := e.client.CoreV1().Pods("default").Delete(ctx, "other-0", now); err != nil {
		t.Fatal(err)
	}
	if err := e.client.CoreV1().Nodes().Delete(ctx, "kube-node-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted Kubernetes node kube-node-1 is released", func() (bool, string) {
		out := e.ctl("ipam", "show", "--node", "kube-node-1")
		nodes := e.ctl("get", "node")
		return out == "Node kube-node-1 holds no blocks and no addresses.\n" && !strings.Contains(nodes, "kube-node-1"), out + nodes
	})
}

// addrOf finds a pod's address in ipam show --node.
func addrOf(t *testing.T, e *kubeEnv, namespace, pod string) netip.Addr {
	t.Helper()
	for _, line := range strings.Split(e.ctl("ipam", "show", "--node", "kube-node-0"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && f[3] == namespace && f[4] == pod {
			return netip.MustParseAddr(f[0])
		}
	}
	t.Fatalf("no address for %s/%s", namespace, pod)
	return netip.Addr{}
}

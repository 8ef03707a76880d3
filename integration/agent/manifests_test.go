package agent_test

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rhizome-net/rhizome/integration/kubetest"
)

// TestPrivilegedManifests applies manifests/ to a real kube-apiserver
// (server-side dry run for the base and each overlay, then for real), runs
// the agent with a token of the manifests' ServiceAccount to show their
// RBAC is enough for its whole job, and shows what that account may not
// do.
func TestPrivilegedManifests(t *testing.T) {
	needRoot(t)
	// A DaemonSet that is privileged needs the API server to allow it, as
	// kubeadm and managed clusters do.
	e := newKubeEnv(t, kubetest.WithFlags("--allow-privileged=true"))
	for _, dir := range []string{"../../manifests/base", "../../manifests/overlays/etcd-tls", "../../manifests/overlays/route-reflectors"} {
		if out, err := e.kube.Kubectl(t, "apply", "--dry-run=server", "-k", dir); err != nil {
			t.Fatalf("kubectl apply --dry-run=server -k %s: %v\n%s", dir, err, out)
		}
	}
	if out, err := e.kube.Kubectl(t, "apply", "-k", "../../manifests/base"); err != nil {
		t.Fatalf("kubectl apply -k manifests/base: %v\n%s", err, out)
	}
	// The route-reflectors overlay's BGPConfiguration is valid rhizome
	// input (its Job applies it with rhizomectl).
	e.ctl("apply", "-f", "../../manifests/overlays/route-reflectors/bgpconfiguration.yaml")
	if out := e.ctl("get", "bgpconfig"); !strings.Contains(out, "false") {
		t.Errorf("after the overlay's BGPConfiguration the mesh should be off:\n%s", out)
	}
	sa := e.kube.ServiceAccountKubeconfig(t, "kube-system", "rhizome-node")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"list", "secrets", "--all-namespaces"}, "no"},
		{[]string{"get", "secrets", "-n", "kube-system"}, "no"},
		{[]string{"get", "secrets/rhizome-bgp-passwords", "-n", "kube-system"}, "yes"},
		{[]string{"delete", "pods", "-n", "default"}, "no"},
		{[]string{"update", "nodes"}, "no"},
		{[]string{"patch", "nodes"}, "no"},
		{[]string{"create", "pods", "-n", "default"}, "no"},
		{[]string{"watch", "pods", "--all-namespaces"}, "yes"},
		{[]string{"list", "namespaces"}, "yes"},
	} {
		out, _ := e.kube.KubectlWith(t, sa, append([]string{"auth", "can-i"}, c.args...)...)
		if got := strings.TrimSpace(out); got != c.want {
			t.Errorf("rhizome-node's account: kubectl auth can-i %s = %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}

	// The agent with that account: labels mirrored, annotations read, the
	// controller's pod checks allowed.
	e.node("kube-node-0", map[string]string{"rack": "1"})
	a := e.kubeAgent("kube-node-0", "10.99.0.1/24", "--kubeconfig", sa)
	if out := e.ctl("get", "node", "kube-node-0", "-o", "yaml"); !strings.Contains(out, `rack: "1"`) {
		t.Fatalf("with the manifests' account the Node's labels are not mirrored:\n%s", out)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps", Annotations: map[string]string{"rhizome.io/ipv4-pools": `["apps-ippool"]`}}}
	if _, err := e.client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.pod("apps", "api-0", "kube-node-0", nil)
	e.pod("default", "web-0", "kube-node-0", nil)
	rt := a.runtime()
	if ip := rt.mustAdd(rt.pod("apps", "api-0")); !inPool(ip, "10.60.0.0/24") {
		t.Errorf("with the manifests' account the namespace annotation was not honoured: %s", ip)
	}
	if ip := rt.mustAdd(rt.pod("default", "web-0")); !inPool(ip, "192.168.1.0/24") {
		t.Errorf("with the manifests' account the node label did not pick rack-1-ippool: %s", ip)
	}
	if logs := a.logs(); strings.Contains(logs, "forbidden") {
		t.Errorf("the agent was refused something by the API server:\n%s", logs)
	}
}

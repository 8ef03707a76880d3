package kubetest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/rhizome-net/rhizome/datastore/etcdtest"
	"github.com/rhizome-net/rhizome/internal/toolcache"
)

// nodeEvent is what the informer reported about a Node.
type nodeEvent struct {
	kind   string // add, update, delete
	name   string
	labels map[string]string
}

// watchNodes runs a Node informer until the test ends and sends its events to the returned channel.
func watchNodes(t *testing.T, client kubernetes.Interface) (<-chan nodeEvent, func(name string) (*corev1.Node, error)) {
	t.Helper()
	events := make(chan nodeEvent, 100)
	send := func(kind string, obj any) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		if n, ok := obj.(*corev1.Node); ok {
			events <- nodeEvent{kind: kind, name: n.Name, labels: n.Labels}
		}
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	nodes := factory.Core().V1().Nodes()
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { send("add", obj) },
		UpdateFunc: func(_, obj any) { send("update", obj) },
		DeleteFunc: func(obj any) { send("delete", obj) },
	}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	factory.Start(stop)
	t.Cleanup(func() {
		close(stop)
		factory.Shutdown()
	})
	for typ, ok := range factory.WaitForCacheSync(stop) {
		if !ok {
			t.Fatalf("informer cache for %v did not sync", typ)
		}
	}
	return events, nodes.Lister().Get
}

// nextEvent waits for the informer to report kind for name and returns that event.
func nextEvent(t *testing.T, events <-chan nodeEvent, kind, name string) nodeEvent {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.kind == kind && ev.name == name {
				return ev
			}
		case <-timeout:
			t.Fatalf("informer reported no %s of Node %s within 30s", kind, name)
		}
	}
}

func nodeNames(t *testing.T, client kubernetes.Interface, selector string) []string {
	t.Helper()
	list, err := client.CoreV1().Nodes().List(t.Context(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Fatalf("list nodes %q: %v", selector, err)
	}
	var names []string
	for _, n := range list.Items {
		names = append(names, n.Name)
	}
	return names
}

func TestNodeLabelsThroughClientInformerAndKubectl(t *testing.T) {
	c := Start(t)
	t.Logf("kube-apiserver %s (pid %d) at %s ready in %s, RSS %s", Version, c.PID(), c.Host(), c.ReadyIn(), rss(c.PID()))
	client := c.Client()
	events, getNode := watchNodes(t, client)

	name := "node-" + randomHex(4)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name:   name,
		Labels: map[string]string{"rack": "0", "rhizome.io/route-reflector": "true"},
	}}
	if _, err := client.CoreV1().Nodes().Create(t.Context(), node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Node %s: %v", name, err)
	}
	if ev := nextEvent(t, events, "add", name); ev.labels["rack"] != "0" || ev.labels["rhizome.io/route-reflector"] != "true" {
		t.Errorf("informer added Node %s with labels %v, want rack=0 and rhizome.io/route-reflector=true", name, ev.labels)
	}
	if got := nodeNames(t, client, "rack=0"); !slices.Equal(got, []string{name}) {
		t.Errorf("nodes with rack=0 = %v, want [%s]", got, name)
	}
	if got := nodeNames(t, client, "rack=1"); len(got) != 0 {
		t.Errorf("nodes with rack=1 = %v, want none", got)
	}

	out, err := c.Kubectl(t, "get", "nodes", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if want := "node/" + name + "\n"; out != want {
		t.Errorf("kubectl get nodes -o name = %q, want %q", out, want)
	}

	// Relabel the way an operator would; the informer and the API both see it.
	if _, err := c.Kubectl(t, "label", "node", name, "rack=1", "--overwrite"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, events, "update", name); ev.labels["rack"] != "1" {
		t.Errorf("informer updated Node %s with labels %v, want rack=1", name, ev.labels)
	}
	cached, err := getNode(name)
	if err != nil {
		t.Fatalf("informer cache has no Node %s: %v", name, err)
	}
	if cached.Labels["rack"] != "1" {
		t.Errorf("informer cache has Node %s with rack=%q, want 1", name, cached.Labels["rack"])
	}
	if got := nodeNames(t, client, "rack=0"); len(got) != 0 {
		t.Errorf("nodes with rack=0 after relabelling = %v, want none", got)
	}
	out, err = c.Kubectl(t, "get", "nodes", "-l", "rack=1", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if want := "node/" + name + "\n"; out != want {
		t.Errorf("kubectl get nodes -l rack=1 -o name = %q, want %q", out, want)
	}

	if err := client.CoreV1().Nodes().Delete(t.Context(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete Node %s: %v", name, err)
	}
	nextEvent(t, events, "delete", name)
	if out, err := c.Kubectl(t, "get", "nodes", "-o", "name"); err != nil || out != "" {
		t.Errorf("kubectl get nodes -o name after delete = %q, %v; want no output", out, err)
	}
}

func TestServiceAccountTokenHasOnlyItsRBAC(t *testing.T) {
	c := Start(t)
	ctx := t.Context()
	client := c.Client()
	ns := "sa-" + randomHex(4)
	const sa = "agent"
	objects := []struct {
		what   string
		create func() error
	}{
		{"namespace", func() error {
			_, err := client.CoreV1().Namespaces().Create(ctx,
				&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
			return err
		}},
		{"service account", func() error {
			_, err := client.CoreV1().ServiceAccounts(ns).Create(ctx,
				&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
			return err
		}},
		{"role", func() error {
			_, err := client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
				ObjectMeta: metav1.ObjectMeta{Name: "read-pods"},
				Rules: []rbacv1.PolicyRule{{
					APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"},
				}},
			}, metav1.CreateOptions{})
			return err
		}},
		{"role binding", func() error {
			_, err := client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "agent-reads-pods"},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "read-pods"},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa}},
			}, metav1.CreateOptions{})
			return err
		}},
	}
	for _, o := range objects {
		if err := o.create(); err != nil {
			t.Fatalf("create %s in %s: %v", o.what, ns, err)
		}
	}

	kubeconfig := c.ServiceAccountKubeconfig(t, ns, sa)
	who, err := c.KubectlWith(t, kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
	if err != nil {
		t.Fatal(err)
	}
	if want := "system:serviceaccount:" + ns + ":" + sa; who != want {
		t.Errorf("kubectl auth whoami with the token = %q, want %q", who, want)
	}

	canI := []struct {
		kubeconfig string
		args       []string
		want       string
	}{
		{kubeconfig, []string{"list", "secrets", "--all-namespaces"}, "no"},
		{kubeconfig, []string{"get", "secrets", "-n", ns}, "no"},
		{kubeconfig, []string{"list", "pods", "-n", ns}, "yes"},
		{kubeconfig, []string{"list", "pods", "-n", "default"}, "no"},
		{kubeconfig, []string{"delete", "pods", "-n", ns}, "no"},
		// The admin can, so the "no" above comes from RBAC, not from a broken server.
		{c.Kubeconfig(), []string{"list", "secrets", "--all-namespaces"}, "yes"},
	}
	for _, tc := range canI {
		args := append([]string{"auth", "can-i"}, tc.args...)
		out, err := c.KubectlWith(t, tc.kubeconfig, args...)
		// can-i exits 0 for yes and 1 for no.
		if got := strings.TrimSpace(out); got != tc.want || (err == nil) != (tc.want == "yes") {
			t.Errorf("%s: kubectl %s = %q, %v; want %q", filepath.Base(tc.kubeconfig), strings.Join(args, " "), got, err, tc.want)
		}
	}

	// The same token in a client-go client: forbidden where RBAC says no, served where it says yes.
	saClient, err := kubernetes.NewForConfig(c.ServiceAccountConfig(t, ns, sa))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := saClient.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets in all namespaces as %s/%s: err = %v, want Forbidden", ns, sa, err)
	}
	if _, err := saClient.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("list pods in %s as %s/%s: %v", ns, ns, sa, err)
	}
}

func TestSharedEtcdHoldsTheClusterUnderItsPrefix(t *testing.T) {
	srv := etcdtest.Start(t)
	c := Start(t, WithEtcd(srv))
	name := "node-" + randomHex(4)
	if _, err := c.Client().CoreV1().Nodes().Create(t.Context(),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Node %s: %v", name, err)
	}
	kvs, _, err := srv.Store(t).List(t.Context(), c.EtcdPrefix()+"/minions/")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range kvs {
		keys = append(keys, kv.Key)
	}
	if want := c.EtcdPrefix() + "/minions/" + name; !slices.Equal(keys, []string{want}) {
		t.Errorf("etcd keys under %s/minions/ = %v, want [%s]", c.EtcdPrefix(), keys, want)
	}
}

func TestMissingBinariesSayHowToBuildThem(t *testing.T) {
	empty := t.TempDir()
	notExec := t.TempDir()
	for _, f := range []string{"kube-apiserver", "kubectl"} {
		if err := os.WriteFile(filepath.Join(notExec, f), []byte("#!/bin/sh\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{empty, notExec} {
		_, err := binariesIn(dir)
		if !errors.Is(err, errNotBuilt) || !strings.Contains(err.Error(), "run make kube-tools") ||
			!strings.Contains(err.Error(), dir) {
			t.Errorf("binariesIn(%s) = %v, want an error naming the file and saying to run make kube-tools", dir, err)
		}
	}
}

// TestBinariesFromTheToolsCache: by default the binaries are looked for where `make kube-tools` of any
// checkout put them, the per-user tools cache; RHIZOME_KUBE_BIN overrides it.
func TestBinariesFromTheToolsCache(t *testing.T) {
	cache, kubeBin := t.TempDir(), t.TempDir()
	t.Setenv(BinEnv, "")
	t.Setenv(toolcache.Env, cache)
	if dir, err := binDir(); err != nil || dir != filepath.Join(cache, "kube-"+Version) {
		t.Errorf("binDir() = %q, %v with %s=%s; want %s/kube-%s", dir, err, toolcache.Env, cache, cache, Version)
	}
	t.Setenv(BinEnv, kubeBin)
	if dir, err := binDir(); err != nil || dir != kubeBin {
		t.Errorf("binDir() = %q, %v with %s=%s; want that directory", dir, err, BinEnv, kubeBin)
	}
}

// rss is the resident memory of process pid, as /proc reports it.
func rss(pid int) string {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

package lab

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// kubeLabels is the seed's kubectl session: the nodes, then a rack label
// on each; it returns once every agent has mirrored its Node's labels (the
// pools' nodeSelectors act on them).
func (l *Lab) kubeLabels(ctx context.Context, topo *Topology) error {
	if err := l.kubeSession("get", "nodes", "-o", "wide"); err != nil {
		return err
	}
	for _, n := range topo.Nodes {
		for _, k := range sortedKeys(n.Labels) {
			if err := l.kubeSession("label", "nodes", n.Name, k+"="+n.Labels[k]); err != nil {
				return err
			}
		}
	}
	store, err := datastore.New(datastore.Config{Endpoints: []string{l.st.Etcd}})
	if err != nil {
		return err
	}
	defer store.Close()
	res := datastore.NewResources(store)
	for _, n := range topo.Nodes {
		if err := waitFor(ctx, 30*time.Second, "rhizome-node on "+n.Name+" to mirror its labels "+fmt.Sprint(n.Labels), func() bool {
			obj, err := res.Get(ctx, api.KindNode, n.Name)
			if err != nil {
				return false
			}
			got := obj.(*api.Node).Labels
			for k, v := range n.Labels {
				if got[k] != v {
					return false
				}
			}
			return true
		}); err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range maps.Keys(m) {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// kubeWorkloads creates each workload as a Deployment with kubectl and
// waits until its pods run with an address.
func (l *Lab) kubeWorkloads(ctx context.Context, topo *Topology) error {
	for _, w := range topo.Workloads {
		args := []string{"create", "deployment", w.Name, "--image", "nginx", "--replicas", fmt.Sprint(w.Replicas)}
		if w.Port != 80 {
			args = append(args, "--port", fmt.Sprint(w.Port))
		}
		if w.Namespace != "" && w.Namespace != "default" {
			if _, err := l.Kubectl("", "create", "namespace", w.Namespace); err != nil && !strings.Contains(err.Error(), "AlreadyExists") {
				return err
			}
			args = append(args, "-n", w.Namespace)
		}
		if err := l.kubeSession(args...); err != nil {
			return err
		}
	}
	for _, w := range topo.Workloads {
		if _, err := l.WaitPodsRunning(ctx, w.Namespace, "app="+w.Name, w.Replicas, 90*time.Second); err != nil {
			return err
		}
	}
	return l.SyncKubePods(ctx) // Report shows them: kubectl get pods -o wide
}

// WaitPodsRunning waits until want pods of namespace match selector and
// all run with an address.
func (l *Lab) WaitPodsRunning(ctx context.Context, namespace, selector string, want int, timeout time.Duration) ([]corev1.Pod, error) {
	client, err := l.KubeClient()
	if err != nil {
		return nil, err
	}
	if namespace == "" {
		namespace = "default"
	}
	var pods []corev1.Pod
	var last string
	err = waitFor(ctx, timeout, "", func() bool {
		list, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			last = err.Error()
			return false
		}
		pods = list.Items
		running := 0
		var states []string
		for _, p := range pods {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
				running++
			}
			states = append(states, fmt.Sprintf("%s on %q: %s %s", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.PodIP))
		}
		last = strings.Join(states, "; ")
		return running == want && len(pods) == want
	})
	if err != nil {
		return pods, fmt.Errorf("%d running pods %s in %s not there within %s; last seen: %s", want, selector, namespace, timeout, last)
	}
	return pods, nil
}

// SyncKubePods sets the lab's pod list (what Connect and the report use)
// from the running pods of the API server.
func (l *Lab) SyncKubePods(ctx context.Context) error {
	client, err := l.KubeClient()
	if err != nil {
		return err
	}
	list, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list the lab's pods: %w", err)
	}
	var pods []Pod
	for i := range list.Items {
		p := &list.Items[i]
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			continue
		}
		pods = append(pods, KubePod(l.st.Prefix, p))
	}
	l.mu.Lock()
	l.st.Pods = pods
	l.mu.Unlock()
	return l.save()
}

// downSandboxes removes what the lab kubelets made: the pods' responders
// and namespaces (the kubelets themselves are stopped by then).
func (l *Lab) downSandboxes() error {
	files, _ := filepath.Glob(filepath.Join(l.opts.StateDir, "kubelet", "*.json"))
	var errs []string
	for _, f := range files {
		st, err := loadKubeletState(f)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		for _, sb := range st.Sandboxes {
			if sb.ResponderPID > 0 && l.ours(sb.ResponderPID) {
				_ = syscall.Kill(sb.ResponderPID, syscall.SIGKILL)
			}
			if _, err := os.Stat("/var/run/netns/" + sb.NetNS); err == nil {
				if err := run("ip", "netns", "del", sb.NetNS); err != nil {
					errs = append(errs, err.Error())
				}
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove the kubelets' pods: %s", strings.Join(errs, "; "))
	}
	return nil
}

// Package kube is the agent's view of the Kubernetes API: informers on its
// own Node (whose labels the rhizome Node mirrors), the pods on this node
// and the namespaces, for the CNI service; and the controller's view of
// which nodes and pods are gone.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/daemon/cnisvc"
	"github.com/rhizome-net/rhizome/daemon/nodereg"
	"github.com/rhizome-net/rhizome/ipam"
)

// Client connects to the API server: through a kubeconfig file when given,
// else the in-cluster service account.
func Client(path string) (kubernetes.Interface, error) {
	rc, err := restConfig(path)
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("client for the Kubernetes API: %w", err)
	}
	return c, nil
}

func restConfig(path string) (*rest.Config, error) {
	if path != "" {
		c, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster Kubernetes config: %w (set RHIZOME_KUBECONFIG, or RHIZOME_KUBERNETES=false to run on etcd alone)", err)
	}
	return c, nil
}

// Watcher is the agent's view of Kubernetes, from informers: its own Node
// (whose labels the rhizome Node mirrors), the pods on this node and the
// namespaces, so a CNI ADD needs no API round trip in the common case.
type Watcher struct {
	client kubernetes.Interface
	node   string
	log    *slog.Logger

	nodes      informers.SharedInformerFactory
	pods       informers.SharedInformerFactory
	namespaces informers.SharedInformerFactory
	podLister  listersv1.PodLister
	nsLister   listersv1.NamespaceLister
	nodeLister listersv1.NodeLister

	mu       sync.Mutex
	onLabels func(map[string]string)
}

// NewWatcher returns the watcher of node's Kubernetes objects; Start runs
// it.
func NewWatcher(client kubernetes.Interface, node string, log *slog.Logger) *Watcher {
	k := &Watcher{client: client, node: node, log: log}
	byName := informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", node).String()
	})
	onNode := informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
	})
	k.nodes = informers.NewSharedInformerFactoryWithOptions(client, 0, byName)
	k.pods = informers.NewSharedInformerFactoryWithOptions(client, 0, onNode)
	k.namespaces = informers.NewSharedInformerFactory(client, 0)
	k.nodeLister = k.nodes.Core().V1().Nodes().Lister()
	k.podLister = k.pods.Core().V1().Pods().Lister()
	k.nsLister = k.namespaces.Core().V1().Namespaces().Lister()
	_, _ = k.nodes.Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { k.nodeChanged(obj) },
		UpdateFunc: func(old, obj any) {
			// Status heartbeats update the Node all the time; only a
			// change of labels concerns the agent.
			o, ok1 := old.(*corev1.Node)
			n, ok2 := obj.(*corev1.Node)
			if !ok1 || !ok2 || !maps.Equal(o.Labels, n.Labels) {
				k.nodeChanged(obj)
			}
		},
	})
	return k
}

// OnLabels sets the function called with the Kubernetes Node's labels
// whenever they change.
func (k *Watcher) OnLabels(fn func(map[string]string)) {
	k.mu.Lock()
	k.onLabels = fn
	k.mu.Unlock()
}

func (k *Watcher) nodeChanged(obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	k.mu.Lock()
	fn := k.onLabels
	k.mu.Unlock()
	if fn != nil {
		fn(maps.Clone(n.Labels))
	}
}

// Start runs the informers and waits until they have synced.
func (k *Watcher) Start(ctx context.Context) error {
	for _, f := range []informers.SharedInformerFactory{k.nodes, k.pods, k.namespaces} {
		f.Start(ctx.Done())
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, f := range []informers.SharedInformerFactory{k.nodes, k.pods, k.namespaces} {
		for typ, ok := range f.WaitForCacheSync(sctx.Done()) {
			if !ok {
				return fmt.Errorf("informer for %v did not sync within a minute: is the API server reachable, and may this agent list it (RBAC)?", typ)
			}
		}
	}
	return nil
}

// NodeLabels returns the Kubernetes Node's labels.
func (k *Watcher) NodeLabels(ctx context.Context) (map[string]string, error) {
	if n, err := k.nodeLister.Get(k.node); err == nil {
		return maps.Clone(n.Labels), nil
	}
	n, err := k.client.CoreV1().Nodes().Get(ctx, k.node, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read Kubernetes node %s: %w", k.node, err)
	}
	return maps.Clone(n.Labels), nil
}

// Pod returns a pod on this node from the informer's cache, or from the API
// server on a cache miss (a pod created a moment ago).
func (k *Watcher) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	if p, err := k.podLister.Pods(namespace).Get(name); err == nil {
		return p, nil
	}
	p, err := k.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read pod %s/%s: %w", namespace, name, err)
	}
	return p, nil
}

// Namespace returns a namespace from the cache, or from the API server.
func (k *Watcher) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	if ns, err := k.nsLister.Get(name); err == nil {
		return ns, nil
	}
	ns, err := k.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read namespace %s: %w", name, err)
	}
	return ns, nil
}

// ClusterView is the controller's view with Kubernetes: a node is gone
// when its Kubernetes Node is deleted; the live pods are listed from the
// API server.
type ClusterView struct {
	client kubernetes.Interface
	ttl    time.Duration
}

// NewClusterView returns the view; ttl is how old the heartbeat of a node
// that is not a Kubernetes node (an external route reflector) may get.
func NewClusterView(client kubernetes.Interface, ttl time.Duration) ClusterView {
	return ClusterView{client: client, ttl: ttl}
}

// NodeGone says whether n's Kubernetes Node is deleted (then its Node goes
// too), or for other nodes whether their heartbeat is stale.
func (v ClusterView) NodeGone(ctx context.Context, n *api.Node, now time.Time) (bool, bool, error) {
	if n.Annotations[nodereg.KubernetesNodeAnnotation] == "" {
		// Not a Kubernetes node (an external route reflector): only a
		// stale heartbeat says it is gone.
		return nodereg.HeartbeatStale(n, now, v.ttl), false, nil
	}
	_, err := v.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, true, nil
	}
	return false, false, err
}

// LiveWorkloads lists the pods that are not host-network and not
// terminated.
func (v ClusterView) LiveWorkloads(ctx context.Context) ([]ipam.Workload, bool, error) {
	live := []ipam.Workload{} // not nil when no pod runs: nil means "unknown" to ipam.Check
	opts := metav1.ListOptions{Limit: 500}
	for {
		list, err := v.client.CoreV1().Pods("").List(ctx, opts)
		if err != nil {
			return nil, false, fmt.Errorf("list pods: %w", err)
		}
		for i := range list.Items {
			p := &list.Items[i]
			if !p.Spec.HostNetwork && !podTerminated(p) {
				live = append(live, ipam.Workload{Namespace: p.Namespace, Pod: p.Name, Node: p.Spec.NodeName})
			}
		}
		if list.Continue == "" {
			return live, true, nil
		}
		opts.Continue = list.Continue
	}
}

// PodGone asks the API server for the pod.
func (v ClusterView) PodGone(ctx context.Context, namespace, name string) (bool, error) {
	p, err := v.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return podTerminated(p), nil
}

// podTerminated: a pod whose containers have all ended for good; its
// sandbox, and so its address, is gone.
func podTerminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// PodInfo adapts the informers to the CNI service.
type PodInfo struct{ W *Watcher }

var _ cnisvc.PodInfo = PodInfo{}

// Pod returns the pod's annotations and labels.
func (p PodInfo) Pod(ctx context.Context, namespace, name string) (map[string]string, map[string]string, error) {
	pod, err := p.W.Pod(ctx, namespace, name)
	if err != nil {
		return nil, nil, notFound(err)
	}
	return pod.Annotations, pod.Labels, nil
}

// Namespace returns the namespace's annotations and labels.
func (p PodInfo) Namespace(ctx context.Context, name string) (map[string]string, map[string]string, error) {
	ns, err := p.W.Namespace(ctx, name)
	if err != nil {
		return nil, nil, notFound(err)
	}
	return ns.Annotations, ns.Labels, nil
}

func notFound(err error) error {
	if apierrors.IsNotFound(errors.Unwrap(err)) || apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: %v", cnisvc.ErrNotFound, err)
	}
	return err
}

package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

// KubeletConfig configures the lab kubelet of one node.
type KubeletConfig struct {
	Node       string
	Kubeconfig string
	NodeIP     string
	// BinDir holds rhizome-cni (run through libcni) and rhizome-lab (the
	// pods' responder).
	BinDir string
	// StateDir holds the kubelet's record of its pods (<node>.json), which
	// a restarted kubelet continues from and lab down removes.
	StateDir  string
	Prefix    string // of the pods' namespace names
	CNISocket string // the node's agent
	Log       *slog.Logger
}

// kubeletState is what a kubelet has made, by pod UID.
type kubeletState struct {
	Sandboxes map[string]*sandbox `json:"sandboxes"`
}

// sandbox is one pod's network namespace and responder.
type sandbox struct {
	Namespace    string     `json:"namespace"`
	Name         string     `json:"name"`
	UID          string     `json:"uid"`
	NetNS        string     `json:"netns"`
	ContainerID  string     `json:"containerID"`
	IP           netip.Addr `json:"ip,omitzero"`
	Port         int        `json:"port"`
	ResponderPID int        `json:"responderPID,omitempty"`
}

func loadKubeletState(path string) (kubeletState, error) {
	st := kubeletState{Sandboxes: map[string]*sandbox{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("kubelet state %s: %w", path, err)
	}
	if st.Sandboxes == nil {
		st.Sandboxes = map[string]*sandbox{}
	}
	return st, nil
}

// kubelet is the lab's stand-in for the kubelet of one node: it registers
// the Node and keeps it Ready, and gives the pods bound to the node a
// network namespace wired by CNI ADD through libcni (as a container
// runtime does) with a TCP responder in place of containers.
type kubelet struct {
	cfg      KubeletConfig
	client   kubernetes.Interface
	pods     listersv1.PodLister
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
	cni      *libcni.CNIConfig
	network  *libcni.NetworkConfigList
	nodeUID  string

	mu   sync.Mutex // guards st and its file
	st   kubeletState
	path string
}

// RunKubelet runs the lab kubelet until ctx ends. It continues from the
// pods it recorded (a restart) and leaves its pods running when it stops.
func RunKubelet(ctx context.Context, cfg KubeletConfig) error {
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	rc.QPS = -1
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	network, err := podNetwork(cfg.CNISocket)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return err
	}
	k := &kubelet{cfg: cfg, client: client, network: network, path: filepath.Join(cfg.StateDir, cfg.Node+".json"),
		cni:   libcni.NewCNIConfigWithCacheDir([]string{cfg.BinDir}, filepath.Join(cfg.StateDir, "cni-cache"), nil),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, 10*time.Second))}
	if k.st, err = loadKubeletState(k.path); err != nil {
		return err
	}
	if err := k.register(ctx); err != nil {
		return err
	}
	go k.heartbeat(ctx)

	events := record.NewBroadcaster(record.WithContext(ctx))
	events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer events.Shutdown()
	k.recorder = events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: cfg.Node})

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.Node).String()
	}))
	podInformer := factory.Core().V1().Pods()
	k.pods = podInformer.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced) {
		return fmt.Errorf("pod informer of %s did not sync", cfg.Node)
	}
	// Pods deleted while the kubelet was down are in the record only.
	k.mu.Lock()
	for _, sb := range k.st.Sandboxes {
		k.queue.Add(sb.Namespace + "/" + sb.Name)
	}
	k.mu.Unlock()
	cfg.Log.Info("lab kubelet running", "node", cfg.Node, "recorded pods", len(k.st.Sandboxes))

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for k.work(ctx) {
			}
		})
	}
	<-ctx.Done()
	k.queue.ShutDown()
	wg.Wait()
	cfg.Log.Info("lab kubelet stopped; its pods keep running", "node", cfg.Node)
	return nil
}

func (k *kubelet) work(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if err := k.sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			k.cfg.Log.Warn("pod not in its wanted state; retrying", "pod", key, "err", err)
		}
		k.queue.AddRateLimited(key)
		return true
	}
	k.queue.Forget(key)
	return true
}

// save writes the record; callers hold mu.
func (k *kubelet) save() error {
	b, err := json.MarshalIndent(&k.st, "", "  ")
	if err != nil {
		return err
	}
	tmp := k.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, k.path)
}

// nodeStatus is what the kubelet reports about its node.
func (k *kubelet) nodeStatus(now metav1.Time) corev1.NodeStatus {
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"),
		corev1.ResourcePods: resource.MustParse("110")}
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return corev1.NodeStatus{
		Capacity: res, Allocatable: res,
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: k.cfg.NodeIP}, {Type: corev1.NodeHostName, Address: k.cfg.Node}},
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "lab kubelet is posting ready status"),
		},
		NodeInfo: corev1.NodeSystemInfo{KubeletVersion: "rhizome-lab", OperatingSystem: "linux", Architecture: runtime.GOARCH,
			OSImage: "rhizome lab (network namespace)", ContainerRuntimeVersion: "netns://rhizome-lab", KernelVersion: kernelRelease()},
	}
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return string(bytesTrimSpace(b))
}

func bytesTrimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// register creates the Node (or takes over the one a previous run made,
// keeping its labels) and reports it Ready.
func (k *kubelet) register(ctx context.Context) error {
	now := metav1.Now()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: k.cfg.Node, Labels: map[string]string{
		"kubernetes.io/hostname": k.cfg.Node, "kubernetes.io/os": "linux", "kubernetes.io/arch": runtime.GOARCH}},
		Status: k.nodeStatus(now)}
	var last error
	for ctx.Err() == nil {
		got, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			got, err = k.client.CoreV1().Nodes().Get(ctx, k.cfg.Node, metav1.GetOptions{})
		}
		if err == nil {
			k.nodeUID = string(got.UID)
			if err = k.postStatus(ctx); err == nil {
				k.cfg.Log.Info("registered the Node", "node", k.cfg.Node, "address", k.cfg.NodeIP)
				return nil
			}
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("register Node %s: %w", k.cfg.Node, errors.Join(ctx.Err(), last))
}

// postStatus writes the node's status (the Ready heartbeat).
func (k *kubelet) postStatus(ctx context.Context) error {
	n, err := k.client.CoreV1().Nodes().Get(ctx, k.cfg.Node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	n.Status = k.nodeStatus(metav1.Now())
	_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

// heartbeat renews the node's Lease every 10 s and reports its status
// every 5 minutes, as a kubelet does when nothing changes.
func (k *kubelet) heartbeat(ctx context.Context) {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	for i := 0; ctx.Err() == nil; i++ {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, k.cfg.Node, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: k.cfg.Node, OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: k.cfg.Node, UID: types.UID(k.nodeUID)}}},
				Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(k.cfg.Node), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now}}, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err == nil && i%30 == 29 {
			err = k.postStatus(ctx)
		}
		if err != nil && ctx.Err() == nil {
			k.cfg.Log.Warn("node heartbeat", "err", err)
		}
		sleep(ctx, 10*time.Second)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

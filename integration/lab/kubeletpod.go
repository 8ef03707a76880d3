package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// SandboxNetNS is the network namespace the lab kubelet makes for pod.
func SandboxNetNS(prefix string, pod *corev1.Pod) string {
	uid := strings.ReplaceAll(string(pod.UID), "-", "")
	return fmt.Sprintf("%skp-%s-%s", prefix, pod.Name, uid[:min(8, len(uid))])
}

// KubePod is a running pod of the API server as the lab's Pod.
func KubePod(prefix string, p *corev1.Pod) Pod {
	ip, _ := netip.ParseAddr(p.Status.PodIP)
	return Pod{Name: p.Name, Namespace: p.Namespace, Node: p.Spec.NodeName, NetNS: SandboxNetNS(prefix, p), IP: ip, Port: podPort(p)}
}

// podPort is the port the pod's responder answers on: its first
// containerPort, else 80.
func podPort(p *corev1.Pod) int {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			return int(port.ContainerPort)
		}
	}
	return 80
}

// sync brings one pod (namespace/name) to what the API server wants.
func (k *kubelet) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := k.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		pod = nil
	} else if err != nil {
		return err
	}
	// A sandbox of a pod that is gone, or of an earlier pod of the same
	// name, goes first.
	for _, sb := range k.sandboxesOf(ns, name) {
		if pod == nil || sb.UID != string(pod.UID) {
			if err := k.teardown(ctx, sb); err != nil {
				return err
			}
		}
	}
	if pod == nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	sb := k.sandboxOf(pod.UID)
	if pod.DeletionTimestamp != nil {
		if sb != nil {
			if err := k.teardown(ctx, sb); err != nil {
				return err
			}
		}
		err := k.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0),
			Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("delete pod %s: %w", key, err)
		}
		return nil
	}
	if sb == nil || !sb.IP.IsValid() {
		if sb, err = k.setup(ctx, pod, sb); err != nil {
			k.recorder.Eventf(pod, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
			if serr := k.writeStatus(ctx, pod, nil); serr != nil {
				k.cfg.Log.Warn("pod status", "pod", key, "err", serr)
			}
			return err
		}
	}
	return k.writeStatus(ctx, pod, sb)
}

func (k *kubelet) sandboxesOf(ns, name string) []*sandbox {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []*sandbox
	for _, sb := range k.st.Sandboxes {
		if sb.Namespace == ns && sb.Name == name {
			out = append(out, sb)
		}
	}
	return out
}

func (k *kubelet) sandboxOf(uid types.UID) *sandbox {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.st.Sandboxes[string(uid)]
}

func (k *kubelet) record(sb *sandbox, remove bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if remove {
		delete(k.st.Sandboxes, sb.UID)
	} else {
		k.st.Sandboxes[sb.UID] = sb
	}
	return k.save()
}

// runtimeConf is what a kubelet's runtime passes to CNI for the sandbox.
func (k *kubelet) runtimeConf(sb *sandbox) *libcni.RuntimeConf {
	netns := "/var/run/netns/" + sb.NetNS
	if _, err := os.Stat(netns); err != nil {
		netns = "" // gone already: DEL still releases the address
	}
	return &libcni.RuntimeConf{ContainerID: sb.ContainerID, NetNS: netns, IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", sb.Namespace}, {"K8S_POD_NAME", sb.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", sb.ContainerID}, {"K8S_POD_UID", sb.UID}}}
}

// setup makes the pod's sandbox: its namespace, CNI ADD, the responder.
// A failed ADD is undone with DEL, as a runtime removes a sandbox it could
// not set up; the next try starts over.
func (k *kubelet) setup(ctx context.Context, pod *corev1.Pod, sb *sandbox) (*sandbox, error) {
	if sb == nil {
		sb = &sandbox{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), NetNS: SandboxNetNS(k.cfg.Prefix, pod),
			ContainerID: strings.ReplaceAll(string(pod.UID), "-", ""), Port: podPort(pod)}
		if err := k.record(sb, false); err != nil { // before the namespace, so lab down finds it
			return nil, err
		}
	}
	if _, err := os.Stat("/var/run/netns/" + sb.NetNS); err != nil {
		if err := run("ip", "netns", "add", sb.NetNS); err != nil {
			return nil, err
		}
		if err := run("ip", "-n", sb.NetNS, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	rt := k.runtimeConf(sb)
	res, err := k.cni.AddNetworkList(ctx, k.network, rt)
	if err != nil {
		_ = k.cni.DelNetworkList(ctx, k.network, rt)
		return nil, fmt.Errorf("failed to setup network for sandbox %q: %w", sb.ContainerID, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 {
		return nil, fmt.Errorf("CNI ADD of sandbox %q returned no address: %v %v", sb.ContainerID, res, err)
	}
	ip, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	if !alive(sb.ResponderPID, "responder") {
		cmd := exec.Command("ip", "netns", "exec", sb.NetNS, filepath.Join(k.cfg.BinDir, "rhizome-lab"), "responder",
			"--port", strconv.Itoa(sb.Port), "--name", sb.Name)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives a kubelet restart
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start the responder of pod %s/%s: %w", sb.Namespace, sb.Name, err)
		}
		go func() { _ = cmd.Wait() }()
		sb.ResponderPID = cmd.Process.Pid
	}
	sb.IP = ip.Unmap()
	k.cfg.Log.Info("pod sandbox ready", "pod", sb.Namespace+"/"+sb.Name, "ip", sb.IP, "netns", sb.NetNS)
	return sb, k.record(sb, false)
}

// alive says whether pid runs the lab's command what (a PID reused by
// another program is not ours).
func alive(pid int, what string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && strings.Contains(string(b), "rhizome-lab") && strings.Contains(string(b), what)
}

// teardown stops the responder, runs CNI DEL and removes the namespace.
func (k *kubelet) teardown(ctx context.Context, sb *sandbox) error {
	if alive(sb.ResponderPID, "responder") {
		_ = syscall.Kill(sb.ResponderPID, syscall.SIGKILL)
	}
	if err := k.cni.DelNetworkList(ctx, k.network, k.runtimeConf(sb)); err != nil {
		return fmt.Errorf("CNI DEL of pod %s/%s (sandbox %q): %w", sb.Namespace, sb.Name, sb.ContainerID, err)
	}
	if _, err := os.Stat("/var/run/netns/" + sb.NetNS); err == nil {
		if err := run("ip", "netns", "del", sb.NetNS); err != nil {
			return err
		}
	}
	k.cfg.Log.Info("pod sandbox removed", "pod", sb.Namespace+"/"+sb.Name, "ip", sb.IP)
	return k.record(sb, true)
}

// writeStatus reports the pod Running with its address (sb), or Pending
// while its sandbox cannot be made (sb nil); it writes only a change.
func (k *kubelet) writeStatus(ctx context.Context, pod *corev1.Pod, sb *sandbox) error {
	if sb != nil && pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP == sb.IP.String() {
		return nil
	}
	if sb == nil && pod.Status.Phase == corev1.PodPending && len(pod.Status.ContainerStatuses) > 0 {
		return nil
	}
	now := metav1.Now()
	p := pod.DeepCopy()
	st := &p.Status
	running := sb != nil
	cond := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
			reason = ""
		}
		return corev1.PodCondition{Type: t, Status: s, Reason: reason, LastTransitionTime: now}
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, running, ""),
		cond(corev1.PodInitialized, true, ""),
		cond(corev1.PodReady, running, "ContainersNotReady"),
		cond(corev1.ContainersReady, running, "ContainersNotReady"),
		cond(corev1.PodScheduled, true, ""),
	}
	st.HostIP = k.cfg.NodeIP
	st.HostIPs = []corev1.HostIP{{IP: k.cfg.NodeIP}}
	if st.StartTime == nil {
		st.StartTime = &now
	}
	st.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: "", Ready: running, Started: ptr.To(running)}
		if running {
			cs.ContainerID = "netns://" + sb.ContainerID
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: now}
		} else {
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	if running {
		st.Phase = corev1.PodRunning
		st.PodIP = sb.IP.String()
		st.PodIPs = []corev1.PodIP{{IP: sb.IP.String()}}
	} else {
		st.Phase = corev1.PodPending
		st.PodIP, st.PodIPs = "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := k.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write the status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

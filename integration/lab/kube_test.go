package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/integration/kubetest"
)

// upKubeLab brings topo up with Kubernetes (kube-apiserver, controller
// manager, scheduler, lab kubelets) for one test and takes it down after.
// Missing kube binaries skip the test, or fail it under make test
// (RHIZOME_REQUIRE_KUBE=1).
func upKubeLab(t *testing.T, topo *Topology) (*Lab, context.Context, kubernetes.Interface, *strings.Builder) {
	t.Helper()
	cnitest.NeedRoot(t)
	needBinaries(t)
	kubeBin := kubetest.RequireTools(t, "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
	var log strings.Builder
	opts := Options{BinDir: binDir, StateDir: filepath.Join(t.TempDir(), "lab"), Prefix: fmt.Sprintf("rzk%d-%d-", os.Getpid()%100000, labs.Add(1)),
		Log: &log, Kubernetes: true, KubeBinDir: kubeBin}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	start := time.Now()
	l, err := Up(ctx, topo, opts)
	if err != nil {
		t.Fatalf("lab up: %v\n%s", err, log.String())
	}
	t.Logf("lab with Kubernetes up in %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []string{"kubelet-kube-node-0", "kubelet-kube-node-2", "kube-node-2"} {
				t.Logf("end of %s.log:\n%s", p, l.logTail(p, 20))
			}
		}
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), opts.Prefix) {
			t.Errorf("namespaces left after lab down:\n%s", out)
		}
	})
	client, err := l.KubeClient()
	if err != nil {
		t.Fatal(err)
	}
	return l, ctx, client, &log
}

// addrInNetNS is the IPv4 address on eth0 inside a pod's namespace, as
// `ip -n NS addr` shows it.
func addrInNetNS(t *testing.T, netns string) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", netns, "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s addr: %v\n%s", netns, err, out)
	}
	f := strings.Fields(string(out))
	if len(f) < 4 {
		t.Fatalf("ip -n %s addr: no address on eth0: %s", netns, out)
	}
	return strings.Split(f[3], "/")[0]
}

// TestPrivilegedKubeSeed000Lab is seed 000 with Kubernetes: kubectl labels
// the nodes, a Deployment of 5 nginx pods is scheduled onto them, and each
// pod (status.podIP, and eth0 inside its namespace) has an address of its
// rack's pool; every pod pair connects over TCP. A restarted kubelet
// keeps its pods; scaling down tears the extra pods down (CNI DEL, their
// namespaces gone, their addresses free).
func TestPrivilegedKubeSeed000Lab(t *testing.T) {
	l, ctx, client, log := upKubeLab(t, Seed000())
	for _, want := range []string{"$ kubectl label nodes kube-node-0 rack=0\nnode/kube-node-0 labeled", "$ kubectl create deployment nginx --image nginx --replicas 5\ndeployment.apps/nginx created"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the session lacks %q:\n%s", want, log.String())
		}
	}
	rackPool := map[string]netip.Prefix{"kube-node-0": netip.MustParsePrefix("192.168.0.0/24"), "kube-node-1": netip.MustParsePrefix("192.168.0.0/24"),
		"kube-node-2": netip.MustParsePrefix("192.168.1.0/24"), "kube-node-3": netip.MustParsePrefix("192.168.1.0/24")}
	pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=nginx"})
	if err != nil || len(pods.Items) != 5 {
		t.Fatalf("want 5 nginx pods: %v %v", len(pods.Items), err)
	}
	nodes := map[string]bool{}
	for _, p := range pods.Items {
		ip := netip.MustParseAddr(p.Status.PodIP)
		nodes[p.Spec.NodeName] = true
		if !rackPool[p.Spec.NodeName].Contains(ip) {
			t.Errorf("pod %s on %s has %s, outside its rack's pool %s", p.Name, p.Spec.NodeName, ip, rackPool[p.Spec.NodeName])
		}
		if got := addrInNetNS(t, SandboxNetNS(l.State().Prefix, &p)); got != p.Status.PodIP {
			t.Errorf("pod %s: status.podIP %s but eth0 in its namespace has %s", p.Name, p.Status.PodIP, got)
		}
		if p.Status.HostIP != nodeByName(l, p.Spec.NodeName).Addr.Addr().String() {
			t.Errorf("pod %s: hostIP %s, want its node's address %s", p.Name, p.Status.HostIP, nodeByName(l, p.Spec.NodeName).Addr.Addr())
		}
	}
	if len(nodes) < 4 {
		t.Errorf("the scheduler put the 5 pods on %d nodes, want all 4: %v", len(nodes), nodes)
	}
	var report strings.Builder
	if err := l.Report(&report); err != nil {
		t.Fatalf("report: %v\n%s", err, report.String())
	}
	if !strings.Contains(report.String(), "READY   STATUS    RESTARTS") || strings.Count(report.String(), "1/1     Running") != 5 {
		t.Errorf("kubectl get pods -o wide does not show 5 running pods:\n%s", report.String())
	}
	waitConnected(t, ctx, l, "seed 000 with Kubernetes")

	// A kubelet restart keeps the node's pods as they are.
	if err := l.Restart(ctx, "kubelet-kube-node-0"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the new kubelet has synced and reconciled
	after, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=nginx"})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range after.Items {
		if p.UID != pods.Items[i].UID || p.Status.PodIP != pods.Items[i].Status.PodIP || p.Status.Phase != corev1.PodRunning {
			t.Errorf("after the kubelet restart pod %s is %s %s, was %s", p.Name, p.Status.Phase, p.Status.PodIP, pods.Items[i].Status.PodIP)
		}
	}
	waitConnected(t, ctx, l, "after a kubelet restart")

	// Scale down: the kubelets tear the extra pods down.
	if err := l.kubeSession("scale", "deployment", "nginx", "--replicas", "3"); err != nil {
		t.Fatal(err)
	}
	left, err := l.WaitPodsRunning(ctx, "default", "app=nginx", 3, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SyncKubePods(ctx); err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	for _, p := range left {
		kept[string(p.UID)] = true
	}
	for _, p := range pods.Items {
		if kept[string(p.UID)] {
			continue
		}
		netns := SandboxNetNS(l.State().Prefix, &p)
		eventually(t, "pod "+p.Name+"'s namespace and address are gone", func() (bool, string) {
			_, statErr := os.Stat("/var/run/netns/" + netns)
			out, err := l.Ctl("ipam", "show", "--ip", p.Status.PodIP)
			return os.IsNotExist(statErr) && err == nil && !strings.Contains(out, p.Name), fmt.Sprintf("netns: %v\n%s", statErr, out)
		})
	}
	waitConnected(t, ctx, l, "after scaling down to 3")
	if out, err := l.Ctl("ipam", "check"); err != nil || !strings.Contains(out, "No problems found.") {
		t.Errorf("ipam check after scaling down (%v):\n%s", err, out)
	}
}

// fixedPod is a pod asking for addr with rhizome.io/ip-addrs, placed on
// node by a nodeSelector.
func fixedPod(name, node string, addr netip.Addr) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name},
			Annotations: map[string]string{"rhizome.io/ip-addrs": fmt.Sprintf(`["%s"]`, addr)}},
		Spec: corev1.PodSpec{NodeSelector: map[string]string{"kubernetes.io/hostname": node},
			Containers: []corev1.Container{{Name: "nginx", Image: "nginx", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
	}
}

// deletePod deletes a pod the way kubectl does and waits until it is gone
// (its kubelet tore it down).
func deletePod(t *testing.T, ctx context.Context, client kubernetes.Interface, name string) {
	t.Helper()
	if err := client.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pod "+name+" is gone", func() (bool, string) {
		p, err := client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, ""
		}
		return false, fmt.Sprintf("%v %v", p.Status.Phase, err)
	})
}

// TestPrivilegedKubeFixedAddress is scenario 5 (seeds 002 and 004): a pod
// with rhizome.io/ip-addrs gets exactly that address; deleted and created
// again on a node of the other rack it gets it again and is reachable from
// every other pod, the node advertising it as a /32; a second pod asking
// for it fails with an event naming the address and its holder and never
// runs until the first is gone; afterwards ipam check is clean.
func TestPrivilegedKubeFixedAddress(t *testing.T) {
	l, ctx, client, _ := upKubeLab(t, Seed000())
	addr := netip.MustParseAddr("192.168.0.100") // rack-0-ippool, a block no nginx pod has
	running := func(name string) Pod {
		t.Helper()
		pods, err := l.WaitPodsRunning(ctx, "default", "app="+name, 1, 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		p := KubePod(l.State().Prefix, &pods[0])
		if p.IP != addr {
			t.Errorf("pod %s on %s: status.podIP %s, want the fixed address %s", p.Name, p.Node, p.IP, addr)
		}
		if got := addrInNetNS(t, p.NetNS); got != addr.String() {
			t.Errorf("pod %s: eth0 in its namespace has %s, want %s", p.Name, got, addr)
		}
		return p
	}
	reachable := func(what string, to Pod) {
		t.Helper()
		for _, from := range l.State().Pods {
			if from.Name == to.Name {
				continue
			}
			eventually(t, what+": "+from.Name+" on "+from.Node+" reaches "+to.Name, func() (bool, string) {
				err := ask(ctx, from.NetNS, to)
				return err == nil, fmt.Sprint(err)
			})
		}
	}

	if _, err := client.CoreV1().Pods("default").Create(ctx, fixedPod("fixed", "kube-node-0", addr), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	first := running("fixed")
	reachable("on kube-node-0", first)
	firstNetNS := first.NetNS

	deletePod(t, ctx, client, "fixed")
	if _, err := os.Stat("/var/run/netns/" + firstNetNS); !os.IsNotExist(err) {
		t.Errorf("the deleted pod's namespace %s is still there (%v)", firstNetNS, err)
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, fixedPod("fixed", "kube-node-2", addr), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	moved := running("fixed")
	if moved.Node != "kube-node-2" {
		t.Fatalf("the recreated pod runs on %s, want kube-node-2", moved.Node)
	}
	n2 := nodeByName(l, "kube-node-2").Addr.Addr()
	host := fmt.Sprintf("%s via %s", addr, n2)
	for _, n := range []string{"router", "kube-node-3"} {
		eventually(t, n+" has the /32 of "+addr.String()+" via kube-node-2", func() (bool, string) {
			out, err := l.Routes(n)
			return err == nil && strings.Contains(out, host+" "), out
		})
	}
	reachable("moved to kube-node-2 (rack 1)", moved)

	// A second pod asking for the same address.
	if _, err := client.CoreV1().Pods("default").Create(ctx, fixedPod("fixed-dup", "kube-node-3", addr), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var msg string
	eventually(t, "an event FailedCreatePodSandBox on fixed-dup", func() (bool, string) {
		evs, err := client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=fixed-dup,reason=FailedCreatePodSandBox"})
		if err != nil || len(evs.Items) == 0 {
			return false, fmt.Sprint(err)
		}
		msg = evs.Items[0].Message
		return true, ""
	})
	t.Logf("event on fixed-dup: %s", msg)
	for _, want := range []string{addr.String(), "in use", "held by pod default/fixed"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the event's message lacks %q: %s", want, msg)
		}
	}
	time.Sleep(3 * time.Second) // retries with backoff meanwhile
	dup, err := client.CoreV1().Pods("default").Get(ctx, "fixed-dup", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if dup.Status.Phase != corev1.PodPending || dup.Status.PodIP != "" {
		t.Errorf("fixed-dup is %s with %q, want Pending without an address", dup.Status.Phase, dup.Status.PodIP)
	}

	// Once the holder is gone the second pod gets the address (the
	// kubelet's retry), and after it too is deleted IPAM is clean.
	deletePod(t, ctx, client, "fixed")
	if p := running("fixed-dup"); p.Node != "kube-node-3" {
		t.Errorf("fixed-dup runs on %s, want kube-node-3", p.Node)
	}
	deletePod(t, ctx, client, "fixed-dup")
	if out, err := l.Ctl("ipam", "check"); err != nil || !strings.Contains(out, "No problems found.") {
		t.Errorf("ipam check (%v):\n%s", err, out)
	}
	if out, err := l.Ctl("ipam", "show", "--ip", addr.String()); err != nil || strings.Contains(out, "fixed") {
		t.Errorf("%s is still held after both pods are gone (%v):\n%s", addr, err, out)
	}
}

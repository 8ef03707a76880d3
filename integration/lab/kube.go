package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rhizome-net/rhizome/internal/testpki"
)

// KubeState is the lab's Kubernetes control plane, in state.json.
type KubeState struct {
	// BinDir holds kube-apiserver, kube-controller-manager, kube-scheduler
	// and kubectl.
	BinDir string `json:"binDir"`
	// Server is the API server's address on the host's loopback.
	Server string `json:"server"`
	// Admin is a kubeconfig for the operator (system:masters).
	Admin string `json:"admin"`
	// Nodes are the per-node kubeconfigs (the kubelet's and the agent's),
	// for the relay on 127.0.0.1:6443 inside the node's namespace.
	Nodes map[string]string `json:"nodes"`
}

// RelayAddr is where the API server relay listens inside every node's
// namespace.
const RelayAddr = "127.0.0.1:6443"

// kubeControllers are the controllers the lab's controller manager runs:
// what deployments, service accounts and namespace deletion need. Node
// lifecycle (taints, eviction) is left out: the lab kubelet's heartbeat is
// all a node does.
var kubeControllers = []string{"deployment-controller", "replicaset-controller", "serviceaccount-controller",
	"serviceaccount-token-controller", "garbage-collector-controller", "namespace-controller", "root-ca-certificate-publisher-controller"}

// kubeSteps is Up with Kubernetes: the control plane and a kubelet per
// node before the agents (which read their Node's labels at start), the
// operator's kubectl session, and the workloads as Deployments.
func (l *Lab) kubeSteps() []func(context.Context, *Topology) error {
	return []func(context.Context, *Topology) error{l.startEtcd, l.network, l.startKube, l.agents, l.kubeLabels, l.configure, l.kubeWorkloads, l.settled}
}

func (l *Lab) kubeBinDir() string {
	if l.st.Kube != nil {
		return l.st.Kube.BinDir
	}
	return ""
}

// kubeFlags are the agent's Kubernetes flags: the router is not a
// Kubernetes node (an external route reflector) and runs without.
func (l *Lab) kubeFlags(n NodeState) []string {
	if l.st.Kube == nil || n.Router {
		return []string{"--kubernetes", "false"}
	}
	return []string{"--kubernetes", "true", "--kubeconfig", l.st.Kube.Nodes[n.Name]}
}

// startKube starts kube-apiserver (on the lab's etcd, over its socket),
// kube-controller-manager and kube-scheduler on the host's loopback, the
// relay that makes the API server reachable at RelayAddr inside every
// node, and a lab kubelet per node; it returns once every Node is Ready.
func (l *Lab) startKube(ctx context.Context, topo *Topology) error {
	bins := l.opts.KubeBinDir
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"} {
		if fi, err := os.Stat(filepath.Join(bins, b)); err != nil || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not in %s: run make kube-tools", b, bins)
		}
	}
	state, err := filepath.Abs(l.opts.StateDir)
	if err != nil {
		return err
	}
	dir := filepath.Join(state, "kube")
	// A credential per component and per node, all in system:masters: not
	// a least-privilege set-up (manifests/base has the agent's RBAC).
	users := []testpki.User{{Name: "lab-admin", Group: "system:masters"}, {Name: "system:kube-controller-manager", Group: "system:masters"},
		{Name: "system:kube-scheduler", Group: "system:masters"}}
	for _, n := range topo.Nodes {
		users = append(users, testpki.User{Name: "system:node:" + n.Name, Group: "system:masters"})
	}
	pki, err := testpki.WriteAPIServer(dir, users)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	ks := &KubeState{BinDir: bins, Server: fmt.Sprintf("https://127.0.0.1:%d", port), Admin: filepath.Join(dir, "admin.kubeconfig"), Nodes: map[string]string{}}
	if err := pki.Kubeconfig(ks.Admin, ks.Server, "lab-admin"); err != nil {
		return err
	}
	kcm, sched := filepath.Join(dir, "controller-manager.kubeconfig"), filepath.Join(dir, "scheduler.kubeconfig")
	if err := pki.Kubeconfig(kcm, ks.Server, "system:kube-controller-manager"); err != nil {
		return err
	}
	if err := pki.Kubeconfig(sched, ks.Server, "system:kube-scheduler"); err != nil {
		return err
	}
	for _, n := range topo.Nodes {
		ks.Nodes[n.Name] = filepath.Join(dir, n.Name+".kubeconfig")
		if err := pki.Kubeconfig(ks.Nodes[n.Name], "https://"+RelayAddr, "system:node:"+n.Name); err != nil {
			return err
		}
	}
	l.st.Kube = ks
	if err := l.save(); err != nil {
		return err
	}
	if err := l.start("kube-apiserver", "", filepath.Join(bins, "kube-apiserver"),
		"--etcd-servers="+l.st.Etcd, "--etcd-prefix=/kubernetes",
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", port), "--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none", "--cert-dir="+filepath.Join(dir, "certs"),
		"--tls-cert-file="+pki.ServerCert, "--tls-private-key-file="+pki.ServerKey, "--token-auth-file="+pki.TokenFile,
		"--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki.SAPublic, "--service-account-signing-key-file="+pki.SAPrivate,
		"--service-cluster-ip-range=10.96.0.0/24",
		// New Nodes would get the not-ready taint, which only the node
		// lifecycle controller (not run here) takes off again.
		"--disable-admission-plugins=TaintNodesByCondition"); err != nil {
		return err
	}
	client, err := l.KubeClient()
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 90*time.Second, "kube-apiserver to be ready ("+l.logTail("kube-apiserver", 10)+")", func() bool {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Raw()
		return err == nil && strings.TrimSpace(string(body)) == "ok"
	}); err != nil {
		return err
	}
	l.logf("kube-apiserver is up at %s, storing into the lab's etcd (%s)", ks.Server, l.st.Etcd)
	if err := l.start("kube-controller-manager", "", filepath.Join(bins, "kube-controller-manager"),
		"--kubeconfig="+kcm, "--leader-elect=false", "--secure-port=0",
		"--controllers="+strings.Join(kubeControllers, ","),
		"--service-account-private-key-file="+pki.SAPrivate, "--root-ca-file="+pki.CA); err != nil {
		return err
	}
	if err := l.start("kube-scheduler", "", filepath.Join(bins, "kube-scheduler"),
		"--kubeconfig="+sched, "--leader-elect=false", "--secure-port=0"); err != nil {
		return err
	}
	relay := []string{"apiproxy", "--target", fmt.Sprintf("127.0.0.1:%d", port), "--listen", RelayAddr}
	for _, n := range l.st.Nodes {
		if !n.Router {
			relay = append(relay, "--netns", n.NetNS)
		}
	}
	if err := l.start("apiproxy", "", l.bin("rhizome-lab"), relay...); err != nil {
		return err
	}
	for _, n := range l.st.Nodes {
		if n.Router {
			continue
		}
		bin, err := filepath.Abs(l.opts.BinDir)
		if err != nil {
			return err
		}
		// nsenter, not ip netns exec: the kubelet makes pod namespaces,
		// whose mounts must be seen outside (ip netns exec gives the
		// program a mount namespace of its own).
		if err := l.start("kubelet-"+n.Name, "", "nsenter", "--net=/var/run/netns/"+n.NetNS, filepath.Join(bin, "rhizome-lab"), "kubelet",
			"--node", n.Name, "--kubeconfig", ks.Nodes[n.Name], "--node-ip", n.Addr.Addr().String(), "--bin-dir", bin,
			"--state-dir", filepath.Join(state, "kubelet"), "--prefix", l.opts.Prefix, "--cni-socket", filepath.Join(state, n.Name, "cni.sock")); err != nil {
			return err
		}
	}
	for _, n := range topo.Nodes {
		if err := waitFor(ctx, 60*time.Second, "Node "+n.Name+" to be Ready ("+l.logTail("kubelet-"+n.Name, 10)+")", func() bool {
			node, err := client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			return err == nil && nodeReady(node)
		}); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, 60*time.Second, "ServiceAccount default/default (the controller manager makes it; "+l.logTail("kube-controller-manager", 10)+")", func() bool {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	}); err != nil {
		return err
	}
	l.logf("kube-controller-manager, kube-scheduler and a kubelet on each of %d nodes are up; the nodes reach the API server at %s", len(topo.Nodes), RelayAddr)
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitFor polls cond every 100 ms until it holds, ctx ends or timeout
// passes; the error says what was awaited.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("waited %s for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// freePort is a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// KubeClient is a client of the lab's API server as the operator.
func (l *Lab) KubeClient() (kubernetes.Interface, error) {
	if l.st.Kube == nil {
		return nil, errors.New("the lab runs without Kubernetes (rhizome-lab up --kubernetes)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.st.Kube.Admin)
	if err != nil {
		return nil, fmt.Errorf("lab kubeconfig %s: %w", l.st.Kube.Admin, err)
	}
	cfg.QPS = -1
	return kubernetes.NewForConfig(cfg)
}

// Kubectl runs kubectl against the lab as the operator and returns its
// output (standard output and error).
func (l *Lab) Kubectl(stdin string, args ...string) (string, error) {
	if l.st.Kube == nil {
		return "", errors.New("the lab runs without Kubernetes (rhizome-lab up --kubernetes)")
	}
	cmd := exec.Command(filepath.Join(l.st.Kube.BinDir, "kubectl"), append([]string{"--kubeconfig", l.st.Kube.Admin}, args...)...)
	// Its discovery cache goes with the lab.
	cmd.Env = append(os.Environ(), "HOME="+filepath.Dir(l.st.Kube.Admin))
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// kubeSession runs kubectl and echoes it as the operator's session.
func (l *Lab) kubeSession(args ...string) error {
	out, err := l.Kubectl("", args...)
	l.logf("$ kubectl %s\n%s", strings.Join(quoteArgs(args), " "), strings.TrimRight(out, "\n"))
	return err
}

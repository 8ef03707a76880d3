// Package kubetest runs a real kube-apiserver inside a test: the binary `make kube-tools` builds, on a
// random 127.0.0.1 port, storing into an embedded etcd (datastore/etcdtest), stopped when the test ends.
//
//	c := kubetest.Start(t)
//	nodes, err := c.Client().CoreV1().Nodes().List(ctx, metav1.ListOptions{})
//	out, err := c.Kubectl(t, "get", "nodes", "-o", "name")
//
// RBAC is on. Kubeconfig, Config and Client act as an admin (group system:masters);
// ServiceAccountKubeconfig gives a ServiceAccount's own token, so a test sees exactly what its RBAC
// allows. Only the API server runs: no controller-manager, scheduler or kubelet, so nothing creates
// default ServiceAccounts, schedules pods or garbage-collects; the ServiceAccount admission plugin is off
// so pods can be created without one.
//
// The binaries are found in $RHIZOME_KUBE_BIN or in kube-v1.37.2/ of the per-user tools cache (package
// toolcache: ~/.cache/rhizome by default), where `make kube-tools` builds them. When they are missing
// Start skips the test, or fails it when RHIZOME_REQUIRE_KUBE=1 (as `make test` sets).
package kubetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/rhizome-net/rhizome/datastore/etcdtest"
	"github.com/rhizome-net/rhizome/internal/testpki"
)

// AdminUser is the user name the admin token authenticates as.
const AdminUser = "kubetest-admin"

const (
	// readyTimeout bounds the wait for /readyz. The server is ready in a few seconds; the margin is for a
	// machine shared by several test runs.
	readyTimeout = 90 * time.Second
	// stopGrace is how long a stopping server may take before it is killed.
	stopGrace = 10 * time.Second
	// portAttempts is how many times Start picks a new port when another process took the chosen one.
	portAttempts = 3
)

// Option changes how Start runs the server.
type Option func(*config)

type config struct {
	etcd  *etcdtest.Server
	flags []string
}

// WithEtcd stores the cluster in srv instead of an etcd server of its own, under the key prefix
// EtcdPrefix (so it does not mix with rhizome's keys or another cluster's).
func WithEtcd(srv *etcdtest.Server) Option {
	return func(c *config) { c.etcd = srv }
}

// WithFlags adds kube-apiserver flags after the harness's own (e.g. "--feature-gates=..."); for a flag
// given twice the later one wins.
func WithFlags(flags ...string) Option {
	return func(c *config) { c.flags = append(c.flags, flags...) }
}

// Cluster is one running kube-apiserver.
type Cluster struct {
	bins       binaries
	dir        string
	pki        *testpki.APIServer
	etcd       *etcdtest.Server
	etcdPrefix string
	host       string
	kubeconfig string
	config     *rest.Config
	client     kubernetes.Interface
	proc       *process
	readyIn    time.Duration
}

// Start starts kube-apiserver and returns once it answers /readyz and the default namespace exists. It
// stops the server when the test ends. Call it from the test's goroutine.
func Start(t testing.TB, opts ...Option) *Cluster {
	t.Helper()
	bins := requireBinaries(t)
	var cfg config
	for _, opt := range opts {
		opt(&cfg)
	}
	if cfg.etcd == nil {
		cfg.etcd = etcdtest.Start(t)
	}
	// TempDir before Cleanup: cleanups run last-in first-out, so the server stops before its files go.
	c := &Cluster{bins: bins, dir: t.TempDir(), etcd: cfg.etcd, etcdPrefix: "/kubetest/" + randomHex(4)}
	var err error
	if c.pki, err = testpki.WriteAPIServer(c.dir, []testpki.User{{Name: AdminUser, Group: "system:masters"}}); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Cleanup(func() { c.stop(t) })

	begin := time.Now()
	for attempt := 1; ; attempt++ {
		err := c.start(t.Context(), cfg.flags)
		if err == nil {
			break
		}
		if attempt < portAttempts && c.proc != nil && c.proc.lostPortRace() {
			t.Logf("kubetest: port of %s was taken before kube-apiserver bound it; trying another", c.host)
			continue
		}
		tail := ""
		if c.proc != nil {
			tail = "\nkube-apiserver log (last lines):\n" + c.proc.logTail(40)
		}
		t.Fatalf("kubetest: %v%s", err, tail)
	}
	c.readyIn = time.Since(begin)
	return c
}

// start runs kube-apiserver on a free port and waits until it is ready.
func (c *Cluster) start(ctx context.Context, extraFlags []string) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	c.host = fmt.Sprintf("https://127.0.0.1:%d", port)
	c.kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	if err := c.pki.Kubeconfig(c.kubeconfig, c.host, AdminUser); err != nil {
		return err
	}
	if c.config, err = loadConfig(c.kubeconfig); err != nil {
		return err
	}
	if c.client, err = kubernetes.NewForConfig(c.config); err != nil {
		return fmt.Errorf("client for %s: %w", c.host, err)
	}
	args := append(c.flags(port), extraFlags...)
	if c.proc, err = startProcess(c.bins.apiserver, args, filepath.Join(c.dir, "kube-apiserver.log")); err != nil {
		return err
	}
	return c.waitReady(ctx)
}

// flags are the kube-apiserver flags of this cluster (docs/design.md §9).
func (c *Cluster) flags(port int) []string {
	f := []string{
		"--etcd-servers=" + strings.Join(c.etcd.Endpoints(), ","),
		"--etcd-prefix=" + c.etcdPrefix,
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(c.dir, "certs"),
		"--tls-cert-file=" + c.pki.ServerCert,
		"--tls-private-key-file=" + c.pki.ServerKey,
		"--token-auth-file=" + c.pki.TokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.pki.SAPublic,
		"--service-account-signing-key-file=" + c.pki.SAPrivate,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--disable-admission-plugins=ServiceAccount",
	}
	if cert, key, ca := c.etcd.ClientTLS(); cert != "" {
		f = append(f, "--etcd-certfile="+cert, "--etcd-keyfile="+key, "--etcd-cafile="+ca)
	}
	return f
}

// waitReady polls /readyz until it answers ok, the server exits, or readyTimeout passes; then waits for
// the default namespace, which the server creates right after it starts.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	ready := func(ctx context.Context) error {
		body, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Raw()
		if err == nil && strings.TrimSpace(string(body)) != "ok" {
			err = fmt.Errorf("/readyz says %q", body)
		}
		return err
	}
	defaultNamespace := func(ctx context.Context) error {
		_, err := c.client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err
	}
	for _, check := range []struct {
		what string
		fn   func(context.Context) error
	}{{"answer /readyz", ready}, {"create namespace default", defaultNamespace}} {
		for {
			reqCtx, reqCancel := context.WithTimeout(ctx, 5*time.Second)
			last = check.fn(reqCtx)
			reqCancel()
			if last == nil {
				break
			}
			select {
			case <-c.proc.done:
				return fmt.Errorf("kube-apiserver (pid %d) exited before it was ready: %v", c.proc.pid, c.proc.err)
			case <-ctx.Done():
				return fmt.Errorf("kube-apiserver (pid %d) at %s did not %s within %s: %w",
					c.proc.pid, c.host, check.what, readyTimeout, last)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// stop stops the server at the end of the test; if the test failed after Start, it logs the end of the
// server's log.
func (c *Cluster) stop(t testing.TB) {
	if c.proc == nil {
		return
	}
	if err := c.proc.stop(stopGrace); err != nil {
		t.Errorf("kubetest: %v", err)
	}
	if t.Failed() && c.readyIn > 0 { // a failed Start already showed the log
		t.Logf("kubetest: kube-apiserver log (last lines):\n%s", c.proc.logTail(40))
	}
}

// Kubeconfig is the path of a kubeconfig file for the admin user.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// Config is a client configuration for the admin user, without client-side rate limiting; each call
// returns a new copy that the caller may change.
func (c *Cluster) Config() *rest.Config { return rest.CopyConfig(c.config) }

// Client is a clientset for the admin user.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// Host is the server's URL, e.g. "https://127.0.0.1:41234".
func (c *Cluster) Host() string { return c.host }

// PID is the process ID of the kube-apiserver.
func (c *Cluster) PID() int { return c.proc.pid }

// Etcd is the etcd server the cluster stores into.
func (c *Cluster) Etcd() *etcdtest.Server { return c.etcd }

// EtcdPrefix is the etcd key prefix the cluster's objects are stored under, e.g. "/kubetest/1a2b3c4d".
func (c *Cluster) EtcdPrefix() string { return c.etcdPrefix }

// ReadyIn is how long Start took from starting the process to the server being ready.
func (c *Cluster) ReadyIn() time.Duration { return c.readyIn }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}

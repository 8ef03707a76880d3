package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rhizome-net/rhizome/internal/testpki"
)

const (
	// kubectlTimeout bounds one kubectl run.
	kubectlTimeout = 2 * time.Minute
	// tokenLifetime is how long a ServiceAccount token from ServiceAccountKubeconfig is valid; it outlives
	// any test.
	tokenLifetime = time.Hour
)

// Kubectl runs the cached kubectl as the admin user and returns its standard output. A non-zero exit is
// an error that carries kubectl's standard error; the output is returned as well (`kubectl auth can-i`
// prints "no" and exits 1).
func (c *Cluster) Kubectl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return c.KubectlWith(t, c.kubeconfig, args...)
}

// KubectlWith runs the cached kubectl with another kubeconfig, e.g. one from ServiceAccountKubeconfig.
func (c *Cluster) KubectlWith(t testing.TB, kubeconfig string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), kubectlTimeout)
	defer cancel()
	full := append([]string{
		"--kubeconfig=" + kubeconfig,
		// Per cluster: a discovery cache keyed by host:port must not outlive a server whose port is reused.
		"--cache-dir=" + filepath.Join(c.dir, "kubectl-cache"),
	}, args...)
	cmd := exec.CommandContext(ctx, c.bins.kubectl, full...)
	// Only the flags above configure kubectl: not $KUBECONFIG, not ~/.kube.
	cmd.Env = append(withoutEnv(os.Environ(), "KUBECONFIG", "HOME"), "HOME="+c.dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err,
			strings.TrimSpace(stderr.String()))
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("kubectl %s: stderr: %s", strings.Join(args, " "), s)
	}
	return stdout.String(), nil
}

// ServiceAccountConfig is a client configuration that authenticates with a token of the existing
// ServiceAccount namespace/name, obtained with the TokenRequest API. It has only the rights RBAC gives
// that ServiceAccount.
func (c *Cluster) ServiceAccountConfig(t testing.TB, namespace, name string) *rest.Config {
	t.Helper()
	token := c.serviceAccountToken(t, namespace, name)
	cfg := rest.AnonymousClientConfig(c.config)
	cfg.BearerToken = token
	return cfg
}

// ServiceAccountKubeconfig writes a kubeconfig (in the test's temporary directory) that authenticates
// with a token of the existing ServiceAccount namespace/name, obtained with the TokenRequest API, and
// returns its path. Its default namespace is the ServiceAccount's.
func (c *Cluster) ServiceAccountKubeconfig(t testing.TB, namespace, name string) string {
	t.Helper()
	token := c.serviceAccountToken(t, namespace, name)
	path := filepath.Join(t.TempDir(), namespace+"."+name+".kubeconfig")
	user := "system:serviceaccount:" + namespace + ":" + name
	if err := testpki.WriteKubeconfig(path, c.host, c.pki.CAPEM, user, token, namespace); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return path
}

func (c *Cluster) serviceAccountToken(t testing.TB, namespace, name string) string {
	t.Helper()
	seconds := int64(tokenLifetime / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("kubetest: request a token for ServiceAccount %s/%s (does it exist?): %v", namespace, name, err)
	}
	return resp.Status.Token
}

// loadConfig reads a kubeconfig the way programs under test will, and turns client-side rate limiting
// off: tests may create objects faster than client-go's default 5 requests per second.
func loadConfig(path string) (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	cfg.QPS = -1
	return cfg, nil
}

func withoutEnv(env []string, names ...string) []string {
	out := env[:0:0]
	for _, kv := range env {
		drop := false
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				drop = true
			}
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

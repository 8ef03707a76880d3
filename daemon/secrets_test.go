package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/integration/kubetest"
)

// BGP passwords from a file, and from a Secret in a real kube-apiserver.
func TestPasswords(t *testing.T) {
	f := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(f, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noKube := passwords("kube-system", nil)
	if pw, err := noKube(api.SecretSource{File: f}); err != nil || pw != "s3cret" {
		t.Fatalf("password file: %q, %v; want s3cret (trailing newline removed)", pw, err)
	}
	_, err := noKube(api.SecretSource{File: f + ".missing"})
	cnitest.WantErrText(t, err, "password file", "pw.missing")
	_, err = noKube(api.SecretSource{SecretKeyRef: &api.SecretKeySelector{Name: "bgp", Key: "pw"}})
	cnitest.WantErrText(t, err, "kube-system/bgp", "without Kubernetes", "use a file")

	k := kubetest.Start(t)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "bgp-secrets"}, Data: map[string][]byte{"rr-password": []byte("from-secret")}}
	if _, err := k.Client().CoreV1().Secrets("kube-system").Create(context.Background(), sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	withKube := passwords("kube-system", k.Client())
	if pw, err := withKube(api.SecretSource{SecretKeyRef: &api.SecretKeySelector{Name: "bgp-secrets", Key: "rr-password"}}); err != nil || pw != "from-secret" {
		t.Fatalf("password from Secret: %q, %v; want from-secret", pw, err)
	}
	_, err = withKube(api.SecretSource{SecretKeyRef: &api.SecretKeySelector{Name: "bgp-secrets", Key: "other"}})
	cnitest.WantErrText(t, err, "kube-system/bgp-secrets", `no key "other"`)
	_, err = withKube(api.SecretSource{SecretKeyRef: &api.SecretKeySelector{Name: "absent", Key: "k"}})
	cnitest.WantErrText(t, err, "kube-system/absent", "not found")
}

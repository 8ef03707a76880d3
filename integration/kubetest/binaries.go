package kubetest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/rhizome-net/rhizome/internal/toolcache"
)

// Version is the Kubernetes release the harness runs; `make kube-tools` builds it.
const Version = toolcache.KubeVersion

const (
	// BinEnv names a directory holding kube-apiserver and kubectl, used instead of the per-user tools
	// cache.
	BinEnv = toolcache.KubeBinEnv
	// RequireEnv, set to 1 (as `make test` does), makes missing binaries fail a test instead of skipping it.
	RequireEnv = "RHIZOME_REQUIRE_KUBE"
)

// errNotBuilt is returned by findBinaries when a binary is missing.
var errNotBuilt = errors.New("kube-apiserver not built: run make kube-tools")

// binaries are the paths of the two programs the harness runs.
type binaries struct {
	apiserver, kubectl string
}

// findBinaries looks in binDir.
func findBinaries() (binaries, error) {
	dir, err := binDir()
	if err != nil {
		return binaries{}, err
	}
	return binariesIn(dir)
}

// binDir is $RHIZOME_KUBE_BIN, else kube-<Version>/ in the per-user tools cache, where `make
// kube-tools` of any checkout on the machine put them (see package toolcache).
func binDir() (string, error) {
	dir, err := toolcache.KubeDir()
	if err != nil {
		return "", fmt.Errorf("%w: set %s to the directory of kube-apiserver", err, BinEnv)
	}
	return dir, nil
}

// RequireTools returns the directory that holds the named programs of `make kube-tools` (kube-apiserver,
// kube-controller-manager, kube-scheduler, kubectl), or ends the test: a skip when run by hand, a failure
// under `make test` (RHIZOME_REQUIRE_KUBE=1).
func RequireTools(t testing.TB, names ...string) string {
	t.Helper()
	dir, err := binDir()
	for _, n := range names {
		if err != nil {
			break
		}
		p := filepath.Join(dir, n)
		if fi, serr := os.Stat(p); serr != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			err = fmt.Errorf("%s not built: run make kube-tools (%s is missing or not executable)", n, p)
		}
	}
	if err == nil {
		return dir
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("kubetest: %v (%s=1 makes this a failure)", err, RequireEnv)
	}
	t.Skipf("kubetest: %v", err)
	return dir
}

func binariesIn(dir string) (binaries, error) {
	b := binaries{
		apiserver: filepath.Join(dir, "kube-apiserver"),
		kubectl:   filepath.Join(dir, "kubectl"),
	}
	for _, p := range []string{b.apiserver, b.kubectl} {
		fi, err := os.Stat(p)
		if err != nil {
			return b, fmt.Errorf("%w (%s is missing)", errNotBuilt, p)
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return b, fmt.Errorf("%w (%s is not an executable file)", errNotBuilt, p)
		}
	}
	return b, nil
}

// requireBinaries finds the binaries, or ends the test: a skip when run by hand, a failure under `make
// test` (RHIZOME_REQUIRE_KUBE=1), where a missing server must not pass unnoticed.
func requireBinaries(t testing.TB) binaries {
	t.Helper()
	b, err := findBinaries()
	if err == nil {
		return b
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("kubetest: %v (%s=1 makes this a failure)", err, RequireEnv)
	}
	t.Skipf("kubetest: %v", err)
	return b
}

// Package toolcache locates rhizome's per-user tool cache: the programs built once from a pinned
// version (kube-apiserver and the other Kubernetes binaries, the reference CNI plugins, the test
// VM's kernel, staticcheck), kept in a directory per version and shared by every checkout on the
// machine, so a second clone does not build them again. The Makefile fills it (its TOOLS_CACHE);
// tests and the lab find the tools here. What a checkout builds from its own source (bin/, the
// lab's state) stays in the checkout.
package toolcache

import (
	"fmt"
	"os"
	"path/filepath"
)

const (
	// Env names the cache directory, overriding the default; the Makefile exports it as its
	// TOOLS_CACHE.
	Env = "RHIZOME_TOOLS_CACHE"
	// KubeBinEnv names a directory holding the Kubernetes binaries, overriding KubeDir's default.
	KubeBinEnv = "RHIZOME_KUBE_BIN"
	// KubeVersion is the Kubernetes release the tests and the lab run; `make kube-tools` builds it
	// (the Makefile's KUBE_VERSION, which a test keeps equal to this).
	KubeVersion = "v1.37.2"
)

// Dir is $RHIZOME_TOOLS_CACHE, else rhizome/ in the user's cache directory: $XDG_CACHE_HOME, else
// ~/.cache (the Makefile's default TOOLS_CACHE).
func Dir() (string, error) {
	if d := os.Getenv(Env); d != "" {
		return d, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("locate the tool cache (set %s or HOME): %w", Env, err)
	}
	return filepath.Join(base, "rhizome"), nil
}

// KubeDir is the directory of kube-apiserver, kube-controller-manager, kube-scheduler and kubectl:
// $RHIZOME_KUBE_BIN, else kube-<KubeVersion>/ in Dir.
func KubeDir() (string, error) {
	if d := os.Getenv(KubeBinEnv); d != "" {
		return d, nil
	}
	return In("kube-" + KubeVersion)
}

// In is the entry name (a tool and its version, like "cni-plugins-v1.9.1") of the cache.
func In(name string) (string, error) {
	d, err := Dir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, name), nil
}

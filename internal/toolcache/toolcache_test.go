package toolcache

import (
	"path/filepath"
	"testing"
)

// TestDirs checks where the tools are looked for under each environment a user may have: the
// overrides win, else the XDG cache directory, else ~/.cache.
func TestDirs(t *testing.T) {
	for _, tc := range []struct {
		name              string
		env               map[string]string
		wantDir, wantKube string
	}{
		{"home", map[string]string{"HOME": "/home/u"},
			"/home/u/.cache/rhizome", "/home/u/.cache/rhizome/kube-" + KubeVersion},
		{"xdg", map[string]string{"HOME": "/home/u", "XDG_CACHE_HOME": "/var/cache/u"},
			"/var/cache/u/rhizome", "/var/cache/u/rhizome/kube-" + KubeVersion},
		{"tools cache", map[string]string{"HOME": "/home/u", "XDG_CACHE_HOME": "/var/cache/u", Env: "/srv/tools"},
			"/srv/tools", "/srv/tools/kube-" + KubeVersion},
		{"kube bin", map[string]string{"HOME": "/home/u", Env: "/srv/tools", KubeBinEnv: "/opt/kube/bin"},
			"/srv/tools", "/opt/kube/bin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"HOME", "XDG_CACHE_HOME", Env, KubeBinEnv} {
				t.Setenv(k, tc.env[k])
			}
			if got, err := Dir(); err != nil || got != tc.wantDir {
				t.Errorf("Dir() = %q, %v; want %q", got, err, tc.wantDir)
			}
			if got, err := KubeDir(); err != nil || got != tc.wantKube {
				t.Errorf("KubeDir() = %q, %v; want %q", got, err, tc.wantKube)
			}
			if got, err := In("cni-plugins-v1"); err != nil || got != filepath.Join(tc.wantDir, "cni-plugins-v1") {
				t.Errorf("In(cni-plugins-v1) = %q, %v; want it in %q", got, err, tc.wantDir)
			}
		})
	}
}

// TestDirWithoutHome: with neither an override nor a home, the error says what to set.
func TestDirWithoutHome(t *testing.T) {
	for _, k := range []string{"HOME", "XDG_CACHE_HOME", Env, KubeBinEnv} {
		t.Setenv(k, "")
	}
	if d, err := KubeDir(); err == nil {
		t.Fatalf("KubeDir() = %q without HOME, want an error", d)
	}
}

package cni_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// referenceVersion is the containernetworking/plugins release whose
// reference plugins (bridge, ptp, host-local) the tests and the benchmark
// run next to rhizome's.
const referenceVersion = "v1.9.1"

var buildReference sync.Mutex

// referencePlugins builds the named reference plugins once into
// .cache/cni-plugins-<version>/ at the repository root and returns the
// directory.
func referencePlugins(t testing.TB, names ...string) string {
	t.Helper()
	buildReference.Lock()
	defer buildReference.Unlock()
	dir, err := filepath.Abs(filepath.Join("..", ".cache", "cni-plugins-"+referenceVersion))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			continue
		}
		t.Logf("building reference plugin %s %s into %s", name, referenceVersion, dir)
		cmd := exec.Command("go", "install", "github.com/containernetworking/plugins/plugins/"+kindOf(name)+"/"+name+"@"+referenceVersion)
		cmd.Dir = os.TempDir() // outside this module: the plugins' own go.mod applies
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build reference plugin %s: %v\n%s", name, err, out)
		}
	}
	return dir
}

func kindOf(name string) string {
	switch name {
	case "host-local", "static", "dhcp":
		return "ipam"
	}
	return "main"
}

package daemon

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

func TestInstallCNI(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	src, bin, conf := t.TempDir(), filepath.Join(t.TempDir(), "opt/cni/bin"), filepath.Join(t.TempDir(), "etc/cni/net.d")
	for _, p := range CNIPlugins {
		if err := os.WriteFile(filepath.Join(src, p), []byte("binary of "+p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := InstallCNI(log, src, bin, conf, "/var/run/rhizome/cni.sock", 1400); err != nil {
		t.Fatal(err)
	}
	for _, p := range CNIPlugins {
		st, err := os.Stat(filepath.Join(bin, p))
		if err != nil || st.Mode().Perm() != 0o755 {
			t.Fatalf("%s not installed with mode 0755: %v %v", p, st, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(conf, ConflistName))
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("the conflist does not load in libcni: %v\n%s", err, b)
	}
	if list.Name != NetworkName || len(list.Plugins) != 2 || list.Plugins[0].Network.Type != "rhizome-cni" || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("conflist: %s", b)
	}
	var first struct {
		Socket string `json:"socket"`
		MTU    int    `json:"mtu"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &first); err != nil || first.Socket != "/var/run/rhizome/cni.sock" || first.MTU != 1400 {
		t.Fatalf("rhizome-cni's config: %s (%v)", list.Plugins[0].Bytes, err)
	}

	// A second run writes nothing: the files keep their inodes.
	inode := func(p string) uint64 {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	before := inode(filepath.Join(conf, ConflistName))
	if err := InstallCNI(log, src, bin, conf, "/var/run/rhizome/cni.sock", 1400); err != nil {
		t.Fatal(err)
	}
	if inode(filepath.Join(conf, ConflistName)) != before {
		t.Error("a second install-cni rewrote an unchanged conflist")
	}

	// A reader never sees half a conflist while it is rewritten.
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Int32
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			b, err := os.ReadFile(filepath.Join(conf, ConflistName))
			if err != nil || !json.Valid(b) {
				bad.Add(1)
			}
		}
	}()
	for i := range 300 {
		if err := InstallCNI(log, src, bin, conf, "/var/run/rhizome/cni.sock", 1400+i%2*50); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if n := bad.Load(); n > 0 {
		t.Errorf("a concurrent reader saw a missing or half-written conflist %d times", n)
	}
	if left, _ := filepath.Glob(filepath.Join(conf, ".*tmp*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	if err := InstallCNI(log, src, bin, conf, "relative.sock", 0); err == nil {
		t.Error("a relative socket path was accepted")
	}
	if err := uninstallCNI(log, bin, conf, filepath.Join(t.TempDir(), "run", "cni.sock")); err != nil {
		t.Fatal(err)
	}
	for _, p := range append([]string{filepath.Join(conf, ConflistName)}, filepath.Join(bin, CNIPlugins[0]), filepath.Join(bin, CNIPlugins[1])) {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still there after the clean-up", p)
		}
	}
}

package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// CNI files rhizome installs on a node.
const (
	ConflistName = "10-rhizome.conflist"
	NetworkName  = "k8s-pod-network"
)

// CNIPlugins are the plugin binaries install-cni copies next to the
// others on the host.
var CNIPlugins = []string{"rhizome-cni", "rhizome-ipam"}

// InstallCNI is what the install-cni init container does: copy the plugin
// binaries from srcDir into binDir and write the conflist into confDir.
// Every file is written to a temporary name in its directory and renamed
// into place, so the kubelet never sees half a binary or half a conflist;
// a file that already has the right content is left alone, so a second run
// changes nothing.
func InstallCNI(log *slog.Logger, srcDir, binDir, confDir, socket string, mtu int) error {
	for _, p := range CNIPlugins {
		b, err := os.ReadFile(filepath.Join(srcDir, p))
		if err != nil {
			return fmt.Errorf("install-cni: read plugin %s: %w", p, err)
		}
		changed, err := writeAtomic(filepath.Join(binDir, p), b, 0o755)
		if err != nil {
			return fmt.Errorf("install-cni: %w", err)
		}
		log.Info("CNI plugin", "path", filepath.Join(binDir, p), "changed", changed)
	}
	conf, err := Conflist(socket, mtu)
	if err != nil {
		return err
	}
	changed, err := writeAtomic(filepath.Join(confDir, ConflistName), conf, 0o644)
	if err != nil {
		return fmt.Errorf("install-cni: %w", err)
	}
	log.Info("CNI network configuration", "path", filepath.Join(confDir, ConflistName), "changed", changed)
	return nil
}

// Conflist is the network configuration install-cni writes: rhizome-cni
// with the agent's socket and the MTU (0: the agent's), and portmap for
// hostPort.
func Conflist(socket string, mtu int) ([]byte, error) {
	if mtu != 0 && (mtu < 576 || mtu > 65535) {
		return nil, fmt.Errorf("install-cni: mtu %d: want 0 (the agent's) or 576-65535", mtu)
	}
	if !filepath.IsAbs(socket) {
		return nil, fmt.Errorf("install-cni: socket %q: want an absolute path", socket)
	}
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       NetworkName,
		"plugins": []any{
			map[string]any{"type": "rhizome-cni", "socket": socket, "mtu": mtu},
			map[string]any{"type": "portmap", "snat": true, "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// writeAtomic makes path hold data with mode: unchanged if it already
// does, else written to a temporary file in the same directory, synced and
// renamed over path.
func writeAtomic(path string, data []byte, mode fs.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() == mode {
			return false, nil
		}
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone after the rename; cleans up on failure
	if _, err := f.Write(data); err != nil {
		f.Close()
		return false, fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return false, err
	}
	if err := f.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("rename %s into place: %w", path, err)
	}
	return true, nil
}

// uninstallCNI removes what install-cni wrote and the agent's socket
// directory; missing files are not an error.
func uninstallCNI(log *slog.Logger, binDir, confDir, socket string) error {
	var errs []error
	paths := []string{filepath.Join(confDir, ConflistName)}
	for _, p := range CNIPlugins {
		paths = append(paths, filepath.Join(binDir, p))
	}
	paths = append(paths, socket)
	for _, p := range paths {
		if err := os.Remove(p); err == nil {
			log.Info("removed", "path", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	// The socket's directory, if nothing else is in it.
	if err := os.Remove(filepath.Dir(socket)); err == nil {
		log.Info("removed", "path", filepath.Dir(socket))
	}
	return errors.Join(errs...)
}

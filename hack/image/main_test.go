package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/rhizome-net/rhizome/hack/image/nodeimage"
)

// TestImage builds the four binaries once the way `make image` does, assembles the image twice
// into separate directories, and checks what a user loading it would see.
func TestImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds rhizome's four binaries (about 30 s); runs without -short")
	}
	binDir, toolDir := t.TempDir(), t.TempDir()
	start := time.Now()
	for _, b := range nodeimage.Binaries() {
		goBuild(t, binDir, b, "github.com/rhizome-net/rhizome/cmd/"+b)
	}
	// The command runs as its own process, as under `make image`; built without -race even when
	// the test has it (under -race compressing the layer takes 25 s instead of 3).
	tool := goBuild(t, toolDir, "image", "github.com/rhizome-net/rhizome/hack/image")
	t.Logf("built %v and the image command in %s", nodeimage.Binaries(), time.Since(start).Round(time.Millisecond))

	// The second image is assembled from copies with another mode and mtime, as after a
	// checkout elsewhere: only the bytes of the binaries may reach the image.
	copyDir := copyBinaries(t, binDir, 0o500, time.Now().Add(time.Hour))

	tag := "rhizome/rhizome-node:test"
	out1, digest1 := assemble(t, tool, binDir, tag)
	out2, digest2 := assemble(t, tool, copyDir, tag)
	if digest1 != digest2 {
		t.Fatalf("two images from the same binaries have digests %s and %s", digest1, digest2)
	}
	if h1, h2 := fileSHA256(t, out1), fileSHA256(t, out2); h1 != h2 {
		t.Fatalf("two image tarballs from the same binaries differ: sha256 %x and %x", h1, h2)
	}

	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out1, &ref)
	if err != nil {
		t.Fatalf("open the image tarball with go-containerregistry: %v", err)
	}
	if d, err := img.Digest(); err != nil || d.String() != digest1 {
		t.Fatalf("tarball's image digest %v (err %v), printed %s", d, err, digest1)
	}
	// The manifest and config agree with each other; readLayer checks the layer's digest and
	// diff ID against the bytes in the same pass that reads its files (one gunzip: 7 s under -race).
	if err := validate.Image(img, validate.Fast); err != nil {
		t.Fatalf("image in the tarball is inconsistent: %v", err)
	}

	t.Run("config", func(t *testing.T) {
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"/usr/local/bin/rhizome-node"}; !slices.Equal(cfg.Config.Entrypoint, want) {
			t.Errorf("entrypoint %q, want %q", cfg.Config.Entrypoint, want)
		}
		if !slices.ContainsFunc(cfg.Config.Env, func(e string) bool { return strings.HasPrefix(e, "PATH=/usr/local/bin:") }) {
			t.Errorf("env %q has no PATH starting with /usr/local/bin", cfg.Config.Env)
		}
		if cfg.OS != "linux" || cfg.Architecture != "amd64" {
			t.Errorf("platform %s/%s, want linux/amd64", cfg.OS, cfg.Architecture)
		}
		if !cfg.Created.Equal(time.Unix(0, 0)) {
			t.Errorf("created %s, want the Unix epoch", cfg.Created)
		}
		for _, h := range cfg.History {
			if !h.Created.Equal(time.Unix(0, 0)) {
				t.Errorf("history entry %q created %s, want the Unix epoch", h.CreatedBy, h.Created)
			}
		}
	})

	t.Run("layer", func(t *testing.T) {
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		if len(layers) != 1 {
			t.Fatalf("%d layers, want 1 (empty base plus the binaries)", len(layers))
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 {
			t.Fatalf("manifest lists %d layers and config %d diff IDs, want 1", len(m.Layers), len(cfg.RootFS.DiffIDs))
		}
		files := readLayer(t, layers[0], m.Layers[0].Digest, cfg.RootFS.DiffIDs[0])

		var wantPaths []string
		for _, b := range nodeimage.Binaries() {
			p := path.Join("usr/local/bin", b)
			wantPaths = append(wantPaths, p)
			f, ok := files[p]
			if !ok {
				t.Errorf("layer has no /%s", p)
				continue
			}
			h := f.hdr
			if h.Typeflag != tar.TypeReg || h.Mode != 0o755 || h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
				t.Errorf("/%s: type %c mode %o owner %d:%d mtime %s, want a regular file 0755 root:root at the epoch",
					p, h.Typeflag, h.Mode, h.Uid, h.Gid, h.ModTime)
			}
			built, err := os.ReadFile(filepath.Join(binDir, b))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(f.data, built) {
				t.Errorf("/%s in the layer (%d bytes) is not the built %s (%d bytes)", p, len(f.data), b, len(built))
			}
			if err := nodeimage.CheckStatic(bytes.NewReader(f.data)); err != nil {
				t.Errorf("/%s: %v", p, err)
			}
		}
		for _, b := range []string{"rhizome-cni", "rhizome-ipam"} {
			p := path.Join("opt/cni/bin", b)
			wantPaths = append(wantPaths, p)
			f, ok := files[p]
			if !ok {
				t.Errorf("layer has no /%s for the install-cni init container", p)
				continue
			}
			if f.hdr.Typeflag != tar.TypeLink || f.hdr.Linkname != path.Join("usr/local/bin", b) {
				t.Errorf("/%s: type %c link %q, want a hard link to /usr/local/bin/%s", p, f.hdr.Typeflag, f.hdr.Linkname, b)
			}
		}
		// Nothing else but the directories leading to them: the base is empty.
		for p, f := range files {
			if f.hdr.Typeflag != tar.TypeDir && !slices.Contains(wantPaths, p) {
				t.Errorf("unexpected file /%s in the layer", p)
			}
		}
	})
}

// TestCheckStaticRefusesDynamic shows the static check can fail: a dynamically linked host
// executable is refused.
func TestCheckStaticRefusesDynamic(t *testing.T) {
	for _, p := range []string{"/bin/ls", "/usr/bin/ls", "/bin/sh"} {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		defer f.Close()
		if err := nodeimage.CheckStatic(f); !errors.Is(err, nodeimage.ErrNotStatic) {
			t.Fatalf("CheckStatic(%s) = %v, want ErrNotStatic for a dynamically linked executable", p, err)
		}
		return
	}
	t.Skip("no dynamically linked /bin/ls or /bin/sh on this machine to check against")
}

// goBuild builds pkg into dir/name exactly as the Makefile's image target builds the binaries
// with IMAGE_VERSION=test, and returns its path. Never with -race, whatever the test runs under.
// The compile flags (CGO_ENABLED=0, -trimpath) are those of make build and cnitest.Build too:
// under make test the commands' packages are compiled once for all of them and this only links.
func goBuild(t *testing.T, dir, name, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	ctx := t.Context()
	if d, ok := t.Deadline(); ok { // a timed-out test leaves no go build behind
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-30*time.Second))
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-X main.version=test", "-o", out, pkg)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}

// assemble runs the image command into a fresh directory and returns the tarball and the
// digest it printed.
func assemble(t *testing.T, tool, binDir, tag string) (string, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "image.tar")
	start := time.Now()
	stdout, err := exec.Command(tool, "--bin-dir", binDir, "--out", out, "--tag", tag).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("image: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("image: %v", err)
	}
	t.Logf("assembled in %s:\n%s", time.Since(start).Round(time.Millisecond), stdout)
	m := regexp.MustCompile(`(?m)^digest\s+(sha256:[0-9a-f]{64})\b`).FindSubmatch(stdout)
	if m == nil {
		t.Fatalf("no digest line in the output:\n%s", stdout)
	}
	return out, string(m[1])
}

// copyBinaries copies the binaries of dir into a new directory with the given mode and mtime.
func copyBinaries(t *testing.T, dir string, mode os.FileMode, mtime time.Time) string {
	t.Helper()
	dst := t.TempDir()
	for _, b := range nodeimage.Binaries() {
		data, err := os.ReadFile(filepath.Join(dir, b))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, b)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

type layerFile struct {
	hdr  *tar.Header
	data []byte
}

// readLayer returns the files of the layer, after checking that its compressed bytes have the
// manifest's digest and its tar stream the config's diff ID.
func readLayer(t *testing.T, l v1.Layer, digest, diffID v1.Hash) map[string]layerFile {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	compressed, uncompressed := sha256.New(), sha256.New()
	zr, err := gzip.NewReader(io.TeeReader(rc, compressed))
	if err != nil {
		t.Fatalf("layer is not gzip: %v", err)
	}
	files := map[string]layerFile{}
	tr := tar.NewReader(io.TeeReader(zr, uncompressed))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			// The tar reader stops at the end-of-archive blocks; hash through the gzip trailer.
			if _, err := io.Copy(io.Discard, io.TeeReader(zr, uncompressed)); err != nil {
				t.Fatalf("read the layer to its end: %v", err)
			}
			if _, err := io.Copy(compressed, rc); err != nil {
				t.Fatalf("read the layer to its end: %v", err)
			}
			checkHash(t, "layer digest (manifest)", digest, compressed.Sum(nil))
			checkHash(t, "layer diff ID (config)", diffID, uncompressed.Sum(nil))
			return files
		}
		if err != nil {
			t.Fatalf("read the layer tar: %v", err)
		}
		data := make([]byte, h.Size) // not io.ReadAll: regrowing 100 MB costs 10 s under -race
		if _, err := io.ReadFull(tr, data); err != nil {
			t.Fatalf("read /%s from the layer: %v", h.Name, err)
		}
		files[strings.TrimSuffix(h.Name, "/")] = layerFile{hdr: h, data: data}
	}
}

func checkHash(t *testing.T, what string, h v1.Hash, got []byte) {
	t.Helper()
	if g := hex.EncodeToString(got); h.Algorithm != "sha256" || h.Hex != g {
		t.Errorf("%s is %s, the bytes hash to sha256:%s", what, h, g)
	}
}

func fileSHA256(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

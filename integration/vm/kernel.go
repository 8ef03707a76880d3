package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Kernel is a Debian kernel package unpacked under Dir, its modules indexed
// by depmod.
type Kernel struct {
	Dir     string // root of the unpacked package (boot/, lib/modules/)
	Release string // what uname -r says in the guest, e.g. 6.1.0-56-cloud-amd64
}

// Image is the kernel qemu boots.
func (k Kernel) Image() string { return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release) }

// ModulesDir holds the release's modules and depmod's index.
func (k Kernel) ModulesDir() string { return filepath.Join(k.Dir, "lib", "modules", k.Release) }

// OpenKernel checks that dir holds an unpacked, depmod-indexed kernel and
// returns it.
func OpenKernel(dir string) (Kernel, error) {
	images, err := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if err != nil || len(images) != 1 {
		return Kernel{}, fmt.Errorf("kernel directory %s: want exactly one boot/vmlinuz-*, found %d: run make kernel-deps", dir, len(images))
	}
	k := Kernel{Dir: dir, Release: strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-")}
	if _, err := os.Stat(filepath.Join(k.ModulesDir(), "modules.dep")); err != nil {
		return Kernel{}, fmt.Errorf("kernel %s has no modules.dep: run make kernel-deps: %w", k.Release, err)
	}
	return k, nil
}

// FetchKernel returns the kernel of Debian package pkg unpacked under
// cacheDir/kernel-<release>, downloading it with apt-get first when it is
// not there yet. pkg is either a concrete image package
// (linux-image-6.1.0-56-cloud-amd64) or a meta-package
// (linux-image-cloud-amd64), which is resolved to the image it currently
// depends on. The package is only unpacked, never installed on the host.
//
// Asking apt takes a second or two, so the answer is remembered in
// cacheDir for a day: a new Debian kernel is picked up by the next run
// after that.
func FetchKernel(ctx context.Context, log *slog.Logger, cacheDir, pkg string) (Kernel, error) {
	memo := filepath.Join(cacheDir, "kernel-package-"+pkg)
	var image string
	if st, err := os.Stat(memo); err == nil && time.Since(st.ModTime()) < 24*time.Hour {
		if b, err := os.ReadFile(memo); err == nil && isImagePackage(strings.TrimSpace(string(b))) {
			image = strings.TrimSpace(string(b))
		}
	}
	if image == "" {
		var err error
		if image, err = resolveImagePackage(ctx, log, pkg); err != nil {
			return Kernel{}, err
		}
		if err := os.MkdirAll(cacheDir, 0o755); err != nil {
			return Kernel{}, fmt.Errorf("create cache directory %s: %w", cacheDir, err)
		}
		if err := os.WriteFile(memo, []byte(image+"\n"), 0o644); err != nil {
			return Kernel{}, fmt.Errorf("remember kernel package: %w", err)
		}
	}
	release := strings.TrimPrefix(image, "linux-image-")
	dir := filepath.Join(cacheDir, "kernel-"+release)
	if k, err := OpenKernel(dir); err == nil {
		return k, nil
	}
	log.Info("fetching kernel", "package", image, "dir", dir)
	tmp, err := os.MkdirTemp(cacheDir, "kernel-"+release+".tmp-")
	if err != nil {
		return Kernel{}, fmt.Errorf("create a download directory in %s: %w", cacheDir, err)
	}
	defer os.RemoveAll(tmp)
	if _, err := run(ctx, tmp, "apt-get", "download", "-q", image); err != nil {
		// A stale index names a file the mirror no longer has.
		log.Info("kernel download failed: apt-get update and retry", "package", image, "err", err)
		if _, uerr := run(ctx, "", "apt-get", "update", "-q"); uerr != nil {
			return Kernel{}, fmt.Errorf("download kernel package %s: %w; apt-get update: %w", image, err, uerr)
		}
		if _, err := run(ctx, tmp, "apt-get", "download", "-q", image); err != nil {
			return Kernel{}, fmt.Errorf("download kernel package %s: %w", image, err)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("download kernel package %s: expected one .deb in %s, found %d", image, tmp, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if _, err := run(ctx, "", "dpkg-deb", "-x", debs[0], root); err != nil {
		return Kernel{}, fmt.Errorf("unpack %s: %w", debs[0], err)
	}
	if _, err := run(ctx, "", "depmod", "-b", root, release); err != nil {
		return Kernel{}, fmt.Errorf("index the modules of kernel %s (depmod comes with package kmod): %w", release, err)
	}
	k, err := OpenKernel(root)
	if err != nil {
		return Kernel{}, err
	}
	if k.Release != release {
		return Kernel{}, fmt.Errorf("package %s holds kernel %s, expected %s", image, k.Release, release)
	}
	if err := os.Rename(root, dir); err != nil {
		return Kernel{}, fmt.Errorf("move the unpacked kernel into %s: %w", dir, err)
	}
	return Kernel{Dir: dir, Release: release}, nil
}

// resolveImagePackage turns a meta-package into the image package it
// depends on now; a concrete image package is returned as it is. It runs
// apt-get update once when apt does not know the package.
func resolveImagePackage(ctx context.Context, log *slog.Logger, pkg string) (string, error) {
	out, err := run(ctx, "", "apt-cache", "depends", pkg)
	if err != nil || !bytes.Contains(out, []byte(pkg)) {
		log.Info("apt does not know the kernel package yet: apt-get update", "package", pkg)
		if _, err := run(ctx, "", "apt-get", "update", "-q"); err != nil {
			return "", fmt.Errorf("apt-get update to find kernel package %s: %w", pkg, err)
		}
		if out, err = run(ctx, "", "apt-cache", "depends", pkg); err != nil {
			return "", fmt.Errorf("look up kernel package %s: %w", pkg, err)
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: ")
		if ok && isImagePackage(dep) && !strings.HasSuffix(dep, "-unsigned") {
			return dep, nil
		}
	}
	if isImagePackage(pkg) {
		return pkg, nil
	}
	return "", fmt.Errorf("kernel package %s depends on no linux-image-<release> package: name one, e.g. linux-image-6.1.0-56-cloud-amd64", pkg)
}

// isImagePackage tells an image package (its name holds a release number,
// linux-image-6.1.0-56-cloud-amd64) from a meta-package.
func isImagePackage(pkg string) bool {
	rest, ok := strings.CutPrefix(pkg, "linux-image-")
	if !ok || rest == "" || rest[0] < '0' || rest[0] > '9' {
		return false
	}
	// A versioned meta-package (linux-image-6.12-cloud-amd64) has only
	// major.minor before the flavour.
	ver, _, _ := strings.Cut(rest, "-")
	return strings.Count(ver, ".") >= 2 || strings.Contains(ver, "+")
}

// run runs a host command, returning its standard output; the error
// carries what it printed on standard error.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return out, fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return out, nil
}

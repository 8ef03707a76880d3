package vm

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// DefaultModules are loaded in every guest: IPIP (what the CI kernel
// lacks), veth to join namespaces, and what bridges, VXLAN and nftables
// masquerade need, so a multi-node run of the agent fits in one VM.
func DefaultModules() []string {
	return []string{
		"tunnel4", "ip_tunnel", "ipip", "veth",
		"bridge", "vxlan",
		"nf_tables", "nft_chain_nat", "nft_masq",
	}
}

// Marker is what /init prints, followed by the test binary's exit status,
// once the binary has returned.
const Marker = "rhizome-vm: exit status "

// InsideEnv is set to "1" in the guest's environment, so a test can tell a
// missing kernel feature there (a failure) from one on a developer's host
// (a skip).
const InsideEnv = "RHIZOME_IN_VM"

// BaseImage is the cached part of every guest's initramfs.
type BaseImage struct {
	Path    string
	Release string
}

// BuildBase writes (or reuses) the base initramfs for kernel k: the static
// busybox, the modules named and their dependencies, and /init. The file is
// named after a hash of its inputs, so a change of any of them builds a new
// one and a run never sees a half-written file.
func BuildBase(k Kernel, busybox string, modules []string) (BaseImage, error) {
	if err := checkStatic(busybox); err != nil {
		return BaseImage{}, err
	}
	dep, err := os.Open(filepath.Join(k.ModulesDir(), "modules.dep"))
	if err != nil {
		return BaseImage{}, fmt.Errorf("kernel %s: %w: run make kernel-deps", k.Release, err)
	}
	defer dep.Close()
	builtin, err := os.Open(filepath.Join(k.ModulesDir(), "modules.builtin"))
	if err != nil {
		return BaseImage{}, fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	defer builtin.Close()
	idx, err := parseModuleIndex(dep, builtin)
	if err != nil {
		return BaseImage{}, fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	order, err := idx.loadOrder(modules)
	if err != nil {
		return BaseImage{}, fmt.Errorf("kernel %s: %w", k.Release, err)
	}
	script := initScript(k.Release, order)

	st, err := os.Stat(busybox)
	if err != nil {
		return BaseImage{}, fmt.Errorf("busybox: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%d %d\n%s", k.Release, st.Size(), st.ModTime().UnixNano(), script)
	out := filepath.Join(k.Dir, "initramfs-base-"+hex.EncodeToString(h.Sum(nil))[:16]+".cpio")
	if _, err := os.Stat(out); err == nil {
		return BaseImage{Path: out, Release: k.Release}, nil
	}

	tmp, err := os.CreateTemp(k.Dir, "initramfs-base.tmp-")
	if err != nil {
		return BaseImage{}, fmt.Errorf("create base initramfs: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	c := newCPIO(tmp)
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc", "lib", "lib/modules"} {
		c.Dir(d, 0o755)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.CopyFile("bin/busybox", 0o755, busybox)
	c.Symlink("bin/sh", "busybox")
	c.File("init", 0o755, []byte(script))

	// Modules keep their place under lib/modules/<release>, with a
	// modules.dep of just these, so a module the kernel asks for by itself
	// (request_module runs busybox modprobe) is found if it is here.
	modRoot := path.Join("lib/modules", k.Release)
	made := map[string]bool{"lib": true, "lib/modules": true}
	mkdirs := func(dir string) {
		var parts []string
		for d := dir; !made[d] && d != "."; d = path.Dir(d) {
			parts = append(parts, d)
		}
		for i := len(parts) - 1; i >= 0; i-- {
			c.Dir(parts[i], 0o755)
			made[parts[i]] = true
		}
	}
	var depLines strings.Builder
	for _, f := range order {
		mkdirs(path.Dir(path.Join(modRoot, f)))
		c.CopyFile(path.Join(modRoot, f), 0o644, filepath.Join(k.ModulesDir(), filepath.FromSlash(f)))
		fmt.Fprintf(&depLines, "%s: %s\n", f, strings.Join(idx.deps[f], " "))
	}
	mkdirs(modRoot)
	c.File(path.Join(modRoot, "modules.dep"), 0o644, []byte(depLines.String()))
	if err := c.Close(); err != nil {
		return BaseImage{}, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return BaseImage{}, fmt.Errorf("write base initramfs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return BaseImage{}, fmt.Errorf("write base initramfs: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return BaseImage{}, fmt.Errorf("install base initramfs: %w", err)
	}
	return BaseImage{Path: out, Release: k.Release}, nil
}

// checkStatic fails for a dynamically linked busybox: the guest has no C
// library. Debian's busybox-static package puts a static one in /bin.
func checkStatic(file string) error {
	f, err := elf.Open(file)
	if err != nil {
		return fmt.Errorf("busybox %s: %w: install package busybox-static", file, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox %s is dynamically linked: install package busybox-static", file)
		}
	}
	return nil
}

// initScript is the guest's /init: mount the kernel file systems, load the
// modules, run /test/bin with the arguments, environment and working
// directory the payload archive carries, print Marker with its exit status
// and power off. A setup failure prints why and powers off without the
// marker, which the host reports as a failed run.
func initScript(release string, modules []string) string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
# /init of rhizome's kernel test VM, written by integration/vm.
# busybox makes its applet links here, in the guest: on the host it would
# link host paths.
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp
fail() { echo "rhizome-vm: setup failed: $*"; poweroff -f; }
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mkdir -p /var /run/netns && ln -s /run /var/run
`)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod /lib/modules/%s/%s || fail \"insmod %s\"\n", release, m, moduleName(m))
	}
	b.WriteString(`ip link set lo up || fail "bring lo up"
[ -x /test/bin ] || fail "no /test/bin: boot with a payload archive after the base"
while IFS= read -r kv; do export "$kv"; done < /test/env
set --
while IFS= read -r arg; do set -- "$@" "$arg"; done < /test/args
mkdir -p "$(cat /test/workdir)" && cd "$(cat /test/workdir)" || fail "cd to the working directory"
/test/bin "$@"
status=$?
echo "` + Marker + `$status"
poweroff -f
`)
	return b.String()
}

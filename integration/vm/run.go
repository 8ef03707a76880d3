package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Guest is how a test binary is booted: the kernel image, the cached base
// initramfs, and the machine qemu emulates. The guest has no network card
// (-nic none): every packet stays inside it.
type Guest struct {
	Kernel  string        // bzImage to boot
	Base    string        // base initramfs from BuildBase
	QEMU    string        // qemu binary; "qemu-system-x86_64" when empty
	Memory  string        // guest memory; "1G" when empty
	CPUs    int           // virtual CPUs; 1 when 0
	Timeout time.Duration // from boot to power-off; 10 minutes when 0
	// BIOS is the firmware; when empty, qboot from package qemu-system-data
	// if it is there (it boots a -kernel faster than SeaBIOS and prints
	// nothing), else qemu's default.
	BIOS string
}

// Payload is the program a guest runs and how.
type Payload struct {
	Binary  string   // static executable (CGO_ENABLED=0) to run as root
	Args    []string // its arguments; none may contain a newline
	Env     []string // KEY=VALUE added to the guest's environment
	WorkDir string   // created in the guest and made the working directory
	// Files are host directories and files copied into the guest at the
	// same path (a test package's testdata, prebuilt binaries, a host
	// program and its libraries from HostProgram); missing ones are left
	// out.
	Files []string
}

// Result is what a boot reported.
type Result struct {
	ExitCode int  // the payload's exit status, valid when the marker was seen
	Skipped  bool // a "--- SKIP:" line of go test -v was printed
}

// ErrNoMarker means the guest stopped without reporting the payload's exit
// status: setup failed, the kernel panicked or the payload never returned.
var ErrNoMarker = errors.New("guest stopped without reporting an exit status")

// Run boots the guest with the payload laid over the base initramfs,
// copies the guest's console to out (lines end in \n, not \r\n) and returns
// what the payload reported. A timeout or a missing marker is an error.
func (g Guest) Run(ctx context.Context, p Payload, out io.Writer) (Result, error) {
	initrd, err := g.initrd(p)
	if err != nil {
		return Result{}, err
	}
	defer os.Remove(initrd)

	timeout := g.Timeout
	if timeout == 0 {
		timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, or(g.QEMU, "qemu-system-x86_64"), g.qemuArgs(initrd)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Result{}, fmt.Errorf("start qemu: %w", err)
	}
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("start qemu (package qemu-system-x86; run make kernel-deps): %w", err)
	}
	res, seen, scanErr := scanConsole(stdout, out)
	waitErr := cmd.Wait()
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return res, fmt.Errorf("guest did not power off within %s: killed qemu", timeout)
	case scanErr != nil:
		return res, fmt.Errorf("read the guest console: %w", scanErr)
	case waitErr != nil:
		return res, fmt.Errorf("qemu: %w", waitErr)
	case !seen:
		return res, ErrNoMarker
	}
	return res, nil
}

func (g Guest) qemuArgs(initrd string) []string {
	cpus := g.CPUs
	if cpus == 0 {
		cpus = 1
	}
	args := []string{
		"-nographic", "-monitor", "none", "-serial", "stdio",
		"-nic", "none", "-no-reboot",
		"-cpu", "max", "-smp", strconv.Itoa(cpus), "-m", or(g.Memory, "1G"),
		"-kernel", g.Kernel, "-initrd", initrd,
		// panic=-1 reboots at once on a panic, and -no-reboot turns that
		// into qemu exiting: a crashed guest ends the run instead of hanging.
		"-append", "console=ttyS0 quiet panic=-1",
	}
	bios := g.BIOS
	if bios == "" {
		if _, err := os.Stat(qboot); err == nil {
			bios = qboot
		}
	}
	if bios != "" {
		args = append(args, "-bios", bios)
	}
	return args
}

const qboot = "/usr/share/qemu/qboot.rom"

var markerRE = regexp.MustCompile(regexp.QuoteMeta(Marker) + `(\d+)`)

// skipRE matches go test -v's skip lines, also in test2json framing (a
// leading ^V).
var skipRE = regexp.MustCompile(`^\s*\x16?--- SKIP: `)

// scanConsole copies the console to out line by line and picks up the
// marker and go test's skip lines.
func scanConsole(console io.Reader, out io.Writer) (res Result, seen bool, err error) {
	r := bufio.NewReader(console)
	for {
		line, rerr := r.ReadString('\n')
		if line != "" {
			line = strings.TrimRight(line, "\r\n")
			if _, werr := io.WriteString(out, line+"\n"); werr != nil && err == nil {
				err = werr
			}
			if m := markerRE.FindStringSubmatch(line); m != nil {
				if code, perr := strconv.Atoi(m[1]); perr == nil {
					res.ExitCode, seen = code, true
				}
			}
			if skipRE.MatchString(line) {
				res.Skipped = true
			}
		}
		if rerr == io.EOF {
			return res, seen, err
		}
		if rerr != nil {
			return res, seen, rerr
		}
	}
}

// initrd writes the base initramfs followed by the payload archive into a
// temporary file and returns its name.
func (g Guest) initrd(p Payload) (string, error) {
	f, err := os.CreateTemp("", "rhizome-vm-initrd-")
	if err != nil {
		return "", fmt.Errorf("create guest initramfs: %w", err)
	}
	ok := false
	defer func() {
		f.Close()
		if !ok {
			os.Remove(f.Name())
		}
	}()
	base, err := os.Open(g.Base)
	if err != nil {
		return "", fmt.Errorf("base initramfs: %w: run make kernel-deps", err)
	}
	defer base.Close()
	if _, err := io.Copy(f, base); err != nil {
		return "", fmt.Errorf("copy base initramfs %s: %w", g.Base, err)
	}
	if err := writePayload(f, p); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write guest initramfs: %w", err)
	}
	ok = true
	return f.Name(), nil
}

// writePayload writes the archive /init reads: /test/bin, /test/args and
// /test/env (a line each), /test/workdir, and the copied directories.
func writePayload(w io.Writer, p Payload) error {
	var args, env strings.Builder
	for _, a := range p.Args {
		if strings.ContainsAny(a, "\n\x00") {
			return fmt.Errorf("argument %q: the guest cannot pass a newline", a)
		}
		args.WriteString(a + "\n")
	}
	for _, kv := range p.Env {
		if strings.ContainsAny(kv, "\n\x00") || !strings.Contains(kv, "=") {
			return fmt.Errorf("environment entry %q: want KEY=VALUE on one line", kv)
		}
		env.WriteString(kv + "\n")
	}
	workdir := or(p.WorkDir, "/")
	c := newCPIO(w)
	c.Dir("test", 0o755)
	c.CopyFile("test/bin", 0o755, p.Binary)
	c.File("test/args", 0o644, []byte(args.String()))
	c.File("test/env", 0o644, []byte(env.String()))
	c.File("test/workdir", 0o644, []byte(workdir+"\n"))
	for _, dir := range p.Files {
		if err := copyTree(c, dir); err != nil {
			return err
		}
	}
	return c.Close()
}

// copyTree adds the host directory dir, its parents and its regular files
// and directories (symlinks and others are left out) under the same
// absolute path. A regular file (or a symlink to one) is added with its
// parents, as a regular file.
func copyTree(c *cpio, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("copy %s into the guest: %w", dir, err)
	}
	st, err := os.Stat(dir)
	if err != nil || (!st.IsDir() && !st.Mode().IsRegular()) {
		return nil
	}
	if st.Mode().IsRegular() {
		addParents(c, dir)
		c.CopyFile(dir, uint32(st.Mode().Perm()), dir)
		return nil
	}
	addParents(c, dir)
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("copy %s into the guest: %w", p, err)
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("copy %s into the guest: %w", p, err)
		}
		switch {
		case d.IsDir():
			c.Dir(p, uint32(info.Mode().Perm()))
		case info.Mode().IsRegular():
			c.CopyFile(p, uint32(info.Mode().Perm()), p)
		}
		return nil
	})
}

// addParents adds the directories above the absolute path p, outermost
// first; the kernel's unpacker accepts a directory that already exists.
func addParents(c *cpio, p string) {
	var parents []string
	for d := filepath.Dir(p); d != "/"; d = filepath.Dir(d) {
		parents = append(parents, d)
	}
	for i := len(parents) - 1; i >= 0; i-- {
		c.Dir(parents[i], 0o755)
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Command vmexec runs Go test binaries under a qemu-booted Debian kernel.
//
//	vmexec prepare -cache DIR [-kernel-package PKG] [-modules LIST]
//	    fetches the kernel and builds the base initramfs; prints the kernel
//	    directory to pass to run.
//	vmexec run -kernel-dir DIR [-fail-on-skip] [-cpus N] [-memory SIZE]
//	        [-files PATH,...] [-host-programs NAME,...] [-timeout D]
//	        PROGRAM ARGS...
//	    the `go test -exec` program: boots PROGRAM (a test binary, or any
//	    static program such as rhizome-lab) with ARGS in the guest and exits
//	    with the status it reported (1 when it reported none). -files copies
//	    host directories and files in at the same path, -host-programs a
//	    host program from PATH with its shared libraries (ip: busybox's
//	    lacks netns).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rhizome-net/rhizome/integration/vm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: vmexec prepare|run ...")
		return 2
	}
	var err error
	code := 1
	switch args[0] {
	case "prepare":
		err = prepare(ctx, log, args[1:], stdout)
		if err == nil {
			code = 0
		}
	case "run":
		code, err = runTest(ctx, args[1:], stdout)
	default:
		err = fmt.Errorf("unknown command %q: want prepare or run", args[0])
	}
	if err != nil {
		fmt.Fprintf(stderr, "vmexec: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func prepare(ctx context.Context, log *slog.Logger, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("prepare", flag.ContinueOnError)
	cache := fs.String("cache", ".cache", "cache directory for the kernel and the base initramfs")
	pkg := fs.String("kernel-package", "linux-image-cloud-amd64", "Debian kernel package, or a meta-package resolved to the image it depends on")
	busybox := fs.String("busybox", "/bin/busybox", "static busybox (package busybox-static)")
	modules := fs.String("modules", strings.Join(vm.DefaultModules(), ","), "kernel modules to load in the guest, comma-separated")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := filepath.Abs(*cache)
	if err != nil {
		return fmt.Errorf("cache directory %s: %w", *cache, err)
	}
	k, err := vm.FetchKernel(ctx, log, dir, *pkg)
	if err != nil {
		return err
	}
	if _, err := vm.BuildBase(k, *busybox, strings.Split(*modules, ",")); err != nil {
		return err
	}
	fmt.Fprintln(stdout, k.Dir)
	return nil
}

func runTest(ctx context.Context, args []string, stdout io.Writer) (int, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	kdir := fs.String("kernel-dir", "", "kernel directory printed by vmexec prepare")
	busybox := fs.String("busybox", "/bin/busybox", "static busybox (package busybox-static)")
	modules := fs.String("modules", strings.Join(vm.DefaultModules(), ","), "kernel modules to load in the guest, comma-separated")
	cpus := fs.Int("cpus", 1, "virtual CPUs")
	memory := fs.String("memory", "1G", "guest memory, as qemu's -m takes it")
	files := fs.String("files", "", "host directories and files to copy into the guest at the same path, comma-separated")
	hostProgs := fs.String("host-programs", "", "host programs (found on PATH) to copy into the guest with their shared libraries, comma-separated")
	timeout := fs.Duration("timeout", 0, "boot to power-off limit; default the test binary's -test.timeout plus a minute, or 11m")
	failOnSkip := fs.Bool("fail-on-skip", false, "fail when go test -v output shows a skipped test: in the VM nothing may skip")
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	if fs.NArg() < 1 || *kdir == "" {
		return 2, errors.New("usage: vmexec run -kernel-dir DIR TESTBINARY [ARGS...]")
	}
	k, err := vm.OpenKernel(*kdir)
	if err != nil {
		return 1, err
	}
	// BuildBase finds the image prepare built; a changed module list or
	// busybox builds a new one here rather than running a stale image.
	base, err := vm.BuildBase(k, *busybox, strings.Split(*modules, ","))
	if err != nil {
		return 1, err
	}
	binary, testArgs := fs.Arg(0), fs.Args()[1:]
	wd, err := os.Getwd()
	if err != nil {
		return 1, fmt.Errorf("working directory: %w", err)
	}
	copied := []string{filepath.Join(wd, "testdata")}
	copied = append(copied, splitList(*files)...)
	for _, name := range splitList(*hostProgs) {
		f, err := vm.HostProgram(name)
		if err != nil {
			return 1, err
		}
		copied = append(copied, f...)
	}
	g := vm.Guest{Kernel: k.Image(), Base: base.Path, CPUs: *cpus, Memory: *memory, Timeout: *timeout}
	if g.Timeout == 0 {
		g.Timeout = guestTimeout(testArgs)
	}
	res, err := g.Run(ctx, vm.Payload{
		Binary:  binary,
		Args:    guestArgs(testArgs, *failOnSkip),
		Env:     guestEnv(os.Environ()),
		WorkDir: wd,
		Files:   copied,
	}, stdout)
	if err != nil {
		return 1, err
	}
	if res.Skipped && *failOnSkip && res.ExitCode == 0 {
		return 1, errors.New("tests were skipped inside the VM, where everything they need is there: see the SKIP lines above")
	}
	return res.ExitCode, nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// guestTimeout gives the guest the test binary's own -test.timeout and a
// minute more to boot and power off, so go test's timeout report wins.
func guestTimeout(args []string) time.Duration {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-test.timeout="); ok {
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				return d + time.Minute
			}
		}
	}
	return 11 * time.Minute
}

// guestArgs drops -test.testlogfile: go test names a host file there for
// its result cache, which does not exist in the guest. Without the log go
// test does not cache the result, which is right for a run in another
// kernel. To see skips it adds -test.v when go test was run without -v; go
// test shows a passing package's output only with -v anyway.
func guestArgs(args []string, needVerbose bool) []string {
	var out []string
	verbose := false
	for _, a := range args {
		if strings.HasPrefix(a, "-test.testlogfile=") {
			continue
		}
		if a == "-test.v" || strings.HasPrefix(a, "-test.v=") {
			verbose = true
		}
		out = append(out, a)
	}
	if needVerbose && !verbose {
		out = append([]string{"-test.v=true"}, out...)
	}
	return out
}

// guestEnv passes rhizome's own variables and the Go runtime's knobs into
// the guest, and sets vm.InsideEnv.
func guestEnv(host []string) []string {
	env := []string{vm.InsideEnv + "=1"}
	for _, kv := range host {
		k, _, _ := strings.Cut(kv, "=")
		if k == vm.InsideEnv || strings.ContainsAny(kv, "\n\x00") {
			continue
		}
		if strings.HasPrefix(k, "RHIZOME_") || k == "GOTRACEBACK" || k == "GODEBUG" || k == "GOMAXPROCS" {
			env = append(env, kv)
		}
	}
	return env
}

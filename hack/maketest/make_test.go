package maketest

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/internal/toolcache"
)

const root = "../.."

// makeCmd runs make in the repository root with env added to an environment cleaned of what an
// enclosing `make test` passes down (its jobserver flags, the tools cache it chose). Make and the
// builds it runs are killed, as a process group, half a minute before the test's deadline, so a
// timed-out test leaves no go build behind.
func makeCmd(t *testing.T, env []string, args ...string) string {
	t.Helper()
	ctx := t.Context()
	if d, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-30*time.Second))
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "make", append([]string{"-C", root, "--no-print-directory"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TOOLS_CACHE", toolcache.Env, toolcache.KubeBinEnv:
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// makefile returns the Makefile's rule targets (not variables or target-specific assignments) and
// the targets of each .PHONY line.
func makefile(t *testing.T) (targets []string, phony [][]string) {
	t.Helper()
	f, err := os.Open(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rule := regexp.MustCompile(`^([a-z][a-z0-9 -]*):([^=]|$)`)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if names, ok := strings.CutPrefix(line, ".PHONY:"); ok {
			phony = append(phony, strings.Fields(names))
			continue
		}
		if m := rule.FindStringSubmatch(line); m != nil && !strings.Contains(line, ":=") {
			for _, name := range strings.Fields(m[1]) {
				if !slices.Contains(targets, name) {
					targets = append(targets, name)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return targets, phony
}

// TestHelpListsEveryTarget: `make help` (also plain `make`) shows every target with a description,
// and one .PHONY line names exactly the targets.
func TestHelpListsEveryTarget(t *testing.T) {
	targets, phony := makefile(t)
	if len(targets) < 20 {
		t.Fatalf("found only %d targets in the Makefile: %v", len(targets), targets)
	}
	help := makeCmd(t, nil, "-s", "help")
	if plain := makeCmd(t, nil, "-s"); plain != help {
		t.Errorf("plain make printed\n%s\nwant the help:\n%s", plain, help)
	}
	listed := map[string]string{}
	for line := range strings.Lines(help) {
		if !strings.HasPrefix(line, "  ") {
			continue
		}
		names, desc, _ := strings.Cut(strings.TrimSpace(line), "  ")
		for _, n := range strings.Split(names, " / ") {
			listed[n] = strings.TrimSpace(desc)
		}
	}
	for _, tg := range targets {
		if listed[tg] == "" {
			t.Errorf("make help does not list %s with a description; add a \"## %s: ...\" comment", tg, tg)
		}
	}
	if len(phony) != 1 {
		t.Fatalf("%d .PHONY lines, want one", len(phony))
	}
	got, want := slices.Sorted(slices.Values(phony[0])), slices.Sorted(slices.Values(targets))
	if !slices.Equal(got, want) {
		t.Errorf(".PHONY names %v\nthe rules are    %v", got, want)
	}
}

// TestBuildStampsVersion: make build stamps git describe's version into the binaries, and
// `rhizome-node --version` and `rhizomectl version` print it. Only these two are built, into a
// temporary bin directory, with the flags every test build of the commands uses.
func TestBuildStampsVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("links rhizome-node and rhizomectl (30 s to 1.5 min on 2 cores); runs without -short, as in make test")
	}
	want := "dev"
	if out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		want = strings.TrimSpace(string(out))
	}
	if got := strings.TrimSpace(makeCmd(t, nil, "-s", "version")); got != want {
		t.Errorf("make version = %q, git describe says %q", got, want)
	}
	bin := t.TempDir()
	makeCmd(t, nil, "build", "BIN="+bin, "BINARIES=rhizome-node rhizomectl")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"rhizome-node", "--version"}, "rhizome-node version " + want + "\n"},
		{[]string{"rhizomectl", "version"}, "rhizomectl version " + want + "\n"},
	} {
		out, err := exec.Command(filepath.Join(bin, c.args[0]), c.args[1:]...).CombinedOutput()
		if err != nil || string(out) != c.want {
			t.Errorf("%s: %v, output %q; want exit 0 and %q", strings.Join(c.args, " "), err, out, c.want)
		}
	}
}

// TestToolsCacheAgrees: the Makefile builds the tools where the Go code looks for them, for the
// same Kubernetes version, under each environment a user may have.
func TestToolsCacheAgrees(t *testing.T) {
	home, xdg, override := t.TempDir(), t.TempDir(), t.TempDir()
	for _, tc := range []struct {
		name    string
		env     map[string]string
		makeVar string // TOOLS_CACHE=... on make's command line: only make and what it runs see it
	}{
		{name: "home", env: map[string]string{"HOME": home}},
		{name: "xdg", env: map[string]string{"HOME": home, "XDG_CACHE_HOME": xdg}},
		{name: "environment", env: map[string]string{"HOME": home, "XDG_CACHE_HOME": xdg, toolcache.Env: override}},
		{name: "make variable", env: map[string]string{"HOME": home, "XDG_CACHE_HOME": xdg}, makeVar: "TOOLS_CACHE=" + override},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var env []string
			for _, k := range []string{"HOME", "XDG_CACHE_HOME", toolcache.Env, toolcache.KubeBinEnv} {
				t.Setenv(k, tc.env[k])
				env = append(env, k+"="+tc.env[k])
			}
			args := []string{"-s", "--eval", "print-tools:\n\t@echo $$RHIZOME_TOOLS_CACHE $$RHIZOME_KUBE_BIN $(KUBE_VERSION)", "print-tools"}
			if tc.makeVar != "" {
				args = append(args, tc.makeVar)
			}
			// What a recipe (make test's go test) sees: the exported variables.
			out := makeCmd(t, env, args...)
			f := strings.Fields(out)
			if len(f) != 3 {
				t.Fatalf("make printed %q, want the tools cache, the kube directory and the version", out)
			}
			if f[2] != toolcache.KubeVersion {
				t.Errorf("the Makefile's KUBE_VERSION is %s, toolcache.KubeVersion %s", f[2], toolcache.KubeVersion)
			}
			// The Go code in a `go test` by hand (same environment, no make variable), then under make.
			for _, underMake := range []bool{false, true} {
				if !underMake && tc.makeVar != "" {
					continue
				}
				if underMake {
					t.Setenv(toolcache.Env, f[0])
					t.Setenv(toolcache.KubeBinEnv, f[1])
				}
				if dir, err := toolcache.Dir(); err != nil || dir != f[0] {
					t.Errorf("under make %v: toolcache.Dir() = %q, %v; make's TOOLS_CACHE %q", underMake, dir, err, f[0])
				}
				if k, err := toolcache.KubeDir(); err != nil || k != f[1] {
					t.Errorf("under make %v: toolcache.KubeDir() = %q, %v; make's kube directory %q", underMake, k, err, f[1])
				}
			}
		})
	}
}

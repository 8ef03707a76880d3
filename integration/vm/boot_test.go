package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// preparedGuest boots the kernel `make kernel-deps` prepared (make test
// runs it first, so there these tests always run).
func preparedGuest(t *testing.T) Guest {
	t.Helper()
	data, err := os.ReadFile("../../.cache/vmexec/kernel-dir")
	if err != nil {
		t.Skip("no kernel prepared for the test VM: run make kernel-deps")
	}
	k, err := OpenKernel(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	base, err := BuildBase(k, "/bin/busybox", DefaultModules())
	if err != nil {
		t.Fatal(err)
	}
	return Guest{Kernel: k.Image(), Base: base.Path, Timeout: 3 * time.Minute}
}

func buildPayload(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "payload")
	cmd := exec.Command("go", "build", "-o", bin, "./testdata/payload")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the static payload: %v\n%s", err, out)
	}
	return bin
}

// TestGuestRun boots the real kernel with a payload and checks what the
// host learns: the exit status the guest printed, the arguments,
// environment and working directory handed in, and an error when the guest
// stops without a status or never stops.
func TestGuestRun(t *testing.T) {
	g := preparedGuest(t)
	bin := buildPayload(t)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	var bootWith func(t *testing.T, g Guest, files []string, args ...string) (Result, string, error)
	boot := func(t *testing.T, g Guest, args ...string) (Result, string, error) {
		return bootWith(t, g, nil, args...)
	}
	bootWith = func(t *testing.T, g Guest, files []string, args ...string) (Result, string, error) {
		var console strings.Builder
		res, err := g.Run(context.Background(), Payload{
			Binary: bin, Args: args, Env: []string{"RHIZOME_VM_TEST=a b=c"},
			WorkDir: wd, Files: append([]string{filepath.Join(wd, "testdata")}, files...),
		}, &console)
		t.Logf("guest console:\n%s", console.String())
		return res, console.String(), err
	}

	t.Run("exit status and inputs", func(t *testing.T) {
		t.Parallel()
		res, console, err := boot(t, g, "exit", "7", "two words")
		if err != nil || res.ExitCode != 7 {
			t.Fatalf("Run = %+v, %v; want exit status 7", res, err)
		}
		want := fmt.Sprintf(`payload: args=["exit" "7" "two words"] env="a b=c" wd=%s testdata=true uid=0`, wd)
		if !strings.Contains(console, want+"\n") {
			t.Errorf("guest console lacks the line %q", want)
		}
	})
	t.Run("host program", func(t *testing.T) {
		t.Parallel()
		ip, err := HostProgram("ip")
		if err != nil {
			t.Fatal(err)
		}
		// The host's iproute2, dynamically linked, runs with the loader
		// and libraries copied in as files; busybox's ip has no netns.
		res, console, err := bootWith(t, g, ip, "run", ip[0], "netns", "add", "probe")
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("ip netns add in the guest: %+v, %v; want exit status 0:\n%s", res, err, console)
		}
	})
	t.Run("no status", func(t *testing.T) {
		t.Parallel()
		if _, _, err := boot(t, g, "poweroff"); !errors.Is(err, ErrNoMarker) {
			t.Errorf("Run of a payload that powers off itself: err = %v, want ErrNoMarker", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		g := g
		g.Timeout = 2 * time.Second
		start := time.Now()
		_, _, err := boot(t, g, "hang")
		if err == nil || !strings.Contains(err.Error(), "did not power off") {
			t.Errorf("Run of a payload that hangs: err = %v, want a timeout", err)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("Run returned %s after the timeout of %s", d, g.Timeout)
		}
	})
}

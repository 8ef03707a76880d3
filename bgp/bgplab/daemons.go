package bgplab

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startedCmd is a process this package started, stopped by its PID.
type startedCmd struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

// start starts cmd and registers its killing (by PID) with t.Cleanup.
func start(t testing.TB, cmd *exec.Cmd, name string) *startedCmd {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	c := &startedCmd{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	t.Cleanup(c.kill)
	return c
}

// kill sends SIGKILL to the process (by its PID) and waits for it.
func (c *startedCmd) kill() {
	c.once.Do(func() {
		select {
		case <-c.done:
			return
		default:
		}
		_ = syscall.Kill(c.cmd.Process.Pid, syscall.SIGKILL)
	})
	c.wait()
}

// wait waits up to 10 s for the process to exit.
func (c *startedCmd) wait() {
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}

// exited reports whether the process has exited.
func (c *startedCmd) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// NeedDaemons skips (or, when the environment says packages must be there,
// fails) a test whose BIRD or FRR binaries are missing.
func NeedDaemons(t testing.TB, bins ...string) {
	t.Helper()
	var missing []string
	for _, b := range bins {
		if _, err := os.Stat(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("missing %s: install the Debian packages bird2 and frr (make bgp-deps)", strings.Join(missing, ", "))
	if os.Getenv("RHIZOME_REQUIRE_BGP_DAEMONS") != "" {
		t.Fatal(msg + " (RHIZOME_REQUIRE_BGP_DAEMONS is set: make test requires them)")
	}
	t.Skip(msg)
}

// Paths of the daemons from the Debian packages.
const (
	BirdBin  = "/usr/sbin/bird"
	BirdcBin = "/usr/sbin/birdc"
	BgpdBin  = "/usr/lib/frr/bgpd"
	VtyshBin = "/usr/bin/vtysh"
)

// Bird is a BIRD 2 daemon running in a node's namespace.
type Bird struct {
	Node *Node
	Sock string
	cmd  *startedCmd
	out  *bytes.Buffer
}

// StartBird writes conf and starts BIRD in nd's namespace in the
// foreground; it is killed by PID in t.Cleanup.
func StartBird(t testing.TB, nd *Node, conf string) *Bird {
	t.Helper()
	NeedDaemons(t, BirdBin, BirdcBin)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "bird.ctl")
	b := startBird(t, nd.Command(BirdBin, "-f", "-c", cfg, "-s", sock, "-P", filepath.Join(dir, "bird.pid")), sock)
	b.Node = nd
	return b
}

// StartBirdHere starts BIRD with the configuration file cfg in the test's
// own network namespace (for loopback-only set-ups such as benchmarks).
func StartBirdHere(t testing.TB, cfg, sock string) *Bird {
	t.Helper()
	NeedDaemons(t, BirdBin, BirdcBin)
	return startBird(t, exec.Command(BirdBin, "-f", "-c", cfg, "-s", sock, "-P", sock+".pid"), sock)
}

func startBird(t testing.TB, cmd *exec.Cmd, sock string) *Bird {
	t.Helper()
	b := &Bird{Sock: sock, out: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = b.out, b.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	b.cmd = start(t, cmd, "bird")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bird output:\n%s", b.out.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := b.Cmd("show status"); err == nil {
			return b
		}
		if b.cmd.exited() || time.Now().After(deadline) {
			t.Fatalf("bird did not start: %s", b.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Cmd runs a birdc command over BIRD's control socket.
func (b *Bird) Cmd(c string) (string, error) {
	out, err := exec.Command(BirdcBin, "-s", b.Sock, c).CombinedOutput()
	return string(out), err
}

// FRR is an FRR bgpd running without zebra in a node's namespace.
type FRR struct {
	Node *Node
	dir  string
	cmd  *startedCmd
	out  *bytes.Buffer
}

// StartFRR writes conf and starts bgpd -Z (no zebra) in nd's namespace,
// listening on the node's IPv4 and IPv6 addresses,
// with its vty socket in a directory of its own and no vty TCP port. bgpd
// drops privileges to the frr user, so the directory belongs to frr.
func StartFRR(t testing.TB, nd *Node, conf string) *FRR {
	t.Helper()
	NeedDaemons(t, BgpdBin, VtyshBin)
	u, err := user.Lookup("frr")
	if err != nil {
		t.Fatalf("FRR runs as the user frr, which the frr package creates: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "rhizome-frr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := filepath.Join(dir, "bgpd.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, cfg} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f := &FRR{Node: nd, dir: dir, out: &bytes.Buffer{}}
	cmd := nd.Command(BgpdBin, "-Z", "-f", cfg, "-i", filepath.Join(dir, "bgpd.pid"),
		"--vty_socket", dir, "-P", "0", "-l", nd.Addr.Addr().String(), "-l", nd.Addr6.Addr().String())
	cmd.Stdout, cmd.Stderr = f.out, f.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	f.cmd = start(t, cmd, "bgpd")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bgpd output:\n%s", f.out.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := f.Cmd("show bgp summary"); err == nil {
			return f
		}
		if f.cmd.exited() || time.Now().After(deadline) {
			out, err := f.Cmd("show bgp summary")
			t.Fatalf("bgpd did not start: %v %s\n%s", err, out, f.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Cmd runs a vtysh command against this bgpd.
func (f *FRR) Cmd(c string) (string, error) {
	out, err := exec.Command(VtyshBin, "--vty_socket", f.dir, "-d", "bgpd", "-c", c).CombinedOutput()
	return string(out), err
}

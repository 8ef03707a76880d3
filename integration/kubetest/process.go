package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// process is one run of kube-apiserver, its output going to a log file.
type process struct {
	cmd  *exec.Cmd
	pid  int
	log  string
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // how it exited; read only after done is closed
}

// startProcess starts bin with args, its stdout and stderr appended to logPath.
func startProcess(bin string, args []string, logPath string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", logPath, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// If the test binary dies without running its cleanups (a panic, go test's timeout), the kernel
	// kills the server too rather than leaving it running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pdeathsig fires when the *thread* that forked the child ends, not the process, and Go ends a
	// thread whenever a goroutine that locked it exits still locked (network namespace helpers do
	// that). So fork from a thread this goroutine keeps locked, alive, until the server has exited.
	p := &process{cmd: cmd, log: logPath, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			_ = logFile.Close()
			started <- fmt.Errorf("start %s: %w", bin, err)
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to end (SIGTERM), then kills it (SIGKILL) if it is still running after grace. It
// signals only this process, by its PID, and returns once it has been reaped.
func (p *process) stop(grace time.Duration) error {
	if p.exited() {
		return nil
	}
	// os.Process signals through a pidfd, so a PID reused after the exit cannot be hit.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop kube-apiserver (pid %d): %w", p.pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill kube-apiserver (pid %d): %w", p.pid, err)
	}
	<-p.done
	return fmt.Errorf("kube-apiserver (pid %d) did not stop within %s of SIGTERM and was killed", p.pid, grace)
}

// logTail is the last n lines of the process's log, for error messages.
func (p *process) logTail(n int) string {
	data, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(log %s unreadable: %v)", p.log, err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// lostPortRace reports whether the process exited because its port was taken: between freePort closing
// its probe and kube-apiserver binding, another process may take the port.
func (p *process) lostPortRace() bool {
	if !p.exited() {
		return false
	}
	data, _ := os.ReadFile(p.log)
	return strings.Contains(string(data), "address already in use")
}

// freePort is a TCP port on 127.0.0.1 that was free a moment ago. kube-apiserver takes no listener and
// refuses --secure-port=0, so the port must be chosen before it starts (and the start retried if lost).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

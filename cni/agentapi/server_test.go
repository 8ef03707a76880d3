package agentapi_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/cni/agentapi"
	"github.com/rhizome-net/rhizome/daemon/cnisvc/agenttest"
)

func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "rzapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func TestListenCreatesPrivateSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "new", "dir", "cni.sock")
	l, err := agentapi.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("created directory mode %v, want 0700", di.Mode().Perm())
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the socket", len(entries))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket left after Close: %v", err)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "cni.sock")
	// A socket whose server died: bound, then its listener closed
	// without removing the file.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	l, err := agentapi.Listen(path)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	l.Close()

	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := agentapi.Listen(path); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("listen over a regular file: %v", err)
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	ag := agenttest.Start(t, agenttest.Pool("p", "10.40.0.0/24"))
	_, err := agentapi.Listen(ag.Socket)
	if err == nil || !strings.Contains(err.Error(), "another process serves") {
		t.Fatalf("second listener: %v", err)
	}
	st, err := agentapi.NewClient(ag.Socket).Status(context.Background())
	if err != nil || !st.Ready {
		t.Fatalf("the first server stopped answering: %+v, %v", st, err)
	}
}

func TestClientRoundTripAndErrors(t *testing.T) {
	ag := agenttest.Start(t, agenttest.Pool("p", "10.41.0.0/24"), agenttest.MTU(1400))
	c := agentapi.NewClient(ag.Socket, agentapi.WithTimeout(5*time.Second))
	ctx := context.Background()
	req := &agentapi.AddRequest{Network: "n", Attachment: agentapi.Attachment{ContainerID: "c1", IfName: "eth0"}}
	resp, err := c.Add(ctx, req)
	if err != nil || len(resp.IPs) != 1 || resp.MTU != 1400 || resp.IPs[0].PoolCIDR.String() != "10.41.0.0/24" {
		t.Fatalf("ADD over the socket: %+v, %v", resp, err)
	}
	// An error crosses the socket with its code and message.
	_, err = c.Add(ctx, &agentapi.AddRequest{Network: "n", Attachment: agentapi.Attachment{ContainerID: "c2"}})
	var e *agentapi.Error
	if !errors.As(err, &e) || e.Code != agentapi.CodeInvalidEnv || !strings.Contains(e.Msg, "CNI_IFNAME") {
		t.Fatalf("error %#v, want code 4 naming CNI_IFNAME", err)
	}
	if err := c.Del(ctx, &agentapi.DelRequest{Network: "n", Attachment: req.Attachment}); err != nil {
		t.Fatal(err)
	}

	ag.Stop()
	_, err = c.Add(ctx, req)
	want := "rhizome-node is not reachable at " + ag.Socket + ": is the rhizome-node pod running on this node?"
	if !errors.As(err, &e) || e.Code != agentapi.CodeTryAgainLater || e.Msg != want {
		t.Fatalf("error %#v, want code 11 %q", err, want)
	}
}

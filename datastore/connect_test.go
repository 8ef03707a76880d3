package datastore_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// closedPort returns a 127.0.0.1 address where nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestUnreachableIsUnavailable(t *testing.T) {
	endpoints := []string{closedPort(t), closedPort(t)}
	const timeout = 500 * time.Millisecond
	s, err := datastore.New(datastore.Config{Endpoints: endpoints, RequestTimeout: timeout})
	if err != nil {
		t.Fatalf("New does not dial, so it should not fail: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		call func() error
		verb string
	}{
		{"get", func() error { _, err := s.Get(ctx, "/k"); return err }, "get /k: "},
		{"list", func() error { _, _, err := s.List(ctx, "/k/"); return err }, "list /k/: "},
		{"create", func() error { _, err := s.Create(ctx, "/k", nil); return err }, "create /k: "},
		{"txn", func() error {
			_, err := s.Txn(ctx, datastore.OpPut("/a", nil), datastore.OpPut("/b", nil))
			return err
		}, "txn /a (+1 more): "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := tc.call()
			took := time.Since(start)
			wantErr(t, err, datastore.ErrUnavailable, tc.verb, "etcd not reachable at "+strings.Join(endpoints, ","), " after ")
			if took < timeout || took > timeout+time.Second {
				t.Errorf("failed after %s, want about the request timeout %s", took, timeout)
			}
			t.Logf("%s: %v", took.Round(time.Millisecond), err)
		})
	}

	// The caller's own deadline wins over the request timeout.
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = s.Get(dctx, "/k")
	wantErr(t, err, datastore.ErrUnavailable, "after 2")
	wantErr(t, err, context.DeadlineExceeded)
	if took := time.Since(start); took > timeout {
		t.Errorf("failed after %s, want about the caller's deadline 200ms", took)
	}

	// A caller that gives up is not an unavailable datastore.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = s.Get(cctx, "/k")
	wantErr(t, err, context.Canceled, "get /k")
	if errorsIsUnavailable(err) {
		t.Errorf("a canceled request reads as unavailable: %v", err)
	}
}

func TestNewNeedsEndpoints(t *testing.T) {
	_, err := datastore.New(datastore.Config{})
	if err == nil || !strings.Contains(err.Error(), "no endpoints") {
		t.Fatalf("New without endpoints: %v", err)
	}
	_, err = datastore.New(datastore.Config{Endpoints: []string{"127.0.0.1:2379"}, CertFile: "/x.pem"})
	if err == nil || !strings.Contains(err.Error(), "key file") {
		t.Fatalf("New with a certificate but no key: %v", err)
	}
}

func TestTLS(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithTLS())
	eps := srv.Endpoints()
	if !strings.HasPrefix(eps[0], "https://127.0.0.1:") {
		t.Fatalf("TLS endpoints %v", eps)
	}
	ctx := context.Background()

	s := srv.Store(t)
	rev := mustCreate(t, s, "/secure/a", "x")
	if kv, err := s.Get(ctx, "/secure/a"); err != nil || kv.Revision != rev {
		t.Fatalf("get over TLS: %+v, %v", kv, err)
	}

	cert, key, ca := srv.ClientTLS()
	for _, tc := range []struct {
		name string
		cfg  datastore.Config
		want []string
	}{
		{"CA but no client certificate", datastore.Config{CAFile: ca}, []string{"etcd asks for a client certificate and none is configured"}},
		{"no CA", datastore.Config{}, []string{"x509: certificate signed by unknown authority"}},
		{"client certificate but the wrong CA", datastore.Config{CertFile: cert, KeyFile: key, CAFile: cert}, []string{"x509"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Endpoints = eps
			tc.cfg.RequestTimeout = time.Second
			s, err := datastore.New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			_, err = s.Get(ctx, "/secure/a")
			wantErr(t, err, datastore.ErrUnavailable, append([]string{"etcd not reachable at " + eps[0]}, tc.want...)...)
			t.Logf("%v", err)
		})
	}
}

func errorsIsUnavailable(err error) bool {
	return err != nil && strings.Contains(err.Error(), datastore.ErrUnavailable.Error())
}

func TestNewFromClientLeavesTheClientToItsOwner(t *testing.T) {
	srv := etcdtest.Start(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx := context.Background()

	s := datastore.NewFromClient(cli, srv.Endpoints())
	if s.Client() != cli {
		t.Fatal("Client() is not the client given")
	}
	mustCreate(t, s, "/own/a", "1")
	ch := s.Watch(ctx, "/own/", 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wantClosed(t, ch)
	if _, err := cli.Get(ctx, "/own/a"); err != nil {
		t.Fatalf("the client stopped working after the store closed: %v", err)
	}

	// The owner closes the client under a running watch: the watch says so and ends.
	s = datastore.NewFromClient(cli, srv.Endpoints())
	ch = s.Watch(ctx, "/own/", 0)
	cli.Close()
	ev := nextEvent(t, ch)
	if ev.Type != datastore.EventError || !errors.Is(ev.Err, datastore.ErrUnavailable) {
		t.Fatalf("got %+v, want an error event wrapping ErrUnavailable", ev)
	}
	wantClosed(t, ch)
}

package etcdtest_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

func TestRestartKeepsDataAndEndpoints(t *testing.T) {
	srv := etcdtest.Start(t)
	eps := srv.Endpoints()
	if len(eps) != 1 || !strings.HasPrefix(eps[0], "http://127.0.0.1:") || strings.HasSuffix(eps[0], ":0") {
		t.Fatalf("endpoints %v, want one http://127.0.0.1:<port>", eps)
	}
	s := srv.Store(t)
	ctx := context.Background()
	rev, err := s.Create(ctx, "/k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}

	srv.Restart(t)
	if got := srv.Endpoints(); got[0] != eps[0] {
		t.Fatalf("endpoints after restart %v, want %v", got, eps)
	}
	kv, err := s.Get(ctx, "/k") // the same client reconnects
	if err != nil || string(kv.Value) != "v" || kv.Revision != rev {
		t.Fatalf("after restart: %+v, %v; want v at %d", kv, err, rev)
	}

	srv.Stop()
	srv.Stop() // idempotent
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := s.Get(short, "/k"); !errors.Is(err, datastore.ErrUnavailable) {
		t.Fatalf("get from a stopped server: %v, want ErrUnavailable", err)
	}
	srv.Restart(t) // a stopped server starts again
	if _, err := s.Get(ctx, "/k"); err != nil {
		t.Fatal(err)
	}
}

func TestWithTLS(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithTLS())
	if eps := srv.Endpoints(); !strings.HasPrefix(eps[0], "https://127.0.0.1:") {
		t.Fatalf("TLS endpoints %v", eps)
	}
	cert, key, ca := srv.ClientTLS()
	if cert == "" || key == "" || ca == "" {
		t.Fatalf("ClientTLS() = %q, %q, %q", cert, key, ca)
	}
	s := srv.Store(t)
	if _, err := s.Create(context.Background(), "/k", nil); err != nil {
		t.Fatal(err)
	}
	srv.Restart(t)
	if _, err := s.Get(context.Background(), "/k"); err != nil {
		t.Fatalf("after a TLS restart: %v", err)
	}
	if cert, _, _ := etcdtest.Start(t).ClientTLS(); cert != "" {
		t.Fatalf("ClientTLS without WithTLS = %q", cert)
	}
}

func TestCompact(t *testing.T) {
	srv := etcdtest.Start(t)
	s := srv.Store(t)
	ctx := context.Background()
	rev, err := s.Create(ctx, "/k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	rev2, err := s.Update(ctx, "/k", []byte("2"), rev)
	if err != nil {
		t.Fatal(err)
	}
	srv.Compact(t, rev2)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ev := <-s.Watch(wctx, "/", rev)
	if !errors.Is(ev.Err, datastore.ErrCompacted) || ev.CompactRevision != rev2 {
		t.Fatalf("watch below the compaction: %+v", ev)
	}
}

// Many servers, one after another, with clients, watches and restarts: nothing keeps running after each
// test's cleanup.
func TestSequentialServersLeaveNoGoroutines(t *testing.T) {
	cycle := func(t *testing.T) {
		srv := etcdtest.Start(t)
		s := srv.Store(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := s.Watch(ctx, "/", 0)
		if _, err := s.Create(ctx, "/k", []byte("v")); err != nil {
			t.Fatal(err)
		}
		<-ch
		srv.Restart(t)
		if _, err := s.Get(ctx, "/k"); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("warm-up", cycle) // starts the process-wide goroutines of gRPC and etcd once
	base := runtime.NumGoroutine()
	start := time.Now()
	for range 5 {
		t.Run("cycle", cycle)
	}
	t.Logf("5 start-write-watch-restart-stop cycles in %s", time.Since(start))

	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left, %d before the servers:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package etcdtest_test

import (
	"context"
	"strings"
	"testing"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

func TestUnixSocketServesClients(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.WithUnixSocket())
	if ep := srv.UnixEndpoint(); !strings.HasPrefix(ep, "unix:///") {
		t.Fatalf("UnixEndpoint %q, want unix:///<path>", ep)
	}
	s, err := datastore.New(datastore.Config{Endpoints: []string{srv.UnixEndpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Create(context.Background(), "/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	kv, err := s.Get(context.Background(), "/k")
	if err != nil {
		t.Fatal(err)
	}
	if string(kv.Value) != "v" {
		t.Fatalf("read back over the unix socket: %q, want v", kv.Value)
	}
}

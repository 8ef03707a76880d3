// Package etcdtest runs a real etcd server inside a test: embedded (go.etcd.io/etcd/server/v3/embed), on
// random 127.0.0.1 ports, in the test's temporary directory, stopped when the test ends.
//
//	srv := etcdtest.Start(t)
//	store := srv.Store(t) // a *datastore.Etcd, closed when the test ends
//
// Servers are independent: a test binary may start many, one after another or side by side.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"

	"github.com/rhizome-net/rhizome/datastore"
)

// readyTimeout bounds how long Start and Restart wait for the server to serve.
const readyTimeout = 10 * time.Second

// Option changes how Start runs the server.
type Option func(*config)

type config struct {
	tls   bool
	fsync bool
	unix  bool
}

// WithTLS serves clients over TLS and requires a client certificate signed by a CA made for this server
// (see ClientTLS). Peer traffic stays plain: there are no peers.
func WithTLS() Option {
	return func(c *config) { c.tls = true }
}

// WithFsync makes etcd sync its write-ahead log and database to disk before it acknowledges a write, as a
// production server does. Without it (the default) tests run faster and a write survives a Stop or Restart of
// the server but not a machine crash, which tests do not cause. Benchmarks that report latencies use it.
func WithFsync() Option {
	return func(c *config) { c.fsync = true }
}

// WithUnixSocket makes the server also serve clients on a unix socket (see
// UnixEndpoint): processes in other network namespaces reach it there.
func WithUnixSocket() Option {
	return func(c *config) { c.unix = true }
}

// Server is one embedded etcd member.
type Server struct {
	dir   string
	certs *certFiles // nil without TLS
	fsync bool
	unix  string // socket path when served on a unix socket too

	mu  sync.Mutex
	run *running // nil while stopped
	// After the first start these hold the real ports, so a restart listens where clients expect it.
	clientURL, peerURL url.URL
}

// Start starts an etcd server and stops it when the test ends. It fails the test if the server does not
// serve within 10s. Call it from the test's goroutine.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var c config
	for _, opt := range opts {
		opt(&c)
	}
	// TempDir before Cleanup: cleanups run last-in first-out, so the server stops before its directory goes.
	s := &Server{dir: t.TempDir(), fsync: c.fsync}
	if c.unix {
		if c.tls {
			t.Fatal("etcdtest: WithUnixSocket and WithTLS together are not supported")
		}
		s.unix = filepath.Join(s.dir, "etcd.sock")
	}
	scheme := "http"
	if c.tls {
		certs, err := writeCerts(t.TempDir())
		if err != nil {
			t.Fatalf("etcdtest: make TLS certificates: %v", err)
		}
		s.certs = &certs
		scheme = "https"
	}
	s.clientURL = url.URL{Scheme: scheme, Host: "127.0.0.1:0"}
	s.peerURL = url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	t.Cleanup(s.Stop)
	if err := s.start(); err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	return s
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run != nil {
		return errors.New("start etcd: already running")
	}
	run := &running{}
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = s.dir
	cfg.ListenClientUrls = []url.URL{s.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{s.clientURL}
	if s.unix != "" {
		cfg.ListenClientUrls = append(cfg.ListenClientUrls, url.URL{Scheme: "unix", Host: s.unix})
	}
	cfg.ListenPeerUrls = []url.URL{s.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{s.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	cfg.UnsafeNoFsync = !s.fsync
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(quietLogger())
	cfg.EnableGRPCGateway = false // clients speak gRPC; the gateway would only add a loopback connection
	cfg.ServiceRegister = run.addGRPC
	if s.certs != nil {
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       s.certs.ServerCert,
			KeyFile:        s.certs.ServerKey,
			TrustedCAFile:  s.certs.CA,
			ClientCertAuth: true,
		}
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd in %s: %w", s.dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcd in %s failed while starting: %w", s.dir, err)
	case <-time.After(readyTimeout):
		e.Close()
		return fmt.Errorf("etcd in %s not ready after %s", s.dir, readyTimeout)
	}
	run.etcd = e
	s.run = run
	for _, l := range e.Clients { // the TCP listener; a unix one may come first
		if l.Addr().Network() == "tcp" {
			s.clientURL.Host = l.Addr().String()
		}
	}
	s.peerURL.Host = e.Peers[0].Addr().String()
	return nil
}

// UnixEndpoint is the unix socket endpoint of a server started
// WithUnixSocket ("unix:///path/etcd.sock"), empty otherwise.
func (s *Server) UnixEndpoint() string {
	if s.unix == "" {
		return ""
	}
	return "unix://" + s.unix
}

// Endpoints are the server's client URLs, e.g. ["http://127.0.0.1:41234"]. They stay the same across
// Restart.
func (s *Server) Endpoints() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []string{s.clientURL.String()}
}

// ClientTLS returns the client certificate, its key and the CA that signed the server's certificate. They
// are empty without WithTLS.
func (s *Server) ClientTLS() (certFile, keyFile, caFile string) {
	if s.certs == nil {
		return "", "", ""
	}
	return s.certs.ClientCert, s.certs.ClientKey, s.certs.CA
}

// Stop stops the server; stopping a stopped server does nothing. Client connections are closed at once, as
// if the server had crashed (the data is kept for Restart).
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run == nil {
		return
	}
	s.run.stop()
	s.run = nil
}

// running is one start of the server.
type running struct {
	etcd *embed.Etcd

	mu   sync.Mutex
	grpc []*grpc.Server
}

// addGRPC is etcd's ServiceRegister hook: it hands over each gRPC server it serves clients with.
func (r *running) addGRPC(gs *grpc.Server) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.grpc = append(r.grpc, gs)
}

// stop closes client connections at once, then stops etcd. etcd's own Close stops gRPC gracefully, which
// waits up to its 5s request timeout for open watch streams that a client will never end by itself.
func (r *running) stop() {
	r.mu.Lock()
	servers := r.grpc
	r.mu.Unlock()
	for _, gs := range servers {
		gs.Stop()
	}
	r.etcd.Close()
}

// Restart stops the server and starts it again on the same data directory and ports, so clients reconnect
// by themselves and see the same data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatalf("etcdtest: restart: %v", err)
	}
}

// Compact compacts the store's history up to rev and removes it from disk (physical compaction), so later
// reads and watches below rev fail as compacted.
func (s *Server) Compact(t testing.TB, rev int64) {
	t.Helper()
	s.mu.Lock()
	run := s.run
	s.mu.Unlock()
	if run == nil {
		t.Fatalf("etcdtest: compact at %d: the server is stopped", rev)
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if _, err := run.etcd.Server.Compact(ctx, &pb.CompactionRequest{Revision: rev, Physical: true}); err != nil {
		t.Fatalf("etcdtest: compact at %d: %v", rev, err)
	}
}

// Store connects a new datastore client to the server (with the client certificate under WithTLS) and
// closes it when the test ends.
func (s *Server) Store(t testing.TB) *datastore.Etcd {
	t.Helper()
	cert, key, ca := s.ClientTLS()
	store, err := datastore.New(datastore.Config{
		Endpoints: s.Endpoints(),
		CertFile:  cert,
		KeyFile:   key,
		CAFile:    ca,
	})
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

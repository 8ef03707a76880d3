// Package agenttest runs the agent's CNI side for tests: a real embedded
// etcd, a real ipam.Allocator and a real cnisvc.Service serving the local
// CNI API on a unix socket in the test's temporary directory.
//
//	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.10.0.0/24"))
//	// run rhizome-cni with "socket": ag.Socket
package agenttest

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/cni/agentapi"
	"github.com/rhizome-net/rhizome/daemon/cnisvc"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
	"github.com/rhizome-net/rhizome/ipam"
)

// Agent is a running CNI service.
type Agent struct {
	t      testing.TB
	Node   string
	Socket string
	Etcd   *etcdtest.Server
	Store  datastore.Store
	Pods   *Pods
	mtu    int
	wrap   func(datastore.Store) datastore.Store

	mu      sync.Mutex
	alloc   *ipam.Allocator
	Service *cnisvc.Service
	cancel  context.CancelFunc
	done    chan error
}

type config struct {
	node  string
	mtu   int
	pools []api.Object
	wrap  func(datastore.Store) datastore.Store
}

// Option configures Start.
type Option func(*config)

// Node sets the node name (default "node-a").
func Node(name string) Option { return func(c *config) { c.node = name } }

// MTU sets the MTU the service tells plugins.
func MTU(n int) Option { return func(c *config) { c.mtu = n } }

// Pool creates an IP pool with /26 blocks (/122 for IPv6).
func Pool(name, cidr string) Option {
	return func(c *config) {
		p := &api.IPPool{ObjectMeta: api.ObjectMeta{Name: name}, Spec: api.IPPoolSpec{CIDR: cidr}}
		api.SetDefaults(p)
		c.pools = append(c.pools, p)
	}
}

// ServiceStore wraps the store the service is given (not the allocator's):
// a test counts what the service reads.
func ServiceStore(wrap func(datastore.Store) datastore.Store) Option {
	return func(c *config) { c.wrap = wrap }
}

// Object stores any resource before the service starts (a reservation).
func Object(o api.Object) Option { return func(c *config) { c.pools = append(c.pools, o) } }

// Start starts etcd and the service and stops both when the test ends.
func Start(t testing.TB, opts ...Option) *Agent {
	t.Helper()
	c := config{node: "node-a"}
	for _, o := range opts {
		o(&c)
	}
	srv := etcdtest.Start(t)
	store := srv.Store(t)
	res := datastore.NewResources(store)
	for _, o := range c.pools {
		if _, _, err := res.Apply(context.Background(), o); err != nil {
			t.Fatalf("agenttest: apply %s: %v", o.GetObjectMeta().Name, err)
		}
	}
	if _, _, err := res.Apply(context.Background(), &api.Node{ObjectMeta: api.ObjectMeta{Name: c.node}}); err != nil {
		t.Fatalf("agenttest: apply node: %v", err)
	}
	// Unix socket paths are limited to 108 bytes: keep it short.
	dir, err := os.MkdirTemp("", "rzsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &Agent{t: t, Node: c.node, Socket: filepath.Join(dir, "run", "cni.sock"), Etcd: srv, Store: store, Pods: NewPods(), mtu: c.mtu, wrap: c.wrap}
	a.Start()
	t.Cleanup(a.Stop)
	return a
}

// Start (re)starts the allocator and the socket after Stop.
func (a *Agent) Start() {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cancel != nil {
		return
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	alloc, err := ipam.NewAllocator(context.Background(), a.Store, a.Node, ipam.WithLogger(log))
	if err != nil {
		a.t.Fatalf("agenttest: allocator: %v", err)
	}
	svcStore := a.Store
	if a.wrap != nil {
		svcStore = a.wrap(a.Store)
	}
	svc, err := cnisvc.New(cnisvc.Config{Allocator: alloc, Store: svcStore, Pods: a.Pods, MTU: a.mtu, Log: log})
	if err != nil {
		a.t.Fatal(err)
	}
	l, err := agentapi.Listen(a.Socket)
	if err != nil {
		alloc.Close()
		a.t.Fatalf("agenttest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agentapi.ServeListener(ctx, l, svc, agentapi.WithServerLogger(log)) }()
	a.alloc, a.Service, a.cancel, a.done = alloc, svc, cancel, done
}

// Stop stops serving and closes the allocator; the socket disappears.
func (a *Agent) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cancel == nil {
		return
	}
	a.cancel()
	if err := <-a.done; err != nil {
		a.t.Errorf("agenttest: serve: %v", err)
	}
	a.alloc.Close()
	a.cancel = nil
}

// Allocated lists every allocated address in the datastore with its
// handle.
func (a *Agent) Allocated() map[netip.Addr]string {
	a.t.Helper()
	blocks, err := ipam.ListBlocks(context.Background(), a.Store)
	if err != nil {
		a.t.Fatalf("agenttest: %v", err)
	}
	out := map[netip.Addr]string{}
	for _, b := range blocks {
		b.Allocated(func(addr netip.Addr, attr ipam.Attribute) { out[addr] = attr.Handle })
	}
	return out
}

// Pods is a cnisvc.PodInfo over maps the test fills. It stands in for the
// agent's informer-backed implementation, which needs a kube-apiserver and
// is tested with the agent.
type Pods struct {
	mu   sync.Mutex
	pods map[string]map[string]string
	nss  map[string][2]map[string]string
}

// NewPods returns an empty table.
func NewPods() *Pods {
	return &Pods{pods: map[string]map[string]string{}, nss: map[string][2]map[string]string{}}
}

// SetPod records a pod's annotations.
func (p *Pods) SetPod(ns, name string, annotations map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pods[ns+"/"+name] = annotations
}

// SetNamespace records a namespace's annotations and labels.
func (p *Pods) SetNamespace(name string, annotations, labels map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nss[name] = [2]map[string]string{annotations, labels}
}

// Pod implements cnisvc.PodInfo; an unknown pod has no annotations.
func (p *Pods) Pod(_ context.Context, ns, name string) (map[string]string, map[string]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods[ns+"/"+name], nil, nil
}

// Namespace implements cnisvc.PodInfo.
func (p *Pods) Namespace(_ context.Context, name string) (map[string]string, map[string]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.nss[name]
	return v[0], v[1], nil
}

var _ cnisvc.PodInfo = (*Pods)(nil)

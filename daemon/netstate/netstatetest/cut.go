// Package netstatetest helps tests seed a real etcd and compact it past a
// follower's watch revision.
package netstatetest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// CuttableStore is a hand-written fake around a real store for a fault a
// test cannot otherwise time: Cut breaks every watch stream, and the
// streams resume (from the revision after the last event delivered, as
// the real store's watches do) only when Restore is called. A compaction in
// between makes the resume point compacted, and the follower lists again.
type CuttableStore struct {
	datastore.Store
	// Lists counts List calls; Watches counts streams opened on the real
	// store.
	Lists, Watches atomic.Int64

	mu      sync.Mutex
	cancels []context.CancelFunc
	gate    chan struct{} // nil: streams run
}

func (c *CuttableStore) List(ctx context.Context, prefix string) ([]datastore.KV, int64, error) {
	c.Lists.Add(1)
	return c.Store.List(ctx, prefix)
}

func (c *CuttableStore) Watch(ctx context.Context, prefix string, from int64) <-chan datastore.Event {
	out := make(chan datastore.Event)
	go func() {
		defer close(out)
		next := from
		for ctx.Err() == nil {
			c.mu.Lock()
			gate := c.gate
			c.mu.Unlock()
			if gate != nil {
				select {
				case <-gate:
				case <-ctx.Done():
					return
				}
			}
			wctx, cancel := context.WithCancel(ctx)
			c.mu.Lock()
			c.cancels = append(c.cancels, cancel)
			c.mu.Unlock()
			c.Watches.Add(1)
			for ev := range c.Store.Watch(wctx, prefix, next) {
				if wctx.Err() != nil {
					break // cut by the test: what comes now was not delivered
				}
				if ev.Type != datastore.EventError {
					next = ev.KV.Revision + 1
				}
				select {
				case out <- ev:
				case <-ctx.Done():
				}
				if ev.Type == datastore.EventError {
					cancel()
					return
				}
			}
			cancel()
		}
	}()
	return out
}

func (c *CuttableStore) Cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gate = make(chan struct{})
	for _, cancel := range c.cancels {
		cancel()
	}
	c.cancels = nil
}

func (c *CuttableStore) Restore() {
	c.mu.Lock()
	defer c.mu.Unlock()
	close(c.gate)
	c.gate = nil
}

// CompactWhileCut cuts the streams, lets write change the datastore,
// compacts etcd at the newest revision and restores the streams; it waits
// until every one of the follower's streams found its revision compacted
// and the follower listed and watched again (streams is the number of
// prefixes it follows).
func (c *CuttableStore) CompactWhileCut(t testing.TB, srv *etcdtest.Server, streams int, write func()) {
	t.Helper()
	lists := c.Lists.Load()
	c.Cut()
	watches := c.Watches.Load()
	write()
	_, rev, err := c.Store.List(context.Background(), "/nothing/")
	if err != nil {
		t.Fatal(err)
	}
	srv.Compact(t, rev)
	c.Restore()
	// Each stream resumes once (and finds its revision compacted); each
	// follower lists again and watches anew.
	deadline := time.Now().Add(20 * time.Second)
	for c.Lists.Load() < lists+int64(streams) || c.Watches.Load() < watches+2*int64(streams) {
		if time.Now().After(deadline) {
			t.Fatalf("the follower listed %d times after the compaction, want all %d prefixes listed again", c.Lists.Load()-lists, streams)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Seeded starts a real etcd holding one pool, 10.244.0.0/16 in /26 blocks,
// and returns it, a store on it, and apply, which writes a resource or
// fails the test.
func Seeded(t testing.TB) (srv *etcdtest.Server, store *datastore.Etcd, apply func(api.Object)) {
	t.Helper()
	srv = etcdtest.Start(t)
	store = srv.Store(t)
	res := datastore.NewResources(store)
	apply = func(o api.Object) {
		t.Helper()
		if _, _, err := res.Apply(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
	pool := &api.IPPool{ObjectMeta: api.ObjectMeta{Name: "pool"}, Spec: api.IPPoolSpec{CIDR: "10.244.0.0/16", BlockSize: 26}}
	api.SetDefaults(pool)
	apply(pool)
	return srv, store, apply
}

package ipambench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/ipam"
)

// warmup is the number of untimed cycles before a sequential measurement (connections, the first block).
const warmup = 20

// seqResult holds the latencies of sequential allocate+release cycles.
type seqResult struct{ alloc, release, cycle Latencies }

func (r *seqResult) record(t0, t1, t2 time.Time) {
	r.alloc.Add(t1.Sub(t0))
	r.release.Add(t2.Sub(t1))
	r.cycle.Add(t2.Sub(t0))
}

// Scenario 1: one node, one requester: allocate an address, release it, n times.
func rhizomeSequential(tb testing.TB, fsync bool, n int) seqResult {
	tb.Helper()
	c := newCluster(tb, fsync, "10.0.0.0/16")
	a := c.allocator(tb, "node-0")
	ctx := context.Background()
	var r seqResult
	for i := range n + warmup {
		h := handleName("seq", i)
		t0 := time.Now()
		if _, err := a.AutoAssign(ctx, request(h, i)); err != nil {
			tb.Fatalf("allocate %d: %v", i, err)
		}
		t1 := time.Now()
		if _, err := a.ReleaseHandle(ctx, h); err != nil {
			tb.Fatalf("release %d: %v", i, err)
		}
		t2 := time.Now()
		if i >= warmup {
			r.record(t0, t1, t2)
		}
	}
	return r
}

// etcdFloor times n sequential guarded writes of a block-sized value with the datastore alone: the least
// one allocation (one transaction) can cost on this machine.
func etcdFloor(tb testing.TB, fsync bool, n int) Latencies {
	tb.Helper()
	c := newCluster(tb, fsync, "10.0.0.0/16")
	ctx := context.Background()
	value := make([]byte, 1500)
	rev, err := c.admin.Create(ctx, "/bench/floor", value)
	if err != nil {
		tb.Fatal(err)
	}
	var l Latencies
	for i := range n + warmup {
		t0 := time.Now()
		if rev, err = c.admin.Update(ctx, "/bench/floor", value, rev); err != nil {
			tb.Fatal(err)
		}
		if i >= warmup {
			l.Add(time.Since(t0))
		}
	}
	return l
}

// loadSpec is a concurrent load: nodes allocators against one etcd, each with workers concurrent
// requesters that together allocate perNode addresses (a burst of pods) and hold them; then the same
// requesters release them. A cold round claims the blocks; rounds warm rounds follow.
type loadSpec struct{ nodes, workers, perNode, rounds int }

// roundResult is one or more rounds of a load.
type roundResult struct {
	allocs    int
	elapsed   time.Duration // allocation phases
	released  time.Duration // release phases
	lat       Latencies     // per allocation
	counts    CountSnapshot // requests to etcd during the allocation phases
	relCounts CountSnapshot // requests to etcd during the release phases
	audit     Audit         // after each allocation phase, summed
}

func (r roundResult) rate() float64        { return rate(r.allocs, r.elapsed) }
func (r roundResult) releaseRate() float64 { return rate(r.allocs, r.released) }

// perAlloc is n per allocation (or per release: there are as many).
func (r roundResult) perAlloc(n int64) float64 {
	if r.allocs == 0 {
		return 0
	}
	return float64(n) / float64(r.allocs)
}

func (r *roundResult) add(o roundResult) {
	r.allocs += o.allocs
	r.elapsed += o.elapsed
	r.released += o.released
	r.lat.Merge(&o.lat)
	r.counts = CountSnapshot{r.counts.Txns + o.counts.Txns, r.counts.LostGuards + o.counts.LostGuards, r.counts.Reads + o.counts.Reads}
	r.relCounts = CountSnapshot{r.relCounts.Txns + o.relCounts.Txns, r.relCounts.LostGuards + o.relCounts.LostGuards, r.relCounts.Reads + o.relCounts.Reads}
	r.audit.Acked += o.audit.Acked
	r.audit.Stored += o.audit.Stored
	r.audit.Duplicates += o.audit.Duplicates
	r.audit.Unacked += o.audit.Unacked
}

// loadResult: the cold round claims the blocks the nodes need; the warm rounds find them claimed (the
// common case of a node that has run for a while).
type loadResult struct{ cold, warm roundResult }

// Scenarios 2 and 3: concurrent requesters on one or more nodes.
func rhizomeLoad(tb testing.TB, fsync bool, spec loadSpec) loadResult {
	tb.Helper()
	c := newCluster(tb, fsync, "10.0.0.0/16")
	allocs := make([]*ipam.Allocator, spec.nodes)
	for i := range allocs {
		allocs[i] = c.allocator(tb, fmt.Sprintf("node-%d", i))
	}
	r := loadResult{cold: loadRound(tb, c, allocs, spec, "cold")}
	for i := range spec.rounds {
		r.warm.add(loadRound(tb, c, allocs, spec, fmt.Sprintf("warm-%d", i)))
	}
	return r
}

func loadRound(tb testing.TB, c *cluster, allocs []*ipam.Allocator, spec loadSpec, scope string) roundResult {
	tb.Helper()
	ctx := context.Background()
	type worker struct {
		a    *ipam.Allocator
		held []Holding
		lat  Latencies
		err  error
	}
	var workers []*worker
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, a := range allocs {
		var next atomic.Int64 // shared by the node's requesters
		for range spec.workers {
			w := &worker{a: a}
			workers = append(workers, w)
			wg.Go(func() {
				<-start
				for {
					i := int(next.Add(1)) - 1
					if i >= spec.perNode {
						return
					}
					h := handleName(scope+"/"+a.Node(), i)
					t0 := time.Now()
					as, err := a.AutoAssign(ctx, request(h, i))
					if err != nil {
						w.err = fmt.Errorf("%s round, node %s, allocation %d: %w", scope, a.Node(), i, err)
						return
					}
					w.lat.Add(time.Since(t0))
					w.held = append(w.held, Holding{Addr: as[0].Addr, Handle: h})
				}
			})
		}
	}
	before := c.counts.Snapshot()
	t0 := time.Now()
	close(start)
	wg.Wait()
	r := roundResult{elapsed: time.Since(t0), counts: c.counts.Snapshot().Sub(before)}
	var held []Holding
	for _, w := range workers {
		if w.err != nil {
			tb.Fatal(w.err)
		}
		held = append(held, w.held...)
		r.lat.Merge(&w.lat)
	}
	r.allocs = len(held)
	audit, err := AuditStore(ctx, c.admin, held)
	if err != nil {
		tb.Fatal(err)
	}
	if !audit.OK() {
		tb.Fatalf("%s round: %s", scope, audit)
	}
	r.audit = audit

	before = c.counts.Snapshot()
	t0 = time.Now()
	for _, w := range workers {
		wg.Go(func() {
			for _, h := range w.held {
				if _, err := w.a.ReleaseHandle(ctx, h.Handle); err != nil {
					w.err = fmt.Errorf("%s round, node %s, release %s: %w", scope, w.a.Node(), h.Handle, err)
					return
				}
			}
		})
	}
	wg.Wait()
	r.released = time.Since(t0)
	r.relCounts = c.counts.Snapshot().Sub(before)
	for _, w := range workers {
		if w.err != nil {
			tb.Fatal(w.err)
		}
	}
	if after, err := AuditStore(ctx, c.admin, nil); err != nil || !after.OK() {
		tb.Fatalf("%s round: after releasing everything: %v %v", scope, after, err)
	}
	return r
}

// growthResult: how allocation and block claims cost with blocks blocks in the pool.
type growthResult struct {
	blocks int
	alloc  Latencies // allocations from the node's affine block (release untimed)
	claim  Latencies // first allocations of new nodes: each claims a block
}

// Scenario 4: blocks-1 blocks of other nodes in the pool (half full), then the node's own block.
func rhizomeGrowth(tb testing.TB, fsync bool, blocks, iters, claims int) growthResult {
	tb.Helper()
	const pool = "10.0.0.0/14" // 4,096 blocks of /26
	c := newCluster(tb, fsync, pool)
	c.fillForeignBlocks(tb, pool, blocks-1)
	a := c.allocator(tb, "node-0")
	ctx := context.Background()
	r := growthResult{blocks: blocks}
	for i := range iters + warmup {
		h := handleName("growth", i)
		t0 := time.Now()
		if _, err := a.AutoAssign(ctx, request(h, i)); err != nil {
			tb.Fatalf("allocate %d with %d blocks: %v", i, blocks, err)
		}
		if i >= warmup {
			r.alloc.Add(time.Since(t0))
		}
		if _, err := a.ReleaseHandle(ctx, h); err != nil {
			tb.Fatalf("release %d: %v", i, err)
		}
	}
	for k := range claims {
		b := c.allocator(tb, fmt.Sprintf("new-%d", k))
		t0 := time.Now()
		if _, err := b.AutoAssign(ctx, request(handleName("claim", k), k)); err != nil {
			tb.Fatalf("first allocation of a new node with %d blocks: %v", blocks, err)
		}
		r.claim.Add(time.Since(t0))
	}
	return r
}

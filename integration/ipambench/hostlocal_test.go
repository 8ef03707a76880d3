package ipambench

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

// The baseline is host-local's allocator with its disk store (one file per address, an flock on the
// network's directory), called as a library: the cost of its process start-up per CNI call is left out,
// which favours it. Its store does not fsync.

// hostLocal is one host-local allocator over dir, for range 10.0.0.0/16. Each one holds its own lock file
// descriptor, so several of them serialize on the flock like concurrent host-local processes do.
func hostLocal(tb testing.TB, dir string) *allocator.IPAllocator {
	tb.Helper()
	store, err := disk.New("bench", dir)
	if err != nil {
		tb.Fatalf("host-local store: %v", err)
	}
	tb.Cleanup(func() { _ = store.Close() })
	_, subnet, _ := net.ParseCIDR("10.0.0.0/16")
	rs := allocator.RangeSet{allocator.Range{Subnet: types.IPNet(*subnet)}}
	if err := rs.Canonicalize(); err != nil {
		tb.Fatalf("host-local range: %v", err)
	}
	return allocator.NewIPAllocator(&rs, store, 0)
}

// hostLocalSequential allocates and releases one address n times (after a few untimed rounds).
func hostLocalSequential(tb testing.TB, n int) seqResult {
	tb.Helper()
	a := hostLocal(tb, tb.TempDir())
	var r seqResult
	for i := range n + warmup {
		id := handleName("host-local", i)
		t0 := time.Now()
		if _, err := a.Get(id, "eth0", nil); err != nil {
			tb.Fatalf("host-local get %d: %v", i, err)
		}
		t1 := time.Now()
		if err := a.Release(id, "eth0"); err != nil {
			tb.Fatalf("host-local release %d: %v", i, err)
		}
		t2 := time.Now()
		if i >= warmup {
			r.record(t0, t1, t2)
		}
	}
	return r
}

// hostLocalConcurrent runs the load of scenario 2 against host-local: rounds bursts of perNode addresses
// allocated by workers requesters (each its own allocator and lock, like separate plugin processes), each
// burst released before the next. It returns allocations and releases per second. host-local reads every
// address file of the network on each allocation (its duplicate check), so its cost grows with the
// addresses held: it holds as many as rhizome's run does.
func hostLocalConcurrent(tb testing.TB, workers, perNode, rounds int) (allocRate, releaseRate float64) {
	tb.Helper()
	dir := tb.TempDir()
	allocs := make([]*allocator.IPAllocator, workers)
	for w := range allocs {
		allocs[w] = hostLocal(tb, dir)
	}
	// run has every worker take ids from the channel and do op; it returns the wall time.
	run := func(ids []string, op func(a *allocator.IPAllocator, id string) error) time.Duration {
		ch := make(chan string, len(ids))
		for _, id := range ids {
			ch <- id
		}
		close(ch)
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		start := time.Now()
		for _, a := range allocs {
			wg.Go(func() {
				for id := range ch {
					if err := op(a, id); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		close(errs)
		for err := range errs {
			tb.Fatal(err)
		}
		return elapsed
	}
	get := func(a *allocator.IPAllocator, id string) error {
		if _, err := a.Get(id, "eth0", nil); err != nil {
			return fmt.Errorf("host-local get %s: %w", id, err)
		}
		return nil
	}
	release := func(a *allocator.IPAllocator, id string) error {
		if err := a.Release(id, "eth0"); err != nil {
			return fmt.Errorf("host-local release %s: %w", id, err)
		}
		return nil
	}
	var allocTime, releaseTime time.Duration
	for r := range rounds + 1 { // round 0 warms up, as rhizome's cold round
		ids := make([]string, perNode)
		for i := range ids {
			ids[i] = handleName(fmt.Sprintf("host-local/%d", r), i)
		}
		a := run(ids, get)
		rel := run(ids, release)
		if r > 0 {
			allocTime += a
			releaseTime += rel
		}
	}
	n := rounds * perNode
	return rate(n, allocTime), rate(n, releaseTime)
}

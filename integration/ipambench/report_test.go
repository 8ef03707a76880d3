package ipambench

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

var fullReport = flag.Bool("report", false, "run the full IPAM benchmark report and print its table (make bench)")

// scale sets how much each scenario does.
type scale struct {
	seq                                        int // sequential allocate+release cycles
	concWorkers, concAllocs, concRounds        int // scenario 2: requesters, burst size, warm rounds
	nodes, nodeWorkers, nodeAllocs, nodeRounds int // scenario 3: per node
	growthBlocks                               []int
	growthIters, growthClaims                  int
}

// fullScale keeps `make bench` at about a minute of measuring on 2 cores. Bursts are of 100 pods per node
// (docs/design.md §10: 1,000 allocations over 10 nodes; Kubernetes runs at most 110 pods per node by default).
var fullScale = scale{
	seq:         2000,
	concWorkers: 32, concAllocs: 100, concRounds: 50,
	nodes: 10, nodeWorkers: 32, nodeAllocs: 100, nodeRounds: 20,
	growthBlocks: []int{1, 100, 1000},
	growthIters:  300, growthClaims: 10,
}

// quickScale runs every scenario in a few seconds, even with -race.
var quickScale = scale{
	seq:         10,
	concWorkers: 8, concAllocs: 80, concRounds: 1,
	nodes: 3, nodeWorkers: 4, nodeAllocs: 40, nodeRounds: 1,
	growthBlocks: []int{1, 20},
	growthIters:  5, growthClaims: 2,
}

// TestReport is what `make bench` runs: every scenario at full scale, then one table on stdout.
func TestReport(t *testing.T) {
	if !*fullReport {
		t.Skip("the full report runs with -report (make bench); TestQuickReport runs the same scenarios small")
	}
	table := runReport(t, fullScale, os.Stderr)
	if _, err := table.WriteTo(os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// TestQuickReport runs the report's scenarios at a tiny scale: the harness works, and no run hands out an
// address twice or loses one. It checks no speed.
func TestQuickReport(t *testing.T) {
	if *fullReport {
		t.Skip("TestReport runs the full scale")
	}
	table := runReport(t, quickScale, io.Discard)
	var b strings.Builder
	if _, err := table.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"alloc+release p50 / p99", "allocations/s", "duplicate addresses", "blocks in the pool", "host-local"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	t.Logf("quick report (tiny scale: not speed figures):\n%s", out)
}

// runReport measures every scenario, each in a subtest so its etcd stops before the next starts, and
// builds the table. Progress goes to progress.
func runReport(t *testing.T, sc scale, progress io.Writer) *Table {
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		fmt.Fprintf(progress, "ipambench: %s ... ", name)
		start := time.Now()
		if !t.Run(strings.NewReplacer(" ", "_", ",", "").Replace(name), f) {
			t.FailNow()
		}
		fmt.Fprintf(progress, "%s\n", time.Since(start).Round(100*time.Millisecond))
	}

	var seqOn, seqOff, seqHL seqResult
	var floorOn, floorOff Latencies
	step("1 etcd floor, fsync on", func(t *testing.T) { floorOn = etcdFloor(t, true, sc.seq) })
	step("1 etcd floor, fsync off", func(t *testing.T) { floorOff = etcdFloor(t, false, sc.seq) })
	step("1 sequential, fsync on", func(t *testing.T) { seqOn = rhizomeSequential(t, true, sc.seq) })
	step("1 sequential, fsync off", func(t *testing.T) { seqOff = rhizomeSequential(t, false, sc.seq) })
	step("1 sequential, host-local", func(t *testing.T) { seqHL = hostLocalSequential(t, sc.seq) })

	one := loadSpec{nodes: 1, workers: sc.concWorkers, perNode: sc.concAllocs, rounds: sc.concRounds}
	var concOn, concOff loadResult
	var concHL, concHLRelease float64
	step("2 one node concurrent, fsync on", func(t *testing.T) { concOn = rhizomeLoad(t, true, one) })
	step("2 one node concurrent, fsync off", func(t *testing.T) { concOff = rhizomeLoad(t, false, one) })
	step("2 one node concurrent, host-local", func(t *testing.T) {
		concHL, concHLRelease = hostLocalConcurrent(t, sc.concWorkers, sc.concAllocs, sc.concRounds)
	})

	many := loadSpec{nodes: sc.nodes, workers: sc.nodeWorkers, perNode: sc.nodeAllocs, rounds: sc.nodeRounds}
	var nodesOn, nodesOff loadResult
	step("3 nodes concurrent, fsync on", func(t *testing.T) { nodesOn = rhizomeLoad(t, true, many) })
	step("3 nodes concurrent, fsync off", func(t *testing.T) { nodesOff = rhizomeLoad(t, false, many) })

	growth := make([]growthResult, len(sc.growthBlocks))
	for i, n := range sc.growthBlocks {
		step(fmt.Sprintf("4 growth, %d blocks", n), func(t *testing.T) {
			growth[i] = rhizomeGrowth(t, true, n, sc.growthIters, sc.growthClaims)
		})
	}

	tb := &Table{Title: fmt.Sprintf("rhizome IPAM benchmarks (etcd %s embedded, fsync on unless noted; %s %s/%s, %d cores; baseline host-local from containernetworking/plugins %s)",
		strings.TrimPrefix(moduleVersion("go.etcd.io/etcd/server/v3"), "v"), runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), moduleVersion("github.com/containernetworking/plugins"))}

	// 1. Sequential latency.
	seqTarget := func(r seqResult) string {
		ok := r.cycle.Percentile(50) <= 2*time.Millisecond && r.cycle.Percentile(99) <= 10*time.Millisecond
		return "p50 ≤ 2 ms, p99 ≤ 10 ms  " + verdict(ok)
	}
	latRatio := func(a, b *Latencies) string {
		return durRatio(a.Percentile(50), b.Percentile(50)) + " / " + durRatio(a.Percentile(99), b.Percentile(99))
	}
	tb.Add(Row{fmt.Sprintf("1 one node, sequential (%s cycles): alloc+release p50 / p99", thousands(int64(sc.seq))),
		seqOn.cycle.P50P99(), seqHL.cycle.P50P99(), latRatio(&seqOn.cycle, &seqHL.cycle), seqTarget(seqOn)})
	tb.Add(Row{"  allocate alone p50 / p99", seqOn.alloc.P50P99(), seqHL.alloc.P50P99(), latRatio(&seqOn.alloc, &seqHL.alloc), ""})
	tb.Add(Row{"  release alone p50 / p99", seqOn.release.P50P99(), seqHL.release.P50P99(), latRatio(&seqOn.release, &seqHL.release), ""})
	tb.Add(Row{"  etcd alone: one guarded write p50 / p99 (the floor)", floorOn.P50P99(), "", "", ""})
	tb.Add(Row{"  alloc+release p50 / p99, fsync off", seqOff.cycle.P50P99(), seqHL.cycle.P50P99(), latRatio(&seqOff.cycle, &seqHL.cycle), seqTarget(seqOff)})
	tb.Add(Row{"  allocate / release alone p50, fsync off", ms(seqOff.alloc.Percentile(50)) + " / " + ms(seqOff.release.Percentile(50)),
		ms(seqHL.alloc.Percentile(50)) + " / " + ms(seqHL.release.Percentile(50)),
		durRatio(seqOff.alloc.Percentile(50), seqHL.alloc.Percentile(50)) + " / " + durRatio(seqOff.release.Percentile(50), seqHL.release.Percentile(50)), ""})
	tb.Add(Row{"  etcd alone: one guarded write p50 / p99, fsync off", floorOff.P50P99(), "", "", ""})

	// 2. One node, concurrent requesters.
	tb.Add(Row{fmt.Sprintf("2 one node, %d concurrent, %d bursts of %d pods: allocations/s", sc.concWorkers, sc.concRounds, sc.concAllocs),
		perSecond(concOn.warm.rate()), perSecond(concHL), ratio(concOn.warm.rate(), concHL),
		"≥ 1,000/s  " + verdict(concOn.warm.rate() >= 1000)})
	tb.Add(Row{"  allocations/s, fsync off", perSecond(concOff.warm.rate()), perSecond(concHL), ratio(concOff.warm.rate(), concHL),
		"≥ 1,000/s  " + verdict(concOff.warm.rate() >= 1000)})
	tb.Add(Row{"  allocation p50 / p99 under this load", concOn.warm.lat.P50P99(), "", "", ""})
	tb.Add(Row{"  releases/s (same requesters)", perSecond(concOn.warm.releaseRate()), perSecond(concHLRelease),
		ratio(concOn.warm.releaseRate(), concHLRelease), ""})
	tb.Add(Row{"  etcd reads / transactions per allocation", fmt.Sprintf("%.2f / %.3f", concOn.warm.perAlloc(concOn.warm.counts.Reads), concOn.warm.perAlloc(concOn.warm.counts.Txns)), "", "", ""})
	tb.Add(Row{"  etcd reads / transactions per release", fmt.Sprintf("%.2f / %.3f", concOn.warm.perAlloc(concOn.warm.relCounts.Reads), concOn.warm.perAlloc(concOn.warm.relCounts.Txns)), "", "", ""})
	tb.Add(Row{"  allocations/s while claiming the blocks (cold node)", perSecond(concOn.cold.rate()), "", "", ""})

	// 3. Many nodes, one etcd.
	total := sc.nodes * sc.nodeAllocs * (1 + sc.nodeRounds) // per fsync mode
	tb.Add(Row{fmt.Sprintf("3 %d nodes × %d concurrent, one etcd, %d bursts of %s pods: allocations/s", sc.nodes, sc.nodeWorkers, sc.nodeRounds, thousands(int64(sc.nodes*sc.nodeAllocs))),
		perSecond(nodesOn.warm.rate()), "n/a (node-local)", "", "≥ 5,000/s  " + verdict(nodesOn.warm.rate() >= 5000)})
	tb.Add(Row{"  allocations/s, fsync off", perSecond(nodesOff.warm.rate()), "", "", "≥ 5,000/s  " + verdict(nodesOff.warm.rate() >= 5000)})
	tb.Add(Row{"  allocation p50 / p99 under this load", nodesOn.warm.lat.P50P99(), "", "", ""})
	tb.Add(Row{"  allocations/s while claiming the blocks (cold nodes)", perSecond(nodesOn.cold.rate()), "", "", ""})
	tb.Add(Row{"  conflicts (lost guards) per allocation, warm / cold",
		fmt.Sprintf("%.4f / %.4f", nodesOn.warm.perAlloc(nodesOn.warm.counts.LostGuards), nodesOn.cold.perAlloc(nodesOn.cold.counts.LostGuards)), "", "", ""})
	dups := 0
	stored := 0
	for _, r := range []roundResult{nodesOn.cold, nodesOn.warm, nodesOff.cold, nodesOff.warm} {
		dups += r.audit.Duplicates
		stored += r.audit.Stored
	}
	tb.Add(Row{"  duplicate addresses (every round checked against etcd)",
		fmt.Sprintf("%d (%s of %s acknowledged stored)", dups, thousands(int64(stored)), thousands(int64(2*total))), "", "", "0  " + verdict(dups == 0 && stored == 2*total)})

	// 4. Cost growth.
	var allocs, claims []string
	for _, g := range growth {
		allocs = append(allocs, ms(g.alloc.Percentile(50)))
		claims = append(claims, ms(g.claim.Percentile(50)))
	}
	first, last := growth[0], growth[len(growth)-1]
	blocks := make([]string, len(growth))
	for i, g := range growth {
		blocks[i] = thousands(int64(g.blocks))
	}
	vs := fmt.Sprintf(" (%s vs %s blocks)", blocks[len(blocks)-1], blocks[0])
	allocGrowth := float64(last.alloc.Percentile(50)) / float64(first.alloc.Percentile(50))
	tb.Add(Row{fmt.Sprintf("4 allocation p50 with %s blocks in the pool", strings.Join(blocks, " / ")),
		strings.Join(allocs, " / "), "", ratio(float64(last.alloc.Percentile(50)), float64(first.alloc.Percentile(50))) + vs,
		"flat (< 2x)  " + verdict(allocGrowth < 2)})
	tb.Add(Row{"  new node's first allocation (block claim) p50", strings.Join(claims, " / "), "",
		ratio(float64(last.claim.Percentile(50)), float64(first.claim.Percentile(50))) + vs, "(not the common case)"})

	tb.Notes = []string{
		"ratio = rhizome / host-local: for latencies lower is better, for rates higher is better.",
		"host-local is called as a library (no process start per CNI call) and its disk store does not fsync;",
		"etcd, every allocator and the load generator share this machine's cores. Warm rounds find their blocks",
		"claimed (a node that has run a while); cold rounds include the claims.",
	}
	return tb
}

// moduleVersion is the version of module path linked into this binary: from the build information where
// the binary has it, else from the go.mod the test was built from (test binaries list no dependencies).
func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				return d.Version
			}
		}
	}
	if mod, err := os.ReadFile("../../go.mod"); err == nil {
		for line := range strings.Lines(string(mod)) {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == path {
				return f[1]
			}
		}
	}
	return "(version unknown)"
}

package dpbench

import (
	"os"
	"testing"
	"time"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and installs routes")
	}
}

// TestPrivilegedRun checks the measurement itself on a small table: every
// phase did the writes it claims, through the path it claims (Run verifies
// the counts and whether the table was read).
func TestPrivilegedRun(t *testing.T) {
	requireRoot(t)
	r, err := Run(1000, 10)
	if err != nil {
		t.Fatal(err)
	}
	if r.Install <= 0 || r.IPBatch <= 0 || r.SetChanged <= 0 || r.SetNoop <= 0 || r.Resync <= 0 {
		t.Fatalf("missing figures: %+v", r)
	}
	t.Logf("\n%s", r)
}

// BenchmarkRouteProgramming10k installs 10,000 routes from empty, syncs
// a Set with 1% changed and one with nothing changed (incremental), and
// resyncs in full, next to `ip -batch`.
func BenchmarkRouteProgramming10k(b *testing.B) {
	requireRoot(b)
	var last Result
	var install, changed, noop, resync, batch time.Duration
	for b.Loop() {
		r, err := Run(10000, 100)
		if err != nil {
			b.Fatal(err)
		}
		install += r.Install
		changed += r.SetChanged
		noop += r.SetNoop
		resync += r.Resync
		batch += r.IPBatch
		last = r
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / n / 1000 }
	b.ReportMetric(ms(install), "ms-install")
	b.ReportMetric(ms(batch), "ms-ip-batch")
	b.ReportMetric(float64(install)/float64(batch), "ratio")
	b.ReportMetric(ms(changed), "ms-set-1pct")
	b.ReportMetric(ms(noop), "ms-set-noop")
	b.ReportMetric(ms(resync), "ms-resync-full")
	b.Logf("\n%s", last)
}

// TestPrivilegedRunVXLAN checks the VXLAN measurement on a small table:
// every route, neighbour and forwarding entry installed by the
// reconcilers and by the baseline (RunVXLAN verifies the counts).
func TestPrivilegedRunVXLAN(t *testing.T) {
	requireRoot(t)
	r, err := RunVXLAN(1000)
	if err != nil {
		t.Fatal(err)
	}
	if r.Install <= 0 || r.IPBatch <= 0 || r.Resync <= 0 {
		t.Fatalf("missing figures: %+v", r)
	}
	t.Logf("\n%s", r)
}

// BenchmarkRouteProgrammingVXLAN10k installs 10,000 VXLAN routes with
// their neighbour and forwarding entries (10,000 remote nodes), next to
// `ip -batch` and `bridge -batch` doing the same in the same run.
func BenchmarkRouteProgrammingVXLAN10k(b *testing.B) {
	requireRoot(b)
	var last VXLANResult
	var install, batch, resync time.Duration
	for b.Loop() {
		r, err := RunVXLAN(10000)
		if err != nil {
			b.Fatal(err)
		}
		install += r.Install
		batch += r.IPBatch
		resync += r.Resync
		last = r
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / n / 1000 }
	b.ReportMetric(ms(install), "ms-install")
	b.ReportMetric(ms(batch), "ms-ip-batch")
	b.ReportMetric(float64(install)/float64(batch), "ratio")
	b.ReportMetric(ms(resync), "ms-neigh-resync-full")
	b.Logf("\n%s", last)
}

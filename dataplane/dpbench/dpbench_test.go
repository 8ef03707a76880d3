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
// phase did the writes it claims (Run verifies the counts).
func TestPrivilegedRun(t *testing.T) {
	requireRoot(t)
	r, err := Run(1000, 10)
	if err != nil {
		t.Fatal(err)
	}
	if r.Install <= 0 || r.IPBatch <= 0 || r.Resync <= 0 {
		t.Fatalf("missing figures: %+v", r)
	}
	t.Logf("\n%s", r)
}

// BenchmarkRouteProgramming10k installs 10,000 routes from empty, resyncs
// with 1% changed and with nothing changed, next to `ip -batch`.
func BenchmarkRouteProgramming10k(b *testing.B) {
	requireRoot(b)
	var last Result
	var install, resync, noop, batch time.Duration
	for b.Loop() {
		r, err := Run(10000, 100)
		if err != nil {
			b.Fatal(err)
		}
		install += r.Install
		resync += r.Resync
		noop += r.ResyncNoop
		batch += r.IPBatch
		last = r
	}
	n := float64(b.N)
	b.ReportMetric(float64(install.Milliseconds())/n, "ms-install")
	b.ReportMetric(float64(batch.Milliseconds())/n, "ms-ip-batch")
	b.ReportMetric(float64(install)/float64(batch), "ratio")
	b.ReportMetric(float64(resync.Microseconds())/n/1000, "ms-resync-1pct")
	b.ReportMetric(float64(noop.Microseconds())/n/1000, "ms-resync-noop")
	b.Logf("\n%s", last)
}

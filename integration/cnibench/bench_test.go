package cnibench

import (
	"testing"
	"time"
)

// BenchmarkCNIAddDel runs MeasureAddDel once per b.N (use -benchtime=1x)
// and reports the p50s and ratios as metrics.
func BenchmarkCNIAddDel(b *testing.B) {
	for b.Loop() {
		f := MeasureAddDel(b, 200)
		b.Log("\n" + f.String())
		b.ReportMetric(float64(f.RhizomeAdd.P50.Microseconds()), "add-p50-µs")
		b.ReportMetric(float64(f.RhizomeAdd.P99.Microseconds()), "add-p99-µs")
		b.ReportMetric(float64(f.RefAdd.P50.Microseconds()), "ref-add-p50-µs")
		b.ReportMetric(float64(f.RhizomeDel.P50.Microseconds()), "del-p50-µs")
		b.ReportMetric(float64(f.RefDel.P50.Microseconds()), "ref-del-p50-µs")
		b.ReportMetric(f.AddRatio(), "add-ratio")
		b.ReportMetric(f.DelRatio(), "del-ratio")
	}
}

// TestSummarise checks the percentile arithmetic the report relies on.
func TestSummarise(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	l := summarise(ds)
	if l.N != 200 || l.P50 != 101*time.Millisecond || l.P99 != 199*time.Millisecond || l.Mean != 100500*time.Microsecond {
		t.Fatalf("summarise: %+v", l)
	}
}

// Package ipambench measures rhizome's IPAM allocator against a real embedded etcd and compares it with
// host-local, the reference CNI IPAM plugin (github.com/containernetworking/plugins), measured on the same
// machine in the same run.
//
// `make bench` runs TestReport with -report and prints one table; the BenchmarkXxx functions cover the same
// paths for `go test -bench`. Without -report, TestQuickReport runs every scenario at a tiny scale so the
// harness itself is tested (with -race) by `make test`. This file and its neighbours hold the pure parts:
// statistics, the table, a Store that counts transactions, and the check of what etcd holds.
package ipambench

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
)

// Latencies collects durations of one kind of operation. It is not safe for concurrent use: give each
// goroutine its own and Merge them.
type Latencies struct {
	d      []time.Duration
	sorted bool
}

// Add records one duration.
func (l *Latencies) Add(d time.Duration) {
	l.d = append(l.d, d)
	l.sorted = false
}

// Merge adds every duration of o.
func (l *Latencies) Merge(o *Latencies) {
	l.d = append(l.d, o.d...)
	l.sorted = false
}

// Len is the number of durations recorded.
func (l *Latencies) Len() int { return len(l.d) }

// Percentile returns the p-th percentile (0 < p <= 100) by the nearest-rank method, or 0 when nothing was
// recorded.
func (l *Latencies) Percentile(p float64) time.Duration {
	if len(l.d) == 0 {
		return 0
	}
	if !l.sorted {
		slices.Sort(l.d)
		l.sorted = true
	}
	rank := int(math.Ceil(p / 100 * float64(len(l.d))))
	return l.d[min(max(rank, 1), len(l.d))-1]
}

// P50P99 formats the median and the 99th percentile, e.g. "0.93 ms / 2.1 ms".
func (l *Latencies) P50P99() string {
	return ms(l.Percentile(50)) + " / " + ms(l.Percentile(99))
}

// ms formats a duration in milliseconds with two or three significant digits.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 1:
		return fmt.Sprintf("%.3f ms", v)
	case v < 10:
		return fmt.Sprintf("%.2f ms", v)
	case v < 100:
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.0f ms", v)
}

// rate is n operations in d, per second.
func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// perSecond formats a rate with thousands separators, e.g. "12,345/s".
func perSecond(r float64) string {
	return thousands(int64(math.Round(r))) + "/s"
}

// thousands formats n with commas between groups of three digits.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// ratio formats a/b as "3.0x", or "-" when b is zero.
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	r := a / b
	if r < 10 {
		return fmt.Sprintf("%.2fx", r)
	}
	return fmt.Sprintf("%.0fx", r)
}

// durRatio is ratio for durations.
func durRatio(a, b time.Duration) string { return ratio(float64(a), float64(b)) }

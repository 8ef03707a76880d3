// Package cnibench measures CNI ADD and DEL end to end through libcni
// (plugin exec, veth pair, addresses, routes, address allocation):
// rhizome-cni with a real agent on embedded etcd, next to the reference
// ptp + host-local plugins in the same run.
package cnibench

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/daemon/cnisvc/agenttest"
)

// Latencies summarises one operation's wall times.
type Latencies struct {
	N        int
	P50, P99 time.Duration
	Mean     time.Duration
}

func summarise(ds []time.Duration) Latencies {
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return Latencies{N: len(s), P50: at(0.50), P99: at(0.99), Mean: sum / time.Duration(len(s))}
}

// Figures are the results of one run.
type Figures struct {
	Pods               int
	RhizomeAdd, RefAdd Latencies
	RhizomeDel, RefDel Latencies
}

// AddRatio is rhizome's ADD p50 over the reference's (target <= 1.2).
func (f Figures) AddRatio() float64 { return ratio(f.RhizomeAdd.P50, f.RefAdd.P50) }

// DelRatio is the same for DEL.
func (f Figures) DelRatio() float64 { return ratio(f.RhizomeDel.P50, f.RefDel.P50) }

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

// String is a table for a report.
func (f Figures) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "CNI end to end through libcni, %d pods (veth + address + routes)\n", f.Pods)
	fmt.Fprintf(&b, "%-34s %10s %10s %10s\n", "", "p50", "p99", "mean")
	row := func(name string, l Latencies) {
		fmt.Fprintf(&b, "%-34s %10s %10s %10s\n", name, l.P50.Round(10*time.Microsecond), l.P99.Round(10*time.Microsecond), l.Mean.Round(10*time.Microsecond))
	}
	row("ADD rhizome-cni", f.RhizomeAdd)
	row("ADD ptp+host-local "+cnitest.ReferenceVersion, f.RefAdd)
	row("DEL rhizome-cni", f.RhizomeDel)
	row("DEL ptp+host-local "+cnitest.ReferenceVersion, f.RefDel)
	fmt.Fprintf(&b, "ratio rhizome/reference (p50): ADD %.2fx (target <= 1.2x), DEL %.2fx; p99: ADD %.2fx, DEL %.2fx\n",
		f.AddRatio(), f.DelRatio(), ratio(f.RhizomeAdd.P99, f.RefAdd.P99), ratio(f.RhizomeDel.P99, f.RefDel.P99))
	return b.String()
}

// MeasureAddDel adds pods pods with each plugin chain, then deletes them,
// alternating between the two so drift on a shared machine hits both
// alike. It needs root (it skips otherwise) and builds the plugins.
func MeasureAddDel(tb testing.TB, pods int) Figures {
	tb.Helper()
	cnitest.NeedRoot(tb)
	bin := tb.TempDir()
	if err := cnitest.BuildPlugins(bin); err != nil {
		tb.Fatal(err)
	}
	ref := cnitest.ReferencePlugins(tb, "ptp", "host-local")
	ag := agenttest.Start(tb, agenttest.Pool("bench", "10.50.0.0/22"), agenttest.MTU(1500))
	rz := cnitest.NewNode(tb, bin)
	rf := cnitest.NewNode(tb, ref)
	rzConf := cnitest.ConfList(tb, "rz-bench", map[string]any{"type": "rhizome-cni", "socket": ag.Socket})
	rfConf := cnitest.ConfList(tb, "ref-bench", map[string]any{"type": "ptp", "ipMasq": false, "mtu": 1500,
		"ipam": map[string]any{"type": "host-local", "ranges": [][]map[string]any{{{"subnet": "10.60.0.0/22"}}},
			"dataDir": filepath.Join(tb.TempDir(), "host-local")}})

	type side struct {
		node *cnitest.Node
		conf *libcni.NetworkConfigList
		pods []*cnitest.Pod
		add  []time.Duration
		del  []time.Duration
	}
	sides := []*side{{node: rz, conf: rzConf}, {node: rf, conf: rfConf}}
	for _, s := range sides {
		for i := range pods {
			s.pods = append(s.pods, s.node.NewPod("bench", fmt.Sprintf("pod-%d", i)))
		}
	}
	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	order := func(i int) []*side {
		if i%2 == 0 {
			return sides
		}
		return []*side{sides[1], sides[0]}
	}
	for i := range pods {
		for _, s := range order(i) {
			s.add = append(s.add, timed(func() { s.node.Add(s.conf, s.pods[i]) }))
		}
	}
	for i := range pods {
		for _, s := range order(i) {
			s.del = append(s.del, timed(func() { s.node.Del(s.conf, s.pods[i]) }))
		}
	}
	if got := ag.Allocated(); len(got) != 0 {
		tb.Fatalf("after the run %d addresses are still allocated", len(got))
	}
	return Figures{Pods: pods,
		RhizomeAdd: summarise(sides[0].add), RefAdd: summarise(sides[1].add),
		RhizomeDel: summarise(sides[0].del), RefDel: summarise(sides[1].del)}
}

package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// problemList names every problem of a report in one comparable line each.
func problemList(r *Report) []string {
	var out []string
	for _, o := range r.LeakedAddresses {
		out = append(out, fmt.Sprintf("leaked %s %s", o.Addr, o.Handle))
	}
	for _, w := range r.WorkloadsWithoutAddress {
		out = append(out, "no address "+w.String())
	}
	for _, d := range r.DuplicateAddresses {
		var blocks []string
		for _, o := range d.Owners {
			blocks = append(blocks, o.Handle+"@"+o.Block.String())
		}
		out = append(out, fmt.Sprintf("two owners %s %s", d.Addr, strings.Join(blocks, ",")))
	}
	for _, h := range r.HandleMismatches {
		out = append(out, fmt.Sprintf("handle %s %s != %s", h.Handle, formatCounts(h.Recorded), formatCounts(h.Actual)))
	}
	for _, h := range r.OrphanHandles {
		out = append(out, "orphan handle "+h.Handle)
	}
	for _, a := range r.AffinitiesWithoutBlock {
		out = append(out, fmt.Sprintf("affinity without block %s/%s", a.Node, a.Block))
	}
	for _, a := range r.PendingAffinities {
		out = append(out, fmt.Sprintf("pending %s %s/%s block=%v", a.State, a.Node, a.Block, a.BlockExists))
	}
	for _, m := range r.AffinityMismatches {
		out = append(out, fmt.Sprintf("mismatch %s block=%s record=%s", m.Block, m.BlockAffinity, m.AffinityNode))
	}
	for _, b := range r.InconsistentBlocks {
		out = append(out, "bad block "+b.Key)
	}
	slices.Sort(out)
	return out
}

func checkOK(t *testing.T, s datastore.Store, live []Workload) *Report {
	t.Helper()
	r, err := Check(context.Background(), s, live)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if got := len(problemList(r)); got != r.Problems() {
		t.Fatalf("Problems() = %d, but the report lists %d", r.Problems(), got)
	}
	return r
}

func wantProblems(t *testing.T, what string, r *Report, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := problemList(r); !slices.Equal(got, want) {
		var text strings.Builder
		_ = r.WriteText(&text)
		t.Fatalf("%s: problems\n  %s\nwant\n  %s\nreport:\n%s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "), text.String())
	}
}

func put(t *testing.T, s datastore.Store, key string, v any) {
	t.Helper()
	data, ok := v.([]byte)
	if !ok {
		data, _ = json.Marshal(v)
	}
	if _, err := s.Txn(context.Background(), datastore.OpPut(key, data)); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, s datastore.Store, key string) {
	t.Helper()
	if err := s.Delete(context.Background(), key, 0); err != nil {
		t.Fatal(err)
	}
}

// liveOf lists the workloads of handles, as Kubernetes would.
func liveOf(handles ...string) []Workload {
	out := []Workload{}
	for _, h := range handles {
		out = append(out, Workload{Namespace: "default", Pod: h, Handle: h, Node: "node-a"})
	}
	return out
}

// A healthy cluster: three nodes, several pools, borrowing, multi-address
// handles and fixed addresses; it checks clean with and without the live
// workloads, and Repair finds nothing to do.
func TestCheckHealthyClusterIsClean(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("small", "10.5.0.0/29", 30), newTestPool("v6", "fd00:10::/112", 122))
	c.config(Config{MaxBlocksPerNode: 2, AutoAllocateBlocks: true})
	ctx := context.Background()
	var live []Workload
	for i, node := range []string{"node-a", "node-b", "node-c"} {
		a := c.allocator(node)
		for j := range 2 {
			h := fmt.Sprintf("net.%s-%d", node, j)
			if i < 2 { // node-c's pool block is taken: it borrows
				assign(t, a, h)
			} else {
				if got := assign(t, a, h); !got.Borrowed {
					t.Fatalf("%s: want a borrowed address, got %+v", h, got)
				}
				if j == 1 {
					continue
				}
			}
			assign(t, a, h+"-v6", func(r *Request) { r.Family = 6; r.Count = 2 })
			live = append(live, Workload{Namespace: "default", Pod: h, Handle: h, Node: node},
				Workload{Namespace: "default", Pod: h + "-v6", Handle: h + "-v6", Node: node})
		}
		if i == 2 {
			live = append(live, Workload{Namespace: "default", Pod: "net.node-c-1", Node: node}) // matched by pod
		}
	}
	r := checkOK(t, c.store(), nil)
	wantProblems(t, "structural check", r)
	if r.LiveChecked || r.Blocks != 5 || r.Affinities != 5 || r.AddressesInUse != 16 {
		t.Fatalf("report summary %+v", r)
	}
	r = checkOK(t, c.store(), live)
	wantProblems(t, "check with live workloads", r)
	if fixed, err := Repair(ctx, c.store(), r); err != nil || len(fixed) != 0 {
		t.Fatalf("repair of a clean report: %v, %v", fixed, err)
	}
	var text strings.Builder
	if err := r.WriteText(&text); err != nil || !strings.Contains(text.String(), "No problems found.") {
		t.Fatalf("text: %v\n%s", err, text.String())
	}
}

// Each problem kind, made by corrupting a state the real allocator built:
// Check finds exactly it; Repair fixes the structural ones and a second
// check is clean, or (leaks, duplicates, broken blocks) leaves it alone.
func TestCheckFindsEachProblemAndRepairFixesStructure(t *testing.T) {
	const blk = "10.0.0.0/26"
	block := netip.MustParsePrefix(blk)
	other := netip.MustParsePrefix("10.0.0.64/26") // outside the pool
	for _, tc := range []struct {
		name    string
		live    []Workload
		corrupt func(t *testing.T, c *cluster, a *Allocator)
		want    []string
		// unrepaired: Repair leaves the problems (leaks, two owners, broken blocks).
		unrepaired bool
	}{
		{name: "leaked address", live: liveOf("h1"), unrepaired: true,
			want: []string{"leaked 10.0.0.2 h2"}},
		{name: "workload without an address",
			live: append(liveOf("h1", "h2", "gone"), Workload{Namespace: "default", Pod: "nopod"}),
			want: []string{"no address pod default/gone handle gone on node node-a", "no address pod default/nopod"}, unrepaired: true},
		{name: "pod matched without handle", live: []Workload{{Namespace: "default", Pod: "h1"}, {Namespace: "default", Pod: "h2"}}},
		{name: "two owners after a pool is recreated with another block size", unrepaired: true,
			corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
				if _, err := c.res.Delete(context.Background(), api.KindIPPool, "p", 0); err != nil {
					t.Fatal(err)
				}
				c.apply(newTestPool("p28", "10.0.0.0/24", 28))
				b := c.allocator("node-b")
				if _, err := b.AssignIP(context.Background(), netip.MustParseAddr("10.0.0.2"), Attribute{Handle: "fixed"}); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"two owners 10.0.0.2 h2@10.0.0.0/26,fixed@10.0.0.0/28"}},
		{name: "handle record counts too few", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			put(t, c.store(), handleKey("h3"), Handle{Blocks: map[string]int{blk: 1}})
		}, want: []string{"handle h3 {10.0.0.0/26: 1} != {10.0.0.0/26: 2}"}},
		{name: "handle record missing", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			del(t, c.store(), handleKey("h2"))
		}, want: []string{"handle h2 {} != {10.0.0.0/26: 1}"}},
		{name: "handle record unreadable", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			put(t, c.store(), handleKey("h1"), []byte("{"))
		}, want: []string{"handle h1 {} != {10.0.0.0/26: 1}"}},
		{name: "orphan handle", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			put(t, c.store(), handleKey("ghost"), Handle{Blocks: map[string]int{blk: 1}})
			put(t, c.store(), handleKey("empty"), Handle{})
		}, want: []string{"orphan handle empty", "orphan handle ghost"}},
		{name: "affinity without block", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			put(t, c.store(), affinityKey("node-a", other), Affinity{State: AffinityConfirmed})
		}, want: []string{"affinity without block node-a/10.0.0.64/26"}},
		{name: "pending claim without block", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			put(t, c.store(), affinityKey("node-b", other), Affinity{State: AffinityPending})
		}, want: []string{"pending pending node-b/10.0.0.64/26 block=false"}},
		{name: "release left half done", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			put(t, c.store(), affinityKey("node-a", block), Affinity{State: AffinityPendingDeletion})
		}, want: []string{"pending pendingDeletion node-a/10.0.0.0/26 block=true"}},
		{name: "block names a node without affinity record", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			del(t, c.store(), affinityKey("node-a", block))
		}, want: []string{"mismatch 10.0.0.0/26 block=node-a record="}},
		{name: "affinity record of another node", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			put(t, c.store(), affinityKey("node-b", block), Affinity{State: AffinityConfirmed})
		}, want: []string{"mismatch 10.0.0.0/26 block=node-a record=node-b"}},
		{name: "block without affinity, record left", corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			b, rev := readBlock(t, c.store(), blk)
			b.Affinity = ""
			v, _ := json.Marshal(b)
			if _, err := c.store().Update(context.Background(), blockKey(block), v, rev); err != nil {
				t.Fatal(err)
			}
		}, want: []string{"mismatch 10.0.0.0/26 block= record=node-a"}},
		{name: "block allocated and free at once", unrepaired: true, corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			b, _ := readBlock(t, c.store(), blk)
			b.Unallocated = append(b.Unallocated, 1)
			put(t, c.store(), blockKey(block), b)
		}, want: []string{"bad block " + blockKey(block)}},
		{name: "block unreadable", unrepaired: true, corrupt: func(t *testing.T, c *cluster, _ *Allocator) {
			put(t, c.store(), blockKey(other), []byte("not json"))
		}, want: []string{"bad block " + blockKey(other)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newCluster(t)
			// One block: h1 gets .1, h2 .2, h3 .3 and .4.
			c.apply(newTestPool("p", blk, 26))
			a := c.allocator("node-a")
			for _, h := range []string{"h1", "h2"} {
				assign(t, a, h)
			}
			assign(t, a, "h3", func(r *Request) { r.Count = 2 })
			wantProblems(t, "before", checkOK(t, c.store(), nil))
			wantProblems(t, "before, with live workloads", checkOK(t, c.store(), liveOf("h1", "h2", "h3")))
			if tc.live != nil { // h3 is live too
				tc.live = append(tc.live, liveOf("h3")...)
			}
			if tc.corrupt != nil {
				tc.corrupt(t, c, a)
			}
			r := checkOK(t, c.store(), tc.live)
			wantProblems(t, "after corruption", r, tc.want...)

			// The report survives JSON (ipam check -o) unchanged.
			data, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var back Report
			if err := json.Unmarshal(data, &back); err != nil || !reflect.DeepEqual(&back, r) {
				t.Fatalf("report JSON round trip: %v\n%s", err, data)
			}

			fixed, err := Repair(context.Background(), c.store(), &back)
			if err != nil {
				t.Fatalf("repair: %v (fixed %v)", err, fixed)
			}
			if len(fixed) != r.Repairable() {
				t.Fatalf("repair fixed %d (%v), want %d", len(fixed), fixed, r.Repairable())
			}
			after := checkOK(t, c.store(), tc.live)
			if tc.unrepaired {
				wantProblems(t, "after repair", after, tc.want...)
				return
			}
			wantProblems(t, "after repair", after)
			// The repaired state serves the allocator: release everything.
			for _, h := range []string{"h1", "h2", "h3"} {
				if _, err := a.ReleaseHandle(context.Background(), h); err != nil {
					t.Fatal(err)
				}
			}
			wantProblems(t, "after releasing everything", checkOK(t, c.store(), []Workload{}))
		})
	}
}

// Leaked addresses are freed by ReleaseIPs with the report's sequence
// numbers, never by Repair.
func TestLeakReleasedBySequence(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/26", 26))
	a := c.allocator("node-a")
	ctx := context.Background()
	for _, h := range []string{"h1", "h2", "h3"} {
		assign(t, a, h)
	}
	r := checkOK(t, c.store(), liveOf("h1"))
	wantProblems(t, "leaks", r, "leaked 10.0.0.2 h2", "leaked 10.0.0.3 h3")
	if fixed, err := Repair(ctx, c.store(), r); err != nil || len(fixed) != 0 {
		t.Fatalf("repair touched leaks: %v %v", fixed, err)
	}
	var text strings.Builder
	_ = r.WriteText(&text)
	for _, want := range []string{"Compared with 1 live workload.", "Leaked addresses", "10.0.0.2 held by pod default/h2 (handle h2) on node node-a, block 10.0.0.0/26, seq 2", "Found 2 problems."} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("report text does not contain %q:\n%s", want, text.String())
		}
	}
	// h3 is released and its address handed out again before the operator
	// acts: the stale entry frees nothing.
	if _, err := a.ReleaseHandle(ctx, "h3"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AssignIP(ctx, netip.MustParseAddr("10.0.0.3"), Attribute{Handle: "h4"}); err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	var seqs []uint64
	for _, o := range r.LeakedAddresses {
		addrs, seqs = append(addrs, o.Addr), append(seqs, o.Seq)
	}
	rel, err := ReleaseIPs(ctx, c.store(), addrs, seqs)
	if err != nil || len(rel) != 1 || rel[0].Owner.Handle != "h2" {
		t.Fatalf("release from report = %+v, %v; want only h2's address", rel, err)
	}
	wantProblems(t, "after release", checkOK(t, c.store(), liveOf("h1", "h4")))
}

// Repairs are guarded: what changed since the check is left alone, and the
// error says to check again.
func TestRepairSkipsWhatChangedSinceTheCheck(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/26", 26))
	a := c.allocator("node-a")
	ctx := context.Background()
	first := assign(t, a, "h1")
	other := netip.MustParsePrefix("10.0.0.64/26")
	put(t, c.store(), handleKey("h1"), Handle{Blocks: map[string]int{first.Block.String(): 5}})
	put(t, c.store(), affinityKey("node-b", other), Affinity{State: AffinityPending})
	r := checkOK(t, c.store(), nil)
	wantProblems(t, "before", r, "handle h1 {10.0.0.0/26: 5} != {10.0.0.0/26: 1}", "pending pending node-b/10.0.0.64/26 block=false")

	// Meanwhile: h1 gets a second address (its handle is rewritten), and
	// node-b's claim completes (the block appears).
	assign(t, a, "h1")
	nb := newBlock(other, "node-b")
	v, _ := json.Marshal(nb)
	confirmed, _ := json.Marshal(Affinity{State: AffinityConfirmed})
	if _, err := c.store().Txn(ctx, datastore.OpCreate(blockKey(other), v), datastore.OpPut(affinityKey("node-b", other), confirmed)); err != nil {
		t.Fatal(err)
	}
	fixed, err := Repair(ctx, c.store(), r)
	if !errors.Is(err, datastore.ErrConflict) || len(fixed) != 0 || !strings.Contains(err.Error(), "2 repairs not applied") {
		t.Fatalf("repair of a stale report = %v, %v; want nothing fixed and a conflict", fixed, err)
	}
	// The handle is still wrong (the allocator counted on from 5), the
	// claim is whole: a fresh check and repair fix what is left.
	r = checkOK(t, c.store(), nil)
	wantProblems(t, "after stale repair", r, "handle h1 {10.0.0.0/26: 6} != {10.0.0.0/26: 2}")
	if fixed, err := Repair(ctx, c.store(), r); err != nil || len(fixed) != 1 {
		t.Fatalf("second repair = %v, %v", fixed, err)
	}
	wantProblems(t, "after second repair", checkOK(t, c.store(), nil))
}

func TestCheckRejectsWorkloadWithoutIdentity(t *testing.T) {
	c := newCluster(t)
	_, err := Check(context.Background(), c.store(), []Workload{{Namespace: "default", Node: "node-a"}})
	wantErr(t, err, ErrBadRequest, "live workload 1", "neither a handle nor a pod")
}

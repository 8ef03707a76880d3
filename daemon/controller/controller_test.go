package controller

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
	"github.com/rhizome-net/rhizome/ipam"
)

// fakeView is a hand-written fake of the Kubernetes side (a real API
// server would make these unit tests root-free but slow): the pods it
// lists as live, and what a direct look-up of one pod answers.
type fakeView struct {
	mu     sync.Mutex
	live   map[string]bool  // namespace/pod listed as running
	lookup map[string]error // answer of PodGone for a pod not live: nil = gone
	asked  []string
}

func (v *fakeView) NodeGone(context.Context, *api.Node, time.Time) (bool, bool, error) {
	return false, false, nil
}

func (v *fakeView) LiveWorkloads(context.Context) ([]ipam.Workload, bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := []ipam.Workload{} // empty, not nil: nothing runs
	for k, ok := range v.live {
		if ok {
			ns, pod := split(k)
			out = append(out, ipam.Workload{Namespace: ns, Pod: pod, Node: "node-1"})
		}
	}
	return out, true, nil
}

var errStillThere = errors.New("still there")

func (v *fakeView) PodGone(_ context.Context, ns, pod string) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	k := ns + "/" + pod
	v.asked = append(v.asked, k)
	if v.live[k] {
		return false, nil
	}
	err := v.lookup[k]
	if errors.Is(err, errStillThere) {
		return false, nil
	}
	return err == nil, err
}

func (v *fakeView) set(pod string, live bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.live["default/"+pod] = live
}

func split(k string) (string, string) {
	for i := range k {
		if k[i] == '/' {
			return k[:i], k[i+1:]
		}
	}
	return "", k
}

type fixture struct {
	t     *testing.T
	store datastore.Store
	alloc *ipam.Allocator
	view  *fakeView
	now   time.Time
	ctl   *Controller
}

const grace = 10 * time.Minute

func newFixture(t *testing.T) *fixture {
	t.Helper()
	srv := etcdtest.Start(t)
	store := srv.Store(t)
	res := datastore.NewResources(store)
	ctx := context.Background()
	pool := &api.IPPool{ObjectMeta: api.ObjectMeta{Name: "pool"}, Spec: api.IPPoolSpec{CIDR: "10.244.0.0/16", BlockSize: 26}}
	api.SetDefaults(pool)
	for _, o := range []api.Object{pool, &api.Node{ObjectMeta: api.ObjectMeta{Name: "node-1"}}} {
		if _, _, err := res.Apply(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	alloc, err := ipam.NewAllocator(ctx, store, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(alloc.Close)
	f := &fixture{t: t, store: store, alloc: alloc, view: &fakeView{live: map[string]bool{}, lookup: map[string]error{}},
		now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	f.ctl = New(store, f.view, WithGracePeriod(grace), WithClock(func() time.Time { return f.now }))
	return f
}

// pod allocates an address for a running pod.
func (f *fixture) pod(name string) netip.Addr {
	f.t.Helper()
	got, err := f.alloc.AutoAssign(context.Background(), ipam.Request{Handle: "k8s-pod-network." + name, Namespace: "default", Pod: name})
	if err != nil {
		f.t.Fatal(err)
	}
	f.view.set(name, true)
	return got[0].Addr
}

// pass runs one controller pass at now+at.
func (f *fixture) pass(at time.Duration, start time.Time) {
	f.t.Helper()
	f.now = start.Add(at)
	if err := f.ctl.RunOnce(context.Background()); err != nil {
		f.t.Fatalf("pass at +%s: %v", at, err)
	}
}

// held says whether the pod's handle still holds its address.
func (f *fixture) held(name string) bool {
	f.t.Helper()
	a, err := ipam.ByHandle(context.Background(), f.store, "k8s-pod-network."+name)
	if err != nil {
		f.t.Fatal(err)
	}
	return len(a) > 0
}

// An address whose pod is gone is freed only once it stayed leaked for the
// whole grace period; the addresses of running pods stay.
func TestLeakFreedAfterGracePeriod(t *testing.T) {
	f := newFixture(t)
	f.pod("web")
	f.pod("gone")
	t0 := f.now
	f.view.set("gone", false)
	for _, at := range []time.Duration{0, time.Minute, grace - time.Second} {
		f.pass(at, t0)
		if !f.held("gone") {
			t.Fatalf("the address of a gone pod was freed %s after it was first seen leaked, before the %s grace period", at, grace)
		}
	}
	f.pass(grace, t0)
	if f.held("gone") {
		t.Fatalf("the address of a gone pod is still held after the %s grace period", grace)
	}
	if !f.held("web") {
		t.Fatal("the address of a running pod was freed")
	}
}

// A pod that shows up again restarts the clock: only a leak that lasted
// the grace period without a break is freed.
func TestLeakClockRestartsWhenPodReturns(t *testing.T) {
	f := newFixture(t)
	f.pod("flaky")
	t0 := f.now
	f.view.set("flaky", false)
	f.pass(0, t0)
	f.view.set("flaky", true)
	f.pass(5*time.Minute, t0)
	f.view.set("flaky", false)
	f.pass(6*time.Minute, t0)
	f.pass(grace+time.Minute, t0) // 10 min after the first sighting, 5 after the second
	if !f.held("flaky") {
		t.Fatal("freed although the pod was live in between: the leak had lasted only 5 minutes")
	}
	f.pass(6*time.Minute+grace, t0)
	if f.held("flaky") {
		t.Fatal("not freed although it stayed leaked for the grace period since it went away again")
	}
}

// Right before freeing, the pod is asked for directly: one created since
// the list keeps its address, and a failed look-up frees nothing yet.
func TestPodRecheckedBeforeRelease(t *testing.T) {
	f := newFixture(t)
	f.pod("late")
	f.pod("unknown")
	t0 := f.now
	f.view.set("late", false)
	f.view.set("unknown", false)
	f.view.lookup["default/late"] = errStillThere
	f.view.lookup["default/unknown"] = errors.New("API server unavailable")
	f.pass(0, t0)
	f.pass(grace, t0)
	if !f.held("late") {
		t.Fatal("freed the address of a pod that the direct look-up found running")
	}
	if !f.held("unknown") {
		t.Fatal("freed an address although the pod could not be looked up")
	}
	if len(f.view.asked) != 2 {
		t.Fatalf("pods looked up before release: %v, want late and unknown once each", f.view.asked)
	}
	// The look-up works again and says the pod is gone: freed at once,
	// the leak was tracked all along.
	delete(f.view.lookup, "default/unknown")
	f.pass(grace+time.Minute, t0)
	if f.held("unknown") {
		t.Fatal("not freed after the look-up said the pod is gone")
	}
}

// Grace period 0 turns leak release off.
func TestNoGracePeriodNoRelease(t *testing.T) {
	f := newFixture(t)
	f.ctl = New(f.store, f.view, WithClock(func() time.Time { return f.now }))
	f.pod("gone")
	f.view.set("gone", false)
	t0 := f.now
	f.pass(0, t0)
	f.pass(24*time.Hour, t0)
	if !f.held("gone") {
		t.Fatal("freed a leaked address with the grace period 0 (disabled)")
	}
}

// Without Kubernetes, a node whose agent stopped beating for the TTL is
// gone: its addresses are freed and its Node stays.
func TestHeartbeatViewReleasesStaleNode(t *testing.T) {
	f := newFixture(t)
	f.pod("a")
	res := datastore.NewResources(f.store)
	ctx := context.Background()
	obj, err := res.Get(ctx, api.KindNode, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	n := obj.(*api.Node)
	n.Status = &api.NodeStatus{LastHeartbeat: f.now.Add(-time.Hour).Format(time.RFC3339)}
	if _, err := res.Update(ctx, n); err != nil {
		t.Fatal(err)
	}
	ctl := New(f.store, HeartbeatView{TTL: 5 * time.Minute}, WithClock(func() time.Time { return f.now }))
	if err := ctl.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if f.held("a") {
		t.Fatal("the address of a node gone for an hour is still held")
	}
	if _, err := res.Get(ctx, api.KindNode, "node-1"); err != nil {
		t.Fatalf("the Node of a node that only stopped beating was deleted: %v", err)
	}
}

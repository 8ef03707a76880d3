package cnisvc_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/cni/agentapi"
	"github.com/rhizome-net/rhizome/daemon/cnisvc"
	"github.com/rhizome-net/rhizome/daemon/cnisvc/agenttest"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

func addReq(container string) *agentapi.AddRequest {
	return &agentapi.AddRequest{Network: "k8s-pod-network", Attachment: agentapi.Attachment{ContainerID: container, IfName: "eth0"},
		PodNamespace: "default", PodName: "pod-" + container}
}

func mustAdd(t *testing.T, ag *agenttest.Agent, req *agentapi.AddRequest) *agentapi.AddResponse {
	t.Helper()
	resp, err := ag.Service.Add(context.Background(), req)
	if err != nil {
		t.Fatalf("ADD %s: %v", req.ContainerID, err)
	}
	return resp
}

func wantCode(t *testing.T, err error, code uint, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want code %d mentioning %q", code, parts)
	}
	if got := agentapi.CodeOf(err); got != code {
		t.Errorf("error %q has code %d, want %d", err, got, code)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func TestAddIsIdempotentAndDelReleases(t *testing.T) {
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.20.0.0/24"), agenttest.MTU(1440))
	ctx := context.Background()
	first := mustAdd(t, ag, addReq("c1"))
	if len(first.IPs) != 1 || first.MTU != 1440 {
		t.Fatalf("ADD answered %+v, want one address and MTU 1440", first)
	}
	ip := first.IPs[0]
	if ip.Address.Bits() != 32 || !netip.MustParsePrefix("10.20.0.0/24").Contains(ip.Address.Addr()) ||
		ip.Pool != "pool-a" || ip.PoolCIDR.String() != "10.20.0.0/24" {
		t.Fatalf("address %+v, want a /32 of pool-a 10.20.0.0/24", ip)
	}
	again := mustAdd(t, ag, addReq("c1"))
	if again.IPs[0] != ip {
		t.Fatalf("repeated ADD gave %+v, first gave %+v", again.IPs[0], ip)
	}
	other := mustAdd(t, ag, addReq("c2"))
	if other.IPs[0].Address == ip.Address {
		t.Fatalf("two containers got the same address %s", ip.Address)
	}
	if got := ag.Allocated()[ip.Address.Addr()]; got != cnisvc.HandleID("k8s-pod-network", "c1", "eth0") {
		t.Fatalf("address %s held by %q", ip.Address, got)
	}
	if err := ag.Service.Check(ctx, &agentapi.CheckRequest{Network: "k8s-pod-network", Attachment: addReq("c1").Attachment, IPs: []netip.Addr{ip.Address.Addr()}}); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	err := ag.Service.Check(ctx, &agentapi.CheckRequest{Network: "k8s-pod-network", Attachment: addReq("c1").Attachment, IPs: []netip.Addr{other.IPs[0].Address.Addr()}})
	wantCode(t, err, agentapi.CodeCheckFailed, "c1", ip.Address.Addr().String())

	for range 2 { // DEL is idempotent
		if err := ag.Service.Del(ctx, &agentapi.DelRequest{Network: "k8s-pod-network", Attachment: addReq("c1").Attachment}); err != nil {
			t.Fatalf("DEL: %v", err)
		}
	}
	if _, held := ag.Allocated()[ip.Address.Addr()]; held {
		t.Fatalf("%s still allocated after DEL", ip.Address)
	}
}

func TestConcurrentRepeatedAddGetsOneAddress(t *testing.T) {
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.21.0.0/24"))
	var wg sync.WaitGroup
	got := make([]netip.Prefix, 8)
	for i := range got {
		wg.Go(func() { got[i] = mustAdd(t, ag, addReq("same")).IPs[0].Address })
	}
	wg.Wait()
	for _, g := range got {
		if g != got[0] {
			t.Fatalf("concurrent ADDs of one attachment got %v", got)
		}
	}
	if n := len(ag.Allocated()); n != 1 {
		t.Fatalf("%d addresses allocated, want 1", n)
	}
}

func TestDualStack(t *testing.T) {
	ag := agenttest.Start(t, agenttest.Pool("v4", "10.22.0.0/24"), agenttest.Pool("v6", "fd00:22::/120"))
	req := addReq("c1")
	req.IPv4, req.IPv6 = true, true
	resp := mustAdd(t, ag, req)
	if len(resp.IPs) != 2 || !resp.IPs[0].Address.Addr().Is4() || resp.IPs[1].Address.Bits() != 128 || resp.IPs[1].Pool != "v6" {
		t.Fatalf("dual-stack ADD gave %+v", resp.IPs)
	}
}

func TestAnnotationsChoosePoolsPodOverNamespace(t *testing.T) {
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.23.0.0/24"), agenttest.Pool("pool-b", "10.23.1.0/24"), agenttest.Pool("pool-c", "10.23.2.0/24"))
	ag.Pods.SetNamespace("team", map[string]string{cnisvc.AnnotationIPv4Pools: `["pool-b"]`}, nil)
	ag.Pods.SetPod("team", "annotated", map[string]string{cnisvc.AnnotationIPv4Pools: `["pool-c"]`})

	for _, tc := range []struct {
		pod, cfgPool, want string
	}{
		{"annotated", "", "pool-c"},   // the pod's annotation
		{"plain", "", "pool-b"},       // the namespace's
		{"plain", "pool-a", "pool-b"}, // namespace beats the CNI config
	} {
		req := addReq(tc.pod + tc.cfgPool)
		req.PodNamespace, req.PodName = "team", tc.pod
		if tc.cfgPool != "" {
			req.IPv4Pools = []string{tc.cfgPool}
		}
		if got := mustAdd(t, ag, req).IPs[0].Pool; got != tc.want {
			t.Errorf("pod %s with config pool %q: pool %s, want %s", tc.pod, tc.cfgPool, got, tc.want)
		}
	}
	req := addReq("cfg")
	req.PodNamespace, req.IPv4Pools = "other", []string{"pool-a"}
	if got := mustAdd(t, ag, req).IPs[0].Pool; got != "pool-a" {
		t.Errorf("without annotations the CNI config's pool: got %s", got)
	}
}

func TestFixedAddress(t *testing.T) {
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.24.0.0/24"))
	ag.Pods.SetPod("db", "mysql-0", map[string]string{cnisvc.AnnotationIPAddrs: `["10.24.0.77"]`})
	ag.Pods.SetPod("db", "mysql-1", map[string]string{cnisvc.AnnotationIPAddrs: `["10.24.0.77"]`})
	ag.Pods.SetPod("db", "far", map[string]string{cnisvc.AnnotationIPAddrs: `["192.0.2.9"]`})
	req := func(pod string) *agentapi.AddRequest {
		r := addReq(pod)
		r.PodNamespace, r.PodName = "db", pod
		return r
	}
	if got := mustAdd(t, ag, req("mysql-0")).IPs[0].Address.String(); got != "10.24.0.77/32" {
		t.Fatalf("fixed address: got %s", got)
	}
	_, err := ag.Service.Add(context.Background(), req("mysql-1"))
	wantCode(t, err, agentapi.CodeAllocation, "10.24.0.77", "db/mysql-0", cnisvc.AnnotationIPAddrs)
	if !errors.Is(err, ipam.ErrAddressInUse) {
		t.Errorf("error %v does not wrap ipam.ErrAddressInUse", err)
	}
	_, err = ag.Service.Add(context.Background(), req("far"))
	wantCode(t, err, agentapi.CodeAllocation, "192.0.2.9", "outside every IP pool")
	if n := len(ag.Allocated()); n != 1 {
		t.Fatalf("%d addresses allocated after the failures, want 1", n)
	}
}

func TestBadAnnotationFailsAdd(t *testing.T) {
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.25.0.0/24"))
	ag.Pods.SetPod("default", "bad", map[string]string{cnisvc.AnnotationIPv4Pools: `pool-a`})
	r := addReq("bad")
	r.PodName = "bad"
	_, err := ag.Service.Add(context.Background(), r)
	wantCode(t, err, agentapi.CodeBadAnnotation, "annotation rhizome.io/ipv4-pools on the pod", "default/bad", "invalid character")
	if n := len(ag.Allocated()); n != 0 {
		t.Fatalf("%d addresses allocated after a bad annotation", n)
	}
}

func TestExhaustedPoolLeavesNothing(t *testing.T) {
	// A /30 pool with /30 blocks: network and broadcast are reserved, so
	// two addresses.
	p := &api.IPPool{ObjectMeta: api.ObjectMeta{Name: "tiny"}, Spec: api.IPPoolSpec{CIDR: "10.26.0.0/30", BlockSize: 30}}
	api.SetDefaults(p)
	ag := agenttest.Start(t, agenttest.Object(p))
	mustAdd(t, ag, addReq("c1"))
	mustAdd(t, ag, addReq("c2"))
	_, err := ag.Service.Add(context.Background(), addReq("c3"))
	wantCode(t, err, agentapi.CodeAllocation, "tiny", "node-a")
	if n := len(ag.Allocated()); n != 2 {
		t.Fatalf("%d addresses allocated, want 2", n)
	}
}

func TestGCReleasesWhatTheRuntimeDoesNotKnow(t *testing.T) {
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.27.0.0/24"))
	for _, c := range []string{"keep", "leak1", "leak2"} {
		mustAdd(t, ag, addReq(c))
	}
	other := addReq("other-net")
	other.Network = "macvlan-net"
	mustAdd(t, ag, other)

	resp, err := ag.Service.GC(context.Background(), &agentapi.GCRequest{Network: "k8s-pod-network",
		Valid: []agentapi.Attachment{{ContainerID: "keep", IfName: "eth0"}}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{cnisvc.HandleID("k8s-pod-network", "leak1", "eth0"), cnisvc.HandleID("k8s-pod-network", "leak2", "eth0")}
	if strings.Join(resp.Released, ",") != strings.Join(want, ",") {
		t.Fatalf("GC released %v, want %v", resp.Released, want)
	}
	held := map[string]bool{}
	for _, h := range ag.Allocated() {
		held[h] = true
	}
	if len(held) != 2 || !held[cnisvc.HandleID("k8s-pod-network", "keep", "eth0")] || !held[cnisvc.HandleID("macvlan-net", "other-net", "eth0")] {
		t.Fatalf("after GC the handles are %v, want keep and the other network's", held)
	}
}

func TestStatus(t *testing.T) {
	ag := agenttest.Start(t)
	st, err := ag.Service.Status(context.Background())
	if err != nil || st.Ready || !strings.Contains(st.Message, "no enabled IP pools") {
		t.Fatalf("status without pools: %+v, %v", st, err)
	}
	p := &api.IPPool{ObjectMeta: api.ObjectMeta{Name: "p"}, Spec: api.IPPoolSpec{CIDR: "10.28.0.0/24"}}
	api.SetDefaults(p)
	if _, _, err := datastoreResources(ag).Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	st, err = ag.Service.Status(context.Background())
	if err != nil || !st.Ready {
		t.Fatalf("status with a pool: %+v, %v", st, err)
	}
	ag.Etcd.Stop()
	st, err = ag.Service.Status(context.Background())
	if err != nil || st.Ready || !strings.Contains(st.Message, "etcd") {
		t.Fatalf("status with etcd down: %+v, %v", st, err)
	}
}

// readCounter is a counter around the real store (it fakes nothing): it
// counts the service's reads.
type readCounter struct {
	datastore.Store
	gets, lists atomic.Int64
	lastList    atomic.Value // string
}

func (c *readCounter) Get(ctx context.Context, key string) (datastore.KV, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key)
}

func (c *readCounter) List(ctx context.Context, prefix string) ([]datastore.KV, int64, error) {
	c.lists.Add(1)
	c.lastList.Store(prefix)
	return c.Store.List(ctx, prefix)
}

// GC of one node reads one listing of the network's handles, and no block
// (it used to list every block of the cluster):
// however many pods other nodes run, in the same network or not, it costs
// the same and releases none of theirs.
func TestGCReadsNoBlocks(t *testing.T) {
	counter := &readCounter{}
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.29.0.0/20"),
		agenttest.ServiceStore(func(s datastore.Store) datastore.Store { counter.Store = s; return counter }))
	ctx := context.Background()
	for _, c := range []string{"keep", "leak"} {
		mustAdd(t, ag, addReq(c))
	}
	// Other nodes' pods, in the same network, in blocks of their own.
	var others []string
	for n := range 8 {
		node := fmt.Sprintf("node-other-%d", n)
		alloc, err := ipam.NewAllocator(ctx, ag.Store, node)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			h := cnisvc.HandleID("k8s-pod-network", fmt.Sprintf("%s-c%d", node, i), "eth0")
			if _, err := alloc.AutoAssign(ctx, ipam.Request{Handle: h, Namespace: "default", Pod: h}); err != nil {
				t.Fatal(err)
			}
			others = append(others, h)
		}
		alloc.Close()
	}
	counter.gets.Store(0)
	counter.lists.Store(0)
	resp, err := ag.Service.GC(ctx, &agentapi.GCRequest{Network: "k8s-pod-network",
		Valid: []agentapi.Attachment{{ContainerID: "keep", IfName: "eth0"}}})
	if err != nil {
		t.Fatal(err)
	}
	if want := cnisvc.HandleID("k8s-pod-network", "leak", "eth0"); len(resp.Released) != 1 || resp.Released[0] != want {
		t.Fatalf("GC released %v, want %s", resp.Released, want)
	}
	if g, l := counter.gets.Load(), counter.lists.Load(); g != 0 || l != 1 {
		t.Fatalf("GC read %d keys and %d listings, want one listing and nothing else", g, l)
	}
	// The listing is an index of the network, not of the whole cluster.
	if p, _ := counter.lastList.Load().(string); !strings.HasSuffix(p, "/k8s-pod-network.") {
		t.Fatalf("GC listed %q, want the prefix of the network's handles (…/k8s-pod-network.)", p)
	}
	held := map[string]bool{}
	for _, h := range ag.Allocated() {
		held[h] = true
	}
	for _, h := range others {
		if !held[h] {
			t.Fatalf("GC of node-a released %s of another node", h)
		}
	}
}

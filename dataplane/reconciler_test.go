package dataplane

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/rhizome-net/rhizome/api"
)

// recEnv is a node namespace with an uplink eth0 (10.0.0.1/16,
// fd00::1/64) towards a peer namespace, a pod veth rzpod0, and a running
// reconciler that resyncs only once an hour: every sync in these tests
// comes from Set or from what the reconciler saw happen.
type recEnv struct {
	ns      netns.NsHandle
	h       *netlink.Handle
	uplink  Link
	pod     Link
	rec     *RouteReconciler
	routeNo int // next free /26 of routes()
}

func newRecEnv(t *testing.T) *recEnv {
	t.Helper()
	requireRoot(t)
	e := &recEnv{ns: newNS(t)}
	e.h = nsHandle(t, e.ns)
	up, _ := veth(t, e.ns, "eth0", newNS(t), "eth0", 1500)
	pod, _ := veth(t, e.ns, "rzpod0", newNS(t), "eth0", 1500)
	e.uplink = Link{Name: "eth0", Index: up.Attrs().Index}
	e.pod = Link{Name: "rzpod0", Index: pod.Attrs().Index}
	// Keep the IPv6 address when eth0 goes down, as a node's uplink does.
	must(t, WriteSysctl(e.ns, "net/ipv6/conf/eth0/keep_addr_on_down", "1"))
	for _, a := range []string{"10.0.0.1/16", "fd00::1/64"} {
		addr, err := netlink.ParseAddr(a)
		must(t, err)
		addr.Flags = unix.IFA_F_NODAD // usable at once
		must(t, e.h.AddrAdd(up, addr))
	}
	rec, err := NewRouteReconciler(e.ns, WithLogger(testLogger(t, "node")), WithResync(time.Hour))
	must(t, err)
	e.rec = rec
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := rec.Run(ctx); err != nil {
			t.Errorf("reconciler: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		rec.Close()
	})
	return e
}

// routes returns n direct routes to fresh /26 blocks via 10.0.0.2 and the
// other shapes rhizome installs, in both families: blackholes for own
// blocks, pod routes, an IPv6 route via a gateway.
func (e *recEnv) routes(n int) []Route {
	gw := netip.MustParseAddr("10.0.0.2")
	out := []Route{
		{Prefix: netip.MustParsePrefix("192.168.1.0/26"), Kind: Blackhole},
		{Prefix: netip.MustParsePrefix("fd10:1::/64"), Kind: Blackhole},
		{Prefix: netip.MustParsePrefix("192.168.1.2/32"), Kind: PodLink, Link: e.pod},
		{Prefix: netip.MustParsePrefix("fd10:1::2/128"), Kind: PodLink, Link: e.pod},
		{Prefix: netip.MustParsePrefix("fd10:2::/64"), Kind: Direct, Gateway: netip.MustParseAddr("fd00::2"), Link: e.uplink},
	}
	for range n {
		out = append(out, Route{Prefix: e.block(), Kind: Direct, Gateway: gw, Link: e.uplink})
	}
	return out
}

// block is the next unused /26 in 100.64.0.0/10.
func (e *recEnv) block() netip.Prefix {
	v := uint32(100)<<24 | uint32(64)<<16 | uint32(e.routeNo)<<6
	e.routeNo++
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 26)
}

// set hands routes to the reconciler and waits for the first sync that
// started after it, which it returns.
func (e *recEnv) set(t *testing.T, routes []Route) SyncResult {
	t.Helper()
	start := time.Now()
	e.rec.Set(routes)
	var res SyncResult
	if !eventually(2*time.Second, func() bool {
		res = e.rec.Status()
		return !res.Time.Before(start)
	}) {
		t.Fatalf("no sync within 2s of Set; last: %+v", e.rec.Status())
	}
	return res
}

// kernelMismatch compares the kernel's routes of protocol 94 with want:
// "" when every wanted route is there exactly once and nothing else is.
func (e *recEnv) kernelMismatch(t *testing.T, want []Route) string {
	t.Helper()
	dump, err := listMain(e.h)
	must(t, err)
	img := newImage(dump)
	for _, w := range want {
		have := img.owned[w.Prefix]
		if len(have) != 1 || !sameRoute(have[0], w) {
			return fmt.Sprintf("want %s, kernel has %d routes of ours for it: %v", w, len(have), have)
		}
		delete(img.owned, w.Prefix)
	}
	for p, ks := range img.owned {
		return fmt.Sprintf("unwanted route left for %s: %v", p, ks)
	}
	return ""
}

func (e *recEnv) waitKernel(t *testing.T, want []Route, within time.Duration) {
	t.Helper()
	if !eventually(within, func() bool { return e.kernelMismatch(t, want) == "" }) {
		t.Fatalf("kernel not repaired within %s: %s", within, e.kernelMismatch(t, want))
	}
}

// quiet waits for the echoes of the reconciler's own writes to pass, so
// the next sync starts from a settled image.
func quiet() { time.Sleep(300 * time.Millisecond) }

// writeCounter counts the kernel's notifications of routes of protocol 94
// in ns: every add, replace and delete anyone makes shows up there.
type writeCounter struct{ news, dels atomic.Int64 }

func countWrites(t *testing.T, ns netns.NsHandle) *writeCounter {
	t.Helper()
	c := &writeCounter{}
	ch := make(chan netlink.RouteUpdate, 4096)
	done := make(chan struct{})
	var stopping atomic.Bool
	must(t, netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace: &ns, ReceiveBufferSize: 8 << 20, ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			if !stopping.Load() { // closing the socket ends the read with an error
				t.Errorf("route monitor lost events: %v", err)
			}
		},
	}))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for u := range ch {
			if u.Protocol != api.RouteProtocol {
				continue
			}
			if u.Type == unix.RTM_NEWROUTE {
				c.news.Add(1)
			} else {
				c.dels.Add(1)
			}
		}
	}()
	t.Cleanup(func() {
		stopping.Store(true)
		close(done)
		wg.Wait()
	})
	return c
}

// TestPrivilegedIncrementalSyncWritesOnlyTheChange changes 1% of 1,000
// routes and checks that the sync after Set did not read the table and
// wrote exactly the changed routes, as the kernel's own notifications
// count them.
func TestPrivilegedIncrementalSyncWritesOnlyTheChange(t *testing.T) {
	e := newRecEnv(t)
	routes := e.routes(1000)
	e.rec.Set(routes)
	e.waitKernel(t, routes, time.Second)
	quiet()
	writes := countWrites(t, e.ns)

	// 1%: 4 gateways change, 3 routes go, 3 new ones come.
	other := netip.MustParseAddr("10.0.0.3")
	for i := 10; i < 14; i++ {
		routes[i].Gateway = other
	}
	routes = append(routes[:100], routes[103:]...)
	for range 3 {
		routes = append(routes, Route{Prefix: e.block(), Kind: Direct, Gateway: other, Link: e.uplink})
	}
	r := e.set(t, routes)
	if r.Full || r.Replaced != 4 || r.Deleted != 3 || r.Added != 3 || r.Owned != len(routes) || len(r.Errors) > 0 {
		t.Fatalf("1%% changed: %+v; want an incremental sync replacing 4, deleting 3, adding 3, %d in place", r, len(routes))
	}
	e.waitKernel(t, routes, time.Second)
	quiet()
	if n, d := writes.news.Load(), writes.dels.Load(); n != 7 || d != 3 {
		t.Errorf("kernel saw %d adds/replaces and %d deletes of rhizome routes, want 7 and 3", n, d)
	}

	// The same set again: nothing to write, nothing read.
	if r := e.set(t, routes); r.Full || r.Added+r.Replaced+r.Deleted != 0 || r.Owned != len(routes) {
		t.Errorf("no-op Set: %+v, want an incremental sync with no writes", r)
	}
	quiet()
	if n, d := writes.news.Load(), writes.dels.Load(); n != 7 || d != 3 {
		t.Errorf("no-op Set wrote: %d adds/replaces and %d deletes in all, want still 7 and 3", n, d)
	}
	// And a full resync agrees there is nothing to do.
	if r, err := e.rec.Sync(); err != nil || !r.Full || r.Added+r.Replaced+r.Deleted != 0 {
		t.Errorf("full resync after the incremental ones: %+v, %v; want no writes", r, err)
	}
}

// TestPrivilegedIncrementalSyncRepairsRouteDeletedMeanwhile deletes a
// route the reconciler has no reason to touch while a Set with changes
// is being synced (before, during or after the sync, as it falls): the
// deleted route must come back within a second all the same.
func TestPrivilegedIncrementalSyncRepairsRouteDeletedMeanwhile(t *testing.T) {
	e := newRecEnv(t)
	routes := e.routes(2000)
	e.rec.Set(routes)
	e.waitKernel(t, routes, time.Second)
	quiet()

	gws := []netip.Addr{netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.2")}
	for i := range 12 {
		for j := range 20 {
			routes[100+j].Gateway = gws[i%2]
		}
		victim := routes[1000+i]
		deleted := make(chan error, 1)
		go func() {
			time.Sleep(time.Duration(i%4) * 500 * time.Microsecond)
			deleted <- e.h.RouteDel(toNetlink(victim))
		}()
		e.rec.Set(routes)
		if err := <-deleted; err != nil {
			t.Fatalf("delete %s behind the reconciler: %v", victim, err)
		}
		e.waitKernel(t, routes, time.Second)
	}
	if r, err := e.rec.Sync(); err != nil || r.Added+r.Replaced+r.Deleted != 0 {
		t.Errorf("full resync after the repairs: %+v, %v; want no writes", r, err)
	}
}

// TestPrivilegedImageNeverHidesAWrite walks through the changes the
// image cannot see by itself and checks each ends with the wanted routes
// in the kernel.
func TestPrivilegedImageNeverHidesAWrite(t *testing.T) {
	e := newRecEnv(t)
	routes := e.routes(100)
	e.rec.Set(routes)
	e.waitKernel(t, routes, time.Second)

	t.Run("foreign route gone before its prefix is wanted", func(t *testing.T) {
		// The image knows a static route for the prefix; it leaves before
		// rhizome wants the prefix, and must not keep rhizome out.
		p := e.block()
		foreign := &netlink.Route{Dst: prefixToIPNet(p), Gw: net.ParseIP("10.0.0.9"), LinkIndex: e.uplink.Index, Protocol: unix.RTPROT_STATIC}
		must(t, e.h.RouteAdd(foreign))
		if _, err := e.rec.Sync(); err != nil { // the image now holds it
			t.Fatal(err)
		}
		must(t, e.h.RouteDel(foreign))
		routes = append(routes, Route{Prefix: p, Kind: Direct, Gateway: netip.MustParseAddr("10.0.0.2"), Link: e.uplink})
		e.rec.Set(routes)
		e.waitKernel(t, routes, time.Second)
	})

	t.Run("route of ours rewritten by hand", func(t *testing.T) {
		quiet()
		hand := toNetlink(routes[10])
		hand.Gw = net.ParseIP("10.0.0.7")
		must(t, e.h.RouteReplace(hand))
		e.waitKernel(t, routes, time.Second)
	})

	// A pod link with only an IPv4 /32 address and no IPv6: when it goes
	// down or loses the address, the kernel drops its routes without a
	// single route event; only the link or address event tells.
	podLink, _ := veth(t, e.ns, "rzpod1", newNS(t), "eth0", 1500)
	must(t, WriteSysctl(e.ns, "net/ipv6/conf/rzpod1/disable_ipv6", "1"))
	addAddr(t, e.ns, "rzpod1", "169.254.1.1/32")
	pod := Link{Name: "rzpod1", Index: podLink.Attrs().Index}
	routes = append(routes, Route{Prefix: netip.MustParsePrefix("192.168.9.2/32"), Kind: PodLink, Link: pod})
	e.rec.Set(routes)
	e.waitKernel(t, routes, time.Second)

	for _, dev := range []string{"rzpod1", "eth0"} {
		t.Run(dev+" down and up", func(t *testing.T) {
			quiet()
			l, err := e.h.LinkByName(dev)
			must(t, err)
			must(t, e.h.LinkSetDown(l))
			must(t, e.h.LinkSetUp(l))
			e.waitKernel(t, routes, time.Second)
		})
	}
	for dev, addr := range map[string]string{"rzpod1": "169.254.1.1/32", "eth0": "10.0.0.1/16"} {
		t.Run(dev+" loses its IPv4 address and gets it back", func(t *testing.T) {
			quiet()
			l, err := e.h.LinkByName(dev)
			must(t, err)
			a, err := netlink.ParseAddr(addr)
			must(t, err)
			must(t, e.h.AddrDel(l, a))
			must(t, e.h.AddrAdd(l, a))
			e.waitKernel(t, routes, time.Second)
		})
	}
}

// Package dpbench measures route programming by the dataplane reconciler
// against `ip -batch` doing the same install, in the same run, in throwaway
// network namespaces. `make bench` prints its report; the package's Go
// benchmarks use the same set-up.
package dpbench

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/rhizome-net/rhizome/dataplane"
)

// Result holds the figures of one Run.
type Result struct {
	Routes       int
	Changed      int
	Install      time.Duration // reconciler, from an empty table
	Resync       time.Duration // reconciler, Changed routes differ
	ResyncNoop   time.Duration // reconciler, nothing differs
	IPBatch      time.Duration // `ip -batch` installing the same routes
	InstallRatio float64       // Install / IPBatch
}

// String renders the result as the table `make bench` prints.
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-44s %12s\n", "route programming", "time")
	fmt.Fprintf(&b, "%-44s %12s\n", fmt.Sprintf("rhizome install %d routes from empty", r.Routes), r.Install.Round(time.Millisecond))
	fmt.Fprintf(&b, "%-44s %12s\n", fmt.Sprintf("ip -batch install %d routes (baseline)", r.Routes), r.IPBatch.Round(time.Millisecond))
	fmt.Fprintf(&b, "%-44s %11.2fx  (target <= 1.5x)\n", "ratio rhizome / ip -batch", r.InstallRatio)
	fmt.Fprintf(&b, "%-44s %12s\n", fmt.Sprintf("rhizome resync, %d of %d changed", r.Changed, r.Routes), r.Resync.Round(time.Microsecond*100))
	fmt.Fprintf(&b, "%-44s %12s\n", "rhizome resync, nothing changed", r.ResyncNoop.Round(time.Microsecond*100))
	return b.String()
}

// Env is an empty namespace with an uplink eth0 (10.0.0.1/16) towards a
// peer namespace, where routes via 10.0.0.2 can be installed.
type Env struct {
	NS, Peer netns.NsHandle
	Uplink   dataplane.Link
}

// NewEnv makes the namespaces; Close removes them.
func NewEnv() (*Env, error) {
	ns, err := newNS()
	if err != nil {
		return nil, err
	}
	peer, err := newNS()
	if err != nil {
		ns.Close()
		return nil, err
	}
	e := &Env{NS: ns, Peer: peer}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("netlink handle in bench namespace: %w", err)
	}
	defer h.Close()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(peer))}
	if err := h.LinkAdd(v); err != nil {
		e.Close()
		return nil, fmt.Errorf("bench veth: %w", err)
	}
	l, err := h.LinkByName("eth0")
	if err == nil {
		err = h.LinkSetUp(l)
	}
	if err == nil {
		a, _ := netlink.ParseAddr("10.0.0.1/16")
		err = h.AddrAdd(l, a)
	}
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("bench uplink: %w", err)
	}
	e.Uplink = dataplane.Link{Name: "eth0", Index: l.Attrs().Index}
	return e, nil
}

// Close removes the namespaces (and every route in them).
func (e *Env) Close() {
	e.NS.Close()
	e.Peer.Close()
}

// Routes returns n direct routes to /26 blocks in 100.64.0.0/10 via gw.
func (e *Env) Routes(n int, gw netip.Addr) []dataplane.Route {
	out := make([]dataplane.Route, n)
	base := netip.MustParseAddr("100.64.0.0").As4()
	for i := range n {
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(i)<<6
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		out[i] = dataplane.Route{Prefix: netip.PrefixFrom(a, 26), Kind: dataplane.Direct, Gateway: gw, Link: e.Uplink}
	}
	return out
}

// Run measures installing n routes from empty, a resync with changed
// routes differing, a resync with nothing to do, and `ip -batch`
// installing the same n routes into a second fresh namespace.
func Run(n, changed int) (Result, error) {
	res := Result{Routes: n, Changed: changed}
	gw1, gw2 := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")

	e, err := NewEnv()
	if err != nil {
		return res, err
	}
	defer e.Close()
	rec, err := dataplane.NewRouteReconciler(e.NS, dataplane.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		return res, err
	}
	defer rec.Close()
	routes := e.Routes(n, gw1)
	rec.Set(routes)
	if res.Install, err = timedSync(rec, n, n); err != nil {
		return res, err
	}
	for i := 0; i < changed; i++ {
		routes[i*(n/max(changed, 1))].Gateway = gw2
	}
	rec.Set(routes)
	if res.Resync, err = timedSync(rec, n, changed); err != nil {
		return res, err
	}
	if res.ResyncNoop, err = timedSync(rec, n, 0); err != nil {
		return res, err
	}

	res.IPBatch, err = ipBatch(n)
	if err != nil {
		return res, err
	}
	res.InstallRatio = float64(res.Install) / float64(res.IPBatch)
	return res, nil
}

func timedSync(rec *dataplane.RouteReconciler, n, wantWrites int) (time.Duration, error) {
	start := time.Now()
	r, err := rec.Sync()
	d := time.Since(start)
	if err != nil {
		return d, err
	}
	if len(r.Errors) > 0 {
		return d, fmt.Errorf("sync: %d errors, first: %w", len(r.Errors), r.Errors[0])
	}
	if r.Owned != n || r.Added+r.Replaced+r.Deleted != wantWrites {
		return d, fmt.Errorf("sync did %d writes with %d routes in place, want %d writes and %d routes", r.Added+r.Replaced+r.Deleted, r.Owned, wantWrites, n)
	}
	return d, nil
}

// ipBatch times `ip -batch` adding the same n routes in a fresh Env.
func ipBatch(n int) (time.Duration, error) {
	ip, err := exec.LookPath("ip")
	if err != nil {
		return 0, fmt.Errorf("the ip -batch baseline needs iproute2's ip: %w", err)
	}
	e, err := NewEnv()
	if err != nil {
		return 0, err
	}
	defer e.Close()
	f, err := os.CreateTemp("", "rhizome-ipbatch-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	for _, r := range e.Routes(n, netip.MustParseAddr("10.0.0.2")) {
		fmt.Fprintf(f, "route add %s via %s dev eth0 proto 94\n", r.Prefix, r.Gateway)
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	var d time.Duration
	err = inNS(e.NS, func() error {
		// The child inherits the namespace of the locked thread that forks it.
		cmd := exec.Command(ip, "-batch", f.Name())
		start := time.Now()
		out, err := cmd.CombinedOutput()
		d = time.Since(start)
		if err != nil {
			return fmt.Errorf("ip -batch: %w: %s", err, out)
		}
		return nil
	})
	return d, err
}

func newNS() (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), err
	}
	defer orig.Close()
	ns, err := netns.New()
	if serr := netns.Set(orig); serr != nil {
		return netns.None(), fmt.Errorf("return to the original namespace: %w", serr) // thread stays locked: retired
	}
	runtime.UnlockOSThread()
	if err != nil {
		return netns.None(), fmt.Errorf("new network namespace: %w", err)
	}
	return ns, nil
}

func inNS(ns netns.NsHandle, f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		return err // thread stays locked: retired
	}
	runtime.UnlockOSThread()
	return ferr
}

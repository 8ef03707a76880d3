// Package dpbench measures route programming by the dataplane reconciler
// against `ip -batch` doing the same install, in the same run, in throwaway
// network namespaces. `make bench` prints its report; the package's Go
// benchmarks use the same set-up.
package dpbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/rhizome-net/rhizome/dataplane"
)

// Result holds the figures of one Run.
type Result struct {
	Routes  int
	Changed int
	Install time.Duration // Set of Routes routes into an empty table, until synced
	IPBatch time.Duration // `ip -batch` installing the same routes
	// The rest are medians of several rounds.
	SetChanged time.Duration // Set with Changed routes differing: incremental sync, no dump
	SetNoop    time.Duration // Set with nothing differing: incremental sync, no dump
	Resync     time.Duration // full resync (dump of the table), nothing differing
	// InstallRatio is Install / IPBatch.
	InstallRatio float64
}

// String renders the result as the table `make bench` prints: each figure
// with its ratio to `ip -batch` installing the table and to rhizome's own
// install.
func (r Result) String() string {
	var b strings.Builder
	row := func(what string, d time.Duration, note string) {
		fmt.Fprintf(&b, "%-50s %10s %12.4fx %10.4fx%s\n", what, round(d), float64(d)/float64(r.IPBatch), float64(d)/float64(r.Install), note)
	}
	fmt.Fprintf(&b, "%-50s %10s %13s %11s\n", fmt.Sprintf("route programming, %d routes", r.Routes), "time", "/ ip -batch", "/ install")
	row("ip -batch install from empty (baseline)", r.IPBatch, "")
	row("rhizome install from empty (Set)", r.Install, "  (target <= 1.5x ip -batch)")
	row(fmt.Sprintf("rhizome Set, %d changed (incremental, no dump)", r.Changed), r.SetChanged, "")
	row("rhizome Set, nothing changed (incremental)", r.SetNoop, "")
	row("rhizome full resync (dump), nothing changed", r.Resync, "")
	return b.String()
}

// round keeps three significant digits or so: milliseconds for the
// install, tenths of microseconds for the small syncs.
func round(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(100 * time.Nanosecond)
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

// Run measures, with the reconciler running as the agent runs it (Run in
// the background, Set for every change): installing n routes into an
// empty table, a Set with changed routes differing, a Set with nothing
// differing, and a full resync (Sync, which dumps the table); then `ip
// -batch` installing the same n routes into a second fresh namespace. The
// last three are medians of several rounds.
// Every phase checks the writes it did and whether it read the table, so
// the figures are of the path they are named after.
func Run(n, changed int) (res Result, err error) {
	res = Result{Routes: n, Changed: changed}
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
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- rec.Run(ctx) }()
	defer func() {
		cancel()
		if rerr := <-stopped; err == nil {
			err = rerr
		}
	}()
	settle() // Run is up and watching

	routes := e.Routes(n, gw1)
	// The first sync after Set reads the (empty) table: nothing is known
	// of it yet.
	if res.Install, err = timedSet(rec, routes, phase{"install", n, n, true}); err != nil {
		return res, err
	}
	// The small syncs take milliseconds, where a busy machine's noise
	// shows: each is measured in several rounds and the median kept.
	var sets, noops, resyncs []time.Duration
	for round := range rounds {
		gw := gw2 // the changed routes flip between the two gateways
		if round%2 == 1 {
			gw = gw1
		}
		for i := 0; i < changed; i++ {
			routes[i*(n/max(changed, 1))].Gateway = gw
		}
		settle()
		d, err := timedSet(rec, routes, phase{"changed Set", n, changed, false})
		if err != nil {
			return res, err
		}
		sets = append(sets, d)
		settle()
		if d, err = timedSet(rec, routes, phase{"no-op Set", n, 0, false}); err != nil {
			return res, err
		}
		noops = append(noops, d)
		settle()
		start := time.Now()
		r, err := rec.Sync()
		resyncs = append(resyncs, time.Since(start))
		if err != nil {
			return res, err
		}
		if err := (phase{"full resync", n, 0, true}).check(r); err != nil {
			return res, err
		}
	}
	res.SetChanged, res.SetNoop, res.Resync = median(sets), median(noops), median(resyncs)

	res.IPBatch, err = ipBatch(n)
	if err != nil {
		return res, err
	}
	res.InstallRatio = float64(res.Install) / float64(res.IPBatch)
	return res, nil
}

// rounds is how often each small sync is measured.
const rounds = 5

func median(ds []time.Duration) time.Duration {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// settle lets the reconciler take in the kernel's notifications of its
// own writes before the next phase: each phase measures one sync, not
// the tail of the one before.
func settle() { time.Sleep(300 * time.Millisecond) }

// phase is what one measured sync must have done.
type phase struct {
	name          string
	owned, writes int
	full          bool // read the whole table
}

func (p phase) check(r dataplane.SyncResult) error {
	if len(r.Errors) > 0 {
		return fmt.Errorf("%s: %d errors, first: %w", p.name, len(r.Errors), r.Errors[0])
	}
	if w := r.Added + r.Replaced + r.Deleted; r.Owned != p.owned || w != p.writes || r.Full != p.full {
		return fmt.Errorf("%s: %d writes with %d routes in place (table read: %v), want %d writes and %d routes (table read: %v)",
			p.name, w, r.Owned, r.Full, p.writes, p.owned, p.full)
	}
	return nil
}

// timedSet calls Set and waits for the sync it causes, polling Status as
// a caller of the agent's status would; the figure is from Set to the
// sync's result being visible.
func timedSet(rec *dataplane.RouteReconciler, routes []dataplane.Route, p phase) (time.Duration, error) {
	start := time.Now()
	rec.Set(routes)
	for {
		r := rec.Status()
		d := time.Since(start)
		if !r.Time.Before(start) {
			return d, p.check(r)
		}
		if d > 10*time.Second {
			return d, fmt.Errorf("%s: no sync within %s of Set", p.name, d)
		}
		time.Sleep(20 * time.Microsecond)
	}
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

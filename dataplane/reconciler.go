package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteReconciler keeps the kernel routes of protocol api.RouteProtocol in
// one network namespace equal to the desired set: it adds what is missing,
// replaces what differs and deletes what is stale, and never touches a
// route of another protocol. It adopts the routes it finds (no flush), so
// a restarted agent does not disturb traffic.
//
// It keeps an image of the table (routeImage): a sync after Set writes
// only the difference between the desired routes and the image, which
// costs the change, not the table. The image is refilled by a dump at the
// periodic resync and whenever it may be wrong: after a write that did not
// go as predicted, or a route, link or address event it does not explain.
type RouteReconciler struct {
	reconcilerConfig
	ns netns.NsHandle
	h  *netlink.Handle

	mu       sync.Mutex // guards want, haveWant and last
	want     map[netip.Prefix]Route
	haveWant bool
	last     SyncResult

	syncMu sync.Mutex // one sync at a time; guards img
	// img is the reconciler's picture of the main table, nil when it may
	// be wrong (the next sync then dumps the table).
	img  *routeImage
	kick chan struct{}
}

// reconcilerConfig is what the options of the reconcilers set.
type reconcilerConfig struct {
	log    *slog.Logger
	resync time.Duration
	delay  time.Duration // from an event to the sync it causes
}

func newReconcilerConfig(opts []ReconcilerOption) reconcilerConfig {
	c := reconcilerConfig{log: slog.Default(), resync: time.Minute, delay: 20 * time.Millisecond}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// ReconcilerOption configures a RouteReconciler or a NeighborReconciler.
type ReconcilerOption func(*reconcilerConfig)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) ReconcilerOption { return func(c *reconcilerConfig) { c.log = l } }

// WithResync sets the period of the full resync Run does besides reacting
// to netlink events (default 60s).
func WithResync(d time.Duration) ReconcilerOption { return func(c *reconcilerConfig) { c.resync = d } }

// NewRouteReconciler opens a route-netlink handle in ns (netns.None() for
// the caller's namespace). Nothing is written until Set is called once:
// before that the reconciler cannot tell stale routes from routes BGP has
// not re-learned yet.
func NewRouteReconciler(ns netns.NsHandle, opts ...ReconcilerOption) (*RouteReconciler, error) {
	r := &RouteReconciler{
		reconcilerConfig: newReconcilerConfig(opts),
		ns:               ns,
		kick:             make(chan struct{}, 1),
	}
	h, err := newHandle(ns)
	if err != nil {
		return nil, err
	}
	r.h = h
	return r, nil
}

// Close releases the netlink handle. Routes stay in the kernel.
func (r *RouteReconciler) Close() { r.h.Close() }

// Set replaces the desired routes and asks Run for a sync, which writes
// only what differs from the image of the table (cheap enough to call on
// every change). The first call also means "the desired state is
// complete": only then are stale routes deleted.
func (r *RouteReconciler) Set(routes []Route) {
	want := make(map[netip.Prefix]Route, len(routes))
	for _, rt := range routes {
		want[rt.Prefix] = rt
	}
	r.mu.Lock()
	r.want, r.haveWant = want, true
	r.mu.Unlock()
	r.trigger()
}

func (r *RouteReconciler) trigger() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Conflict is a route of another protocol for a prefix rhizome wants. It is
// reported and left alone.
type Conflict struct {
	Prefix netip.Prefix
	Route  string
}

// SyncResult says what one Sync did and saw.
type SyncResult struct {
	Time                     time.Time
	Owned                    int // desired routes in place after the sync
	Added, Replaced, Deleted int
	Conflicts                []Conflict
	Errors                   []error
	// Full says the sync read the whole routing table; otherwise it
	// diffed against the reconciler's image of the table.
	Full bool
}

// Status returns the result of the last sync.
func (r *RouteReconciler) Status() SyncResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Sync makes the kernel match the desired routes once, reading the whole
// routing table first (the syncs Run does after a Set diff against the
// reconciler's image of the table instead). It returns an error when the
// routing table cannot be read; failures of single routes are in
// SyncResult.Errors (the next sync retries them).
func (r *RouteReconciler) Sync() (SyncResult, error) { return r.sync(true) }

// sync makes the kernel match the desired routes. With full, or when the
// image of the table may be wrong, it dumps the table first; otherwise it
// writes only what differs from the image.
func (r *RouteReconciler) sync(full bool) (SyncResult, error) {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	r.mu.Lock()
	want, ready := r.want, r.haveWant
	r.mu.Unlock()
	res := SyncResult{Time: time.Now()}
	if !ready {
		return res, nil
	}
	if full || r.img == nil {
		routes, err := listMain(r.h)
		if err != nil {
			r.img = nil
			return res, fmt.Errorf("route sync: %w", err)
		}
		r.img = newImage(routes)
		res.Full = true
	}

	plan := r.img.diff(want)
	res.Owned, res.Conflicts = plan.inPlace, plan.conflicts
	if !r.apply(plan, &res) {
		// A write went otherwise than the image predicted: read the table
		// again next time rather than trust it.
		r.img = nil
	}
	for _, c := range res.Conflicts {
		r.log.Warn("route of another protocol for a rhizome prefix left alone", "prefix", c.Prefix, "route", c.Route)
	}
	for _, e := range res.Errors {
		r.log.Error("route sync", "err", e)
	}
	if res.Added+res.Replaced+res.Deleted > 0 {
		r.log.Debug("routes synced", "added", res.Added, "replaced", res.Replaced, "deleted", res.Deleted, "full", res.Full)
	}
	r.mu.Lock()
	r.last = res
	r.mu.Unlock()
	return res, nil
}

// apply writes the plan, keeping the image current, and counts into res.
// It reports whether every write did what the image predicted.
func (r *RouteReconciler) apply(plan syncPlan, res *SyncResult) bool {
	asPredicted := true
	for _, k := range plan.dels {
		err := r.h.RouteDel(&k)
		if err != nil && !errors.Is(err, unix.ESRCH) {
			res.Errors = append(res.Errors, fmt.Errorf("delete stale route %s: %w", describe(k), err))
			asPredicted = false
			continue
		}
		if err != nil {
			asPredicted = false // already gone: someone else changed the table
		}
		r.img.remove(k)
		res.Deleted++
	}
	for _, c := range plan.replaces {
		if err := r.h.RouteReplace(c.new); err != nil {
			res.Errors = append(res.Errors, fmt.Errorf("replace route %s: %w", c.new, err))
			asPredicted = false
			continue
		}
		r.img.remove(c.old)
		r.img.add(*c.new)
		res.Replaced++
		res.Owned++
	}
	for _, nr := range plan.adds {
		// Add, not replace: if a foreign route for the prefix appeared since
		// the image was read, the kernel refuses (EEXIST) instead of us
		// overwriting it.
		if err := r.h.RouteAdd(nr); err != nil {
			asPredicted = false
			if isExist(err) {
				p, _ := ipNetToPrefix(nr.Dst)
				res.Conflicts = append(res.Conflicts, Conflict{Prefix: p, Route: "a route appeared during the sync"})
				continue
			}
			res.Errors = append(res.Errors, fmt.Errorf("add route %s: %w", nr, err))
			continue
		}
		r.img.add(*nr)
		res.Added++
		res.Owned++
	}
	return asPredicted
}

// Run syncs whenever Set is called, whenever netlink reports a change that
// touches a rhizome prefix (a route deleted by someone else, a foreign route
// added, a link going down or an address going away) and every resync
// period, until ctx ends. A sync after Set writes only what differs from
// the image of the table; the periodic resync, the first sync after
// (re)subscribing, a sync after a change the image does not explain, and
// every sync while events cannot be watched read the whole table.
func (r *RouteReconciler) Run(ctx context.Context) error {
	tick := time.NewTicker(r.resync)
	defer tick.Stop()
	soon := time.NewTimer(time.Hour)
	soon.Stop()
	defer soon.Stop()
	schedule := func() { soon.Reset(r.delay) }

	for {
		sub, err := r.subscribe()
		if err != nil {
			r.log.Error("subscribe to route and link changes; resyncing periodically only until it works", "err", err)
		}
		// Events may have been missed before (re)subscribing: sync in full.
		r.syncLogged(true)
		// Without events nothing tells when the image goes wrong.
		blind := sub == nil
		closed := false
		for !closed {
			var routes <-chan netlink.RouteUpdate
			var links <-chan netlink.LinkUpdate
			var addrs <-chan netlink.AddrUpdate
			if sub != nil {
				routes, links, addrs = sub.routes, sub.links, sub.addrs
			}
			select {
			case <-ctx.Done():
				sub.stop()
				return nil
			case <-r.kick:
				// Check the route events already queued first, so the
				// sync diffs against the freshest image there is.
				for len(routes) > 0 {
					if r.noteRoute(<-routes) {
						schedule()
					}
				}
				r.syncLogged(blind)
			case <-tick.C:
				r.syncLogged(true)
				if sub == nil {
					closed = true // try subscribing again
				}
			case <-soon.C:
				r.syncLogged(blind)
			case u, ok := <-routes:
				if !ok {
					closed = true
					break
				}
				if r.noteRoute(u) {
					schedule()
				}
			case u, ok := <-links:
				if !ok {
					closed = true
					break
				}
				r.noteLink(int(u.Index), u.Header.Type == unix.RTM_DELLINK || u.Flags&unix.IFF_UP == 0)
				schedule() // a link coming up may let a failed write succeed
			case u, ok := <-addrs:
				if !ok {
					closed = true
					break
				}
				r.noteLink(u.LinkIndex, !u.NewAddr)
				schedule()
			}
		}
		sub.stop()
	}
}

func (r *RouteReconciler) syncLogged(full bool) {
	if _, err := r.sync(full); err != nil {
		r.log.Error("route sync", "err", err)
	}
}

// noteRoute checks a route event against the image and drops the image
// when the event is not the echo of the reconciler's own write. It
// reports whether a sync is needed: the event changed a prefix we want.
func (r *RouteReconciler) noteRoute(u netlink.RouteUpdate) bool {
	if u.Table != unix.RT_TABLE_MAIN || u.Flags&unix.RTM_F_CLONED != 0 {
		return false
	}
	p, ok := routeKey(u.Route)
	if !ok {
		return false
	}
	r.syncMu.Lock()
	explained := r.img != nil && r.img.explains(u)
	if !explained && r.img != nil {
		r.log.Debug("route changed behind the reconciler; next sync reads the table", "prefix", p, "protocol", int(u.Protocol))
		r.img = nil
	}
	r.syncMu.Unlock()
	if explained {
		return false
	}
	r.mu.Lock()
	_, wanted := r.want[p]
	r.mu.Unlock()
	return wanted
}

// noteLink drops the image when a link that routes in it went down or
// lost an address (gone): the kernel then removes IPv4 routes through the
// link without a route event.
func (r *RouteReconciler) noteLink(index int, gone bool) {
	if !gone {
		return
	}
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	if r.img != nil && r.img.routesVia(index) {
		r.log.Debug("link with routes went down or lost an address; next sync reads the table", "link", index)
		r.img = nil
	}
}

// invalidate drops the image: events may have been lost.
func (r *RouteReconciler) invalidate() {
	r.syncMu.Lock()
	r.img = nil
	r.syncMu.Unlock()
}

type subscription struct {
	done   chan struct{}
	routes chan netlink.RouteUpdate
	links  chan netlink.LinkUpdate
	addrs  chan netlink.AddrUpdate
}

// subscribe opens route, link and address event sockets in the
// reconciler's namespace.
func (r *RouteReconciler) subscribe() (*subscription, error) {
	s := &subscription{
		done:   make(chan struct{}),
		routes: make(chan netlink.RouteUpdate, 1024),
		links:  make(chan netlink.LinkUpdate, 64),
		addrs:  make(chan netlink.AddrUpdate, 64),
	}
	ns := r.ns
	// An error on an event socket may mean a lost event (a message that
	// did not parse, a full buffer): the image can no longer be trusted.
	onErr := func(err error) {
		r.log.Debug("netlink event socket", "err", err)
		r.invalidate()
	}
	// Large buffers: installing thousands of routes floods the socket
	// with our own events. If it overflows anyway, the channel closes and
	// Run resubscribes and resyncs in full.
	if err := netlink.RouteSubscribeWithOptions(s.routes, s.done, netlink.RouteSubscribeOptions{
		Namespace: &ns, ErrorCallback: onErr, ReceiveBufferSize: 8 << 20, ReceiveBufferForceSize: true,
	}); err != nil {
		close(s.done)
		return nil, fmt.Errorf("subscribe to route changes: %w", err)
	}
	if err := netlink.LinkSubscribeWithOptions(s.links, s.done, netlink.LinkSubscribeOptions{
		Namespace: &ns, ErrorCallback: onErr,
	}); err != nil {
		close(s.links) // never opened: stop must not wait for them
		close(s.addrs)
		s.stop()
		return nil, fmt.Errorf("subscribe to link changes: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(s.addrs, s.done, netlink.AddrSubscribeOptions{
		Namespace: &ns, ErrorCallback: onErr,
	}); err != nil {
		close(s.addrs)
		s.stop()
		return nil, fmt.Errorf("subscribe to address changes: %w", err)
	}
	return s, nil
}

// stop closes the event sockets and drains the channels so the library's
// reader goroutines can finish.
func (s *subscription) stop() {
	if s == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	close(s.done)
	go func() {
		for range s.routes {
		}
	}()
	go func() {
		for range s.links {
		}
	}()
	go func() {
		for range s.addrs {
		}
	}()
}

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

	"github.com/rhizome-net/rhizome/api"
)

// RouteReconciler keeps the kernel routes of protocol api.RouteProtocol in
// one network namespace equal to the desired set: it adds what is missing,
// replaces what differs and deletes what is stale, and never touches a
// route of another protocol. It adopts the routes it finds (no flush), so
// a restarted agent does not disturb traffic.
type RouteReconciler struct {
	ns     netns.NsHandle
	h      *netlink.Handle
	log    *slog.Logger
	resync time.Duration
	delay  time.Duration

	mu       sync.Mutex // guards want, haveWant and last
	want     map[netip.Prefix]Route
	haveWant bool
	last     SyncResult

	syncMu sync.Mutex // one Sync at a time
	kick   chan struct{}
}

// ReconcilerOption configures a RouteReconciler.
type ReconcilerOption func(*RouteReconciler)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) ReconcilerOption { return func(r *RouteReconciler) { r.log = l } }

// WithResync sets the period of the full resync Run does besides reacting
// to netlink events (default 60s).
func WithResync(d time.Duration) ReconcilerOption { return func(r *RouteReconciler) { r.resync = d } }

// NewRouteReconciler opens a route-netlink handle in ns (netns.None() for
// the caller's namespace). Nothing is written until Set is called once:
// before that the reconciler cannot tell stale routes from routes BGP has
// not re-learned yet.
func NewRouteReconciler(ns netns.NsHandle, opts ...ReconcilerOption) (*RouteReconciler, error) {
	r := &RouteReconciler{
		ns:     ns,
		log:    slog.Default(),
		resync: time.Minute,
		delay:  20 * time.Millisecond,
		kick:   make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(r)
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

// Set replaces the desired routes and asks Run for a sync. The first call
// also means "the desired state is complete": only then are stale routes
// deleted.
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
}

// Status returns the result of the last sync.
func (r *RouteReconciler) Status() SyncResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Sync makes the kernel match the desired routes once. It returns an error
// when the routing table cannot be read; failures of single routes are in
// SyncResult.Errors (the next sync retries them).
func (r *RouteReconciler) Sync() (SyncResult, error) {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	r.mu.Lock()
	want, ready := r.want, r.haveWant
	r.mu.Unlock()
	res := SyncResult{Time: time.Now()}
	if !ready {
		return res, nil
	}

	routes, err := listMain(r.h)
	if err != nil {
		return res, fmt.Errorf("route sync: %w", err)
	}
	owned := make(map[netip.Prefix][]netlink.Route)
	foreign := make(map[netip.Prefix][]netlink.Route)
	for _, k := range routes {
		p, ok := routeKey(k)
		if !ok {
			continue
		}
		if k.Protocol == api.RouteProtocol {
			owned[p] = append(owned[p], k)
		} else if _, wanted := want[p]; wanted {
			foreign[p] = append(foreign[p], k)
		}
	}

	var adds, replaces []*netlink.Route
	var dels []netlink.Route
	for p, w := range want {
		have := owned[p]
		delete(owned, p)
		for _, f := range foreign[p] {
			res.Conflicts = append(res.Conflicts, Conflict{Prefix: p, Route: describe(f)})
		}
		matched := -1
		for i, k := range have {
			if matched < 0 && sameRoute(k, w) {
				matched = i
			}
		}
		for i, k := range have {
			if i != matched && (matched >= 0 || i > 0) {
				dels = append(dels, k) // duplicates of ours (another metric)
			}
		}
		switch {
		case matched >= 0:
			res.Owned++
		case len(have) > 0:
			replaces = append(replaces, toNetlink(w))
		case len(foreign[p]) == 0:
			adds = append(adds, toNetlink(w))
		default:
			// Someone else routes p: leave it, report it (above).
		}
	}
	for _, ks := range owned {
		for _, k := range ks {
			if isPodRoute(k) {
				continue
			}
			dels = append(dels, k)
		}
	}

	for _, k := range dels {
		if err := r.h.RouteDel(&k); err != nil && !errors.Is(err, unix.ESRCH) {
			res.Errors = append(res.Errors, fmt.Errorf("delete stale route %s: %w", describe(k), err))
			continue
		}
		res.Deleted++
	}
	for _, nr := range replaces {
		if err := r.h.RouteReplace(nr); err != nil {
			res.Errors = append(res.Errors, fmt.Errorf("replace route %s: %w", nr, err))
			continue
		}
		res.Replaced++
		res.Owned++
	}
	for _, nr := range adds {
		// Add, not replace: if a foreign route for the prefix appeared since
		// the dump, the kernel refuses (EEXIST) instead of us overwriting it.
		if err := r.h.RouteAdd(nr); err != nil {
			if isExist(err) {
				p, _ := ipNetToPrefix(nr.Dst)
				res.Conflicts = append(res.Conflicts, Conflict{Prefix: p, Route: "a route appeared during the sync"})
				continue
			}
			res.Errors = append(res.Errors, fmt.Errorf("add route %s: %w", nr, err))
			continue
		}
		res.Added++
		res.Owned++
	}
	for _, c := range res.Conflicts {
		r.log.Warn("route of another protocol for a rhizome prefix left alone", "prefix", c.Prefix, "route", c.Route)
	}
	for _, e := range res.Errors {
		r.log.Error("route sync", "err", e)
	}
	if res.Added+res.Replaced+res.Deleted > 0 {
		r.log.Debug("routes synced", "added", res.Added, "replaced", res.Replaced, "deleted", res.Deleted)
	}
	r.mu.Lock()
	r.last = res
	r.mu.Unlock()
	return res, nil
}

// Run syncs whenever Set is called, whenever netlink reports a change that
// touches a rhizome prefix (a route deleted by someone else, a foreign route
// added, a link going up or down) and every resync period, until ctx ends.
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
		r.syncLogged()
		closed := false
		for !closed {
			var routes <-chan netlink.RouteUpdate
			var links <-chan netlink.LinkUpdate
			if sub != nil {
				routes, links = sub.routes, sub.links
			}
			select {
			case <-ctx.Done():
				sub.stop()
				return nil
			case <-r.kick:
				r.syncLogged()
			case <-tick.C:
				r.syncLogged()
				if sub == nil {
					closed = true // try subscribing again
				}
			case <-soon.C:
				r.syncLogged()
			case u, ok := <-routes:
				if !ok {
					closed = true
					break
				}
				if r.concerns(u) {
					schedule()
				}
			case _, ok := <-links:
				if !ok {
					closed = true
					break
				}
				schedule()
			}
		}
		sub.stop()
	}
}

func (r *RouteReconciler) syncLogged() {
	if _, err := r.Sync(); err != nil {
		r.log.Error("route sync", "err", err)
	}
}

// concerns filters route events: our own writes produce events too, and
// only a change of a prefix we want needs a sync.
func (r *RouteReconciler) concerns(u netlink.RouteUpdate) bool {
	if u.Table != unix.RT_TABLE_MAIN {
		return false
	}
	p, ok := routeKey(u.Route)
	if !ok {
		return false
	}
	r.mu.Lock()
	_, wanted := r.want[p]
	r.mu.Unlock()
	if !wanted {
		return false
	}
	switch u.Type {
	case unix.RTM_DELROUTE:
		return true
	case unix.RTM_NEWROUTE:
		return u.Protocol != api.RouteProtocol
	}
	return false
}

type subscription struct {
	done   chan struct{}
	routes chan netlink.RouteUpdate
	links  chan netlink.LinkUpdate
}

// subscribe opens route and link event sockets in the reconciler's
// namespace.
func (r *RouteReconciler) subscribe() (*subscription, error) {
	s := &subscription{
		done:   make(chan struct{}),
		routes: make(chan netlink.RouteUpdate, 1024),
		links:  make(chan netlink.LinkUpdate, 64),
	}
	ns := r.ns
	onErr := func(err error) { r.log.Debug("netlink event socket", "err", err) }
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
		close(s.done)
		go func() {
			for range s.routes { // let the route reader finish
			}
		}()
		return nil, fmt.Errorf("subscribe to link changes: %w", err)
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
}

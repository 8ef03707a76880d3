package routing

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/rhizome-net/rhizome/bgp"
	"github.com/rhizome-net/rhizome/dataplane"
)

const (
	// routeSettle bounds how long the node waits for BGP to relearn the
	// routes, after its start or a change of its sessions, before kernel
	// routes nobody advertises any more are deleted.
	routeSettle = 30 * time.Second
	// quiet is how long nothing may change (no route, no session state)
	// before BGP counts as settled.
	quiet = time.Second
)

// Learned is the routes BGP learned, as a route source for the kernel
// part, with the hold while BGP settles: after the start, or after a
// change of the sessions, BGP counts as settled once every wanted session
// is established and nothing changed for a second, or after routeSettle
// at the latest. Until BGP first settled, the kernel part programs no
// route; while it settles again, the routes handed out before stay in
// what Routes returns. So neither a restart nor a switch from a mesh to
// route reflectors deletes routes that peers are about to send again.
type Learned struct {
	now     func() time.Time
	changed chan struct{}

	mu         sync.Mutex
	learned    map[netip.Prefix]dataplane.LearnedRoute
	kept       map[netip.Prefix]dataplane.LearnedRoute // last handed out
	peerStates map[netip.Addr]string
	wantPeers  map[netip.Addr]bgp.Peer // nil until the first Sessions
	bgpErr     string
	settleFrom time.Time // the start, or the last change of sessions
	lastChange time.Time // of a route, a session state or the sessions
	settled    bool      // BGP settled at least once
}

// NewLearned returns the source of a speaker that starts now; now is the
// clock (time.Now outside tests).
func NewLearned(now func() time.Time) *Learned {
	t := now()
	return &Learned{now: now, changed: make(chan struct{}, 1), learned: map[netip.Prefix]dataplane.LearnedRoute{},
		kept: map[netip.Prefix]dataplane.LearnedRoute{}, peerStates: map[netip.Addr]string{}, settleFrom: t}
}

// Route applies a route event of the speaker.
func (l *Learned) Route(e bgp.RouteEvent) {
	l.mu.Lock()
	if e.Withdrawn {
		delete(l.learned, e.Prefix)
	} else {
		l.learned[e.Prefix] = dataplane.LearnedRoute{Prefix: e.Prefix, NextHop: e.NextHop}
	}
	l.lastChange = l.now()
	l.mu.Unlock()
	l.kick()
}

// Peer applies a session state event of the speaker.
func (l *Learned) Peer(e bgp.PeerEvent) {
	l.mu.Lock()
	l.peerStates[e.Address] = e.State
	l.lastChange = l.now()
	l.mu.Unlock()
	l.kick()
}

// Sessions tells the source which sessions the speaker is about to run.
// Sessions added, removed or re-created withdraw routes for a moment that
// other sessions bring back: a change after BGP first settled starts a new
// hold, and counts as a change itself (at least a quiet second, also when
// only a session went away and no event follows). It returns whether a
// hold started.
func (l *Learned) Sessions(want []bgp.Peer) bool {
	w := make(map[netip.Addr]bgp.Peer, len(want))
	for _, p := range want {
		w[p.Address] = p
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	hold := l.wantPeers != nil && !maps.Equal(w, l.wantPeers) && l.settled
	l.wantPeers = w
	if hold {
		l.settleFrom, l.lastChange = l.now(), l.now()
	}
	return hold
}

// SetError records why the speaker could not be configured ("" when it
// was): BGP does not settle while it fails, until routeSettle passed.
func (l *Learned) SetError(msg string) {
	l.mu.Lock()
	l.bgpErr = msg
	l.mu.Unlock()
}

// Routes returns the routes for the kernel and whether BGP has settled.
// While it settles after a change of sessions, the routes handed out
// before stay among them.
func (l *Learned) Routes() ([]dataplane.LearnedRoute, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	settled := l.settledLocked()
	out := maps.Clone(l.learned)
	if !settled {
		for p, r := range l.kept {
			if _, ok := out[p]; !ok {
				out[p] = r
			}
		}
	}
	l.kept = out
	if settled {
		l.settled = true
	}
	return slices.SortedFunc(maps.Values(out), func(a, b dataplane.LearnedRoute) int {
		return a.Prefix.Addr().Compare(b.Prefix.Addr())*2 + cmpInt(a.Prefix.Bits(), b.Prefix.Bits())
	}), settled
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (l *Learned) settledLocked() bool {
	now := l.now()
	if now.Sub(l.settleFrom) > routeSettle {
		return true
	}
	// Sessions not known yet (the speaker was not configured once): not
	// settled, or a restart would delete every learned route at once.
	return l.wantPeers != nil && l.bgpErr == "" && l.establishedLocked() == len(l.wantPeers) && now.Sub(l.lastChange) > quiet
}

// Changed receives after route and session events.
func (l *Learned) Changed() <-chan struct{} { return l.changed }

func (l *Learned) kick() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// Status is what the node's status reports of BGP.
type Status struct {
	Learned, PeersUp, Peers int
	Error                   string
}

// Status counts learned routes and established sessions.
func (l *Learned) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Status{Learned: len(l.learned), PeersUp: l.establishedLocked(), Peers: len(l.wantPeers), Error: l.bgpErr}
}

// establishedLocked counts the wanted sessions that are established (the
// states of removed peers linger in peerStates). Call it with mu held.
func (l *Learned) establishedLocked() int {
	up := 0
	for addr := range l.wantPeers {
		if l.peerStates[addr] == bgp.StateEstablished {
			up++
		}
	}
	return up
}

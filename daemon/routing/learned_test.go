package routing

import (
	"net/netip"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/bgp"
	"github.com/rhizome-net/rhizome/dataplane"
)

// clock is the test's time: it moves only when told.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)} }
func pfx(s string) netip.Prefix          { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr           { return netip.MustParseAddr(s) }
func peer(a string) bgp.Peer             { return bgp.Peer{Address: addr(a)} }
func learn(l *Learned, p, nh string)     { l.Route(bgp.RouteEvent{Prefix: pfx(p), NextHop: addr(nh)}) }
func withdraw(l *Learned, p string)      { l.Route(bgp.RouteEvent{Prefix: pfx(p), Withdrawn: true}) }
func state(l *Learned, a, st string)     { l.Peer(bgp.PeerEvent{Address: addr(a), State: st}) }
func up(l *Learned, a string)            { state(l, a, bgp.StateEstablished) }
func prefixes(r []dataplane.LearnedRoute) []string {
	var out []string
	for _, x := range r {
		out = append(out, x.Prefix.String())
	}
	return out
}

func want(t *testing.T, l *Learned, settled bool, routes ...string) {
	t.Helper()
	got, ok := l.Routes()
	g := prefixes(got)
	if ok != settled || len(g) != len(routes) {
		t.Fatalf("routes %v settled %v; want %v settled %v", g, ok, routes, settled)
	}
	for i := range g {
		if g[i] != routes[i] {
			t.Fatalf("routes %v; want %v", g, routes)
		}
	}
}

// After a start, nothing counts as settled until the speaker was
// configured, every session is up and BGP was quiet for a second: the
// kernel part programs no route before (a restart deletes nothing).
func TestStartSettlesWhenSessionsUpAndQuiet(t *testing.T) {
	c := newClock()
	l := NewLearned(c.now)
	c.advance(5 * time.Second)
	want(t, l, false) // sessions not known yet
	l.Sessions([]bgp.Peer{peer("10.0.0.2"), peer("10.0.0.3")})
	up(l, "10.0.0.2")
	learn(l, "10.244.1.0/26", "10.0.0.2")
	c.advance(3 * time.Second)
	want(t, l, false, "10.244.1.0/26") // one session still down
	up(l, "10.0.0.3")
	learn(l, "10.244.2.0/26", "10.0.0.3")
	c.advance(500 * time.Millisecond)
	want(t, l, false, "10.244.1.0/26", "10.244.2.0/26") // not quiet for a second yet
	c.advance(600 * time.Millisecond)
	want(t, l, true, "10.244.1.0/26", "10.244.2.0/26")
}

// A session that never comes up does not hold the routes forever: 30 s
// after the start they are programmed anyway.
func TestSettleCappedAt30Seconds(t *testing.T) {
	c := newClock()
	l := NewLearned(c.now)
	l.Sessions([]bgp.Peer{peer("10.0.0.2"), peer("10.0.0.9")})
	up(l, "10.0.0.2")
	learn(l, "10.244.1.0/26", "10.0.0.2")
	c.advance(29 * time.Second)
	want(t, l, false, "10.244.1.0/26")
	c.advance(2 * time.Second)
	want(t, l, true, "10.244.1.0/26")
}

// While the speaker cannot be configured (a bad password source, a port
// taken), BGP does not count as settled before the cap.
func TestBGPErrorBlocksSettling(t *testing.T) {
	c := newClock()
	l := NewLearned(c.now)
	l.Sessions(nil)
	l.SetError("listen on port 179: address in use")
	c.advance(10 * time.Second)
	want(t, l, false)
	if st := l.Status(); st.Error == "" {
		t.Fatal("the status does not show the BGP error")
	}
	l.SetError("")
	want(t, l, true)
}

// A change of sessions after BGP settled (a mesh turned into route
// reflector clients) keeps the routes handed out before until BGP settles
// again, though the old sessions withdraw them meanwhile.
func TestSessionChangeKeepsRoutesUntilSettled(t *testing.T) {
	c := newClock()
	l := NewLearned(c.now)
	l.Sessions([]bgp.Peer{peer("10.0.0.2"), peer("10.0.0.3")})
	up(l, "10.0.0.2")
	up(l, "10.0.0.3")
	learn(l, "10.244.1.0/26", "10.0.0.2")
	learn(l, "10.244.2.0/26", "10.0.0.3")
	c.advance(2 * time.Second)
	want(t, l, true, "10.244.1.0/26", "10.244.2.0/26")

	// Now peer with a route reflector only.
	if !l.Sessions([]bgp.Peer{peer("10.0.0.100")}) {
		t.Fatal("a change of sessions after BGP settled started no hold")
	}
	withdraw(l, "10.244.1.0/26")
	withdraw(l, "10.244.2.0/26")
	state(l, "10.0.0.2", "idle")
	c.advance(5 * time.Second)
	want(t, l, false, "10.244.1.0/26", "10.244.2.0/26") // kept: the reflector is not up yet
	up(l, "10.0.0.100")
	learn(l, "10.244.2.0/26", "10.0.0.3")
	c.advance(500 * time.Millisecond)
	want(t, l, false, "10.244.1.0/26", "10.244.2.0/26")
	c.advance(600 * time.Millisecond)
	// Settled: what nobody advertises any more goes.
	want(t, l, true, "10.244.2.0/26")
}

// A session that only goes away, with no event after it, still counts as
// a change: the routes stay for at least a quiet second.
func TestSessionRemovedAloneHoldsAQuietSecond(t *testing.T) {
	c := newClock()
	l := NewLearned(c.now)
	l.Sessions([]bgp.Peer{peer("10.0.0.2")})
	up(l, "10.0.0.2")
	learn(l, "10.244.1.0/26", "10.0.0.2")
	c.advance(2 * time.Second)
	want(t, l, true, "10.244.1.0/26")
	l.Sessions(nil)
	withdraw(l, "10.244.1.0/26")
	want(t, l, false, "10.244.1.0/26")
	c.advance(1100 * time.Millisecond)
	want(t, l, true)
}

// The same sessions again (a resync with nothing new) start no hold, and
// a withdrawal outside a hold takes effect at once.
func TestNoHoldWithoutSessionChange(t *testing.T) {
	c := newClock()
	l := NewLearned(c.now)
	l.Sessions([]bgp.Peer{peer("10.0.0.2")})
	up(l, "10.0.0.2")
	learn(l, "10.244.1.0/26", "10.0.0.2")
	learn(l, "10.244.3.0/26", "10.0.0.2")
	c.advance(2 * time.Second)
	want(t, l, true, "10.244.1.0/26", "10.244.3.0/26")
	if l.Sessions([]bgp.Peer{peer("10.0.0.2")}) {
		t.Fatal("unchanged sessions started a hold")
	}
	withdraw(l, "10.244.3.0/26")
	c.advance(2 * time.Second)
	want(t, l, true, "10.244.1.0/26")
}

// Route and session events wake the kernel part.
func TestChangedOnEvents(t *testing.T) {
	l := NewLearned(newClock().now)
	learn(l, "10.244.1.0/26", "10.0.0.2")
	select {
	case <-l.Changed():
	default:
		t.Fatal("no change signalled after a route event")
	}
	up(l, "10.0.0.2")
	select {
	case <-l.Changed():
	default:
		t.Fatal("no change signalled after a session event")
	}
}

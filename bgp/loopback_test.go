package bgp_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/bgp"
)

// freePort returns a TCP port free on 127.0.0.1 at the time of asking.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func freePortB(b *testing.B) int { return freePort(b) }

// quietLogger drops the speakers' info logs (benchmarks run hundreds).
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn + 1}))
}

// routeLog collects route events as a speaker's owner would.
type routeLog struct {
	mu     sync.Mutex
	routes map[netip.Prefix]bgp.RouteEvent
}

func (l *routeLog) add(e bgp.RouteEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e.Withdrawn {
		delete(l.routes, e.Prefix)
	} else {
		l.routes[e.Prefix] = e
	}
}

func (l *routeLog) get(p netip.Prefix) (bgp.RouteEvent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.routes[p]
	return r, ok
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSpeakerLoopback runs two speakers in this process on 127.0.0.1 and
// 127.0.0.2 (no root needed): routes, status and metrics.
func TestSpeakerLoopback(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a, b := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	reg := prometheus.NewRegistry()
	logB := &routeLog{routes: map[netip.Prefix]bgp.RouteEvent{}}
	var peerEvents []bgp.PeerEvent
	var pmu sync.Mutex
	spA, err := bgp.Start(ctx, bgp.Config{RouterID: a, AS: 64512, ListenPort: port, ConnectRetry: time.Second}, bgp.WithRegisterer(reg),
		bgp.OnPeer(func(e bgp.PeerEvent) { pmu.Lock(); peerEvents = append(peerEvents, e); pmu.Unlock() }))
	if err != nil {
		t.Fatal(err)
	}
	defer spA.Shutdown(ctx)
	spB, err := bgp.Start(ctx, bgp.Config{RouterID: b, AS: 64512, ListenPort: port, ConnectRetry: time.Second}, bgp.OnRoute(logB.add))
	if err != nil {
		t.Fatal(err)
	}
	defer spB.Shutdown(ctx)

	blk := netip.MustParsePrefix("10.244.7.0/26")
	host := netip.MustParsePrefix("10.244.9.9/32")
	v6 := netip.MustParsePrefix("fd10::/122")
	if err := spA.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: blk, NextHop: a}, {Prefix: host, NextHop: a},
		{Prefix: v6, NextHop: netip.MustParseAddr("fd00::1")}}); err != nil {
		t.Fatal(err)
	}
	peer := func(to, from netip.Addr, passive bool) bgp.Peer {
		return bgp.Peer{Address: to, Port: uint16(port), AS: 64512, LocalAS: 64512, Type: bgp.TypeMesh, Passive: passive,
			SourceAddress: from, GracefulRestartSeconds: 120}
	}
	if err := spA.SetPeers(ctx, []bgp.Peer{peer(b, a, false)}); err != nil {
		t.Fatal(err)
	}
	if err := spB.SetPeers(ctx, []bgp.Peer{peer(a, b, true)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "B learns A's block and host route", func() bool {
		r1, ok1 := logB.get(blk)
		r2, ok2 := logB.get(host)
		return ok1 && ok2 && r1.NextHop == a && r2.NextHop == a && r1.Peer == a
	})
	// The IPv6 block is not sent on the IPv4 session: IPv6 prefixes travel
	// on sessions between the nodes' IPv6 addresses (TestSpeakerLoopbackIPv6).
	time.Sleep(500 * time.Millisecond)
	if r, ok := logB.get(v6); ok {
		t.Errorf("B learned the IPv6 block %v over the IPv4 session", r)
	}
	st, err := spA.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].State != bgp.StateEstablished || st[0].PrefixesAdvertised != 2 || st[0].PrefixesReceived != 0 || st[0].Type != bgp.TypeMesh {
		t.Errorf("A's status = %+v, want an established mesh session advertising the 2 IPv4 prefixes", st)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP rhizome_bgp_prefixes_advertised Prefixes advertised to a BGP peer.
# TYPE rhizome_bgp_prefixes_advertised gauge
rhizome_bgp_prefixes_advertised{peer="127.0.0.2",type="node-to-node mesh"} 2
`), "rhizome_bgp_prefixes_advertised"); err != nil {
		t.Error(err)
	}
	if n := testutil.ToFloat64(gauge(t, reg, "rhizome_bgp_peers", "Established")); n != 1 {
		t.Errorf("rhizome_bgp_peers{state=Established} = %v, want 1", n)
	}

	// A peer whose labels change (mesh to a BGPPeer's node-specific session
	// with the same settings) keeps its session.
	relabel := peer(b, a, false)
	relabel.Type, relabel.BGPPeer = bgp.TypeNode, "tor"
	if err := spA.SetPeers(ctx, []bgp.Peer{relabel}); err != nil {
		t.Fatal(err)
	}
	st2, _ := spA.Status(ctx)
	if len(st2) != 1 || st2[0].Type != bgp.TypeNode || st2[0].State != bgp.StateEstablished || !st2[0].Since.Equal(st[0].Since) {
		t.Errorf("after relabelling the peer: %+v, want the same session (since %v) shown as node specific", st2, st[0].Since)
	}

	// Withdraw the host route; change nothing else.
	if err := spA.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: blk, NextHop: a}, {Prefix: v6, NextHop: netip.MustParseAddr("fd00::1")}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "B sees the host route withdrawn", func() bool { _, ok := logB.get(host); return !ok })
	if _, ok := logB.get(blk); !ok {
		t.Error("withdrawing one prefix withdrew the block too")
	}

	// B goes away with a Cease: A counts a flap.
	if err := spB.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "A sees the session down", func() bool {
		st, _ := spA.Status(ctx)
		return len(st) == 1 && st[0].State != bgp.StateEstablished
	})
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP rhizome_bgp_session_flaps_total Times an established BGP session went down.
# TYPE rhizome_bgp_session_flaps_total counter
rhizome_bgp_session_flaps_total{peer="127.0.0.2"} 1
`), "rhizome_bgp_session_flaps_total"); err != nil {
		t.Error(err)
	}
	pmu.Lock()
	defer pmu.Unlock()
	sawUp := false
	for _, e := range peerEvents {
		sawUp = sawUp || (e.Address == b && e.State == bgp.StateEstablished)
	}
	if !sawUp {
		t.Errorf("no Established peer event: %v", peerEvents)
	}
}

// TestSpeakerNextHopMode: towards a peer with next hop mode Self, a path's
// third-party next hop becomes the speaker's address; towards an Auto iBGP
// peer it is kept. (Fresh sessions only: re-establishing a session while
// its routes are being reported trips a data race inside GoBGP v3.37.0,
// osrg/gobgp#2705, which -race would report here.)
func TestSpeakerNextHopMode(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	a, b, c := netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4"), netip.MustParseAddr("127.0.0.5")
	other := netip.MustParsePrefix("10.250.0.0/24")
	logs := map[netip.Addr]*routeLog{}
	var sps []*bgp.Speaker
	for _, addr := range []netip.Addr{a, b, c} {
		l := &routeLog{routes: map[netip.Prefix]bgp.RouteEvent{}}
		logs[addr] = l
		sp, err := bgp.Start(ctx, bgp.Config{RouterID: addr, AS: 64512, ListenPort: port, ConnectRetry: time.Second}, bgp.OnRoute(l.add), bgp.WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		defer sp.Shutdown(ctx)
		sps = append(sps, sp)
	}
	mk := func(to, from netip.Addr, passive bool, mode api.NextHopMode) bgp.Peer {
		return bgp.Peer{Address: to, Port: uint16(port), AS: 64512, LocalAS: 64512, Type: bgp.TypeNode, Passive: passive, SourceAddress: from, NextHopMode: mode}
	}
	if err := sps[0].SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: other, NextHop: netip.MustParseAddr("127.0.0.9")}}); err != nil {
		t.Fatal(err)
	}
	for _, set := range []struct {
		sp    *bgp.Speaker
		peers []bgp.Peer
	}{
		{sps[0], []bgp.Peer{mk(b, a, false, api.NextHopSelf), mk(c, a, false, api.NextHopAuto)}},
		{sps[1], []bgp.Peer{mk(a, b, true, api.NextHopAuto)}},
		{sps[2], []bgp.Peer{mk(a, c, true, api.NextHopAuto)}},
	} {
		if err := set.sp.SetPeers(ctx, set.peers); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, "B sees next hop self, C the original next hop", func() bool {
		rb, okb := logs[b].get(other)
		rc, okc := logs[c].get(other)
		return okb && okc && rb.NextHop == a && rc.NextHop.String() == "127.0.0.9"
	})
}

// gauge finds one sample of a gathered metric family by its first label.
func gauge(t *testing.T, reg *prometheus.Registry, name, label string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == label {
				g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "x"})
				g.Set(m.GetGauge().GetValue())
				return g
			}
		}
	}
	t.Fatalf("no %s{%s}", name, label)
	return nil
}

func TestStartRefusesBadConfig(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		cfg  bgp.Config
		want string
	}{
		{bgp.Config{RouterID: netip.MustParseAddr("fd00::1"), AS: 1}, "not an IPv4 address"},
		{bgp.Config{RouterID: netip.MustParseAddr("127.0.0.1")}, "AS 0"},
		{bgp.Config{RouterID: netip.MustParseAddr("127.0.0.1"), AS: 1, ListenPort: 70000}, "out of range"},
	} {
		if _, err := bgp.Start(ctx, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Start(%+v): err = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// freePort6 returns a TCP port free on ::1 at the time of asking.
func freePort6(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("IPv6 loopback: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestSpeakerLoopbackIPv6 runs two speakers on ::1, each listening on a
// port of its own (no root needed), with an IPv6 session between them:
// IPv6 blocks and host routes flow both ways with IPv6 next hops, IPv4
// prefixes stay off the IPv6 session, withdrawals follow, and the status
// lists the IPv6 peer.
func TestSpeakerLoopbackIPv6(t *testing.T) {
	ctx := context.Background()
	lo := netip.MustParseAddr("::1")
	portA, portB := freePort6(t), freePort6(t)
	logA := &routeLog{routes: map[netip.Prefix]bgp.RouteEvent{}}
	logB := &routeLog{routes: map[netip.Prefix]bgp.RouteEvent{}}
	start := func(id string, port int, l *routeLog) *bgp.Speaker {
		sp, err := bgp.Start(ctx, bgp.Config{RouterID: netip.MustParseAddr(id), AS: 64512, ListenAddresses: []netip.Addr{lo},
			ListenPort: port, ConnectRetry: time.Second}, bgp.OnRoute(l.add), bgp.WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sp.Shutdown(ctx) })
		return sp
	}
	spA, spB := start("127.0.0.11", portA, logA), start("127.0.0.12", portB, logB)

	nhA, nhB := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	blkA, hostA := netip.MustParsePrefix("fd10::/122"), netip.MustParsePrefix("fd11::5/128")
	blkB := netip.MustParsePrefix("fd10::40/122")
	v4 := netip.MustParsePrefix("10.244.7.0/26")
	if err := spA.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: blkA, NextHop: nhA}, {Prefix: hostA, NextHop: nhA},
		{Prefix: v4, NextHop: netip.MustParseAddr("127.0.0.11")}}); err != nil {
		t.Fatal(err)
	}
	if err := spB.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: blkB, NextHop: nhB}}); err != nil {
		t.Fatal(err)
	}
	peer := func(port int, passive bool) bgp.Peer {
		return bgp.Peer{Address: lo, Port: uint16(port), AS: 64512, LocalAS: 64512, Type: bgp.TypeMesh, Passive: passive,
			SourceAddress: lo, GracefulRestartSeconds: 120}
	}
	if err := spA.SetPeers(ctx, []bgp.Peer{peer(portB, false)}); err != nil {
		t.Fatal(err)
	}
	if err := spB.SetPeers(ctx, []bgp.Peer{peer(portA, true)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "B learns A's IPv6 block and host route via fd00::1, A learns B's block via fd00::2", func() bool {
		r1, ok1 := logB.get(blkA)
		r2, ok2 := logB.get(hostA)
		r3, ok3 := logA.get(blkB)
		return ok1 && ok2 && ok3 && r1.NextHop == nhA && r2.NextHop == nhA && r1.Peer == lo && r3.NextHop == nhB
	})
	time.Sleep(500 * time.Millisecond)
	if r, ok := logB.get(v4); ok {
		t.Errorf("B learned the IPv4 block %v over the IPv6 session", r)
	}
	st, err := spA.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].Address != lo || st[0].Port != uint16(portB) || st[0].State != bgp.StateEstablished ||
		st[0].PrefixesAdvertised != 2 || st[0].PrefixesReceived != 1 {
		t.Errorf("A's status = %+v, want the IPv6 peer ::1 established, 2 prefixes advertised and 1 received", st)
	}
	if stB, _ := spB.Status(ctx); len(stB) != 1 || stB[0].PrefixesReceived != 2 {
		t.Errorf("B's status = %+v, want A's 2 IPv6 prefixes received and nothing else", stB)
	}

	if err := spA.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: blkA, NextHop: nhA}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "B sees the IPv6 host route withdrawn", func() bool { _, ok := logB.get(hostA); return !ok })
	if _, ok := logB.get(blkA); !ok {
		t.Error("withdrawing the IPv6 host route withdrew the block too")
	}
}

func TestSetPeersRefusesMixedFamilies(t *testing.T) {
	ctx := context.Background()
	sp, err := bgp.Start(ctx, bgp.Config{RouterID: netip.MustParseAddr("127.0.0.1"), AS: 64512, ListenPort: freePort(t)}, bgp.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Shutdown(ctx)
	err = sp.SetPeers(ctx, []bgp.Peer{{Address: netip.MustParseAddr("fd00::2"), AS: 64512, SourceAddress: netip.MustParseAddr("127.0.0.1")}})
	if err == nil || !strings.Contains(err.Error(), "peer fd00::2: source address 127.0.0.1 is not of the peer's address family") {
		t.Errorf("IPv6 peer from an IPv4 source: err = %v", err)
	}
}

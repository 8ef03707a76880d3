package bgp_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/bgp"
	"github.com/rhizome-net/rhizome/bgp/bgplab"
)

// arrivals records when each speaker first heard of each prefix.
type arrivals struct {
	mu   sync.Mutex
	seen map[netip.Prefix]map[string]time.Time
	news chan struct{}
}

func (a *arrivals) record(node string) func(bgp.RouteEvent) {
	return func(e bgp.RouteEvent) {
		if e.Withdrawn {
			return
		}
		now := time.Now()
		a.mu.Lock()
		m := a.seen[e.Prefix]
		if m == nil {
			m = map[string]time.Time{}
			a.seen[e.Prefix] = m
		}
		if _, ok := m[node]; !ok {
			m[node] = now
		}
		a.mu.Unlock()
		select {
		case a.news <- struct{}{}:
		default:
		}
	}
}

// wait returns when n speakers have p, and the time the last one got it.
func (a *arrivals) wait(p netip.Prefix, n int, timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		a.mu.Lock()
		m := a.seen[p]
		if len(m) >= n {
			var last time.Time
			for _, t := range m {
				if t.After(last) {
					last = t
				}
			}
			a.mu.Unlock()
			return last, nil
		}
		got := len(m)
		a.mu.Unlock()
		select {
		case <-a.news:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			return time.Time{}, fmt.Errorf("%s reached %d of %d speakers in %v", p, got, n, timeout)
		}
	}
}

// convergenceLab is 100 client speakers and two route reflectors, all in
// this process on loopback addresses 127.<x>.0.0/16 (x random per run),
// sharing one port.
type convergenceLab struct {
	base    [2]byte
	port    int
	clients []*bgp.Speaker
	arr     *arrivals
}

const benchClients = 100

func (l *convergenceLab) addr(third, fourth int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, l.base[1], byte(third), byte(fourth)})
}

func newConvergenceLab(b *testing.B) *convergenceLab {
	l := &convergenceLab{base: [2]byte{127, byte(100 + rand.IntN(150))}, arr: &arrivals{seen: map[netip.Prefix]map[string]time.Time{}, news: make(chan struct{}, 1)}}
	l.port = freePortB(b)
	return l
}

// nodes returns the api Nodes: clients c1..c100 on 127.x.1.i and, when
// withRR, two reflectors on 127.x.0.1 and .2 sharing a cluster ID.
func (l *convergenceLab) nodes(withRR bool) []api.Node {
	var ns []api.Node
	if withRR {
		for i := 1; i <= 2; i++ {
			ns = append(ns, api.Node{ObjectMeta: api.ObjectMeta{Name: fmt.Sprintf("rr%d", i)},
				Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{IPv4Address: l.addr(0, i).String() + "/8", RouteReflectorClusterID: "244.0.0.1"}}})
		}
	}
	for i := 1; i <= benchClients; i++ {
		ns = append(ns, api.Node{ObjectMeta: api.ObjectMeta{Name: fmt.Sprintf("c%d", i)},
			Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{IPv4Address: l.addr(1, i).String() + "/8"}}})
	}
	return ns
}

func (l *convergenceLab) startSpeaker(b *testing.B, topo bgp.Topology, record bool) *bgp.Speaker {
	ctx := context.Background()
	local, err := bgp.LocalConfig(topo)
	if err != nil {
		b.Fatal(err)
	}
	opts := []bgp.Option{bgp.WithLogger(quietLogger())}
	if record {
		opts = append(opts, bgp.OnRoute(l.arr.record(topo.Self)))
	}
	sp, err := bgp.Start(ctx, bgp.Config{RouterID: local.RouterID, AS: local.AS, ListenPort: l.port, ConnectRetry: time.Second}, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sp.Shutdown(context.Background()) })
	peers, err := bgp.Peers(topo)
	if err != nil {
		b.Fatal(err)
	}
	if err := sp.SetPeers(ctx, peers); err != nil {
		b.Fatal(err)
	}
	return sp
}

// measure advertises one new block per round from a rotating client and
// reports the time until every other client has it.
func (l *convergenceLab) measure(b *testing.B, rounds int) {
	ctx := context.Background()
	// Warm-up: a block from every client reaches every other client, so
	// all sessions are up.
	for i, sp := range l.clients {
		p := netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/26", 200+i/250, i%250))
		if err := sp.SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: p, NextHop: l.addr(1, i+1)}}); err != nil {
			b.Fatal(err)
		}
	}
	for i := range l.clients {
		p := netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/26", 200+i/250, i%250))
		if _, err := l.arr.wait(p, benchClients-1, 120*time.Second); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}
	var lat []time.Duration
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		i := r % benchClients
		own := netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/26", 200+i/250, i%250))
		p := netip.MustParsePrefix(fmt.Sprintf("10.100.%d.%d/26", r/4, (r%4)*64))
		t0 := time.Now()
		if err := l.clients[i].SetAdvertisements(ctx, []bgp.Advertisement{{Prefix: own, NextHop: l.addr(1, i+1)}, {Prefix: p, NextHop: l.addr(1, i+1)}}); err != nil {
			b.Fatal(err)
		}
		last, err := l.arr.wait(p, benchClients-1, 30*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, last.Sub(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(f float64) time.Duration { return lat[min(len(lat)-1, int(f*float64(len(lat))))] }
	b.ReportMetric(float64(q(0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(q(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.Logf("%d rounds: p50 %v, p99 %v, max %v", len(lat), q(0.5), q(0.99), lat[len(lat)-1])
}

// BenchmarkConvergence: a new block on one of 100 nodes until all other
// 99 have it, through two rhizome route reflectors, then through two BIRD
// route reflectors in the same topology. Needs root only for nothing; BIRD
// must be installed for the second part.
func BenchmarkConvergence(b *testing.B) {
	rounds := 200
	off := false
	cfg := func(port int) []api.BGPConfiguration {
		return []api.BGPConfiguration{{ObjectMeta: api.ObjectMeta{Name: "default"},
			Spec: api.BGPConfigurationSpec{NodeToNodeMeshEnabled: &off, ListenPort: port}}}
	}
	b.Run("rhizome-RRs", func(b *testing.B) {
		l := newConvergenceLab(b)
		nodes := l.nodes(true)
		for _, n := range nodes {
			topo := bgp.Topology{Self: n.Name, Nodes: nodes, Configs: cfg(l.port)}
			sp := l.startSpeaker(b, topo, strings.HasPrefix(n.Name, "c"))
			if strings.HasPrefix(n.Name, "c") {
				l.clients = append(l.clients, sp)
			}
		}
		l.measure(b, rounds)
	})
	b.Run("bird-RRs", func(b *testing.B) {
		bgplab.NeedDaemons(b, bgplab.BirdBin, bgplab.BirdcBin)
		l := newConvergenceLab(b)
		nodes := l.nodes(false)
		var rrs []netip.Addr
		for i := 1; i <= 2; i++ {
			rrs = append(rrs, l.addr(0, i))
		}
		var clients []netip.Addr
		for i := 1; i <= benchClients; i++ {
			clients = append(clients, l.addr(1, i))
		}
		for i, rr := range rrs {
			startLoopbackBird(b, birdLoopbackRR(rr, rrs[1-i], l.port, clients))
		}
		var peers []api.BGPPeer
		for i, rr := range rrs {
			peers = append(peers, api.BGPPeer{ObjectMeta: api.ObjectMeta{Name: fmt.Sprintf("bird%d", i)},
				Spec: api.BGPPeerSpec{PeerIP: netip.AddrPortFrom(rr, uint16(l.port)).String(), ASNumber: api.NewASNumber(64512)}})
		}
		for _, n := range nodes {
			topo := bgp.Topology{Self: n.Name, Nodes: nodes, Configs: cfg(l.port), Peers: peers}
			l.clients = append(l.clients, l.startSpeaker(b, topo, true))
		}
		l.measure(b, rounds)
	})
}

// birdLoopbackRR is a BIRD route reflector on a loopback address for the
// benchmark: iBGP with every client and the other reflector.
func birdLoopbackRR(self, other netip.Addr, port int, clients []netip.Addr) string {
	var s strings.Builder
	// On loopback BIRD sees no directly connected neighbor: the sessions are
	// multihop, and next hops resolve through lo's 127.0.0.0/8.
	fmt.Fprintf(&s, "router id %s;\nprotocol device {}\nprotocol direct { ipv4; interface \"lo\"; }\n", self)
	fmt.Fprintf(&s, "template bgp reflector {\n  local %s port %d as 64512;\n  multihop;\n  strict bind yes;\n  connect retry time 1;\n  ipv4 { import all; export all; };\n}\n", self, port)
	fmt.Fprintf(&s, "protocol bgp peer_rr from reflector { neighbor %s port %d as 64512; }\n", other, port)
	for i, c := range clients {
		fmt.Fprintf(&s, "protocol bgp c%d from reflector { neighbor %s port %d as 64512; rr client; rr cluster id 244.0.0.1; }\n", i, c, port)
	}
	return s.String()
}

// startLoopbackBird starts BIRD in this network namespace, listening on a
// loopback address only, and kills it by PID at the end.
func startLoopbackBird(b *testing.B, conf string) {
	dir := b.TempDir()
	if err := os.WriteFile(dir+"/bird.conf", []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	bgplab.StartBirdHere(b, dir+"/bird.conf", dir+"/bird.ctl")
}

// BenchmarkSpeakerMemory: RSS of a speaker process (the agent's BGP part
// plus the test harness) holding 10,000 learned prefixes of 1,000 nodes,
// received from a route reflector as an agent with the mesh off does.
func BenchmarkSpeakerMemory(b *testing.B) {
	bgplab.Privileged(b)
	lab := bgplab.NewNet(b, "10.79.0.0/16")
	rrNode, agentNode := lab.AddNode("rr", 1), lab.AddNode("agent", 2)
	rr := bgplab.StartSpeaker(b, rrNode, bgp.Config{AS: 64512})
	agent := bgplab.StartSpeaker(b, agentNode, bgp.Config{AS: 64512})
	const prefixes, nodes = 10000, 1000
	var advs []bgp.Advertisement
	for i := 0; i < prefixes; i++ {
		n := i % nodes
		advs = append(advs, bgp.Advertisement{
			Prefix:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/1024), byte(i % 1024 / 4), byte(i % 4 * 64)}), 26),
			NextHop: netip.AddrFrom4([4]byte{10, 79, byte(1 + n/250), byte(1 + n%250)}),
		})
	}
	rr.SetAdvertisements(advs...)
	rr.SetPeers(bgp.Peer{Address: agentNode.Addr.Addr(), Port: 179, AS: 64512, LocalAS: 64512, Type: bgp.TypeRRClient,
		RouteReflectorClient: true, ClusterID: "244.0.0.1", SourceAddress: rrNode.Addr.Addr(), GracefulRestartSeconds: 120})
	agent.SetPeers(bgp.Peer{Address: rrNode.Addr.Addr(), Port: 179, AS: 64512, LocalAS: 64512, Type: bgp.TypeRR, Passive: true,
		SourceAddress: agentNode.Addr.Addr(), GracefulRestartSeconds: 120})
	start := time.Now()
	agent.Wait(120*time.Second, "10,000 prefixes learned", func(v bgplab.View) bool { return len(v.Routes) == prefixes })
	took := time.Since(start)
	time.Sleep(time.Second) // let the heap settle after the burst
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", agent.PID()))
	if err != nil {
		b.Fatal(err)
	}
	var rssKB float64
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &rssKB)
		}
	}
	b.ReportMetric(rssKB/1024, "RSS-MB")
	b.ReportMetric(float64(took.Milliseconds()), "learn-ms")
	b.Logf("agent speaker with %d prefixes of %d nodes: RSS %.1f MB, learned in %v", prefixes, nodes, rssKB/1024, took.Round(time.Millisecond))
}

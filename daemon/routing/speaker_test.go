package routing

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/daemon/netstate"
	"github.com/rhizome-net/rhizome/daemon/netstate/netstatetest"
	"github.com/rhizome-net/rhizome/ipam"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Two nodes' speakers on 127.0.0.1 and 127.0.0.2 (a real GoBGP mesh on a
// high port, no root): while etcd is compacted past their followers'
// watches again and again and the cluster keeps changing, neither session
// drops and neither node withdraws its block. (The window in which the old
// key-by-key refill showed a half-filled state to a sync is too narrow for
// this test to hit reliably; netstate's TestRelistAfterCompactionIsAtomic
// is the one that catches it. This one guards the whole path.)
func TestSpeakersKeepSessionsAndRoutesThroughCompactions(t *testing.T) {
	srv, store, apply := netstatetest.Seeded(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	as := api.ASNumber(64512)
	apply(&api.BGPConfiguration{ObjectMeta: api.ObjectMeta{Name: "default"}, Spec: api.BGPConfigurationSpec{ASNumber: &as, ListenPort: freePort(t)}})
	names := []string{"node-a", "node-b"}
	addrs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}
	blocks := make([]netip.Prefix, 2)
	allocs := make([]*ipam.Allocator, 2)
	for i, n := range names {
		apply(&api.Node{ObjectMeta: api.ObjectMeta{Name: n}, Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{IPv4Address: addrs[i].String() + "/8"}}})
		a, err := ipam.NewAllocator(ctx, store, n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Close)
		got, err := a.AutoAssign(ctx, ipam.Request{Handle: "net." + n, Namespace: "default", Pod: n})
		if err != nil {
			t.Fatal(err)
		}
		allocs[i] = a
		blocks[i], _ = got[0].Addr.Prefix(26)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var stores []*netstatetest.CuttableStore
	var speakers []*Speaker
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i, n := range names {
		cs := &netstatetest.CuttableStore{Store: store}
		st := netstate.New(n)
		sp := New(n, addrs[i], st, WithLogger(log), WithRegisterer(prometheus.NewRegistry()))
		wg.Add(2)
		go func() { defer wg.Done(); st.Run(ctx, cs, log) }()
		go func() { defer wg.Done(); sp.Run(ctx) }()
		stores, speakers = append(stores, cs), append(speakers, sp)
		// GoBGP's StartBgp writes package-level state: one process starts
		// one speaker at a time.
		deadline := time.Now().Add(30 * time.Second)
		for !sp.running() {
			if time.Now().After(deadline) {
				t.Fatalf("the speaker of %s did not start", n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// has says whether speaker i learned the other node's block.
	has := func(i int) bool {
		routes, _ := speakers[i].Learned().Routes()
		for _, r := range routes {
			if r.Prefix == blocks[1-i] && r.NextHop == addrs[1-i] {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(60 * time.Second)
	for !(has(0) && has(1) && speakers[0].Learned().Status().PeersUp == 1 && speakers[1].Learned().Status().PeersUp == 1) {
		if time.Now().After(deadline) {
			t.Fatalf("the mesh did not come up: a %+v, b %+v", speakers[0].Learned().Status(), speakers[1].Learned().Status())
		}
		time.Sleep(50 * time.Millisecond)
	}

	var mu sync.Mutex
	var problems []string
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			for i := range speakers {
				st := speakers[i].Learned().Status()
				if st.PeersUp != 1 || st.Peers != 1 || st.Learned != 1 {
					mu.Lock()
					problems = append(problems, fmt.Sprintf("%s: %d of %d sessions up, %d routes learned", names[i], st.PeersUp, st.Peers, st.Learned))
					mu.Unlock()
				}
			}
		}
	}()
	for round := range 5 {
		for i, cs := range stores {
			cs.CompactWhileCut(t, srv, 3, func() {
				if _, err := allocs[i].AutoAssign(ctx, ipam.Request{Handle: fmt.Sprintf("net.r%d", round), Namespace: "default", Pod: "r"}); err != nil {
					t.Fatal(err)
				}
				apply(&api.Node{ObjectMeta: api.ObjectMeta{Name: names[1-i], Labels: map[string]string{"round": fmt.Sprint(round)}},
					Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{IPv4Address: addrs[1-i].String() + "/8"}}})
			})
		}
	}
	time.Sleep(time.Second) // what the relists might have set off reaches the peers
	close(stop)
	<-watched
	if len(problems) > 0 {
		t.Fatalf("%d observations during the relists saw a session down or a route withdrawn; first: %s", len(problems), problems[0])
	}
}

func (s *Speaker) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.speaker != nil
}

package bgp

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics exports the speaker's state. Peer counts and prefix counts are
// read from GoBGP at scrape time; flaps are counted from peer events.
type metrics struct {
	s          *Speaker
	peers      *prometheus.Desc
	received   *prometheus.Desc
	advertised *prometheus.Desc
	flaps      *prometheus.Desc

	mu      sync.Mutex
	flapsBy map[netip.Addr]float64
}

func newMetrics(s *Speaker) *metrics {
	return &metrics{
		s:          s,
		peers:      prometheus.NewDesc("rhizome_bgp_peers", "BGP peers by session state.", []string{"state"}, nil),
		received:   prometheus.NewDesc("rhizome_bgp_prefixes_received", "Prefixes received from a BGP peer.", []string{"peer", "type"}, nil),
		advertised: prometheus.NewDesc("rhizome_bgp_prefixes_advertised", "Prefixes advertised to a BGP peer.", []string{"peer", "type"}, nil),
		flaps:      prometheus.NewDesc("rhizome_bgp_session_flaps_total", "Times an established BGP session went down.", []string{"peer"}, nil),
		flapsBy:    make(map[netip.Addr]float64),
	}
}

func (m *metrics) flap(peer netip.Addr) {
	m.mu.Lock()
	m.flapsBy[peer]++
	m.mu.Unlock()
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.peers
	ch <- m.received
	ch <- m.advertised
	ch <- m.flaps
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := m.s.Status(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(m.peers, err)
		return
	}
	byState := map[string]int{StateIdle: 0, StateConnect: 0, StateActive: 0, StateOpenSent: 0, StateOpenConfirm: 0, StateEstablished: 0}
	for _, p := range st {
		byState[p.State]++
		ch <- prometheus.MustNewConstMetric(m.received, prometheus.GaugeValue, float64(p.PrefixesReceived), p.Address.String(), string(p.Type))
		ch <- prometheus.MustNewConstMetric(m.advertised, prometheus.GaugeValue, float64(p.PrefixesAdvertised), p.Address.String(), string(p.Type))
	}
	for state, n := range byState {
		ch <- prometheus.MustNewConstMetric(m.peers, prometheus.GaugeValue, float64(n), state)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for peer, n := range m.flapsBy {
		ch <- prometheus.MustNewConstMetric(m.flaps, prometheus.CounterValue, n, peer.String())
	}
}

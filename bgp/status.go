package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	apipb "github.com/osrg/gobgp/v3/api"
)

// PeerStatus is one row of the peer table `rhizomectl node status` prints.
type PeerStatus struct {
	Address netip.Addr `json:"address"`
	Port    uint16     `json:"port"`
	AS      uint32     `json:"as"`
	Type    PeerType   `json:"type"`
	Node    string     `json:"node,omitempty"`
	State   string     `json:"state"`
	// Since is when the session entered State (zero if it never changed).
	Since time.Time `json:"since,omitzero"`
	// Info is "Established", or why the session is not: the last error.
	Info               string `json:"info,omitempty"`
	PrefixesReceived   uint64 `json:"prefixesReceived"`
	PrefixesAccepted   uint64 `json:"prefixesAccepted"`
	PrefixesAdvertised uint64 `json:"prefixesAdvertised"`
	Flaps              uint32 `json:"flaps"`
}

// Status returns the peer table, sorted by address.
func (s *Speaker) Status(ctx context.Context) ([]PeerStatus, error) {
	s.mu.Lock()
	want := make(map[netip.Addr]Peer, len(s.peers))
	for a, p := range s.peers {
		want[a] = p
	}
	stopped := s.stopped
	s.mu.Unlock()
	if stopped {
		return nil, fmt.Errorf("BGP status: the speaker is stopped")
	}
	var out []PeerStatus
	err := s.bgp.ListPeer(ctx, &apipb.ListPeerRequest{EnableAdvertised: true}, func(ap *apipb.Peer) {
		addr, err := netip.ParseAddr(ap.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		p := want[addr]
		st := PeerStatus{
			Address: addr,
			Port:    uint16(ap.GetTransport().GetRemotePort()),
			AS:      ap.GetConf().GetPeerAsn(),
			Type:    p.Type,
			Node:    p.Node,
			State:   sessionState(ap.GetState().GetSessionState()),
			Flaps:   ap.GetState().GetFlops(),
		}
		// GoBGP counts an end-of-RIB marker per family among the advertised
		// paths when graceful restart is negotiated.
		eor := uint64(0)
		if ap.GetGracefulRestart().GetEnabled() && remoteHasGR(ap) {
			eor = 1
		}
		for _, af := range ap.GetAfiSafis() {
			st.PrefixesReceived += af.GetState().GetReceived()
			st.PrefixesAccepted += af.GetState().GetAccepted()
			st.PrefixesAdvertised += af.GetState().GetAdvertised() - min(eor, af.GetState().GetAdvertised())
		}
		s.stateMu.Lock()
		ps := s.states[addr]
		s.stateMu.Unlock()
		if ps.state == st.State {
			st.Since = ps.since
		}
		if st.State == StateEstablished {
			st.Info = StateEstablished
		} else {
			st.Info = s.errs.get(addr.String())
			if p.Password != "" && strings.Contains(st.Info, "timeout") {
				st.Info += " (TCP MD5 is on: a wrong password on either side drops the connection silently; check " + p.PasswordSource + " and the peer's)"
			}
		}
		out = append(out, st)
	})
	if err != nil {
		return nil, fmt.Errorf("BGP status: list peers: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Less(out[j].Address) })
	return out, nil
}

// remoteHasGR says whether the peer offered the graceful restart capability.
func remoteHasGR(ap *apipb.Peer) bool {
	for _, c := range ap.GetState().GetRemoteCap() {
		if c.MessageIs(&apipb.GracefulRestartCapability{}) {
			return true
		}
	}
	return false
}

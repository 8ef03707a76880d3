// Package routing runs the node's embedded BGP speaker: it derives the
// node's BGP identity, sessions and advertisements from the followed
// cluster state and hands them to the speaker, stops it gracefully, and
// offers what BGP learned as a route source (Learned) with the hold while
// BGP settles.
package routing

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/bgp"
	"github.com/rhizome-net/rhizome/daemon/netstate"
	"github.com/rhizome-net/rhizome/daemon/nodestatus"
)

// Speaker keeps the node's BGP speaker in line with the cluster state.
type Speaker struct {
	name    string
	addr    netip.Addr
	state   *netstate.State
	learned *Learned
	log     *slog.Logger
	reg     prometheus.Registerer
	secrets bgp.PasswordResolver

	mu      sync.Mutex // guards speaker and local, read by Report
	speaker *bgp.Speaker
	local   bgp.Local
}

// Option configures a Speaker.
type Option func(*Speaker)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Speaker) { s.log = l } }

// WithRegisterer registers the speaker's metrics.
func WithRegisterer(r prometheus.Registerer) Option { return func(s *Speaker) { s.reg = r } }

// WithPasswords resolves BGP session passwords.
func WithPasswords(p bgp.PasswordResolver) Option { return func(s *Speaker) { s.secrets = p } }

// WithClock sets the clock of the learned routes' settle logic.
func WithClock(now func() time.Time) Option {
	return func(s *Speaker) { s.learned = NewLearned(now) }
}

// New returns the speaker orchestration of node name at addr, following
// state.
func New(name string, addr netip.Addr, state *netstate.State, opts ...Option) *Speaker {
	s := &Speaker{name: name, addr: addr, state: state, log: slog.Default(), reg: prometheus.NewRegistry()}
	for _, o := range opts {
		o(s)
	}
	if s.learned == nil {
		s.learned = NewLearned(time.Now)
	}
	return s
}

// Learned is the route source of what this speaker learns.
func (s *Speaker) Learned() *Learned { return s.learned }

// Run follows the state and configures the speaker until ctx ends; then
// it stops the speaker without Cease (graceful restart), so peers keep the
// node's routes while it restarts.
func (s *Speaker) Run(ctx context.Context) {
	changes := s.state.Subscribe()
	defer s.stop()
	select {
	case <-ctx.Done():
		return
	case <-s.state.Synced():
	}
	s.sync(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-changes:
			s.sync(ctx)
		}
	}
}

func (s *Speaker) stop() {
	s.mu.Lock()
	sp := s.speaker
	s.mu.Unlock()
	if sp == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sp.Stop(sctx); err != nil {
		s.log.Warn("stop BGP speaker", "err", err)
	}
}

// sync recomputes the node's identity, sessions and advertisements and
// hands them to the speaker, which changes only what differs.
func (s *Speaker) sync(ctx context.Context) {
	in := s.state.Snapshot()
	if in.Self == nil {
		return // not registered yet
	}
	topo := bgp.Topology{Self: s.name, Nodes: in.Nodes, Configs: in.Configs, Peers: in.Peers, Password: s.secrets}
	local, err := bgp.LocalConfig(topo)
	var sp *bgp.Speaker
	if err == nil {
		sp, err = s.ensureSpeaker(ctx, local)
	}
	var advs []bgp.Advertisement
	var peers []bgp.Peer
	if err == nil {
		advs, err = bgp.Advertisements(bgp.Origin{NodeV4: s.addr, NodeV6: addrOf(in.Self.Spec.BGP, false),
			Blocks: in.OwnBlocks, Hosted: in.Hosted, NoExport: noExport(in.Pools)})
	}
	if err == nil {
		peers, err = bgp.Peers(topo)
	}
	// Advertisements first: a session that comes up after a restart must
	// find the table in place (graceful restart).
	if err == nil {
		err = sp.SetAdvertisements(ctx, advs)
	}
	if err == nil {
		// The hold starts before the sessions change, so no withdrawal of
		// a removed session reaches the kernel first.
		if s.learned.Sessions(peers) {
			s.log.Info("BGP sessions changed: keeping learned routes until BGP settles", "peers", len(peers))
		}
		err = sp.SetPeers(ctx, peers)
	}
	if err != nil {
		s.learned.SetError(err.Error())
		if ctx.Err() == nil {
			s.log.Error("BGP", "err", err)
		}
		return
	}
	s.learned.SetError("")
}

func addrOf(b *api.NodeBGPSpec, v4 bool) netip.Addr {
	if b == nil {
		return netip.Addr{}
	}
	s := b.IPv6Address
	if v4 {
		s = b.IPv4Address
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Addr{}
	}
	return p.Addr()
}

func noExport(pools []*api.IPPool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range pools {
		if c, err := netip.ParsePrefix(p.Spec.CIDR); err == nil && p.Spec.DisableBGPExport {
			out = append(out, c)
		}
	}
	return out
}

// ensureSpeaker starts the speaker, or restarts it when the node's router
// ID, AS, addresses or port changed (the sessions must be re-established
// then anyway).
func (s *Speaker) ensureSpeaker(ctx context.Context, local bgp.Local) (*bgp.Speaker, error) {
	s.mu.Lock()
	sp, cur := s.speaker, s.local
	s.mu.Unlock()
	if sp != nil && local.RouterID == cur.RouterID && local.AS == cur.AS &&
		local.ListenPort == cur.ListenPort && slices.Equal(local.Addresses, cur.Addresses) {
		s.mu.Lock()
		s.local = local
		s.mu.Unlock()
		return sp, nil
	}
	if sp != nil {
		s.log.Info("BGP identity changed: restarting the speaker", "as", local.AS, "routerID", local.RouterID, "port", local.ListenPort)
		if err := sp.Shutdown(ctx); err != nil {
			s.log.Warn("stop BGP speaker", "err", err)
		}
		s.mu.Lock()
		s.speaker = nil
		s.mu.Unlock()
	}
	sp, err := bgp.Start(ctx, bgp.Config{RouterID: local.RouterID, AS: local.AS, ListenAddresses: local.Addresses, ListenPort: local.ListenPort},
		bgp.WithLogger(s.log.With("component", "bgp")), bgp.WithRegisterer(s.reg), bgp.OnRoute(s.learned.Route), bgp.OnPeer(s.learned.Peer))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.speaker, s.local = sp, local
	s.mu.Unlock()
	s.log.Info("BGP speaker started", "as", local.AS, "routerID", local.RouterID, "port", local.ListenPort, "clusterID", local.ClusterID)
	return sp, nil
}

// PeersUp counts established sessions, for the Node's status.
func (s *Speaker) PeersUp() (up, total int) {
	st := s.learned.Status()
	return st.PeersUp, st.Peers
}

// Report fills the BGP parts of the status report.
func (s *Speaker) Report(ctx context.Context, r *nodestatus.Report) {
	r.Networking = "bgp"
	st := s.learned.Status()
	r.Learned, r.BGPError = st.Learned, st.Error
	s.mu.Lock()
	sp, local := s.speaker, s.local
	s.mu.Unlock()
	r.AS, r.ClusterID = local.AS, local.ClusterID
	if local.RouterID.IsValid() {
		r.RouterID = local.RouterID.String()
	}
	if sp == nil {
		return
	}
	for _, a := range sp.Advertised() {
		r.Advertised = append(r.Advertised, a.String())
	}
	peers, err := sp.Status(ctx)
	if err != nil && r.BGPError == "" {
		r.BGPError = err.Error()
	}
	for _, p := range peers {
		r.Peers = append(r.Peers, nodestatus.Peer{Address: p.Address, Port: p.Port, AS: p.AS, Type: string(p.Type), Node: p.Node,
			State: p.State, Since: p.Since, Info: p.Info, PrefixesReceived: p.PrefixesReceived, PrefixesAccepted: p.PrefixesAccepted,
			PrefixesAdvertised: p.PrefixesAdvertised, Flaps: p.Flaps})
	}
}

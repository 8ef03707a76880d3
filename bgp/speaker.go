package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	apipb "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
)

// Config is what a Speaker starts with.
type Config struct {
	// RouterID is the node's IPv4 address.
	RouterID netip.Addr
	// AS of the node.
	AS uint32
	// ListenAddresses are the node's addresses; the speaker accepts
	// sessions on these only.
	ListenAddresses []netip.Addr
	// ListenPort (0 means 179). A listener is always opened: passive
	// sessions and TCP MD5 on accepted sessions need it.
	ListenPort int
	// ConnectRetry between attempts to open a session (default 3 s; GoBGP's
	// own default is 120 s).
	ConnectRetry time.Duration
}

// RouteEvent is a change of the best path to a prefix learned from a peer.
type RouteEvent struct {
	Prefix  netip.Prefix `json:"prefix"`
	NextHop netip.Addr   `json:"nextHop,omitzero"`
	// Withdrawn is true when no peer offers the prefix any more.
	Withdrawn bool `json:"withdrawn,omitempty"`
	// Peer the best path was learned from.
	Peer netip.Addr `json:"peer,omitzero"`
}

// PeerEvent is a change of a session's state.
type PeerEvent struct {
	Address netip.Addr `json:"address"`
	State   string     `json:"state"`
}

// Session states as Status and PeerEvent report them.
const (
	StateIdle        = "Idle"
	StateConnect     = "Connect"
	StateActive      = "Active"
	StateOpenSent    = "OpenSent"
	StateOpenConfirm = "OpenConfirm"
	StateEstablished = "Established"
)

// Option configures a Speaker.
type Option func(*Speaker)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Speaker) { s.log = l } }

// WithRegisterer registers the speaker's metrics with r.
func WithRegisterer(r prometheus.Registerer) Option { return func(s *Speaker) { s.reg = r } }

// OnRoute calls fn for every change of a learned best path, in order. fn
// runs on GoBGP's event goroutine, behind an unbounded queue: keep it
// cheap (hand the event to a channel or a map under a mutex).
func OnRoute(fn func(RouteEvent)) Option { return func(s *Speaker) { s.onRoute = fn } }

// OnPeer calls fn for every session state change, with the same rules as
// OnRoute.
func OnPeer(fn func(PeerEvent)) Option { return func(s *Speaker) { s.onPeer = fn } }

// Speaker is an embedded GoBGP speaker reconciled to a desired set of peers
// and advertisements.
type Speaker struct {
	cfg     Config
	bgp     *server.BgpServer
	log     *slog.Logger
	reg     prometheus.Registerer
	onRoute func(RouteEvent)
	onPeer  func(PeerEvent)
	cancel  context.CancelFunc
	errs    *lastErrors
	metrics *metrics

	mu       sync.Mutex // serialises SetPeers, SetAdvertisements and Stop
	peers    map[netip.Addr]Peer
	adverts  map[netip.Prefix]advert
	policies map[string]managedPolicy
	stopped  bool

	stateMu sync.Mutex
	states  map[netip.Addr]peerState // from peer events
}

type advert struct {
	Advertisement
	uuid []byte
}

type peerState struct {
	state string
	since time.Time
}

// Start starts a speaker. GoBGP's gRPC admin listener is never opened.
func Start(ctx context.Context, cfg Config, opts ...Option) (*Speaker, error) {
	if !cfg.RouterID.Is4() {
		return nil, fmt.Errorf("start BGP speaker: router ID %v is not an IPv4 address: give the node's IPv4 address", cfg.RouterID)
	}
	if cfg.AS == 0 {
		return nil, errors.New("start BGP speaker: AS 0 is not a valid AS number")
	}
	if len(cfg.ListenAddresses) == 0 {
		cfg.ListenAddresses = []netip.Addr{cfg.RouterID}
	}
	if cfg.ListenPort == 0 {
		cfg.ListenPort = DefaultPort
	}
	if cfg.ListenPort < 0 || cfg.ListenPort > 65535 {
		return nil, fmt.Errorf("start BGP speaker: listen port %d out of range 1-65535", cfg.ListenPort)
	}
	if cfg.ConnectRetry <= 0 {
		cfg.ConnectRetry = 3 * time.Second
	}
	s := &Speaker{
		cfg:      cfg,
		log:      slog.Default(),
		peers:    make(map[netip.Addr]Peer),
		adverts:  make(map[netip.Prefix]advert),
		states:   make(map[netip.Addr]peerState),
		policies: make(map[string]managedPolicy),
		errs:     &lastErrors{m: make(map[string]string)},
	}
	for _, o := range opts {
		o(s)
	}
	s.metrics = newMetrics(s)
	if s.reg != nil {
		if err := s.reg.Register(s.metrics); err != nil {
			return nil, fmt.Errorf("start BGP speaker: register metrics: %w", err)
		}
	}
	s.bgp = server.NewBgpServer(server.LoggerOption(&gobgpLogger{log: s.log, errs: s.errs}))
	go s.bgp.Serve()

	listen := make([]string, 0, len(cfg.ListenAddresses))
	for _, a := range cfg.ListenAddresses {
		listen = append(listen, a.String())
	}
	err := s.bgp.StartBgp(ctx, &apipb.StartBgpRequest{Global: &apipb.Global{
		Asn:             cfg.AS,
		RouterId:        cfg.RouterID.String(),
		ListenPort:      int32(cfg.ListenPort),
		ListenAddresses: listen,
	}})
	if err != nil {
		s.unregister()
		return nil, fmt.Errorf("start BGP speaker AS %d on %v port %d: %w", cfg.AS, listen, cfg.ListenPort, err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	err = s.bgp.WatchEvent(wctx, &apipb.WatchEventRequest{
		Peer: &apipb.WatchEventRequest_Peer{},
		Table: &apipb.WatchEventRequest_Table{Filters: []*apipb.WatchEventRequest_Table_Filter{
			{Type: apipb.WatchEventRequest_Table_Filter_BEST, Init: true},
		}},
	}, s.handleEvent)
	if err != nil {
		cancel()
		_ = s.bgp.StopBgp(ctx, &apipb.StopBgpRequest{})
		s.unregister()
		return nil, fmt.Errorf("start BGP speaker: watch events: %w", err)
	}
	s.log.Info("BGP speaker started", "routerID", cfg.RouterID, "as", cfg.AS, "listen", listen, "port", cfg.ListenPort)
	return s, nil
}

func (s *Speaker) unregister() {
	if s.reg != nil {
		s.reg.Unregister(s.metrics)
	}
}

// SetPeers makes the speaker's sessions exactly peers: it adds new peers,
// removes peers not in the list, and re-creates peers whose settings
// changed. Sessions of unchanged peers are not touched. A session carries
// the unicast family of the peer's address only: a dual-stack pair of
// nodes has two sessions, one per family.
//
// After a restart, call SetAdvertisements before SetPeers: a session that
// comes up before the advertisements are in place would send an empty
// table and end-of-RIB, and peers would drop the routes graceful restart
// kept for us.
func (s *Speaker) SetPeers(ctx context.Context, peers []Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("set BGP peers: the speaker is stopped")
	}
	want := make(map[netip.Addr]Peer, len(peers))
	for _, p := range peers {
		if !p.Address.IsValid() {
			return fmt.Errorf("set BGP peers: a peer of type %q has no address", p.Type)
		}
		if _, dup := want[p.Address]; dup {
			return fmt.Errorf("set BGP peers: peer %s is listed twice: give each address once", p.Address)
		}
		if p.AS == 0 {
			return fmt.Errorf("set BGP peers: peer %s has AS 0: give its AS number", p.Address)
		}
		if p.SourceAddress.IsValid() && p.SourceAddress.Unmap().Is4() != p.Address.Unmap().Is4() {
			return fmt.Errorf("set BGP peers: peer %s: source address %s is not of the peer's address family: a session is IPv4 or IPv6 end to end", p.Address, p.SourceAddress)
		}
		want[p.Address] = p
	}
	if err := s.setPolicies(ctx, want); err != nil {
		return fmt.Errorf("set BGP peers: %w", err)
	}
	var errs []error
	for addr, have := range s.peers {
		if w, ok := want[addr]; ok && sameSession(w, have) {
			s.peers[addr] = w // labels (type, node, BGPPeer) may have changed
			continue
		}
		if err := s.bgp.DeletePeer(ctx, &apipb.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("remove BGP peer %s: %w", have, err))
			continue
		}
		delete(s.peers, addr)
		s.errs.clear(addr.String())
		s.stateMu.Lock()
		delete(s.states, addr)
		s.stateMu.Unlock()
		s.log.Info("BGP peer removed", "peer", addr)
	}
	for addr, p := range want {
		if _, ok := s.peers[addr]; ok {
			continue
		}
		if err := s.bgp.AddPeer(ctx, &apipb.AddPeerRequest{Peer: s.apiPeer(p)}); err != nil {
			errs = append(errs, fmt.Errorf("add BGP peer %s: %w", p, err))
			continue
		}
		s.peers[addr] = p
		s.log.Info("BGP peer added", "peer", addr, "as", p.AS, "type", p.Type, "passive", p.Passive)
	}
	return errors.Join(errs...)
}

// sameSession says whether a and b configure GoBGP alike, so that going
// from one to the other needs no change to the session.
func sameSession(a, b Peer) bool {
	for _, p := range []*Peer{&a, &b} {
		p.Type, p.Node, p.BGPPeer, p.PasswordSource = "", "", "", ""
	}
	return a == b
}

// apiPeer translates a Peer into GoBGP's configuration.
func (s *Speaker) apiPeer(p Peer) *apipb.Peer {
	gr := p.GracefulRestartSeconds > 0
	ap := &apipb.Peer{
		Conf: &apipb.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.AS,
			AuthPassword:    p.Password,
			Description:     string(p.Type),
		},
		Timers: &apipb.Timers{Config: &apipb.TimersConfig{
			ConnectRetry:      uint64(max(1, s.cfg.ConnectRetry.Round(time.Second)/time.Second)),
			HoldTime:          uint64(p.HoldSeconds),
			KeepaliveInterval: uint64(p.KeepaliveSeconds),
		}},
		Transport: &apipb.Transport{PassiveMode: p.Passive, RemotePort: uint32(p.Port)},
	}
	if p.LocalAS != 0 && p.LocalAS != s.cfg.AS {
		ap.Conf.LocalAsn = p.LocalAS
	}
	if p.Port == 0 {
		ap.Transport.RemotePort = DefaultPort
	}
	if p.SourceAddress.IsValid() {
		ap.Transport.LocalAddress = p.SourceAddress.String()
	}
	// One family per session, the family of the peer's address: IPv4
	// prefixes travel on sessions between IPv4 addresses, IPv6 prefixes on
	// sessions between IPv6 addresses, with the node's IPv6 address as next
	// hop. This is how Calico configures BIRD (bird.cfg and bird6.cfg), so
	// BIRD and FRR peers need nothing special for rhizome.
	ap.AfiSafis = []*apipb.AfiSafi{{
		Config:            &apipb.AfiSafiConfig{Family: sessionFamily(p.Address), Enabled: true},
		MpGracefulRestart: &apipb.MpGracefulRestart{Config: &apipb.MpGracefulRestartConfig{Enabled: gr}},
	}}
	if gr {
		ap.GracefulRestart = &apipb.GracefulRestart{Enabled: true, RestartTime: uint32(p.GracefulRestartSeconds)}
	}
	if p.RouteReflectorClient {
		ap.RouteReflector = &apipb.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: p.ClusterID}
	}
	if p.Multihop {
		ap.EbgpMultihop = &apipb.EbgpMultihop{Enabled: true, MultihopTtl: MultihopTTL}
	}
	return ap
}

// sessionFamily is the one address family a session with a peer at addr
// carries: IPv4 or IPv6 unicast.
func sessionFamily(addr netip.Addr) *apipb.Family {
	if addr.Unmap().Is4() {
		return &apipb.Family{Afi: apipb.Family_AFI_IP, Safi: apipb.Family_SAFI_UNICAST}
	}
	return &apipb.Family{Afi: apipb.Family_AFI_IP6, Safi: apipb.Family_SAFI_UNICAST}
}

// SetAdvertisements makes the speaker originate exactly advs: new prefixes
// are added, prefixes no longer wanted are withdrawn, a prefix whose next
// hop changed is replaced in place (peers see one update, no withdraw).
func (s *Speaker) SetAdvertisements(ctx context.Context, advs []Advertisement) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("set BGP advertisements: the speaker is stopped")
	}
	want := make(map[netip.Prefix]Advertisement, len(advs))
	for _, a := range advs {
		if !a.Prefix.IsValid() || !a.NextHop.IsValid() || a.Prefix.Addr().Is4() != a.NextHop.Is4() {
			return fmt.Errorf("set BGP advertisements: %v: need a prefix and a next hop of its family", a)
		}
		want[a.Prefix.Masked()] = a
	}
	var errs []error
	for p, w := range want {
		if have, ok := s.adverts[p]; ok && have.NextHop == w.NextHop {
			continue
		}
		path, err := apiPath(w)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		res, err := s.bgp.AddPath(ctx, &apipb.AddPathRequest{Path: path})
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", w, err))
			continue
		}
		s.adverts[p] = advert{Advertisement: w, uuid: res.Uuid}
	}
	for p, have := range s.adverts {
		if _, ok := want[p]; ok {
			continue
		}
		// Always by UUID: a DeletePath with neither path nor UUID deletes
		// every local path.
		if err := s.bgp.DeletePath(ctx, &apipb.DeletePathRequest{Uuid: have.uuid}); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", have.Advertisement, err))
			continue
		}
		delete(s.adverts, p)
	}
	return errors.Join(errs...)
}

// Stop stops the speaker for a restart of the agent. Sessions with
// graceful restart are left for the process exit to close, without a
// Cease notification, so peers keep our routes for the restart time; the
// caller must exit the process soon after. Without graceful restart on
// any session, Stop is Shutdown.
func (s *Speaker) Stop(ctx context.Context) error {
	s.mu.Lock()
	gr := false
	for _, p := range s.peers {
		gr = gr || p.GracefulRestartSeconds > 0
	}
	s.mu.Unlock()
	if !gr {
		return s.Shutdown(ctx)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	s.cancel()
	s.unregister()
	s.log.Info("BGP speaker stopped without Cease: peers keep our routes for the graceful restart time")
	return nil
}

// Shutdown closes every session with a Cease notification (peers drop our
// routes at once) and stops the speaker.
func (s *Speaker) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	err := s.bgp.StopBgp(ctx, &apipb.StopBgpRequest{})
	s.cancel()
	s.unregister()
	if err != nil {
		return fmt.Errorf("stop BGP speaker: %w", err)
	}
	s.log.Info("BGP speaker shut down")
	return nil
}

// handleEvent runs on GoBGP's watch goroutine.
func (s *Speaker) handleEvent(r *apipb.WatchEventResponse) {
	if pe := r.GetPeer(); pe != nil {
		st := pe.GetPeer().GetState()
		addr, err := netip.ParseAddr(st.GetNeighborAddress())
		if err != nil {
			return // the startup event for "<nil>"
		}
		state := sessionState(st.GetSessionState())
		now := time.Now()
		s.stateMu.Lock()
		old := s.states[addr]
		if old.state != state {
			s.states[addr] = peerState{state: state, since: now}
		}
		s.stateMu.Unlock()
		if old.state == state {
			return
		}
		if old.state == StateEstablished {
			s.metrics.flap(addr)
		}
		if state == StateEstablished {
			s.errs.clear(addr.String())
		}
		if s.onPeer != nil {
			s.onPeer(PeerEvent{Address: addr, State: state})
		}
		return
	}
	if s.onRoute == nil {
		return
	}
	for _, p := range r.GetTable().GetPaths() {
		// Our own paths carry no neighbor.
		from, err := netip.ParseAddr(p.GetNeighborIp())
		if err != nil {
			continue
		}
		ev, err := routeEvent(p)
		if err != nil {
			s.log.Warn("ignored a path GoBGP reported", "peer", from, "error", err)
			continue
		}
		ev.Peer = from
		s.onRoute(ev)
	}
}

func sessionState(st apipb.PeerState_SessionState) string {
	switch st {
	case apipb.PeerState_IDLE:
		return StateIdle
	case apipb.PeerState_CONNECT:
		return StateConnect
	case apipb.PeerState_ACTIVE:
		return StateActive
	case apipb.PeerState_OPENSENT:
		return StateOpenSent
	case apipb.PeerState_OPENCONFIRM:
		return StateOpenConfirm
	case apipb.PeerState_ESTABLISHED:
		return StateEstablished
	}
	return "Unknown(" + strconv.Itoa(int(st)) + ")"
}

// Advertised returns what the speaker currently originates, sorted.
func (s *Speaker) Advertised() []Advertisement {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Advertisement, 0, len(s.adverts))
	for _, a := range s.adverts {
		out = append(out, a.Advertisement)
	}
	sort.Slice(out, func(i, j int) bool { return lessPrefix(out[i].Prefix, out[j].Prefix) })
	return out
}

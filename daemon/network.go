package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/bgp"
	"github.com/rhizome-net/rhizome/cni"
	"github.com/rhizome-net/rhizome/daemon/cnisvc"
	"github.com/rhizome-net/rhizome/daemon/nodestatus"
	"github.com/rhizome-net/rhizome/dataplane"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// routeSettle bounds how long an agent waits for BGP to relearn the routes,
// after its start or a change of its sessions, before it deletes kernel
// routes nobody advertises any more.
const routeSettle = 30 * time.Second

// network is the node's routing: the embedded BGP speaker, reconciled to
// the peers and advertisements the datastore implies, and the kernel
// routes, tunl0 and natOutgoing table, reconciled to what BGP learned and
// what the pools say.
type network struct {
	name    string
	addr    netip.Prefix
	store   datastore.Store
	res     *datastore.Resources
	alloc   *ipam.Allocator
	log     *slog.Logger
	reg     prometheus.Registerer
	secrets bgp.PasswordResolver
	st      *netState

	bgpKick, kernelKick chan struct{}

	// Owned by run.
	speaker   *bgp.Speaker
	local     bgp.Local
	uplink    dataplane.Uplink
	others    []dataplane.Uplink
	routes    *dataplane.RouteReconciler
	tunnel    *dataplane.TunnelManager
	nat       *dataplane.NATManager
	natPools  []dataplane.Pool
	natSet    bool
	started   time.Time
	routesSet bool
	// lastSet are the routes last handed to the reconciler; while BGP
	// settles after a change of sessions, the learned ones stay.
	lastSet   []dataplane.Route
	holding   bool // routes of lastSet the plan lacks are in the kernel
	lastPeers map[netip.Addr]bgp.Peer
	ipipLog   string
	tunnelOn  bool // tunl0 was made ready for IPIP pools

	mu         sync.Mutex // guards what status and the callbacks share
	learned    map[netip.Prefix]bgp.RouteEvent
	peerStates map[netip.Addr]string
	lastChange time.Time // of a learned route or a session
	settleFrom time.Time // the start, or the last change of the sessions
	wantPeers  map[netip.Addr]bool
	bgpErr     string
	plan       dataplane.Plan
	tunnelAddr netip.Addr
	conditions []api.NodeCondition
	programmed bool // routesSet, for status
}

func newNetwork(a *Agent, secrets bgp.PasswordResolver) *network {
	return &network{
		name: a.cfg.NodeName, addr: a.addr, store: a.store, res: a.res, alloc: a.alloc,
		log: a.log.With("component", "network"), reg: a.reg, secrets: secrets,
		st:      newNetState(a.cfg.NodeName),
		bgpKick: make(chan struct{}, 1), kernelKick: make(chan struct{}, 1),
		learned: map[netip.Prefix]bgp.RouteEvent{}, peerStates: map[netip.Addr]string{},
	}
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// open prepares the kernel side: sysctls, the uplink, the reconcilers. It
// fails when the node cannot route pods at all.
func (n *network) open() error {
	if err := dataplane.EnsureNodeSysctls(netns.None()); err != nil {
		return fmt.Errorf("node sysctls (run rhizome-node privileged): %w", err)
	}
	up, err := findUplink(n.addr.Addr())
	if err != nil {
		return err
	}
	n.uplink = up
	n.others = otherLinks(up)
	if n.routes, err = dataplane.NewRouteReconciler(netns.None(), dataplane.WithLogger(n.log)); err != nil {
		return fmt.Errorf("route reconciler: %w", err)
	}
	if n.tunnel, err = dataplane.NewTunnelManager(netns.None()); err != nil {
		n.routes.Close()
		return fmt.Errorf("tunnel manager: %w", err)
	}
	n.nat = dataplane.NewNATManager(netns.None())
	return nil
}

// findUplink is the device that carries the node's address.
func findUplink(addr netip.Addr) (dataplane.Uplink, error) {
	addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return dataplane.Uplink{}, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return dataplane.Uplink{}, fmt.Errorf("uplink of %s: %w", addr, err)
			}
			return dataplane.DiscoverUplink(netns.None(), l.Attrs().Name)
		}
	}
	return dataplane.Uplink{}, fmt.Errorf("node address %s is on no interface of this host: set RHIZOME_IP or RHIZOME_IP_AUTODETECTION_METHOD", addr)
}

// otherLinks are the devices besides the uplink that have global
// addresses (the legs of a router node), but not pods' veths or tunl0.
func otherLinks(up dataplane.Uplink) []dataplane.Uplink {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil
	}
	var out []dataplane.Uplink
	for _, l := range links {
		a := l.Attrs()
		if a.Index == up.Index || a.Name == "lo" || a.Name == dataplane.TunnelDevice || strings.HasPrefix(a.Name, "rz") {
			continue
		}
		if o, err := dataplane.DiscoverUplink(netns.None(), a.Name); err == nil && len(o.Addrs) > 0 {
			out = append(out, o)
		}
	}
	return out
}

// run follows the datastore and keeps BGP and the kernel in line until ctx
// ends; then it stops the speaker without Cease (graceful restart) and
// leaves every route in place for the next start.
func (n *network) run(ctx context.Context) {
	n.started = time.Now()
	n.mu.Lock()
	n.settleFrom = n.started
	n.mu.Unlock()
	var synced sync.WaitGroup
	var wg sync.WaitGroup
	for _, f := range []struct {
		prefix string
		m      mirror
	}{
		{datastore.ResourcePrefix, n.st.resources()},
		{ipam.BlockPrefix, n.st.blockMirror()},
		{ipam.AffinityPrefix + n.name + "/", n.st.affinityMirror()},
	} {
		synced.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			follow(ctx, n.store, f.prefix, f.m, func() { kick(n.bgpKick) }, synced.Done, n.log)
		}()
	}
	if n.routes != nil {
		wg.Add(1)
		go func() { defer wg.Done(); _ = n.routes.Run(ctx) }()
	}
	defer func() {
		wg.Wait() // the follows and the reconciler end with ctx
		n.stop()
	}()
	waitGroup(ctx, &synced)

	// The tick waits for BGP to settle (every second then), and retries
	// what events do not announce (a failed tunl0, a pod's veth appearing).
	tick := time.NewTicker(time.Second)
	interval := time.Second
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.bgpKick:
			n.syncBGP(ctx)
			n.syncKernel(ctx)
		case <-n.kernelKick:
			n.syncKernel(ctx)
		case <-tick.C:
			n.syncKernel(ctx)
		}
		want := 10 * time.Second
		if !n.routesSet || n.holding {
			want = time.Second
		}
		if want != interval {
			tick.Reset(want)
			interval = want
		}
	}
}

func waitGroup(ctx context.Context, wg *sync.WaitGroup) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// stop leaves the routes and the sessions to the next start: the speaker
// stops without Cease where graceful restart is on.
func (n *network) stop() {
	if n.speaker != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := n.speaker.Stop(sctx); err != nil {
			n.log.Warn("stop BGP speaker", "err", err)
		}
	}
	if n.routes != nil {
		n.routes.Close()
	}
	if n.tunnel != nil {
		n.tunnel.Close()
	}
}

// syncBGP recomputes the node's identity, sessions and advertisements and
// hands them to the speaker, which changes only what differs.
func (n *network) syncBGP(ctx context.Context) {
	in := n.st.snapshot()
	if in.self == nil {
		return // not registered yet
	}
	topo := bgp.Topology{Self: n.name, Nodes: in.nodes, Configs: in.configs, Peers: in.peers, Password: n.secrets}
	local, err := bgp.LocalConfig(topo)
	if err == nil {
		err = n.ensureSpeaker(ctx, local)
	}
	var advs []bgp.Advertisement
	var peers []bgp.Peer
	if err == nil {
		advs, err = bgp.Advertisements(bgp.Origin{NodeV4: n.addr.Addr(), NodeV6: addrOf(in.self.Spec.BGP, false),
			Blocks: in.ownBlocks, Hosted: in.hosted, NoExport: noExport(in.pools)})
	}
	if err == nil {
		peers, err = bgp.Peers(topo)
	}
	// Advertisements first: a session that comes up after a restart must
	// find the table in place (graceful restart).
	if err == nil {
		err = n.speaker.SetAdvertisements(ctx, advs)
	}
	if err == nil {
		err = n.speaker.SetPeers(ctx, peers)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.bgpErr = ""
	if err != nil {
		n.bgpErr = err.Error()
		if ctx.Err() == nil {
			n.log.Error("BGP", "err", err)
		}
		return
	}
	want := make(map[netip.Addr]bgp.Peer, len(peers))
	n.wantPeers = make(map[netip.Addr]bool, len(peers))
	for _, p := range peers {
		want[p.Address] = p
		n.wantPeers[p.Address] = true
	}
	// Sessions added, removed or re-created (a mesh turned into route
	// reflector clients) withdraw routes for a moment that other sessions
	// bring back: keep the kernel's routes until BGP settles again.
	if n.lastPeers != nil && !maps.Equal(want, n.lastPeers) && n.routesSet {
		// The change itself counts as one: at least a quiet second, also
		// when only a session went away and no event follows.
		n.settleFrom, n.lastChange = time.Now(), time.Now()
		n.log.Info("BGP sessions changed: keeping learned routes until BGP settles", "peers", len(peers))
	}
	n.lastPeers = want
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
func (n *network) ensureSpeaker(ctx context.Context, local bgp.Local) error {
	if n.speaker != nil && local.RouterID == n.local.RouterID && local.AS == n.local.AS &&
		local.ListenPort == n.local.ListenPort && slices.Equal(local.Addresses, n.local.Addresses) {
		n.mu.Lock()
		n.local = local
		n.mu.Unlock()
		return nil
	}
	if n.speaker != nil {
		n.log.Info("BGP identity changed: restarting the speaker", "as", local.AS, "routerID", local.RouterID, "port", local.ListenPort)
		if err := n.speaker.Shutdown(ctx); err != nil {
			n.log.Warn("stop BGP speaker", "err", err)
		}
		n.mu.Lock()
		n.speaker = nil
		n.mu.Unlock()
	}
	sp, err := bgp.Start(ctx, bgp.Config{RouterID: local.RouterID, AS: local.AS, ListenAddresses: local.Addresses, ListenPort: local.ListenPort},
		bgp.WithLogger(n.log.With("component", "bgp")), bgp.WithRegisterer(n.reg), bgp.OnRoute(n.onRoute), bgp.OnPeer(n.onPeer))
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.speaker, n.local = sp, local
	n.mu.Unlock()
	n.log.Info("BGP speaker started", "as", local.AS, "routerID", local.RouterID, "port", local.ListenPort, "clusterID", local.ClusterID)
	return nil
}

func (n *network) onRoute(e bgp.RouteEvent) {
	n.mu.Lock()
	if e.Withdrawn {
		delete(n.learned, e.Prefix)
	} else {
		n.learned[e.Prefix] = e
	}
	n.lastChange = time.Now()
	n.mu.Unlock()
	kick(n.kernelKick)
}

func (n *network) onPeer(e bgp.PeerEvent) {
	n.mu.Lock()
	n.peerStates[e.Address] = e.State
	n.lastChange = time.Now()
	n.mu.Unlock()
	kick(n.kernelKick)
}

// settled says whether BGP has relearned the routes since the start or
// the last change of the sessions: every session is up and nothing changed
// for a second, or routeSettle passed. Until then no learned route leaves
// the kernel (after a start the reconciler is not even handed the routes),
// so neither a restart nor a switch from mesh to route reflectors deletes
// routes that peers are about to send again.
func (n *network) settled() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if time.Since(n.settleFrom) > routeSettle {
		return true
	}
	return n.bgpErr == "" && n.establishedLocked() == len(n.wantPeers) && time.Since(n.lastChange) > time.Second
}

// withKept adds to routes the learned routes (to other nodes' pods) last
// handed to the reconciler whose prefixes routes lacks; it returns whether
// it added any.
func (n *network) withKept(routes []dataplane.Route) ([]dataplane.Route, bool) {
	have := make(map[netip.Prefix]bool, len(routes))
	for _, r := range routes {
		have[r.Prefix] = true
	}
	added := false
	for _, r := range n.lastSet {
		if (r.Kind == dataplane.Direct || r.Kind == dataplane.Tunnel) && !have[r.Prefix] {
			routes = append(routes, r)
			added = true
		}
	}
	return routes, added
}

// syncKernel computes the kernel routes from what BGP learned and hands
// them to the reconciler; it keeps tunl0 and the NAT table in line too.
func (n *network) syncKernel(ctx context.Context) {
	if n.routes == nil {
		return
	}
	in := n.st.snapshot()
	if in.self == nil {
		return
	}
	pools := dataplanePools(in.pools)
	link, problem := n.syncTunnel(ctx, in, pools)
	n.mu.Lock()
	learned := make([]dataplane.LearnedRoute, 0, len(n.learned))
	for _, e := range n.learned {
		learned = append(learned, dataplane.LearnedRoute{Prefix: e.Prefix, NextHop: e.NextHop})
	}
	n.mu.Unlock()
	plan := dataplane.Desired(dataplane.Input{Learned: learned, Pools: pools, Uplink: n.uplink, Others: n.others, OwnBlocks: in.ownBlocks,
		LocalPods: n.localPods(in.handles), Tunnel: link, TunnelProblem: problem})
	settled := n.settled()
	if n.routesSet || settled {
		if !n.routesSet {
			n.log.Info("BGP settled: programming routes", "routes", len(plan.Routes), "after", time.Since(n.started).Round(time.Millisecond))
		}
		routes := plan.Routes
		n.holding = false
		if !settled {
			routes, n.holding = n.withKept(routes)
		}
		n.routes.Set(routes)
		n.routesSet = true
		n.lastSet = routes
	}
	n.mu.Lock()
	n.programmed = n.routesSet
	n.mu.Unlock()
	if !n.natSet || !slices.Equal(pools, n.natPools) {
		if err := n.nat.Set(pools); err != nil {
			n.log.Error("natOutgoing table", "err", err)
		} else {
			n.natPools, n.natSet = pools, true
		}
	}
	var conds []api.NodeCondition
	if problem != "" {
		conds = append(conds, api.NodeCondition{Type: "IPIPUnavailable", Status: "True", Reason: "KernelHasNoIPIP", Message: problem})
	}
	n.mu.Lock()
	n.plan, n.conditions = plan, conds
	n.mu.Unlock()
}

func dataplanePools(pools []*api.IPPool) []dataplane.Pool {
	var out []dataplane.Pool
	for _, p := range pools {
		c, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil {
			continue
		}
		// Disabled pools keep their routes: only new allocations stop.
		out = append(out, dataplane.Pool{Name: p.Name, CIDR: c, IPIPMode: p.Spec.IPIPMode, VXLANMode: p.Spec.VXLANMode,
			NATOutgoing: p.Spec.NATOutgoing})
	}
	return out
}

// localPods are the pods wired by rhizome-cni on this node: host veths
// carrying rhizome-cni's alias, with the addresses of their handle.
func (n *network) localPods(handles map[string][]netip.Addr) []dataplane.LocalPod {
	links, err := netlinksafe.LinkList()
	if err != nil {
		n.log.Warn("list links", "err", err)
		return nil
	}
	var out []dataplane.LocalPod
	for _, l := range links {
		network, cid, ifName, ok := cni.ParseOwnerAlias(l.Attrs().Alias)
		if !ok {
			continue
		}
		for _, a := range handles[cnisvc.HandleID(network, cid, ifName)] {
			out = append(out, dataplane.LocalPod{Addr: a, Link: dataplane.Link{Name: l.Attrs().Name, Index: l.Attrs().Index}})
		}
	}
	return out
}

// peersUp counts established sessions, for the Node's status.
func (n *network) peersUp() (up, total int) {
	if n == nil {
		return 0, 0
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.establishedLocked(), len(n.wantPeers)
}

// establishedLocked counts the wanted sessions that are established (the
// states of removed peers linger in peerStates). Call it with mu held.
func (n *network) establishedLocked() int {
	up := 0
	for addr := range n.wantPeers {
		if n.peerStates[addr] == bgp.StateEstablished {
			up++
		}
	}
	return up
}

// nodeConditions are the conditions the Node's status carries.
func (n *network) nodeConditions() []api.NodeCondition {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.conditions)
}

// report fills the BGP and dataplane parts of the status report.
func (n *network) report(ctx context.Context, r *nodestatus.Report) {
	r.Networking = "bgp"
	n.mu.Lock()
	r.Learned = len(n.learned)
	r.BGPError = n.bgpErr
	r.Conditions = slices.Clone(n.conditions)
	plan := n.plan
	if n.tunnelAddr.IsValid() {
		r.TunnelAddress = n.tunnelAddr.String()
	}
	sp := n.speaker
	local := n.local
	programmed := n.programmed
	n.mu.Unlock()
	r.AS, r.ClusterID = local.AS, local.ClusterID
	if local.RouterID.IsValid() {
		r.RouterID = local.RouterID.String()
	}
	if sp != nil {
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
	if n.routes != nil {
		last := n.routes.Status()
		rt := &nodestatus.Routes{Programmed: programmed, LastSync: last.Time, Installed: last.Owned}
		for _, u := range plan.Unroutable {
			rt.Unroutable = append(rt.Unroutable, fmt.Sprintf("%s via %s (pool %s): %s", u.Prefix, u.NextHop, u.Pool, u.Reason))
		}
		for _, c := range last.Conflicts {
			rt.Conflicts = append(rt.Conflicts, fmt.Sprintf("%s: %s", c.Prefix, c.Route))
		}
		for _, e := range last.Errors {
			rt.Errors = append(rt.Errors, e.Error())
		}
		r.Routes = rt
	}
}

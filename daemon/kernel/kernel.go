// Package kernel programs the node's kernel for pod traffic: the routes
// to this node's pods and, from one or more route sources, to other
// nodes' blocks; tunl0 and the node's IPIP tunnel address; vxlan.rhizome,
// the node's VXLAN tunnel address and MAC, and the VXLAN routes, neighbour
// and forwarding entries computed from the datastore (they win over the
// route sources' routes); and the natOutgoing table. What should be is computed by dataplane.Desired; this
// package feeds it and applies the plan.
package kernel

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/cni"
	"github.com/rhizome-net/rhizome/daemon/cnisvc"
	"github.com/rhizome-net/rhizome/daemon/netstate"
	"github.com/rhizome-net/rhizome/daemon/nodestatus"
	"github.com/rhizome-net/rhizome/dataplane"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// RouteSource is one origin of routes to other nodes' pods: BGP's learned
// routes. (The VXLAN routes, computed from the followed state, are always
// settled and come first: the kernel part computes them itself.)
type RouteSource interface {
	// Routes returns what the source wants in the kernel now, and whether
	// it has settled. Until every source settled once, no route is
	// programmed at all (a restarted agent deletes nothing its peers are
	// about to send again); while a source settles again later, it keeps
	// the routes it returned before among those it returns.
	Routes() (routes []dataplane.LearnedRoute, settled bool)
	// Changed receives when Routes may return something new.
	Changed() <-chan struct{}
}

// Kernel keeps the node's kernel in line with the cluster state and the
// route sources.
type Kernel struct {
	log     *slog.Logger
	state   *netstate.State
	sources []RouteSource
	uplink  dataplane.Uplink
	others  []dataplane.Uplink
	routes  *dataplane.RouteReconciler
	tunnel  *tunnel
	vxlan   *vxlan
	nat     natTable

	// Owned by Run.
	started   time.Time
	routesSet bool
	settled   bool

	mu         sync.Mutex // guards what Report and Conditions read
	plan       dataplane.Plan
	conditions []api.NodeCondition
	programmed bool
}

// Deps are what the kernel part needs of the rest of the agent: the
// followed state, and the allocator and datastore for the node's tunnel
// addresses (allocated from an IPIP or a VXLAN pool, recorded in the
// Node).
type Deps struct {
	Node  string
	Addr  netip.Addr // the node's address: its device is the uplink
	State *netstate.State
	Alloc *ipam.Allocator
	Store datastore.Store
	Log   *slog.Logger
}

// Open prepares the kernel side: sysctls, the uplink, the reconcilers. It
// fails when the node cannot route pods at all.
func Open(d Deps, sources ...RouteSource) (*Kernel, error) {
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if err := dataplane.EnsureNodeSysctls(netns.None()); err != nil {
		return nil, fmt.Errorf("node sysctls (run rhizome-node privileged): %w", err)
	}
	up, err := dataplane.FindUplink(netns.None(), d.Addr)
	if err != nil {
		return nil, err
	}
	others, err := dataplane.OtherLinks(netns.None(), up)
	if err != nil {
		d.Log.Warn("list the node's other devices", "err", err)
	}
	k := &Kernel{log: d.Log, state: d.State, sources: sources, uplink: up, others: others, nat: natTable{mgr: dataplane.NewNATManager(netns.None())}}
	if k.routes, err = dataplane.NewRouteReconciler(netns.None(), dataplane.WithLogger(d.Log)); err != nil {
		return nil, fmt.Errorf("route reconciler: %w", err)
	}
	mgr, err := dataplane.NewTunnelManager(netns.None())
	if err != nil {
		k.routes.Close()
		return nil, fmt.Errorf("tunnel manager: %w", err)
	}
	k.tunnel = &tunnel{mgr: mgr, name: d.Node, alloc: d.Alloc, store: d.Store, res: datastore.NewResources(d.Store), log: d.Log}
	vmgr, err := dataplane.NewVXLANManager(netns.None())
	if err != nil {
		k.close()
		return nil, fmt.Errorf("vxlan manager: %w", err)
	}
	neigh, err := dataplane.NewNeighborReconciler(netns.None(), dataplane.WithLogger(d.Log))
	if err != nil {
		vmgr.Close()
		k.close()
		return nil, fmt.Errorf("vxlan neighbour reconciler: %w", err)
	}
	k.vxlan = &vxlan{mgr: vmgr, neigh: neigh, name: d.Node, local: d.Addr, alloc: d.Alloc, store: d.Store,
		res: datastore.NewResources(d.Store), log: d.Log}
	return k, nil
}

// Run follows the state and the route sources and programs the kernel
// until ctx ends; it leaves every route in place for the next start.
func (k *Kernel) Run(ctx context.Context) {
	k.started = time.Now()
	defer k.close()
	changes := k.state.Subscribe()
	kick := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); _ = k.routes.Run(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); _ = k.vxlan.neigh.Run(ctx) }()
	for _, s := range k.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case <-s.Changed():
					select {
					case kick <- struct{}{}:
					default:
					}
				}
			}
		}()
	}
	select {
	case <-ctx.Done():
		return
	case <-k.state.Synced():
	}
	// The tick waits for the sources to settle (every second then), and
	// retries what events do not announce (a failed tunl0, a pod's veth
	// appearing).
	interval := time.Second
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		k.sync(ctx)
		want := 10 * time.Second
		if !k.routesSet || !k.settled {
			want = time.Second
		}
		if want != interval {
			tick.Reset(want)
			interval = want
		}
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-kick:
		case <-tick.C:
		}
	}
}

func (k *Kernel) close() {
	k.routes.Close()
	k.tunnel.mgr.Close()
	if k.vxlan != nil {
		k.vxlan.mgr.Close()
		k.vxlan.neigh.Close()
	}
}

// union merges the sources' routes (the first source that names a prefix
// wins) and says whether every source has settled.
func union(sources []RouteSource) ([]dataplane.LearnedRoute, bool) {
	var out []dataplane.LearnedRoute
	seen := map[netip.Prefix]bool{}
	settled := true
	for _, s := range sources {
		routes, ok := s.Routes()
		settled = settled && ok
		for _, r := range routes {
			if !seen[r.Prefix] {
				seen[r.Prefix] = true
				out = append(out, r)
			}
		}
	}
	return out, settled
}

// sync computes the kernel routes and hands them to the reconciler; it
// keeps tunl0, vxlan.rhizome with its entries, and the NAT table in line
// too.
func (k *Kernel) sync(ctx context.Context) {
	in := k.state.Snapshot()
	if in.Self == nil {
		return
	}
	pools := Pools(in.Pools)
	link, problem := k.tunnel.sync(ctx, in, pools, k.uplink.MTU)
	dev, vproblem := k.vxlan.sync(ctx, in, pools, k.uplink)
	vx := dataplane.VXLANPlan(vxlanInput(in.Self.Name, in, pools, k.uplink, k.others, dev))
	k.vxlan.setEntries(vx)
	learned, settled := union(k.sources)
	plan := dataplane.Desired(dataplane.Input{Learned: learned, Pools: pools, Uplink: k.uplink, Others: k.others, OwnBlocks: in.OwnBlocks,
		LocalPods: k.localPods(in.Handles), Tunnel: link, TunnelProblem: problem, VXLAN: vx.Routes})
	plan.Unroutable = append(plan.Unroutable, vx.Unroutable...)
	if k.routesSet || settled {
		if !k.routesSet {
			k.log.Info("route sources settled: programming routes", "routes", len(plan.Routes), "after", time.Since(k.started).Round(time.Millisecond))
		}
		k.routes.Set(plan.Routes)
		k.routesSet = true
	}
	k.settled = settled
	k.nat.set(pools, k.log)
	var conds []api.NodeCondition
	if problem != "" {
		conds = append(conds, api.NodeCondition{Type: "IPIPUnavailable", Status: "True", Reason: "KernelHasNoIPIP", Message: problem})
	}
	if vproblem != "" {
		conds = append(conds, api.NodeCondition{Type: "VXLANUnavailable", Status: "True", Reason: "VXLANDeviceFailed", Message: vproblem})
	}
	k.mu.Lock()
	k.plan, k.conditions, k.programmed = plan, conds, k.routesSet
	k.mu.Unlock()
}

// Pools converts the pools for the dataplane. Disabled pools stay: only
// new allocations from them stop, their pods keep their routes,
// encapsulation and NAT.
func Pools(pools []*api.IPPool) []dataplane.Pool {
	var out []dataplane.Pool
	for _, p := range pools {
		c, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil {
			continue
		}
		out = append(out, dataplane.Pool{Name: p.Name, CIDR: c, IPIPMode: p.Spec.IPIPMode, VXLANMode: p.Spec.VXLANMode,
			NATOutgoing: p.Spec.NATOutgoing})
	}
	return out
}

// natTable is the natOutgoing table as last set.
type natTable struct {
	mgr   *dataplane.NATManager
	pools []dataplane.Pool
	done  bool
}

func (n *natTable) set(pools []dataplane.Pool, log *slog.Logger) {
	if n.done && slices.Equal(pools, n.pools) {
		return
	}
	if err := n.mgr.Set(pools); err != nil {
		log.Error("natOutgoing table", "err", err)
		return
	}
	n.pools, n.done = pools, true
}

// localPods are the pods wired by rhizome-cni on this node: host veths
// carrying rhizome-cni's alias, with the addresses of their handle.
func (k *Kernel) localPods(handles map[string][]netip.Addr) []dataplane.LocalPod {
	links, err := dataplane.AliasedLinks(netns.None())
	if err != nil {
		k.log.Warn("list links", "err", err)
		return nil
	}
	var out []dataplane.LocalPod
	for _, l := range links {
		network, cid, ifName, ok := cni.ParseOwnerAlias(l.Alias)
		if !ok {
			continue
		}
		for _, a := range handles[cnisvc.HandleID(network, cid, ifName)] {
			out = append(out, dataplane.LocalPod{Addr: a, Link: l.Link})
		}
	}
	return out
}

// Conditions are the conditions the Node's status carries.
func (k *Kernel) Conditions() []api.NodeCondition {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.conditions)
}

// Report fills the dataplane parts of the status report.
func (k *Kernel) Report(r *nodestatus.Report) {
	k.mu.Lock()
	plan, programmed := k.plan, k.programmed
	r.Conditions = slices.Clone(k.conditions)
	k.mu.Unlock()
	if a := k.tunnel.current(); a.IsValid() {
		r.TunnelAddress = a.String()
	}
	if a := k.vxlan.current(); a.IsValid() {
		r.VXLANTunnelAddress = a.String()
	}
	last := k.routes.Status()
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

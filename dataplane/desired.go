// Package dataplane turns what the node learned (routes of other nodes'
// blocks, its own blocks, the pools and their encapsulation modes) into
// kernel state: routes marked with rhizome's route protocol, the tunl0 IPIP
// device, the VXLAN devices with their neighbour and forwarding entries,
// the natOutgoing nftables table and the sysctls a node needs. The desired
// state is computed by pure functions (Desired, VXLANPlan, PodMTU); the
// reconcilers apply it through one netlink handle per network namespace.
package dataplane

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/rhizome-net/rhizome/api"
)

// TunnelDevice is the name of the IPIP device the kernel creates in every
// namespace once the ipip module is loaded (the "fallback" device).
const TunnelDevice = "tunl0"

// Encapsulation overheads subtracted from the uplink MTU.
const (
	IPIPOverhead  = 20
	VXLANOverhead = 50
)

// LearnedRoute is a prefix another node (or a peer) advertises, with the
// next hop it advertised.
type LearnedRoute struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
}

// Pool is what the dataplane needs to know of an IPPool.
type Pool struct {
	Name        string
	CIDR        netip.Prefix
	IPIPMode    api.EncapMode
	VXLANMode   api.EncapMode
	NATOutgoing bool
}

// Link names a network device of the node.
type Link struct {
	Name  string
	Index int
}

// Uplink is the node's device towards the other nodes.
type Uplink struct {
	Link
	// Addrs are the uplink's addresses with their subnet lengths
	// (10.0.0.5/24); a next hop inside one of these subnets is on link.
	Addrs []netip.Prefix
	MTU   int
	// Gateways are the next hops of the default routes through the uplink
	// (one per family at most): where the fabric takes what no route of
	// this node covers.
	Gateways []netip.Addr
}

// gateway is the uplink's default gateway of a's family.
func (u Uplink) gateway(a netip.Addr) (netip.Addr, bool) {
	for _, g := range u.Gateways {
		if g.Is4() == a.Is4() {
			return g, true
		}
	}
	return netip.Addr{}, false
}

// LocalPod is a pod on this node: its address and the host side of its
// veth pair.
type LocalPod struct {
	Addr netip.Addr
	Link Link
}

// Input is everything Desired needs; the agent fills it from the
// datastore and from BGP.
type Input struct {
	Learned []LearnedRoute
	Pools   []Pool
	Uplink  Uplink
	// Others are the node's other devices with addresses (a router node
	// between racks has one per rack): a next hop on one of their
	// subnets is on link through that device.
	Others    []Uplink
	OwnBlocks []netip.Prefix
	LocalPods []LocalPod
	// Tunnel is tunl0 when it is up in this namespace; Index 0 means IPIP
	// is not available, and TunnelProblem says why (for instance the
	// ErrNoIPIP message).
	Tunnel        Link
	TunnelProblem string
	// VXLAN are the routes VXLANPlan computed from the datastore; they
	// win over learned routes for the same prefixes.
	VXLAN []Route
}

// RouteKind says which shape a kernel route has.
type RouteKind int

// Route kinds, as in docs/design.md §6.
const (
	// Direct is `P via N dev <uplink>`.
	Direct RouteKind = iota + 1
	// Tunnel is `P via N dev tunl0 onlink`.
	Tunnel
	// Blackhole is `blackhole P` for the node's own blocks.
	Blackhole
	// PodLink is `<pod>/32 dev <veth> scope link`.
	PodLink
	// VXLAN is `P via <remote tunnel address> dev vxlan.rhizome onlink`
	// (VXLANPlan).
	VXLAN
)

func (k RouteKind) String() string {
	switch k {
	case Direct:
		return "direct"
	case Tunnel:
		return "tunnel"
	case Blackhole:
		return "blackhole"
	case PodLink:
		return "pod"
	case VXLAN:
		return "vxlan"
	}
	return fmt.Sprintf("RouteKind(%d)", int(k))
}

// Route is one kernel route rhizome wants, in the main table.
type Route struct {
	Prefix  netip.Prefix
	Kind    RouteKind
	Gateway netip.Addr // Direct, Tunnel and VXLAN
	Link    Link       // Direct, Tunnel, VXLAN and PodLink
}

func (r Route) String() string {
	switch r.Kind {
	case Blackhole:
		return "blackhole " + r.Prefix.String()
	case PodLink:
		return fmt.Sprintf("%s dev %s scope link", r.Prefix, r.Link.Name)
	case Tunnel, VXLAN:
		return fmt.Sprintf("%s via %s dev %s onlink", r.Prefix, r.Gateway, r.Link.Name)
	}
	return fmt.Sprintf("%s via %s dev %s", r.Prefix, r.Gateway, r.Link.Name)
}

// Unroutable is a learned prefix rhizome does not install, and why; the
// agent shows these in the node's status.
type Unroutable struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	Pool    string
	Reason  string
}

// Plan is the desired kernel state.
type Plan struct {
	Routes     []Route // sorted by prefix
	Unroutable []Unroutable
}

// NeedsIPIP reports whether any pool asks for IPIP encapsulation, i.e.
// whether tunl0 must exist on this node.
func NeedsIPIP(pools []Pool) bool {
	for _, p := range pools {
		if p.CIDR.Addr().Is4() && usesEncap(p.IPIPMode) {
			return true
		}
	}
	return false
}

func usesEncap(m api.EncapMode) bool { return m == api.EncapAlways || m == api.EncapCrossSubnet }

// Desired computes the kernel routes for in, following docs/design.md §6. It is
// pure: the same input gives the same plan, and a mode change gives a plan
// that no longer holds any route of the old mode.
func Desired(in Input) Plan {
	var plan Plan
	taken := make(map[netip.Prefix]bool)
	add := func(r Route) {
		taken[r.Prefix] = true
		plan.Routes = append(plan.Routes, r)
	}
	for _, b := range in.OwnBlocks {
		b = b.Masked()
		if !taken[b] {
			add(Route{Prefix: b, Kind: Blackhole})
		}
	}
	for _, p := range in.LocalPods {
		pfx := netip.PrefixFrom(p.Addr, p.Addr.BitLen())
		if !taken[pfx] {
			add(Route{Prefix: pfx, Kind: PodLink, Link: p.Link})
		}
	}

	for _, r := range in.VXLAN {
		if !taken[r.Prefix.Masked()] {
			r.Prefix = r.Prefix.Masked()
			add(r)
		}
	}

	learned := slices.Clone(in.Learned)
	// One route per prefix: with several next hops, the lowest usable one
	// wins, so the choice does not depend on the order BGP reported them in.
	slices.SortFunc(learned, func(a, b LearnedRoute) int {
		return cmp.Or(comparePrefix(a.Prefix.Masked(), b.Prefix.Masked()), a.NextHop.Compare(b.NextHop))
	})
	var refused []Unroutable
	var fabric []Route
	for _, lr := range learned {
		pfx := lr.Prefix.Masked()
		if taken[pfx] {
			continue
		}
		r, reason, pool := routeFor(in, pfx, lr.NextHop)
		if reason != "" {
			if r.Kind == Direct && !taken[pfx] {
				fabric = append(fabric, r)
			}
			refused = append(refused, Unroutable{Prefix: pfx, NextHop: lr.NextHop, Pool: pool, Reason: reason})
			continue
		}
		add(r)
	}
	// A prefix left to the fabric inside a route of this node (a host route
	// of an address borrowed from one of its blocks, or from a block learned
	// on link) would be caught by that route: it goes to the fabric
	// explicitly, through the uplink's gateway (recursive next hop).
	for _, r := range fabric {
		if !taken[r.Prefix] && covers(plan.Routes, r.Prefix) {
			add(r)
		}
	}
	for _, u := range refused {
		if !taken[u.Prefix] {
			taken[u.Prefix] = true // one entry per prefix: its lowest next hop
			plan.Unroutable = append(plan.Unroutable, u)
		}
	}
	slices.SortFunc(plan.Routes, func(a, b Route) int { return comparePrefix(a.Prefix, b.Prefix) })
	return plan
}

// routeFor decides the route for one learned prefix, or the reason it is
// not installed.
func routeFor(in Input, pfx netip.Prefix, nh netip.Addr) (Route, string, string) {
	pool, inPool := poolOf(in.Pools, pfx)
	switch {
	case !nh.IsValid():
		return Route{}, "no next hop", pool.Name
	case nh.Is4() != pfx.Addr().Is4():
		return Route{}, fmt.Sprintf("next hop %s is of the other address family", nh), pool.Name
	case isOwnAddr(in.Uplink.Addrs, nh):
		return Route{}, fmt.Sprintf("next hop %s is this node's own address", nh), pool.Name
	}
	link, onLink := in.Uplink.Link, onLocalSubnet(in.Uplink.Addrs, nh)
	for _, o := range in.Others {
		if !onLink && onLocalSubnet(o.Addrs, nh) && !isOwnAddr(o.Addrs, nh) {
			link, onLink = o.Link, true
		}
	}
	direct := Route{Prefix: pfx, Kind: Direct, Gateway: nh, Link: link}
	tunnel := Route{Prefix: pfx, Kind: Tunnel, Gateway: nh, Link: in.Tunnel}

	ipip, vxlan := api.EncapNever, api.EncapNever
	if inPool {
		if pfx.Addr().Is4() && pool.IPIPMode != "" {
			ipip = pool.IPIPMode
		}
		if pool.VXLANMode != "" {
			vxlan = pool.VXLANMode
		}
	}
	switch {
	case ipip == api.EncapAlways || (ipip == api.EncapCrossSubnet && !onLink):
		if in.Tunnel.Index == 0 {
			why := in.TunnelProblem
			if why == "" {
				why = "tunl0 is not available"
			}
			return Route{}, fmt.Sprintf("needs IPIP (ipipMode %s): %s", ipip, why), pool.Name
		}
		return tunnel, "", pool.Name
	case vxlan == api.EncapAlways || (vxlan == api.EncapCrossSubnet && !onLink):
		return Route{}, fmt.Sprintf("needs VXLAN (vxlanMode %s), and the VXLAN routes (VXLANPlan, from the node records) have none for it", vxlan), pool.Name
	case onLink:
		return direct, "", pool.Name
	}
	why := fmt.Sprintf("next hop %s is not on a local subnet of %s and the pool does not encapsulate: the fabric must route it", nh, in.Uplink.Name)
	if gw, ok := in.Uplink.gateway(nh); ok {
		// The route Desired installs when a route of this node covers pfx.
		return Route{Prefix: pfx, Kind: Direct, Gateway: gw, Link: in.Uplink.Link}, why, pool.Name
	}
	return Route{}, why, pool.Name
}

// covers reports whether a route less specific than p contains it.
func covers(routes []Route, p netip.Prefix) bool {
	for _, r := range routes {
		if r.Prefix.Bits() < p.Bits() && r.Prefix.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// poolOf finds the most specific pool containing pfx.
func poolOf(pools []Pool, pfx netip.Prefix) (Pool, bool) {
	var best Pool
	found := false
	for _, p := range pools {
		if p.CIDR.Bits() <= pfx.Bits() && p.CIDR.Contains(pfx.Addr()) && (!found || p.CIDR.Bits() > best.CIDR.Bits()) {
			best, found = p, true
		}
	}
	return best, found
}

func onLocalSubnet(addrs []netip.Prefix, a netip.Addr) bool {
	for _, p := range addrs {
		if p.Masked().Contains(a) {
			return true
		}
	}
	return false
}

func isOwnAddr(addrs []netip.Prefix, a netip.Addr) bool {
	for _, p := range addrs {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// TunnelMTU is the MTU of tunl0 for an uplink MTU.
func TunnelMTU(uplinkMTU int) int { return uplinkMTU - IPIPOverhead }

// PodMTU is the MTU pods get when the CNI configuration leaves it at 0:
// the uplink MTU less the largest overhead of the encapsulations the pools
// use on this node (IPIP 20, VXLAN 50, VXLAN of an IPv6 pool 70: its
// device, vxlan6.rhizome, sends over the node's IPv6 address).
func PodMTU(uplinkMTU int, pools []Pool) int {
	overhead := 0
	for _, p := range pools {
		if p.CIDR.Addr().Is4() && usesEncap(p.IPIPMode) {
			overhead = max(overhead, IPIPOverhead)
		}
		if usesEncap(p.VXLANMode) {
			overhead = max(overhead, uplinkMTU-VXLANMTU(uplinkMTU, p.CIDR.Addr().Is6()))
		}
	}
	return uplinkMTU - overhead
}

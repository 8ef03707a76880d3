package dataplane

import (
	"bytes"
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/rhizome-net/rhizome/api"
)

// VXLANEndpoint is one family's half of a node's VXLAN identity, as its
// node record has it.
type VXLANEndpoint struct {
	// Addr is the node's address (the record's ipv4Address or
	// ipv6Address, without the length): the outer destination of the
	// encapsulated packets.
	Addr netip.Addr
	// TunnelAddr and MAC are those of its VXLAN device (ipv4VXLANTunnelAddr
	// and vxlanTunnelMACAddr, or ipv6VXLANTunnelAddr and
	// vxlanTunnelMACAddrV6).
	TunnelAddr netip.Addr
	MAC        net.HardwareAddr
}

// VXLANNode is another node as VXLAN routing needs it: its record's
// addresses and the blocks affine to it.
type VXLANNode struct {
	Name   string
	V4, V6 VXLANEndpoint
	Blocks []netip.Prefix
}

// VXLANInput is everything VXLANPlan needs; the agent fills it from the
// datastore (node records, block affinities, pools), with no BGP.
type VXLANInput struct {
	// Self is this node's name; its own record in Nodes is skipped.
	Self  string
	Nodes []VXLANNode
	Pools []Pool
	// Uplink and Others decide CrossSubnet: a node whose address is on
	// one of their subnets is reached without encapsulation.
	Uplink Uplink
	Others []Uplink
	// Device and DeviceV6 are this node's VXLAN devices (VXLANManager's
	// Ensure); Index 0 means the family's device is not up, and the
	// routes that need it are reported.
	Device, DeviceV6 Link
}

// Neighbor is a permanent neighbour entry on a VXLAN device: `ip neigh
// replace <Addr> lladdr <MAC> dev <Link> nud permanent`.
type Neighbor struct {
	Addr netip.Addr
	MAC  net.HardwareAddr
	Link Link
}

func (n Neighbor) String() string {
	return fmt.Sprintf("%s lladdr %s dev %s permanent", n.Addr, n.MAC, n.Link.Name)
}

// FDBEntry is a forwarding entry of a VXLAN device: `bridge fdb replace
// <MAC> dev <Link> dst <Dst> self permanent`.
type FDBEntry struct {
	MAC  net.HardwareAddr
	Dst  netip.Addr
	Link Link
}

func (f FDBEntry) String() string {
	return fmt.Sprintf("%s dev %s dst %s self permanent", f.MAC, f.Link.Name, f.Dst)
}

// VXLANRoutes is the kernel state VXLAN pools need: routes (for
// RouteReconciler, through Input.VXLAN and Desired) and the neighbour and
// forwarding entries (for NeighborReconciler).
type VXLANRoutes struct {
	Routes     []Route // sorted by prefix
	Neighbors  []Neighbor
	FDB        []FDBEntry
	Unroutable []Unroutable
}

// VXLANPlan computes the routes, neighbour and forwarding entries to the
// other nodes' blocks in pools with vxlanMode Always or CrossSubnet. It is
// pure; it is the agent's VXLAN route source, next to the routes BGP
// learns. For a block P of node N in such a pool:
//
//	P via <N's tunnel address> dev vxlan.rhizome onlink
//	<N's tunnel address> lladdr <N's MAC> dev vxlan.rhizome (neighbour)
//	<N's MAC> dst <N's address> dev vxlan.rhizome (forwarding)
//
// and with CrossSubnet, when N's address is on a subnet of this node, a
// plain `P via <N's address> dev <uplink>` instead. Blocks of pools
// without VXLAN are left to Desired's other route kinds.
func VXLANPlan(in VXLANInput) VXLANRoutes {
	var out VXLANRoutes
	nodes := slices.Clone(in.Nodes)
	// Deterministic choice when two records claim one block or one MAC.
	slices.SortFunc(nodes, func(a, b VXLANNode) int { return cmp.Compare(a.Name, b.Name) })

	routeOf := make(map[netip.Prefix]string) // prefix -> node routed to
	neighOf := make(map[netip.Addr]string)   // tunnel address -> node
	fdbOf := make(map[string]string)         // MAC -> node
	refuse := func(p netip.Prefix, nh netip.Addr, pool, why string) {
		out.Unroutable = append(out.Unroutable, Unroutable{Prefix: p, NextHop: nh, Pool: pool, Reason: why})
	}
	for _, n := range nodes {
		if n.Name == in.Self {
			continue
		}
		for _, b := range n.Blocks {
			b = b.Masked()
			pool, ok := poolOf(in.Pools, b)
			if !ok || !usesEncap(pool.VXLANMode) {
				continue
			}
			v6 := b.Addr().Is6()
			ep, dev, fam := n.V4, in.Device, "IPv4"
			if v6 {
				ep, dev, fam = n.V6, in.DeviceV6, "IPv6"
			}
			if other, dup := routeOf[b]; dup {
				refuse(b, ep.TunnelAddr, pool.Name, fmt.Sprintf("block is also affine to node %s, which is routed", other))
				continue
			}
			if !ep.Addr.IsValid() || ep.Addr.Is6() != v6 {
				refuse(b, netip.Addr{}, pool.Name, fmt.Sprintf("node %s has no %s address in its record", n.Name, fam))
				continue
			}
			if pool.VXLANMode == api.EncapCrossSubnet {
				if link, ok := onLinkVia(in, ep.Addr); ok {
					routeOf[b] = n.Name
					out.Routes = append(out.Routes, Route{Prefix: b, Kind: Direct, Gateway: ep.Addr, Link: link})
					continue
				}
			}
			switch {
			case !ep.TunnelAddr.IsValid() || ep.TunnelAddr.Is6() != v6 || len(ep.MAC) != 6:
				refuse(b, ep.Addr, pool.Name, fmt.Sprintf("node %s has no %s VXLAN tunnel address and MAC in its record yet (its agent sets them once %s is up)",
					n.Name, fam, VXLANDeviceName(v6)))
				continue
			case dev.Index == 0:
				refuse(b, ep.TunnelAddr, pool.Name, fmt.Sprintf("needs VXLAN (vxlanMode %s): %s is not up on this node", pool.VXLANMode, VXLANDeviceName(v6)))
				continue
			}
			if other, dup := neighOf[ep.TunnelAddr]; dup && other != n.Name {
				refuse(b, ep.TunnelAddr, pool.Name, fmt.Sprintf("node %s has the VXLAN tunnel address of node %s", n.Name, other))
				continue
			}
			if other, dup := fdbOf[string(ep.MAC)]; dup && other != n.Name {
				refuse(b, ep.TunnelAddr, pool.Name, fmt.Sprintf("node %s has the VXLAN MAC %s of node %s", n.Name, ep.MAC, other))
				continue
			}
			routeOf[b] = n.Name
			out.Routes = append(out.Routes, Route{Prefix: b, Kind: VXLAN, Gateway: ep.TunnelAddr, Link: dev})
			if _, have := neighOf[ep.TunnelAddr]; !have {
				neighOf[ep.TunnelAddr] = n.Name
				fdbOf[string(ep.MAC)] = n.Name
				out.Neighbors = append(out.Neighbors, Neighbor{Addr: ep.TunnelAddr, MAC: slices.Clone(ep.MAC), Link: dev})
				out.FDB = append(out.FDB, FDBEntry{MAC: slices.Clone(ep.MAC), Dst: ep.Addr, Link: dev})
			}
		}
	}
	slices.SortFunc(out.Routes, func(a, b Route) int { return comparePrefix(a.Prefix, b.Prefix) })
	slices.SortFunc(out.Neighbors, func(a, b Neighbor) int { return a.Addr.Compare(b.Addr) })
	slices.SortFunc(out.FDB, func(a, b FDBEntry) int { return bytes.Compare(a.MAC, b.MAC) })
	slices.SortFunc(out.Unroutable, func(a, b Unroutable) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out
}

// onLinkVia finds the device of this node on whose subnet a is (the
// uplink first), for CrossSubnet's unencapsulated routes.
func onLinkVia(in VXLANInput, a netip.Addr) (Link, bool) {
	for _, u := range append([]Uplink{in.Uplink}, in.Others...) {
		if onLocalSubnet(u.Addrs, a) && !isOwnAddr(u.Addrs, a) {
			return u.Link, true
		}
	}
	return Link{}, false
}

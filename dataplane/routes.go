package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/rhizome-net/rhizome/api"
)

// toNetlink renders a desired route as the netlink route rhizome installs.
func toNetlink(r Route) *netlink.Route {
	nr := &netlink.Route{
		Dst:      prefixToIPNet(r.Prefix),
		Protocol: api.RouteProtocol,
		Table:    unix.RT_TABLE_MAIN,
		Type:     unix.RTN_UNICAST,
	}
	switch r.Kind {
	case Blackhole:
		nr.Type = unix.RTN_BLACKHOLE
	case PodLink:
		nr.LinkIndex = r.Link.Index
		nr.Scope = netlink.SCOPE_LINK
	case Direct:
		nr.LinkIndex = r.Link.Index
		nr.Gw = r.Gateway.AsSlice()
	case Tunnel:
		nr.LinkIndex = r.Link.Index
		nr.Gw = r.Gateway.AsSlice()
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

// sameRoute says whether the kernel route k is the desired route r in every
// field rhizome sets.
func sameRoute(k netlink.Route, r Route) bool {
	want := toNetlink(r)
	if k.Type != want.Type || k.Scope != want.Scope {
		return false
	}
	if r.Kind == Blackhole {
		return true // the kernel reports v6 blackholes on lo; the device means nothing
	}
	if k.LinkIndex != want.LinkIndex || !k.Gw.Equal(want.Gw) || len(k.MultiPath) > 0 {
		return false
	}
	return k.Flags&int(netlink.FLAG_ONLINK) == want.Flags&int(netlink.FLAG_ONLINK)
}

// isPodRoute reports a `<pod>/32 dev <veth> scope link` route: the CNI
// plugin adds those on ADD and removes them on DEL, so the reconciler
// repairs the ones it is told about but never deletes one it was not told
// about (the agent may not have heard of a brand-new pod yet).
func isPodRoute(k netlink.Route) bool {
	return k.Type == unix.RTN_UNICAST && k.Scope == netlink.SCOPE_LINK && k.Gw == nil && len(k.MultiPath) == 0
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// routeKey is the destination of a kernel route; a default route (no Dst)
// is keyed by its family's zero prefix.
func routeKey(k netlink.Route) (netip.Prefix, bool) {
	if k.Dst != nil {
		return ipNetToPrefix(k.Dst)
	}
	switch k.Family {
	case unix.AF_INET:
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0), true
	case unix.AF_INET6:
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0), true
	}
	return netip.Prefix{}, false
}

// listMain dumps the main routing table of both families.
func listMain(h *netlink.Handle) ([]netlink.Route, error) {
	return retryDump("list routes of the main table", func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
}

// isExist reports the kernel's "route already exists" answer.
func isExist(err error) bool { return errors.Is(err, unix.EEXIST) }

// describe renders a kernel route for status and logs.
func describe(k netlink.Route) string {
	return fmt.Sprintf("%s (protocol %d)", k.String(), int(k.Protocol))
}

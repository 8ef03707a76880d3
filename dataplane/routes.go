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
	case Tunnel, VXLAN:
		nr.LinkIndex = r.Link.Index
		nr.Gw = r.Gateway.AsSlice()
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

// sameRoute says whether the kernel route k is the desired route r in every
// field rhizome sets. It runs for every wanted prefix on every sync, so it
// compares in place rather than rendering r with toNetlink.
func sameRoute(k netlink.Route, r Route) bool {
	if r.Kind == Blackhole {
		// The kernel reports v6 blackholes on lo; the device means nothing.
		return k.Type == unix.RTN_BLACKHOLE
	}
	if k.Type != unix.RTN_UNICAST || len(k.MultiPath) > 0 {
		return false
	}
	// The kernel reports every IPv6 route with scope universe, whatever
	// scope it was added with; only an IPv4 scope means something.
	if wantScope := scopeOf(r.Kind); !is6(k) && k.Scope != wantScope {
		return false
	}
	if k.LinkIndex != r.Link.Index || !sameAddr(k.Gw, r.Gateway) {
		return false
	}
	onlink := k.Flags&int(netlink.FLAG_ONLINK) != 0
	return onlink == (r.Kind == Tunnel || r.Kind == VXLAN)
}

func scopeOf(k RouteKind) netlink.Scope {
	if k == PodLink {
		return netlink.SCOPE_LINK
	}
	return netlink.SCOPE_UNIVERSE
}

// sameAddr compares a kernel gateway with a desired one (invalid: none).
func sameAddr(ip net.IP, a netip.Addr) bool {
	if len(ip) == 0 || !a.IsValid() {
		return len(ip) == 0 && !a.IsValid()
	}
	k, ok := netip.AddrFromSlice(ip)
	return ok && k.Unmap() == a.Unmap()
}

// sameEntry says whether two kernel routes of one prefix are the same
// entry as far as rhizome can tell: the same shape (as sameRoute) and the
// same metric. It matches a route event against the routes the reconciler
// believes are in the table.
func sameEntry(a, b netlink.Route) bool {
	if a.Type != b.Type || metric(a) != metric(b) {
		return false
	}
	if a.Type == unix.RTN_BLACKHOLE {
		return true
	}
	if len(a.MultiPath) > 0 || len(b.MultiPath) > 0 {
		return false // never rhizome's; an event for one is not explained
	}
	if !is6(a) && a.Scope != b.Scope {
		return false
	}
	return a.LinkIndex == b.LinkIndex && a.Gw.Equal(b.Gw) &&
		a.Flags&int(netlink.FLAG_ONLINK) == b.Flags&int(netlink.FLAG_ONLINK)
}

// metric is the route's priority as the kernel keeps it: an IPv6 route
// added with 0 gets the default 1024.
func metric(k netlink.Route) int {
	if k.Priority == 0 && is6(k) {
		return 1024
	}
	return k.Priority
}

// is6 reports an IPv6 route, whether it came from the kernel (Family set)
// or from toNetlink (only Dst set).
func is6(k netlink.Route) bool {
	if k.Family != 0 {
		return k.Family == unix.AF_INET6
	}
	return k.Dst != nil && k.Dst.IP.To4() == nil
}

// isPodRoute reports a `<pod>/32 dev <veth> scope link` route (on IPv6 any
// route to a device without gateway: the kernel shows no scope there): the CNI plugin
// adds those on ADD and removes them on DEL, so the reconciler repairs the
// ones it is told about but never deletes one it was not told about (the
// agent may not have heard of a brand-new pod yet).
func isPodRoute(k netlink.Route) bool {
	return k.Type == unix.RTN_UNICAST && (k.Scope == netlink.SCOPE_LINK || is6(k)) &&
		k.Gw == nil && k.LinkIndex != 0 && len(k.MultiPath) == 0
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

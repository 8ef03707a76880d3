package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DiscoverUplink reads the uplink device name in ns (netns.None() for the
// caller's namespace): its index, MTU and global addresses with their
// subnets, as Desired and PodMTU need them.
func DiscoverUplink(ns netns.NsHandle, name string) (Uplink, error) {
	h, err := newHandle(ns)
	if err != nil {
		return Uplink{}, err
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		return Uplink{}, fmt.Errorf("uplink %s: %w: check the node's interface setting", name, err)
	}
	addrs, err := retryDump("list addresses of "+name, func() ([]netlink.Addr, error) {
		return h.AddrList(link, netlink.FAMILY_ALL)
	})
	if err != nil {
		return Uplink{}, err
	}
	up := Uplink{Link: Link{Name: name, Index: link.Attrs().Index}, MTU: link.Attrs().MTU}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap().IsLinkLocalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		up.Addrs = append(up.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
	}
	routes, err := retryDump("list routes of "+name, func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return Uplink{}, err
	}
	for _, r := range routes {
		gw, ok := netip.AddrFromSlice(r.Gw)
		if !ok || maskOf(r) != 0 {
			continue
		}
		if _, have := up.gateway(gw.Unmap()); !have {
			up.Gateways = append(up.Gateways, gw.Unmap())
		}
	}
	return up, nil
}

// maskOf is the length of a route's destination; a default route has none
// (nil) or a zero-length one.
func maskOf(r netlink.Route) int {
	if r.Dst == nil {
		return 0
	}
	ones, _ := r.Dst.Mask.Size()
	return ones
}

package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
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
	return up, nil
}

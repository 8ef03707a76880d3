package dataplane

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// FindUplink is the device in ns (netns.None() for the caller's namespace)
// that carries the node's address, discovered as DiscoverUplink does.
func FindUplink(ns netns.NsHandle, addr netip.Addr) (Uplink, error) {
	h, err := newHandle(ns)
	if err != nil {
		return Uplink{}, err
	}
	defer h.Close()
	addrs, err := retryDump("list addresses", func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return Uplink{}, err
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			l, err := h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return Uplink{}, fmt.Errorf("uplink of %s: %w", addr, err)
			}
			return DiscoverUplink(ns, l.Attrs().Name)
		}
	}
	return Uplink{}, fmt.Errorf("node address %s is on no interface of this host: set RHIZOME_IP or RHIZOME_IP_AUTODETECTION_METHOD", addr)
}

// OtherLinks are the devices in ns besides the uplink that have global
// addresses (the legs of a router node), but not pods' veths (rz*) or
// tunl0.
func OtherLinks(ns netns.NsHandle, up Uplink) ([]Uplink, error) {
	links, err := listLinks(ns)
	if err != nil {
		return nil, err
	}
	var out []Uplink
	for _, l := range links {
		a := l.Attrs()
		if a.Index == up.Index || a.Name == "lo" || a.Name == TunnelDevice || strings.HasPrefix(a.Name, "rz") {
			continue
		}
		if o, err := DiscoverUplink(ns, a.Name); err == nil && len(o.Addrs) > 0 {
			out = append(out, o)
		}
	}
	return out, nil
}

// AliasedLink is a device with an alias (rhizome-cni names the pod's
// owner in the alias of its host-side veth).
type AliasedLink struct {
	Link
	Alias string
}

// AliasedLinks lists the devices in ns that carry an alias.
func AliasedLinks(ns netns.NsHandle) ([]AliasedLink, error) {
	links, err := listLinks(ns)
	if err != nil {
		return nil, err
	}
	var out []AliasedLink
	for _, l := range links {
		if a := l.Attrs(); a.Alias != "" {
			out = append(out, AliasedLink{Link: Link{Name: a.Name, Index: a.Index}, Alias: a.Alias})
		}
	}
	return out, nil
}

func listLinks(ns netns.NsHandle) ([]netlink.Link, error) {
	h, err := newHandle(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return retryDump("list links", h.LinkList)
}

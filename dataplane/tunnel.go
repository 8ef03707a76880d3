package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNoIPIP is returned when the kernel cannot make IPIP devices. The agent
// reports it for the pools that need IPIP and keeps serving the others.
var ErrNoIPIP = errors.New("kernel has no ipip support: load module ipip, or use ipipMode: Never")

// TunnelManager keeps tunl0 in one network namespace as the IPIP pools
// need it.
type TunnelManager struct {
	h *netlink.Handle
}

// NewTunnelManager opens a route-netlink handle in ns (netns.None() for the
// caller's namespace).
func NewTunnelManager(ns netns.NsHandle) (*TunnelManager, error) {
	h, err := newHandle(ns)
	if err != nil {
		return nil, err
	}
	return &TunnelManager{h: h}, nil
}

// Close releases the netlink handle; tunl0 stays as it is.
func (m *TunnelManager) Close() { m.h.Close() }

// Ensure makes tunl0 exist (adopting the kernel's fallback device, or
// creating it where the namespace has none), be up, have the given MTU
// (TunnelMTU of the uplink), and carry exactly addr as a /32 (no address
// when addr is the zero Addr: the tunnel address was released). It returns
// ErrNoIPIP (wrapped) when the kernel has no ipip support.
func (m *TunnelManager) Ensure(mtu int, addr netip.Addr) (Link, error) {
	if addr.IsValid() && !addr.Is4() {
		return Link{}, fmt.Errorf("tunnel address %s: IPIP carries IPv4 only: use an address from an IPv4 pool", addr)
	}
	link, err := m.tunnel()
	if err != nil {
		return Link{}, err
	}
	attrs := link.Attrs()
	if mtu > 0 && attrs.MTU != mtu {
		if err := m.h.LinkSetMTU(link, mtu); err != nil {
			return Link{}, fmt.Errorf("set %s MTU to %d: %w", TunnelDevice, mtu, err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := m.h.LinkSetUp(link); err != nil {
			return Link{}, fmt.Errorf("bring %s up: %w", TunnelDevice, err)
		}
	}
	if err := m.setAddr(link, addr); err != nil {
		return Link{}, err
	}
	return Link{Name: TunnelDevice, Index: attrs.Index}, nil
}

// Release removes the tunnel address and takes tunl0 down; used when no
// IPIP pool selects the node any more and on uninstall. The fallback device
// itself belongs to the kernel and stays.
func (m *TunnelManager) Release() error {
	link, err := m.h.LinkByName(TunnelDevice)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", TunnelDevice, err)
	}
	if err := m.setAddr(link, netip.Addr{}); err != nil {
		return err
	}
	if err := m.h.LinkSetDown(link); err != nil {
		return fmt.Errorf("take %s down: %w", TunnelDevice, err)
	}
	return nil
}

// tunnel finds tunl0 or creates it.
func (m *TunnelManager) tunnel() (netlink.Link, error) {
	link, err := m.h.LinkByName(TunnelDevice)
	if err == nil {
		if link.Type() != "ipip" {
			return nil, fmt.Errorf("device %s is of type %s, not ipip: rename or delete it", TunnelDevice, link.Type())
		}
		return link, nil
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return nil, fmt.Errorf("look up %s: %w", TunnelDevice, err)
	}
	err = m.h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: TunnelDevice}})
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		// EEXIST: loading the module made the fallback device meanwhile.
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOENT):
		return nil, fmt.Errorf("create %s: %w (%v)", TunnelDevice, ErrNoIPIP, err)
	default:
		return nil, fmt.Errorf("create %s: %w", TunnelDevice, err)
	}
	link, err = m.h.LinkByName(TunnelDevice)
	if err != nil {
		return nil, fmt.Errorf("look up %s after creating it: %w", TunnelDevice, err)
	}
	return link, nil
}

// setAddr leaves exactly addr/32 on link (nothing when addr is zero).
func (m *TunnelManager) setAddr(link netlink.Link, addr netip.Addr) error {
	addrs, err := retryDump("list addresses of "+TunnelDevice, func() ([]netlink.Addr, error) {
		return m.h.AddrList(link, netlink.FAMILY_V4)
	})
	if err != nil {
		return err
	}
	have := false
	for _, a := range addrs {
		ones, _ := a.Mask.Size()
		if addr.IsValid() && a.IP.Equal(addr.AsSlice()) && ones == 32 {
			have = true
			continue
		}
		if err := m.h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove old tunnel address %s from %s: %w", a.IPNet, TunnelDevice, err)
		}
	}
	if addr.IsValid() && !have {
		a := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(addr, 32))}
		if err := m.h.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add tunnel address %s to %s: %w", addr, TunnelDevice, err)
		}
	}
	return nil
}

package dataplane

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// VXLAN devices and their parameters, as Calico's (docs/design.md §6): one
// device per address family, VNI 4096 on the IANA port 4789, no
// learning (every remote MAC is programmed from the datastore).
const (
	// VXLANDevice carries IPv4 pod traffic.
	VXLANDevice = "vxlan.rhizome"
	// VXLANDeviceV6 carries IPv6 pod traffic. ("vxlan-v6.rhizome" is 16
	// bytes, one more than a Linux interface name may have.)
	VXLANDeviceV6 = "vxlan6.rhizome"
	VXLANVNI      = 4096
	VXLANPort     = 4789
	// VXLANOverheadV6 is the encapsulation overhead over an IPv6 uplink
	// (outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14).
	VXLANOverheadV6 = 70
)

// VXLANDeviceName is the VXLAN device of a family.
func VXLANDeviceName(v6 bool) string {
	if v6 {
		return VXLANDeviceV6
	}
	return VXLANDevice
}

// VXLANMTU is the MTU of the VXLAN device of a family for an uplink MTU.
func VXLANMTU(uplinkMTU int, v6 bool) int {
	if v6 {
		return uplinkMTU - VXLANOverheadV6
	}
	return uplinkMTU - VXLANOverhead
}

// NeedsVXLAN reports whether any pool of the family (v6 or not) asks for
// VXLAN, i.e. whether that family's VXLAN device must exist on this node.
func NeedsVXLAN(pools []Pool, v6 bool) bool {
	for _, p := range pools {
		if p.CIDR.Addr().Is6() == v6 && usesEncap(p.VXLANMode) {
			return true
		}
	}
	return false
}

// VXLANMAC is the MAC address a node's VXLAN device of a family gets when
// neither the node record nor an existing device has one: derived from
// the node name, so that a node that lost both (a reinstalled host) comes
// back with the same address and other nodes' entries stay right. It is a
// locally administered unicast address.
func VXLANMAC(node string, v6 bool) net.HardwareAddr {
	fam := "v4"
	if v6 {
		fam = "v6"
	}
	sum := sha256.Sum256([]byte("rhizome vxlan " + fam + " " + node))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// VXLANConfig is the VXLAN device of one family as the node needs it.
type VXLANConfig struct {
	// Local is the node's address the tunnel's packets leave from; its
	// family chooses the device (VXLANDevice or VXLANDeviceV6).
	Local netip.Addr
	// Parent is the uplink the encapsulated packets use (0: any).
	Parent int
	// MTU of the device (VXLANMTU of the uplink); 0 leaves it.
	MTU int
	// Addr is the tunnel address (from a pool's Tunnel addresses), put on
	// the device as a host address; the zero Addr means none (not
	// allocated yet, or released).
	Addr netip.Addr
	// MAC is the device's address as the node record has it; nil keeps
	// the existing device's, or derives one from Node (VXLANMAC).
	MAC  net.HardwareAddr
	Node string
}

// VXLANLink is a VXLAN device as Ensure left it: the agent records MAC in
// the node record (vxlanTunnelMACAddr / vxlanTunnelMACAddrV6).
type VXLANLink struct {
	Link
	MAC net.HardwareAddr
}

// VXLANManager keeps the VXLAN devices of one network namespace as the
// VXLAN pools need them.
type VXLANManager struct {
	h *netlink.Handle
}

// NewVXLANManager opens a route-netlink handle in ns (netns.None() for the
// caller's namespace).
func NewVXLANManager(ns netns.NsHandle) (*VXLANManager, error) {
	h, err := newHandle(ns)
	if err != nil {
		return nil, err
	}
	return &VXLANManager{h: h}, nil
}

// Close releases the netlink handle; the devices stay.
func (m *VXLANManager) Close() { m.h.Close() }

// Ensure makes the family's VXLAN device match c: it adopts an existing
// device that does, recreates one whose tunnel parameters (VNI, port,
// local address, parent, learning) differ (the kernel cannot change them
// in place; the MAC is kept), and sets MTU, MAC, the tunnel address and
// the up flag in place. Calling it again with the same c writes nothing.
func (m *VXLANManager) Ensure(c VXLANConfig) (VXLANLink, error) {
	if !c.Local.IsValid() {
		return VXLANLink{}, errors.New("vxlan device: no local node address: set the node's address (or its autodetection) for the family")
	}
	v6 := c.Local.Is6() && !c.Local.Is4In6()
	name := VXLANDeviceName(v6)
	if c.Addr.IsValid() && c.Addr.Is6() != v6 {
		return VXLANLink{}, fmt.Errorf("vxlan device %s: tunnel address %s is not of the local address %s's family", name, c.Addr, c.Local)
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: name, MTU: c.MTU},
		VxlanId:      VXLANVNI,
		Port:         VXLANPort,
		SrcAddr:      c.Local.Unmap().AsSlice(),
		VtepDevIndex: c.Parent,
		Learning:     false,
	}
	link, err := m.h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		link = nil
	case err != nil:
		return VXLANLink{}, fmt.Errorf("look up %s: %w", name, err)
	case link.Type() != "vxlan":
		return VXLANLink{}, fmt.Errorf("device %s is of type %s, not vxlan: rename or delete it", name, link.Type())
	}
	mac := c.MAC
	if link != nil && !sameTunnel(link.(*netlink.Vxlan), want) {
		if mac == nil {
			mac = link.Attrs().HardwareAddr // a restart keeps the address
		}
		if err := m.h.LinkDel(link); err != nil {
			return VXLANLink{}, fmt.Errorf("delete %s to recreate it with VNI %d, port %d, local %s: %w", name, VXLANVNI, VXLANPort, c.Local, err)
		}
		link = nil
	}
	if link == nil {
		if mac == nil {
			mac = VXLANMAC(c.Node, v6)
		}
		want.HardwareAddr = mac
		if err := m.h.LinkAdd(want); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) {
				return VXLANLink{}, fmt.Errorf("create %s: kernel has no vxlan support (load module vxlan, or use vxlanMode: Never): %w", name, err)
			}
			return VXLANLink{}, fmt.Errorf("create %s: %w", name, err)
		}
		if link, err = m.h.LinkByName(name); err != nil {
			return VXLANLink{}, fmt.Errorf("look up %s after creating it: %w", name, err)
		}
	}
	attrs := link.Attrs()
	if mac != nil && attrs.HardwareAddr.String() != mac.String() {
		if err := m.h.LinkSetHardwareAddr(link, mac); err != nil {
			return VXLANLink{}, fmt.Errorf("set %s MAC to %s: %w", name, mac, err)
		}
	}
	if c.MTU > 0 && attrs.MTU != c.MTU {
		if err := m.h.LinkSetMTU(link, c.MTU); err != nil {
			return VXLANLink{}, fmt.Errorf("set %s MTU to %d: %w", name, c.MTU, err)
		}
	}
	if err := setHostAddr(m.h, link, c.Addr, v6); err != nil {
		return VXLANLink{}, err
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := m.h.LinkSetUp(link); err != nil {
			return VXLANLink{}, fmt.Errorf("bring %s up: %w", name, err)
		}
	}
	if link, err = m.h.LinkByName(name); err != nil {
		return VXLANLink{}, fmt.Errorf("look up %s: %w", name, err)
	}
	return VXLANLink{Link: Link{Name: name, Index: link.Attrs().Index}, MAC: link.Attrs().HardwareAddr}, nil
}

// sameTunnel reports whether the existing device k carries the tunnel as
// w describes it (the parameters the kernel cannot change in place).
func sameTunnel(k, w *netlink.Vxlan) bool {
	noGroup := len(k.Group) == 0 || k.Group.IsUnspecified()
	return noGroup && k.VxlanId == w.VxlanId && k.Port == w.Port && k.SrcAddr.Equal(w.SrcAddr) &&
		k.VtepDevIndex == w.VtepDevIndex && k.Learning == w.Learning
}

// Remove deletes the family's VXLAN device (and with it every route,
// neighbour and forwarding entry through it); used when no pool of the
// family needs VXLAN any more. A missing device is not an error.
func (m *VXLANManager) Remove(v6 bool) error {
	name := VXLANDeviceName(v6)
	link, err := m.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if link.Type() != "vxlan" {
		return fmt.Errorf("device %s is of type %s, not vxlan: left alone", name, link.Type())
	}
	if err := m.h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// setHostAddr leaves exactly addr as a host address (/32 or /128) among
// link's global addresses of the family (nothing when addr is zero).
// IPv6 link-local addresses the kernel adds are left alone.
func setHostAddr(h *netlink.Handle, link netlink.Link, addr netip.Addr, v6 bool) error {
	name := link.Attrs().Name
	fam, bits := netlink.FAMILY_V4, 32
	if v6 {
		fam, bits = netlink.FAMILY_V6, 128
	}
	addrs, err := retryDump("list addresses of "+name, func() ([]netlink.Addr, error) {
		return h.AddrList(link, fam)
	})
	if err != nil {
		return err
	}
	have := false
	for _, a := range addrs {
		if v6 && a.IP.IsLinkLocalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		if addr.IsValid() && a.IP.Equal(addr.AsSlice()) && ones == bits {
			have = true
			continue
		}
		if err := h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove old tunnel address %s from %s: %w", a.IPNet, name, err)
		}
	}
	if addr.IsValid() && !have {
		a := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(addr, bits))}
		if v6 {
			a.Flags = unix.IFA_F_NODAD // the address is ours alone: no duplicate detection delay
		}
		if err := h.AddrAdd(link, a); err != nil {
			return fmt.Errorf("add tunnel address %s to %s: %w", addr, name, err)
		}
	}
	return nil
}

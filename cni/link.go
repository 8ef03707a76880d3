package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/rhizome-net/rhizome/api"
)

// The pod's gateways: link-local addresses the host side answers for.
// Nothing on the node owns them; the container resolves them to the host
// veth's MAC with a permanent neighbour entry (and, for IPv4, the host
// veth also answers ARP by proxy).
var (
	gatewayV4 = netip.MustParseAddr("169.254.1.1")
	gatewayV6 = netip.MustParseAddr("fe80::1")
)

// HostVethName is the host side of a pod's veth: "rz" and 11 hex digits of
// a hash of "<namespace>.<pod>" (of the container ID when there is no pod;
// a second interface of the same pod adds ".<ifname>").
func HostVethName(namespace, pod, containerID, ifName string) string {
	key := containerID
	if pod != "" {
		key = namespace + "." + pod
	}
	if ifName != "eth0" {
		key += "." + ifName
	}
	sum := sha256.Sum256([]byte(key))
	return "rz" + hex.EncodeToString(sum[:])[:11]
}

// podNet is what ADD builds and CHECK verifies for one pod.
type podNet struct {
	netns    string
	hostName string
	// owner marks the host veth (as its alias) with the attachment that
	// made it: the host name follows the pod, so a pod's new sandbox
	// reuses it, and a late DEL of the old sandbox must not remove it.
	owner  string
	ifName string
	mtu    int
	addrs  []netip.Addr
}

// setup builds the veth pair, the container's addresses and routes, and
// the host routes. It first removes what an earlier ADD of the same
// attachment left. It returns the host and container interfaces.
func (p *podNet) setup() (host, cont net.Interface, err error) {
	contNS, err := ns.GetNS(p.netns)
	if err != nil {
		return host, cont, fmt.Errorf("open network namespace %s: %w", p.netns, err)
	}
	defer contNS.Close()
	ch, err := netlinksafe.NewHandleAt(netns.NsHandle(int(contNS.Fd())), unix.NETLINK_ROUTE)
	if err != nil {
		return host, cont, fmt.Errorf("netlink in %s: %w", p.netns, err)
	}
	defer ch.Close()
	if err := deleteLink(ch, p.ifName); err != nil {
		return host, cont, fmt.Errorf("remove the old %s in %s: %w", p.ifName, p.netns, err)
	}
	hh, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return host, cont, fmt.Errorf("netlink in the host namespace: %w", err)
	}
	defer hh.Close()
	if err := deleteLink(hh, p.hostName); err != nil {
		return host, cont, fmt.Errorf("remove the old host veth %s: %w", p.hostName, err)
	}

	err = contNS.Do(func(hostNS ns.NetNS) error {
		var err error
		host, cont, err = ip.SetupVethWithName(p.ifName, p.hostName, p.mtu, "", hostNS)
		return err
	})
	if err != nil {
		return host, cont, fmt.Errorf("create veth pair %s (host) / %s (pod): %w", p.hostName, p.ifName, err)
	}
	if err := p.setupContainer(ch, host); err != nil {
		return host, cont, fmt.Errorf("configure %s in %s: %w", p.ifName, p.netns, err)
	}
	if err := p.setupHost(hh, host); err != nil {
		return host, cont, fmt.Errorf("configure host veth %s: %w", p.hostName, err)
	}
	return host, cont, nil
}

func (p *podNet) setupContainer(h netlinksafe.Handle, host net.Interface) error {
	link, err := h.LinkByName(p.ifName)
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	idx := link.Attrs().Index
	for _, a := range p.addrs {
		addr := &netlink.Addr{IPNet: hostNet(a)}
		if a.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s: %w", addr.IPNet, err)
		}
	}
	for _, gw := range p.gateways() {
		family := netlink.FAMILY_V4
		if gw.Is6() {
			family = netlink.FAMILY_V6
		}
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: family, State: netlink.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: host.HardwareAddr}); err != nil {
			return fmt.Errorf("neighbour %s: %w", gw, err)
		}
		if err := h.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: hostNet(gw), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route %s dev %s: %w", gw, p.ifName, err)
		}
		def := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if gw.Is6() {
			def = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		if err := h.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: def, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}

func (p *podNet) setupHost(h netlinksafe.Handle, host net.Interface) error {
	link, err := h.LinkByIndex(host.Index)
	if err != nil {
		return err
	}
	if err := h.LinkSetAlias(link, p.owner); err != nil {
		return fmt.Errorf("set alias %q: %w", p.owner, err)
	}
	settings := []string{"net/ipv4/conf/%s/proxy_arp", "net/ipv4/conf/%s/forwarding"}
	if slices.ContainsFunc(p.addrs, netip.Addr.Is6) {
		settings = append(settings, "net/ipv6/conf/%s/forwarding")
	}
	for _, s := range settings {
		name := fmt.Sprintf(s, p.hostName)
		if _, err := sysctl.Sysctl(name, "1"); err != nil {
			return fmt.Errorf("sysctl %s=1: %w", name, err)
		}
	}
	if _, err := sysctl.Sysctl(fmt.Sprintf("net/ipv4/neigh/%s/proxy_delay", p.hostName), "0"); err != nil {
		return fmt.Errorf("sysctl proxy_delay=0: %w", err)
	}
	for _, a := range p.addrs {
		r := &netlink.Route{LinkIndex: host.Index, Dst: hostNet(a), Scope: netlink.SCOPE_LINK, Protocol: api.RouteProtocol}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s dev %s: %w", r.Dst, p.hostName, err)
		}
	}
	return nil
}

func (p *podNet) gateways() []netip.Addr {
	var gws []netip.Addr
	if slices.ContainsFunc(p.addrs, netip.Addr.Is4) {
		gws = append(gws, gatewayV4)
	}
	if slices.ContainsFunc(p.addrs, netip.Addr.Is6) {
		gws = append(gws, gatewayV6)
	}
	return gws
}

// teardown removes the pod's veth pair (its routes go with it). A
// namespace or link that is already gone is not an error. Unless force is
// set, a host veth another attachment owns is left alone.
func (p *podNet) teardown(force bool) error {
	if p.netns != "" {
		err := ns.WithNetNSPath(p.netns, func(ns.NetNS) error {
			l, err := netlinksafe.LinkByName(p.ifName)
			if isNotFound(err) {
				return nil
			}
			if err != nil {
				return err
			}
			return netlink.LinkDel(l)
		})
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if err != nil && !errors.As(err, &notExist) && !errors.As(err, &notNS) && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s in %s: %w", p.ifName, p.netns, err)
		}
	}
	hh, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer hh.Close()
	l, err := hh.LinkByName(p.hostName)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("host veth %s: %w", p.hostName, err)
	}
	if !force && l.Attrs().Alias != p.owner {
		return nil // a newer sandbox of the same pod owns it now
	}
	if err := hh.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("remove host veth %s: %w", p.hostName, err)
	}
	return nil
}

// ownerAlias is the host veth's alias for one attachment.
func ownerAlias(network, containerID, ifName string) string {
	return "rhizome:" + network + ":" + containerID + ":" + ifName
}

// ParseOwnerAlias reads the alias rhizome-cni gives a pod's host veth: the
// agent finds its pods' links by it. ok is false for any other alias.
func ParseOwnerAlias(alias string) (network, containerID, ifName string, ok bool) {
	rest, found := strings.CutPrefix(alias, "rhizome:")
	if !found {
		return "", "", "", false
	}
	i := strings.LastIndexByte(rest, ':')
	if i <= 0 {
		return "", "", "", false
	}
	rest, ifName = rest[:i], rest[i+1:]
	j := strings.LastIndexByte(rest, ':')
	if j <= 0 || ifName == "" || j == len(rest)-1 {
		return "", "", "", false
	}
	return rest[:j], rest[j+1:], ifName, true
}

// check verifies what setup built; the error says what differs.
func (p *podNet) check() error {
	contNS, err := ns.GetNS(p.netns)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", p.netns, err)
	}
	defer contNS.Close()
	ch, err := netlinksafe.NewHandleAt(netns.NsHandle(int(contNS.Fd())), unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer ch.Close()
	link, err := ch.LinkByName(p.ifName)
	if err != nil {
		return fmt.Errorf("pod interface %s in %s: %w", p.ifName, p.netns, err)
	}
	if link.Type() != "veth" || link.Attrs().OperState != netlink.OperUp && link.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("pod interface %s is %s and %s, want an up veth", p.ifName, link.Type(), link.Attrs().OperState)
	}
	if p.mtu != 0 && link.Attrs().MTU != p.mtu {
		return fmt.Errorf("pod interface %s has MTU %d, want %d", p.ifName, link.Attrs().MTU, p.mtu)
	}
	have, err := ch.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, a := range p.addrs {
		want := hostNet(a).String()
		if !slices.ContainsFunc(have, func(h netlink.Addr) bool { return h.IPNet.String() == want }) {
			return fmt.Errorf("pod interface %s lacks address %s", p.ifName, want)
		}
	}
	routes, err := ch.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, gw := range p.gateways() {
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Dst != nil && r.Dst.String() == hostNet(gw).String() }) {
			return fmt.Errorf("pod has no route %s dev %s", hostNet(gw), p.ifName)
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			return (r.Dst == nil || isDefault(r.Dst)) && r.Gw != nil && r.Gw.Equal(gw.AsSlice())
		}) {
			return fmt.Errorf("pod has no default route via %s dev %s", gw, p.ifName)
		}
	}

	hh, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer hh.Close()
	host, err := hh.LinkByName(p.hostName)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", p.hostName, err)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", p.hostName)
	}
	if host.Attrs().Alias != p.owner {
		return fmt.Errorf("host veth %s belongs to %q, not to this attachment", p.hostName, host.Attrs().Alias)
	}
	hostRoutes, err := hh.RouteList(host, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, a := range p.addrs {
		if !slices.ContainsFunc(hostRoutes, func(r netlink.Route) bool {
			return r.Dst != nil && r.Dst.String() == hostNet(a).String() && r.Protocol == api.RouteProtocol
		}) {
			return fmt.Errorf("host has no route %s dev %s proto %d", hostNet(a), p.hostName, api.RouteProtocol)
		}
	}
	if v, err := sysctl.Sysctl(fmt.Sprintf("net/ipv4/conf/%s/proxy_arp", p.hostName)); err != nil || strings.TrimSpace(v) != "1" {
		return fmt.Errorf("proxy ARP is off on host veth %s", p.hostName)
	}
	return nil
}

func deleteLink(h netlinksafe.Handle, name string) error {
	l, err := h.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := h.LinkDel(l); err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

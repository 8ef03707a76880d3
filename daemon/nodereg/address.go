package nodereg

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strings"
)

// Autodetection is a parsed RHIZOME_IP_AUTODETECTION_METHOD: the ways
// Calico's IP_AUTODETECTION_METHOD knows, with the same spelling.
type Autodetection struct {
	Method    string // first-found, interface, can-reach, cidr
	Interface *regexp.Regexp
	Target    netip.Addr
	CIDRs     []netip.Prefix
}

// ParseAutodetection parses first-found, interface=REGEX, can-reach=IP or
// cidr=CIDR[,CIDR...].
func ParseAutodetection(s string) (Autodetection, error) {
	method, arg, _ := strings.Cut(s, "=")
	a := Autodetection{Method: method}
	switch method {
	case "first-found", "":
		a.Method = "first-found"
		return a, nil
	case "interface":
		re, err := regexp.Compile("^(?:" + arg + ")$")
		if err != nil || arg == "" {
			return a, fmt.Errorf("ip-autodetection %q: interface=REGEX needs a valid regular expression (for example interface=eth.*): %v", s, err)
		}
		a.Interface = re
		return a, nil
	case "can-reach":
		ip, err := netip.ParseAddr(arg)
		if err != nil {
			return a, fmt.Errorf("ip-autodetection %q: can-reach=IP needs an IP address (for example can-reach=10.0.0.1)", s)
		}
		a.Target = ip
		return a, nil
	case "cidr":
		for _, c := range strings.Split(arg, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(c))
			if err != nil {
				return a, fmt.Errorf("ip-autodetection %q: cidr=CIDR needs CIDRs (for example cidr=10.0.0.0/8): %v", s, err)
			}
			a.CIDRs = append(a.CIDRs, p.Masked())
		}
		return a, nil
	}
	return a, fmt.Errorf("ip-autodetection %q: unknown method %q (want first-found, interface=REGEX, can-reach=IP or cidr=CIDR)", s, method)
}

// HostInterface is one interface with its addresses, as autodetection
// sees it.
type HostInterface struct {
	Name  string
	Up    bool
	Addrs []netip.Prefix
}

// skippedInterface: links that never carry the node address (container
// and bridge plumbing, rhizome's own veths and tunnel, loopback).
var skippedInterface = regexp.MustCompile(`^(lo|docker.*|cbr.*|veth.*|rz.*|tunl.*|vxlan.*|kube-ipvs.*|cni.*|flannel.*|cali.*|virbr.*)$`)

// Detect picks the node's IPv4 address (in CIDR form, with the prefix
// length of its subnet) from the host's interfaces.
func (a Autodetection) Detect(ifaces []HostInterface) (netip.Prefix, error) {
	if a.Method == "can-reach" {
		return a.canReach(ifaces)
	}
	sort.SliceStable(ifaces, func(i, j int) bool { return ifaces[i].Name < ifaces[j].Name })
	var seen []string
	for _, ifc := range ifaces {
		if !ifc.Up {
			continue
		}
		if a.Method == "interface" && !a.Interface.MatchString(ifc.Name) {
			continue
		}
		if a.Method != "interface" && skippedInterface.MatchString(ifc.Name) {
			continue
		}
		for _, p := range ifc.Addrs {
			if !usableIPv4(p.Addr()) {
				continue
			}
			seen = append(seen, ifc.Name+" "+p.String())
			if a.Method == "cidr" && !containsAny(a.CIDRs, p.Addr()) {
				continue
			}
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no IPv4 address matches ip-autodetection %s (usable addresses: %s): set RHIZOME_IP_AUTODETECTION_METHOD or RHIZOME_IP",
		a, orNone(seen))
}

// canReach asks the kernel which source address it would use towards the
// target. Connecting a UDP socket sends nothing.
func (a Autodetection) canReach(ifaces []HostInterface) (netip.Prefix, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a.Target, 9)))
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ip-autodetection can-reach=%s: no route: %w", a.Target, err)
	}
	src := conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	conn.Close()
	for _, ifc := range ifaces {
		for _, p := range ifc.Addrs {
			if p.Addr() == src {
				return p, nil
			}
		}
	}
	return netip.PrefixFrom(src, 32), nil
}

func (a Autodetection) String() string {
	switch a.Method {
	case "interface":
		return "interface=" + strings.TrimSuffix(strings.TrimPrefix(a.Interface.String(), "^(?:"), ")$")
	case "can-reach":
		return "can-reach=" + a.Target.String()
	case "cidr":
		var s []string
		for _, c := range a.CIDRs {
			s = append(s, c.String())
		}
		return "cidr=" + strings.Join(s, ",")
	}
	return a.Method
}

func usableIPv4(a netip.Addr) bool {
	return a.Is4() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsMulticast() && !a.IsUnspecified()
}

func containsAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// HostInterfaces lists the interfaces of the current network namespace.
func HostInterfaces() ([]HostInterface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []HostInterface
	for _, ifc := range ifs {
		h := HostInterface{Name: ifc.Name, Up: ifc.Flags&net.FlagUp != 0}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				ip, _ := netip.AddrFromSlice(n.IP)
				ones, _ := n.Mask.Size()
				h.Addrs = append(h.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
			}
		}
		out = append(out, h)
	}
	return out, nil
}

// Address is the node's address: ip (CIDR form) when given, else what the
// autodetection method finds.
func Address(ip, method string, log *slog.Logger) (netip.Prefix, error) {
	if ip != "" {
		p, err := netip.ParsePrefix(ip)
		if err != nil || !p.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("ip %q: want the node's IPv4 address in CIDR form, for example 10.0.0.5/24", ip)
		}
		return p, nil
	}
	m, err := ParseAutodetection(method)
	if err != nil {
		return netip.Prefix{}, err
	}
	ifaces, err := HostInterfaces()
	if err != nil {
		return netip.Prefix{}, err
	}
	p, err := m.Detect(ifaces)
	if err != nil {
		return netip.Prefix{}, err
	}
	log.Info("node address autodetected", "addr", p, "method", m.String())
	return p, nil
}

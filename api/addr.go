package api

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseAddressRange parses an IPReservation entry and returns the first and
// last address it covers: a CIDR in canonical form ("10.0.0.0/28"), a
// single address ("10.0.0.5"), or a range "a-b" of one family with a <= b
// ("10.0.0.5-10.0.0.9"). IPv6 works the same way.
func ParseAddressRange(s string) (first, last netip.Addr, err error) {
	t := strings.TrimSpace(s)
	switch {
	case t == "":
		return first, last, fmt.Errorf("empty entry: write a CIDR (10.0.0.0/28), an address (10.0.0.5) or a range (10.0.0.5-10.0.0.9)")
	case strings.Contains(t, "/"):
		p, err := parseCanonicalPrefix(t)
		if err != nil {
			return first, last, err
		}
		return p.Addr(), lastAddr(p), nil
	case strings.Contains(t, "-"):
		a, b, _ := strings.Cut(t, "-")
		first, err = parseHostAddr(strings.TrimSpace(a))
		if err != nil {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("range %q: %w", s, err)
		}
		last, err = parseHostAddr(strings.TrimSpace(b))
		if err != nil {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("range %q: %w", s, err)
		}
		if first.Is4() != last.Is4() {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("range %q mixes IPv4 and IPv6: both ends must be of one family", s)
		}
		if first.Compare(last) > 0 {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("range %q is backwards: write it as %s-%s", s, last, first)
		}
		return first, last, nil
	}
	a, err := parseHostAddr(t)
	if err != nil {
		return first, last, fmt.Errorf("%w: write a CIDR (10.0.0.0/28), an address (10.0.0.5) or a range (10.0.0.5-10.0.0.9)", err)
	}
	return a, a, nil
}

// ParsePeerIP parses a BGPPeer's peerIP: an address ("10.0.0.1", "fd00::1")
// or an address with a port ("10.0.0.1:1179", "[fd00::1]:1179"). port is 0
// when none is given.
func ParsePeerIP(s string) (addr netip.Addr, port uint16, err error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if err := checkHostAddr(a, s); err != nil {
			return netip.Addr{}, 0, err
		}
		return a, 0, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("%q is not an IP address or ip:port ([v6]:port for IPv6)", s)
	}
	if err := checkHostAddr(ap.Addr(), s); err != nil {
		return netip.Addr{}, 0, err
	}
	if ap.Port() == 0 {
		return netip.Addr{}, 0, fmt.Errorf("%q: port 0 out of range 1-65535 (leave the port out for 179)", s)
	}
	return ap.Addr(), ap.Port(), nil
}

// parseCanonicalPrefix parses a CIDR that must be written in canonical
// form: host bits zero, IPv6 in its shortest lowercase form.
func parseCanonicalPrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR: %v", s, stripNetipPrefix(err))
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 CIDR: write the IPv4 CIDR", s)
	}
	if c := p.Masked().String(); c != s {
		return netip.Prefix{}, fmt.Errorf("%s not canonical: use %s", s, c)
	}
	return p, nil
}

// parseHostAddr parses a plain IPv4 or IPv6 address (no zone, not
// IPv4-mapped).
func parseHostAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a, checkHostAddr(a, s)
}

func checkHostAddr(a netip.Addr, s string) error {
	if a.Zone() != "" {
		return fmt.Errorf("%q has an IPv6 zone: leave out %%%s", s, a.Zone())
	}
	if a.Is4In6() {
		return fmt.Errorf("%q is an IPv4-mapped IPv6 address: write %s", s, a.Unmap())
	}
	return nil
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		hostBits := len(b)*8 - bits - (len(b)-1-i)*8 // host bits that fall in byte i
		switch {
		case hostBits >= 8:
			b[i] = 0xff
		case hostBits > 0:
			b[i] |= byte(1<<hostBits - 1)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// stripNetipPrefix drops the `netip.ParsePrefix("...")` prefix of netip's
// errors: the caller quotes the input already.
func stripNetipPrefix(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "): "); i >= 0 && strings.HasPrefix(msg, "netip.") {
		return msg[i+3:]
	}
	return msg
}

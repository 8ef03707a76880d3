package api

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseAddressRange(t *testing.T) {
	cases := []struct {
		in          string
		first, last string
		err         string // substring; "" = valid
	}{
		{"10.0.0.0/28", "10.0.0.0", "10.0.0.15", ""},
		{"10.0.0.0/8", "10.0.0.0", "10.255.255.255", ""},
		{"10.0.0.7/32", "10.0.0.7", "10.0.0.7", ""},
		{"0.0.0.0/0", "0.0.0.0", "255.255.255.255", ""},
		{"10.0.0.128/25", "10.0.0.128", "10.0.0.255", ""},
		{"10.0.0.5", "10.0.0.5", "10.0.0.5", ""},
		{"10.0.0.5-10.0.0.9", "10.0.0.5", "10.0.0.9", ""},
		{"10.0.0.5 - 10.0.0.9", "10.0.0.5", "10.0.0.9", ""},
		{"10.0.0.5-10.0.0.5", "10.0.0.5", "10.0.0.5", ""},
		{" 10.0.0.5 ", "10.0.0.5", "10.0.0.5", ""},
		{"fd00::/120", "fd00::", "fd00::ff", ""},
		{"fd00::/64", "fd00::", "fd00::ffff:ffff:ffff:ffff", ""},
		{"fd00::/61", "fd00::", "fd00:0:0:7:ffff:ffff:ffff:ffff", ""},
		{"fd00::5", "fd00::5", "fd00::5", ""},
		{"fd00::5-fd00::9", "fd00::5", "fd00::9", ""},
		{"10.0.0.1/24", "", "", "10.0.0.1/24 not canonical: use 10.0.0.0/24"},
		{"fd00::1/64", "", "", "fd00::1/64 not canonical: use fd00::/64"},
		{"FD00::/64", "", "", "not canonical: use fd00::/64"},
		{"10.0.0.0/33", "", "", `"10.0.0.0/33" is not a CIDR`},
		{"::ffff:10.0.0.0/120", "", "", "IPv4-mapped"},
		{"10.0.0.9-10.0.0.5", "", "", "is backwards: write it as 10.0.0.5-10.0.0.9"},
		{"fd00::9-fd00::5", "", "", "is backwards: write it as fd00::5-fd00::9"},
		{"10.0.0.1-fd00::1", "", "", "mixes IPv4 and IPv6"},
		{"10.0.0.1-", "", "", `"" is not an IP address`},
		{"10.0.0.1-10.0.0.2-10.0.0.3", "", "", `"10.0.0.2-10.0.0.3" is not an IP address`},
		{"10.0.0.x", "", "", `"10.0.0.x" is not an IP address`},
		{"fe80::1%eth0", "", "", "has an IPv6 zone"},
		{"::ffff:10.0.0.1", "", "", "write 10.0.0.1"},
		{"", "", "", "empty entry"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			first, last, err := ParseAddressRange(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if first != netip.MustParseAddr(tc.first) || last != netip.MustParseAddr(tc.last) {
				t.Errorf("got %s-%s, want %s-%s", first, last, tc.first, tc.last)
			}
		})
	}
}

func TestParsePeerIP(t *testing.T) {
	cases := []struct {
		in   string
		addr string
		port uint16
		err  string
	}{
		{"10.0.0.1", "10.0.0.1", 0, ""},
		{"10.0.0.1:1179", "10.0.0.1", 1179, ""},
		{"10.0.0.1:65535", "10.0.0.1", 65535, ""},
		{"fd00::1", "fd00::1", 0, ""},
		{"[fd00::1]:179", "fd00::1", 179, ""},
		{"10.0.0.1:0", "", 0, "port 0 out of range 1-65535"},
		{"[fd00::1]:0", "", 0, "port 0 out of range 1-65535"},
		{"10.0.0.1:65536", "", 0, "is not an IP address"},
		{"[fd00::1]", "", 0, "is not an IP address"},
		{"tor-1:179", "", 0, "is not an IP address"},
		{"fe80::1%eth0", "", 0, "has an IPv6 zone"},
		{"::ffff:10.0.0.1", "", 0, "IPv4-mapped"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			addr, port, err := ParsePeerIP(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if addr != netip.MustParseAddr(tc.addr) || port != tc.port {
				t.Errorf("got %s port %d, want %s port %d", addr, port, tc.addr, tc.port)
			}
		})
	}
}

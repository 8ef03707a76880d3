package bgp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestAdvertisements(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")
	tests := []struct {
		name string
		in   Origin
		want string
	}{
		{"nothing", Origin{NodeV4: v4}, "[]"},
		{"blocks, sorted, duplicates once",
			Origin{NodeV4: v4, Blocks: prefixes("10.244.0.64/26", "10.244.0.0/26", "10.244.0.64/26")},
			"[10.244.0.0/26 via 10.0.0.1 10.244.0.64/26 via 10.0.0.1]"},
		{"borrowed and fixed addresses as /32, except inside an own block",
			Origin{NodeV4: v4, Blocks: prefixes("10.244.0.0/26"), Hosted: addrs("10.244.1.7", "10.244.0.5", "10.188.0.216")},
			"[10.188.0.216/32 via 10.0.0.1 10.244.0.0/26 via 10.0.0.1 10.244.1.7/32 via 10.0.0.1]"},
		{"nothing from a pool with disableBGPExport",
			Origin{NodeV4: v4, Blocks: prefixes("10.244.0.0/26", "10.99.0.0/26"), Hosted: addrs("10.99.3.3", "10.244.9.9"), NoExport: prefixes("10.99.0.0/16")},
			"[10.244.0.0/26 via 10.0.0.1 10.244.9.9/32 via 10.0.0.1]"},
		{"IPv6 blocks go via the IPv6 address",
			Origin{NodeV4: v4, NodeV6: v6, Blocks: prefixes("fd10::/122", "10.244.0.0/26"), Hosted: addrs("fd11::5")},
			"[10.244.0.0/26 via 10.0.0.1 fd10::/122 via fd00::1 fd11::5/128 via fd00::1]"},
		{"IPv4-mapped hosted address is advertised as IPv4",
			Origin{NodeV4: v4, Hosted: addrs("::ffff:10.9.9.9")},
			"[10.9.9.9/32 via 10.0.0.1]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Advertisements(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if s := fmt.Sprint(got); s != tc.want {
				t.Errorf("got  %s\nwant %s", s, tc.want)
			}
		})
	}
	_, err := Advertisements(Origin{NodeV4: v4, Blocks: prefixes("fd10::/122")})
	if err == nil || !strings.Contains(err.Error(), "advertise fd10::/122: the node has no address of its family") {
		t.Errorf("IPv6 block without an IPv6 node address: err = %v", err)
	}
}

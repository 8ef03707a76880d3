package dataplane

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// kernelRoute is a route as a dump or event reports it (Family, metric and
// scope filled in by the kernel), for the pure comparisons below.
func kernelRoute(dst string, family int, mod func(*netlink.Route)) netlink.Route {
	_, n, err := net.ParseCIDR(dst)
	if err != nil {
		panic(err)
	}
	k := netlink.Route{Dst: n, Family: family, Protocol: 94, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNICAST}
	if family == unix.AF_INET6 {
		k.Priority = 1024 // the kernel's default IPv6 metric
	}
	mod(&k)
	return k
}

func TestSameRoute(t *testing.T) {
	uplink, pod := Link{Name: "eth0", Index: 2}, Link{Name: "rzpod0", Index: 5}
	tests := []struct {
		name string
		k    netlink.Route
		r    Route
		want bool
	}{
		{"v4 direct", kernelRoute("192.168.2.0/26", unix.AF_INET, func(k *netlink.Route) {
			k.LinkIndex, k.Gw = 2, net.ParseIP("10.0.1.12").To4()
		}), Route{Prefix: pfx("192.168.2.0/26"), Kind: Direct, Gateway: ip("10.0.1.12"), Link: uplink}, true},
		{"v4 direct, other gateway", kernelRoute("192.168.2.0/26", unix.AF_INET, func(k *netlink.Route) {
			k.LinkIndex, k.Gw = 2, net.ParseIP("10.0.1.13").To4()
		}), Route{Prefix: pfx("192.168.2.0/26"), Kind: Direct, Gateway: ip("10.0.1.12"), Link: uplink}, false},
		{"v4 tunnel needs onlink", kernelRoute("192.168.2.0/26", unix.AF_INET, func(k *netlink.Route) {
			k.LinkIndex, k.Gw = 7, net.ParseIP("10.0.2.13")
		}), Route{Prefix: pfx("192.168.2.0/26"), Kind: Tunnel, Gateway: ip("10.0.2.13"), Link: Link{Name: "tunl0", Index: 7}}, false},
		{"v4 tunnel", kernelRoute("192.168.2.0/26", unix.AF_INET, func(k *netlink.Route) {
			k.LinkIndex, k.Gw, k.Flags = 7, net.ParseIP("10.0.2.13"), int(netlink.FLAG_ONLINK)
		}), Route{Prefix: pfx("192.168.2.0/26"), Kind: Tunnel, Gateway: ip("10.0.2.13"), Link: Link{Name: "tunl0", Index: 7}}, true},
		{"v4 pod route", kernelRoute("192.168.1.2/32", unix.AF_INET, func(k *netlink.Route) {
			k.LinkIndex, k.Scope = 5, netlink.SCOPE_LINK
		}), Route{Prefix: pfx("192.168.1.2/32"), Kind: PodLink, Link: pod}, true},
		{"v4 pod route of global scope", kernelRoute("192.168.1.2/32", unix.AF_INET, func(k *netlink.Route) {
			k.LinkIndex = 5
		}), Route{Prefix: pfx("192.168.1.2/32"), Kind: PodLink, Link: pod}, false},
		// The kernel shows IPv6 routes with scope universe, whatever they
		// were added with.
		{"v6 pod route", kernelRoute("fd10:1::2/128", unix.AF_INET6, func(k *netlink.Route) {
			k.LinkIndex = 5
		}), Route{Prefix: pfx("fd10:1::2/128"), Kind: PodLink, Link: pod}, true},
		{"v6 blackhole on lo", kernelRoute("fd10:1::/64", unix.AF_INET6, func(k *netlink.Route) {
			k.Type, k.LinkIndex = unix.RTN_BLACKHOLE, 1
		}), Route{Prefix: pfx("fd10:1::/64"), Kind: Blackhole}, true},
		{"unicast is no blackhole", kernelRoute("192.168.1.0/26", unix.AF_INET, func(k *netlink.Route) {
			k.LinkIndex = 2
		}), Route{Prefix: pfx("192.168.1.0/26"), Kind: Blackhole}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameRoute(tt.k, tt.r); got != tt.want {
				t.Errorf("sameRoute(%v, %s) = %v, want %v", tt.k, tt.r, got, tt.want)
			}
		})
	}
}

// TestOwnWriteMatchesItsEcho checks that a route as rhizome writes it
// (toNetlink) is the same entry as the kernel's report of it, so the
// echo of a write never looks like someone else's change.
func TestOwnWriteMatchesItsEcho(t *testing.T) {
	pod := Link{Name: "rzpod0", Index: 5}
	tests := []struct {
		name string
		r    Route
		echo netlink.Route
	}{
		{"v4 direct", Route{Prefix: pfx("100.64.0.0/26"), Kind: Direct, Gateway: ip("10.0.0.2"), Link: Link{Index: 2}},
			kernelRoute("100.64.0.0/26", unix.AF_INET, func(k *netlink.Route) { k.LinkIndex, k.Gw = 2, net.ParseIP("10.0.0.2").To4() })},
		{"v6 pod route", Route{Prefix: pfx("fd10:1::2/128"), Kind: PodLink, Link: pod},
			kernelRoute("fd10:1::2/128", unix.AF_INET6, func(k *netlink.Route) { k.LinkIndex = 5 })},
		{"v6 blackhole", Route{Prefix: pfx("fd10:1::/64"), Kind: Blackhole},
			kernelRoute("fd10:1::/64", unix.AF_INET6, func(k *netlink.Route) { k.Type, k.LinkIndex = unix.RTN_BLACKHOLE, 1 })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !sameEntry(*toNetlink(tt.r), tt.echo) {
				t.Errorf("written %s does not match its echo %v", tt.r, tt.echo)
			}
			other := tt.echo
			other.Priority += 100
			if sameEntry(*toNetlink(tt.r), other) {
				t.Errorf("written %s matches a route of another metric %v", tt.r, other)
			}
		})
	}
}

func TestIsPodRoute(t *testing.T) {
	tests := []struct {
		name string
		k    netlink.Route
		want bool
	}{
		{"v4 scope link", kernelRoute("192.168.1.2/32", unix.AF_INET, func(k *netlink.Route) {
			k.LinkIndex, k.Scope = 5, netlink.SCOPE_LINK
		}), true},
		{"v6 to a device", kernelRoute("fd10:1::2/128", unix.AF_INET6, func(k *netlink.Route) { k.LinkIndex = 5 }), true},
		{"v4 via gateway", kernelRoute("192.168.2.0/26", unix.AF_INET, func(k *netlink.Route) {
			k.LinkIndex, k.Gw = 2, net.ParseIP("10.0.1.12")
		}), false},
		{"v6 via gateway", kernelRoute("fd10:2::/64", unix.AF_INET6, func(k *netlink.Route) {
			k.LinkIndex, k.Gw = 2, net.ParseIP("fd00::2")
		}), false},
		{"blackhole", kernelRoute("fd10:1::/64", unix.AF_INET6, func(k *netlink.Route) {
			k.Type, k.LinkIndex = unix.RTN_BLACKHOLE, 1
		}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isPodRoute(tt.k); got != tt.want {
				t.Errorf("isPodRoute(%v) = %v, want %v", tt.k, got, tt.want)
			}
		})
	}
}

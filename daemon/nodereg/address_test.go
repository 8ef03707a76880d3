package nodereg

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
)

func TestAutodetection(t *testing.T) {
	ifaces := []HostInterface{
		{Name: "lo", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}},
		{Name: "docker0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("172.17.0.1/16")}},
		{Name: "rz0123456789a", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("169.254.1.1/32")}},
		{Name: "eth0", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("fe80::1/64"), netip.MustParsePrefix("169.254.3.3/16"), netip.MustParsePrefix("10.0.0.5/24")}},
		{Name: "eth1", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.50.7/24")}},
		{Name: "eth2", Up: false, Addrs: []netip.Prefix{netip.MustParsePrefix("172.20.0.9/24")}},
	}
	for _, tc := range []struct {
		method, want, err string
	}{
		{"first-found", "10.0.0.5/24", ""},
		{"", "10.0.0.5/24", ""},
		{"interface=eth1", "192.168.50.7/24", ""},
		{"interface=eth.*", "10.0.0.5/24", ""},
		{"interface=docker0", "172.17.0.1/16", ""}, // named explicitly: allowed
		{"cidr=192.168.0.0/16", "192.168.50.7/24", ""},
		{"cidr=172.20.0.0/16", "", "no IPv4 address matches ip-autodetection cidr=172.20.0.0/16 (usable addresses: eth0 10.0.0.5/24, eth1 192.168.50.7/24)"},
		{"interface=wlan0", "", "no IPv4 address matches ip-autodetection interface=wlan0 (usable addresses: none)"},
		{"interface=(", "", `ip-autodetection "interface=(": interface=REGEX needs a valid regular expression`},
		{"can-reach=nowhere", "", `can-reach=IP needs an IP address`},
		{"cidr=10.0.0.1/33", "", `cidr=CIDR needs CIDRs`},
		{"skip-it", "", `unknown method "skip-it"`},
	} {
		t.Run(tc.method, func(t *testing.T) {
			a, err := ParseAutodetection(tc.method)
			var got netip.Prefix
			if err == nil {
				got, err = a.Detect(ifaces)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("got %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

// can-reach asks the kernel for the source address towards a target;
// loopback is the one target a test may use.
func TestAutodetectionCanReach(t *testing.T) {
	a, err := ParseAutodetection("can-reach=127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Detect([]HostInterface{{Name: "lo", Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}}})
	if err != nil || got.String() != "127.0.0.1/8" {
		t.Fatalf("can-reach=127.0.0.1: %v, %v", got, err)
	}
}

func TestRouteReflectorLabel(t *testing.T) {
	node := func(id string, fromLabel bool) *api.Node {
		n := &api.Node{Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{RouteReflectorClusterID: id}}}
		if fromLabel {
			n.Annotations = map[string]string{rrFromLabel: "true"}
		}
		return n
	}
	for _, tc := range []struct {
		name      string
		n         *api.Node
		label     string
		wantID    string
		fromLabel bool
	}{
		{"label true takes the BGPConfiguration's ID", node("", false), "true", "244.0.0.1", true},
		{"label with an IPv4-style ID", node("", false), "10.0.0.9", "10.0.0.9", true},
		{"label removed clears what it set", node("244.0.0.1", true), "", "", false},
		{"an ID an operator patched in stays", node("224.0.0.7", false), "", "224.0.0.7", false},
		{"no label, no ID", node("", false), "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			applyRouteReflectorLabel(tc.n, tc.label, "244.0.0.1")
			if tc.n.Spec.BGP.RouteReflectorClusterID != tc.wantID || (tc.n.Annotations[rrFromLabel] != "") != tc.fromLabel {
				t.Fatalf("cluster ID %q, from label %v; want %q, %v", tc.n.Spec.BGP.RouteReflectorClusterID,
					tc.n.Annotations[rrFromLabel] != "", tc.wantID, tc.fromLabel)
			}
		})
	}
}

func TestHeartbeatStale(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	beat := func(ago time.Duration) *api.Node {
		return &api.Node{Status: &api.NodeStatus{LastHeartbeat: now.Add(-ago).Format(time.RFC3339)}}
	}
	if HeartbeatStale(beat(time.Minute), now, 5*time.Minute) || !HeartbeatStale(beat(6*time.Minute), now, 5*time.Minute) {
		t.Error("a heartbeat is stale when older than the TTL")
	}
	if HeartbeatStale(&api.Node{}, now, time.Minute) {
		t.Error("a node that never ran an agent is not gone")
	}
}

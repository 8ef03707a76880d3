package nodestatus

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
)

func TestWriteText(t *testing.T) {
	since := time.Date(2026, 11, 23, 10, 0, 0, 0, time.Local)
	r := &Report{Networking: "bgp", Peers: []Peer{
		{Address: netip.MustParseAddr("10.0.0.2"), AS: 64512, Type: "node-to-node mesh", Node: "node-2", State: "Established", Since: since, Info: "Established", PrefixesReceived: 3, PrefixesAccepted: 3, PrefixesAdvertised: 1},
		{Address: netip.MustParseAddr("10.0.0.9"), AS: 65000, Type: "global", State: "Active", Info: "dial tcp 10.0.0.9:179: connection refused"},
	}, Routes: &Routes{Unroutable: []string{"10.1.0.0/26 via 10.9.0.1 (pool p): next hop not on a local subnet"}},
		Conditions: []api.NodeCondition{{Type: "IPIPUnavailable", Status: "True", Message: "kernel has no ipip support"}}}
	var b strings.Builder
	if err := r.WriteText(&b, false); err != nil {
		t.Fatal(err)
	}
	want := `rhizome-node is running.

IPv4 BGP status
+--------------+-------------------+--------+----------+-------------------------------------------+
| PEER ADDRESS | PEER TYPE         | STATE  | SINCE    | INFO                                      |
+--------------+-------------------+--------+----------+-------------------------------------------+
| 10.0.0.2     | node-to-node mesh | up     | 10:00:00 | Established                               |
| 10.0.0.9     | global            | active | -        | dial tcp 10.0.0.9:179: connection refused |
+--------------+-------------------+--------+----------+-------------------------------------------+

No IPv6 peers found.

Routes needing attention
  not installed: 10.1.0.0/26 via 10.9.0.1 (pool p): next hop not on a local subnet

Condition IPIPUnavailable: kernel has no ipip support
`
	if b.String() != want {
		t.Errorf("WriteText:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	if err := r.WriteText(&b, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| AS    | NODE   | RECEIVED | ACCEPTED | ADVERTISED | FLAPS |") ||
		!strings.Contains(b.String(), "| 64512 | node-2 | 3        | 3        | 1          | 0     |") {
		t.Errorf("wide output lacks the AS, node and prefix columns:\n%s", b.String())
	}
	b.Reset()
	if err := (&Report{Networking: "none"}).WriteText(&b, false); err != nil {
		t.Fatal(err)
	}
	if b.String() != "rhizome-node is running.\n\nBGP is off on this node (networking: none).\n" {
		t.Errorf("networking none:\n%s", b.String())
	}
	// VXLAN without BGP: no peer tables, but what VXLAN cannot route.
	b.Reset()
	vx := &Report{Networking: "vxlan", Routes: &Routes{Unroutable: []string{
		"10.244.1.0/26 via 10.77.0.2 (pool p): node node-2 has no IPv4 VXLAN tunnel address and MAC in its record yet"}}}
	if err := vx.WriteText(&b, false); err != nil {
		t.Fatal(err)
	}
	if b.String() != `rhizome-node is running.

BGP is off on this node (networking: vxlan): routes come from the datastore.

Routes needing attention
  not installed: 10.244.1.0/26 via 10.77.0.2 (pool p): node node-2 has no IPv4 VXLAN tunnel address and MAC in its record yet
` {
		t.Errorf("networking vxlan:\n%s", b.String())
	}
}

// TestWriteTextDualStack: IPv6 sessions (one per family with each node)
// are listed under "IPv6 BGP status", IPv4 ones under "IPv4 BGP status",
// as calicoctl node status prints bird and bird6 peers.
func TestWriteTextDualStack(t *testing.T) {
	since := time.Date(2026, 11, 23, 10, 0, 0, 0, time.Local)
	r := &Report{Networking: "bgp", Peers: []Peer{
		{Address: netip.MustParseAddr("10.0.0.2"), AS: 64512, Type: "node-to-node mesh", Node: "node-2", State: "Established", Since: since, Info: "Established"},
		{Address: netip.MustParseAddr("fd00::2"), AS: 64512, Type: "node-to-node mesh", Node: "node-2", State: "Established", Since: since, Info: "Established", PrefixesReceived: 2, PrefixesAccepted: 2, PrefixesAdvertised: 1},
		{Address: netip.MustParseAddr("fd00::fe"), AS: 65000, Type: "node specific", State: "Active", Info: "dial tcp [fd00::fe]:179: connection refused"},
	}}
	var b strings.Builder
	if err := r.WriteText(&b, false); err != nil {
		t.Fatal(err)
	}
	want := `rhizome-node is running.

IPv4 BGP status
+--------------+-------------------+-------+----------+-------------+
| PEER ADDRESS | PEER TYPE         | STATE | SINCE    | INFO        |
+--------------+-------------------+-------+----------+-------------+
| 10.0.0.2     | node-to-node mesh | up    | 10:00:00 | Established |
+--------------+-------------------+-------+----------+-------------+

IPv6 BGP status
+--------------+-------------------+--------+----------+---------------------------------------------+
| PEER ADDRESS | PEER TYPE         | STATE  | SINCE    | INFO                                        |
+--------------+-------------------+--------+----------+---------------------------------------------+
| fd00::2      | node-to-node mesh | up     | 10:00:00 | Established                                 |
| fd00::fe     | node specific     | active | -        | dial tcp [fd00::fe]:179: connection refused |
+--------------+-------------------+--------+----------+---------------------------------------------+
`
	if b.String() != want {
		t.Errorf("WriteText:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	if err := r.WriteText(&b, true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| fd00::2      | node-to-node mesh | up     | 10:00:00 | Established                                 | 64512 | node-2 | 2        | 2        | 1          | 0     |") {
		t.Errorf("wide output lacks the IPv6 peer's AS, node and prefix counts:\n%s", b.String())
	}
}

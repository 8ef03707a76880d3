package bgp_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/bgp"
	"github.com/rhizome-net/rhizome/bgp/bgplab"
)

// Passwords the interop test keeps in "files" (resolved by the test's
// password resolver, as the agent resolves Secrets and files).
var interopPasswords = map[string]string{
	"/etc/rhizome/bird-rr":  "rr-secret-1",
	"/etc/rhizome/frr-tor":  "tor-secret-2",
	"/etc/rhizome/frr-typo": "tor-secret-X",
}

func filePasswords(src api.SecretSource) (string, error) {
	if pw, ok := interopPasswords[src.File]; ok {
		return pw, nil
	}
	return "", errors.New("no such file")
}

// birdRR is BIRD 2 as an iBGP route reflector for the rhizome nodes, with a
// TCP MD5 password, originating one prefix of its own. `direct` makes BIRD
// take next hops on the shared subnet as reachable. The sessions and the
// channel are of origin's family (IPv4 or IPv6), as Calico runs bird and
// bird6.
func birdRR(routerID netip.Addr, as uint32, clients []netip.Addr, password string, origin netip.Prefix) string {
	fam := family(origin)
	var b strings.Builder
	fmt.Fprintf(&b, "router id %s;\nlog stderr all;\nprotocol device {}\n", routerID)
	fmt.Fprintf(&b, "protocol static { %s; route %s blackhole; }\n", fam, origin)
	fmt.Fprintf(&b, "template bgp rhizome {\n  local as %d;\n  rr client;\n  rr cluster id 244.0.0.9;\n  direct;\n  password \"%s\";\n"+
		"  connect retry time 2;\n  %s { import all; export all; };\n}\n", as, password, fam)
	for i, c := range clients {
		fmt.Fprintf(&b, "protocol bgp node%d from rhizome { neighbor %s as %d; }\n", i, c, as)
	}
	return b.String()
}

// family is BIRD's and FRR's name of p's address family.
func family(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "ipv4"
	}
	return "ipv6"
}

// frrToR is FRR bgpd as an eBGP top-of-rack peer in another AS, with
// sessions and an address family of origin's family.
func frrToR(routerID netip.Addr, as uint32, neighbors map[netip.Addr]uint32, password string, origin netip.Prefix) string {
	var b strings.Builder
	fmt.Fprintf(&b, "frr defaults traditional\nhostname tor\nlog stdout informational\n!\nrouter bgp %d\n bgp router-id %s\n"+
		" no bgp ebgp-requires-policy\n no bgp network import-check\n no bgp default ipv4-unicast\n timers bgp 3 9\n", as, routerID)
	for n, nas := range neighbors {
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n neighbor %s password %s\n neighbor %s timers connect 2\n", n, nas, n, password, n)
	}
	fmt.Fprintf(&b, " address-family %s unicast\n  network %s\n", family(origin), origin)
	for n := range neighbors {
		fmt.Fprintf(&b, "  neighbor %s activate\n", n)
	}
	b.WriteString(" exit-address-family\n!\n")
	return b.String()
}

// TestPrivilegedInterop: BIRD 2 is the route reflector of two rhizome nodes
// and FRR an eBGP ToR in AS 65000 of one of them, all with TCP MD5
// passwords. Routes flow both ways; the node whose ToR password is wrong
// keeps that session down and says why.
func TestPrivilegedInterop(t *testing.T) {
	bgplab.Privileged(t)
	bgplab.NeedDaemons(t, bgplab.BirdBin, bgplab.BirdcBin, bgplab.BgpdBin, bgplab.VtyshBin)
	c := newCluster(t, "10.78.0.0/24", 2)
	c.password = filePasswords
	birdNode := c.net.AddNode("bird", 100)
	frrNode := c.net.AddNode("frr", 200)
	birdAddr, frrAddr := birdNode.Addr.Addr(), frrNode.Addr.Addr()
	birdRoute, frrRoute := netip.MustParsePrefix("10.210.0.0/24"), netip.MustParsePrefix("10.220.0.0/24")
	n1, n2 := c.nodes[0].Addr.Addr(), c.nodes[1].Addr.Addr()

	bird := bgplab.StartBird(t, birdNode, birdRR(birdAddr, 64512, []netip.Addr{n1, n2}, interopPasswords["/etc/rhizome/bird-rr"], birdRoute))
	frr := bgplab.StartFRR(t, frrNode, frrToR(frrAddr, 65000, map[netip.Addr]uint32{n1: 64512, n2: 64512}, interopPasswords["/etc/rhizome/frr-tor"], frrRoute))

	off := false
	c.configs = []api.BGPConfiguration{{ObjectMeta: api.ObjectMeta{Name: "default"}, Spec: api.BGPConfigurationSpec{NodeToNodeMeshEnabled: &off}}}
	c.peers = []api.BGPPeer{
		{ObjectMeta: api.ObjectMeta{Name: "bird-rr"}, Spec: api.BGPPeerSpec{PeerIP: birdAddr.String(), ASNumber: api.NewASNumber(64512),
			Password: &api.SecretSource{File: "/etc/rhizome/bird-rr"}}},
		{ObjectMeta: api.ObjectMeta{Name: "tor-n1"}, Spec: api.BGPPeerSpec{Node: "n1", PeerIP: frrAddr.String(), ASNumber: api.NewASNumber(65000),
			Password: &api.SecretSource{File: "/etc/rhizome/frr-tor"}}},
		{ObjectMeta: api.ObjectMeta{Name: "tor-n2"}, Spec: api.BGPPeerSpec{Node: "n2", PeerIP: frrAddr.String(), ASNumber: api.NewASNumber(65000),
			Password: &api.SecretSource{File: "/etc/rhizome/frr-typo"}}},
	}
	start := time.Now()
	sp1, sp2 := c.start(c.nodes[0], 1), c.start(c.nodes[1], 2)

	// From BIRD: the other node's block with its own next hop (reflected,
	// next hop kept) and BIRD's prefix. From FRR (n1 only): FRR's prefix.
	sp1.Wait(30*time.Second, "n1 learns through BIRD and FRR", func(v bgplab.View) bool {
		return v.Routes[block(2)].NextHop == n2 && v.Routes[block(2)].Peer == birdAddr &&
			v.Routes[birdRoute].NextHop == birdAddr && v.Routes[frrRoute].NextHop == frrAddr
	})
	sp2.Wait(30*time.Second, "n2 learns through BIRD", func(v bgplab.View) bool {
		return v.Routes[block(1)].NextHop == n1 && v.Routes[birdRoute].NextHop == birdAddr
	})
	t.Logf("routes from BIRD and FRR reached rhizome in %v", time.Since(start).Round(time.Millisecond))

	// Into BIRD and FRR: the rhizome blocks, next hop the node.
	waitFor(t, 20*time.Second, "BIRD has both blocks via their nodes", func() (bool, string) {
		out, _ := bird.Cmd("show route")
		return strings.Contains(out, block(1).String()) && strings.Contains(out, "via "+n1.String()) &&
			strings.Contains(out, block(2).String()) && strings.Contains(out, "via "+n2.String()), out
	})
	waitFor(t, 20*time.Second, "FRR has n1's block via n1", func() (bool, string) {
		out, _ := frr.Cmd("show bgp ipv4 unicast " + block(1).String())
		return strings.Contains(out, n1.String()) && !strings.Contains(out, "not in table"), out
	})

	// n2's ToR password is wrong: the session stays down, with the reason.
	time.Sleep(3 * time.Second)
	var tor bgp.PeerStatus
	for _, p := range sp2.Status() {
		if p.Address == frrAddr {
			tor = p
		}
	}
	if tor.State == bgp.StateEstablished || !strings.Contains(tor.Info, "TCP MD5") {
		t.Errorf("n2 with a wrong ToR password: %+v, want a session that is down with an MD5 hint", tor)
	}
	t.Logf("wrong password: state %s, info %q", tor.State, tor.Info)
	out, _ := frr.Cmd("show bgp neighbor " + n2.String())
	if !strings.Contains(out, "BGP state = Active") && !strings.Contains(out, "BGP state = Connect") && !strings.Contains(out, "BGP state = Idle") {
		t.Errorf("FRR shows the n2 session with a wrong password as:\n%s", out)
	}
	for _, p := range sp1.Status() {
		if p.State != bgp.StateEstablished {
			t.Errorf("n1 peer %s: %s (%s), want Established", p.Address, p.State, p.Info)
		}
	}
	// Withdrawal flows out too: n1 drops its block, BIRD and FRR follow.
	sp1.SetAdvertisements()
	waitFor(t, 20*time.Second, "BIRD and FRR withdraw n1's block", func() (bool, string) {
		b, _ := bird.Cmd("show route " + block(1).String())
		f, _ := frr.Cmd("show bgp ipv4 unicast " + block(1).String())
		return !strings.Contains(b, "via") && strings.Contains(f, "not in table"), b + f
	})
	sp2.Wait(10*time.Second, "n2 sees n1's block withdrawn", func(v bgplab.View) bool { _, ok := v.Routes[block(1)]; return !ok })
}

// TestPrivilegedInteropIPv6 is TestPrivilegedInterop in IPv6, on dual-stack
// nodes: BIRD 2 is the route reflector over IPv6 sessions (a BGPPeer with an
// IPv6 peerIP), FRR an eBGP ToR in AS 65000 over IPv6, both with TCP MD5
// passwords. IPv6 blocks reach BIRD and FRR via the nodes' IPv6 addresses,
// BIRD's and FRR's IPv6 prefixes reach the nodes via theirs, reflected
// blocks keep the originator's next hop, and withdrawals flow out. The
// IPv4 sessions to the same daemons are left out on purpose: the IPv6
// ones must carry everything IPv6 by themselves.
func TestPrivilegedInteropIPv6(t *testing.T) {
	bgplab.Privileged(t)
	bgplab.NeedDaemons(t, bgplab.BirdBin, bgplab.BirdcBin, bgplab.BgpdBin, bgplab.VtyshBin)
	c := newCluster(t, "10.80.0.0/24", 2)
	c.dualStack()
	c.password = filePasswords
	birdNode := c.net.AddNode("bird", 100)
	frrNode := c.net.AddNode("frr", 200)
	birdAddr, frrAddr := birdNode.Addr6.Addr(), frrNode.Addr6.Addr()
	birdRoute, frrRoute := netip.MustParsePrefix("fd21::/64"), netip.MustParsePrefix("fd22::/64")
	n1, n2 := c.nodes[0].Addr6.Addr(), c.nodes[1].Addr6.Addr()

	bird := bgplab.StartBird(t, birdNode, birdRR(birdNode.Addr.Addr(), 64512, []netip.Addr{n1, n2}, interopPasswords["/etc/rhizome/bird-rr"], birdRoute))
	frr := bgplab.StartFRR(t, frrNode, frrToR(frrNode.Addr.Addr(), 65000, map[netip.Addr]uint32{n1: 64512, n2: 64512}, interopPasswords["/etc/rhizome/frr-tor"], frrRoute))

	off := false
	c.configs = []api.BGPConfiguration{{ObjectMeta: api.ObjectMeta{Name: "default"}, Spec: api.BGPConfigurationSpec{NodeToNodeMeshEnabled: &off}}}
	c.peers = []api.BGPPeer{
		{ObjectMeta: api.ObjectMeta{Name: "bird-rr6"}, Spec: api.BGPPeerSpec{PeerIP: birdAddr.String(), ASNumber: api.NewASNumber(64512),
			Password: &api.SecretSource{File: "/etc/rhizome/bird-rr"}}},
		{ObjectMeta: api.ObjectMeta{Name: "tor6"}, Spec: api.BGPPeerSpec{PeerIP: "[" + frrAddr.String() + "]:179", ASNumber: api.NewASNumber(65000),
			Password: &api.SecretSource{File: "/etc/rhizome/frr-tor"}}},
	}
	start := time.Now()
	sp1, sp2 := c.start6(c.nodes[0], 1), c.start6(c.nodes[1], 2)

	for _, tc := range []struct {
		sp         *bgplab.Speaker
		other      int
		otherAddr  netip.Addr
		selfPrefix netip.Prefix
	}{{sp1, 2, n2, block6(1)}, {sp2, 1, n1, block6(2)}} {
		tc.sp.Wait(30*time.Second, "IPv6 routes from BIRD (reflected and its own) and FRR", func(v bgplab.View) bool {
			r := v.Routes[block6(tc.other)]
			return r.NextHop == tc.otherAddr && r.Peer == birdAddr &&
				v.Routes[birdRoute].NextHop == birdAddr && v.Routes[birdRoute].Peer == birdAddr &&
				v.Routes[frrRoute].NextHop == frrAddr && v.Routes[frrRoute].Peer == frrAddr
		})
		// No IPv4 session was asked for: nothing IPv4 arrives.
		for p := range tc.sp.View().Routes {
			if p.Addr().Is4() {
				t.Errorf("%s learned the IPv4 prefix %s with only IPv6 sessions", tc.sp.Node.Name, p)
			}
		}
	}
	t.Logf("IPv6 routes from BIRD and FRR reached rhizome in %v", time.Since(start).Round(time.Millisecond))

	for _, sp := range []*bgplab.Speaker{sp1, sp2} {
		st := sp.Status()
		if len(st) != 2 {
			t.Errorf("%s status: %+v, want the two IPv6 peers", sp.Node.Name, st)
		}
		for _, p := range st {
			// Advertised counts what the node passes on too (BIRD's and the
			// other node's routes to FRR, FRR's to BIRD), as in IPv4.
			if !p.Address.Is6() || p.State != bgp.StateEstablished || p.PrefixesAdvertised == 0 || p.PrefixesAccepted == 0 {
				t.Errorf("%s peer %+v, want an established IPv6 session with prefixes both ways", sp.Node.Name, p)
			}
		}
	}

	waitFor(t, 20*time.Second, "BIRD has both IPv6 blocks via the nodes' IPv6 addresses", func() (bool, string) {
		out, _ := bird.Cmd("show route")
		return strings.Contains(out, block6(1).String()) && strings.Contains(out, "via "+n1.String()) &&
			strings.Contains(out, block6(2).String()) && strings.Contains(out, "via "+n2.String()), out
	})
	for i, n := range []netip.Addr{n1, n2} {
		waitFor(t, 20*time.Second, "FRR has the node's IPv6 block via its IPv6 address", func() (bool, string) {
			out, _ := frr.Cmd("show bgp ipv6 unicast " + block6(i+1).String())
			return strings.Contains(out, n.String()) && !strings.Contains(out, "not in table"), out
		})
	}
	out, _ := frr.Cmd("show bgp ipv6 unicast summary")
	t.Logf("FRR:\n%s", out)

	// Withdrawal flows out: n1 keeps only its IPv4 block (no IPv4 session
	// here); BIRD, FRR and n2 drop n1's IPv6 block.
	sp1.SetAdvertisements(bgp.Advertisement{Prefix: block(1), NextHop: c.nodes[0].Addr.Addr()})
	waitFor(t, 20*time.Second, "BIRD and FRR withdraw n1's IPv6 block", func() (bool, string) {
		b, _ := bird.Cmd("show route " + block6(1).String())
		f, _ := frr.Cmd("show bgp ipv6 unicast " + block6(1).String())
		return !strings.Contains(b, "via") && strings.Contains(f, "not in table"), b + f
	})
	sp2.Wait(10*time.Second, "n2 sees n1's IPv6 block withdrawn", func(v bgplab.View) bool { _, ok := v.Routes[block6(1)]; return !ok })
}

// waitFor polls cond until it holds or the timeout passes; it fails with
// cond's last description.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v:\n%s", what, timeout, desc)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package dataplane

import (
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/rhizome-net/rhizome/api"
)

func TestNATRules(t *testing.T) {
	pools := []Pool{
		{CIDR: pfx("192.168.0.0/16"), NATOutgoing: true},
		{CIDR: pfx("10.244.0.0/16")},
		{CIDR: pfx("fd10::/48"), NATOutgoing: true},
	}
	rules := natRules(pools)
	if len(rules) != 2 {
		t.Fatalf("%d rules, want one per natOutgoing pool (2)", len(rules))
	}
	// v4 rule: nfproto, saddr (3 exprs), daddr != each v4 pool (2×3), masq.
	if n := len(rules[0]); n != 2+3+6+1 {
		t.Errorf("v4 rule has %d expressions, want 12", n)
	}
	// v6 rule: only the v6 pool is excluded as destination.
	if n := len(rules[1]); n != 2+3+3+1 {
		t.Errorf("v6 rule has %d expressions, want 9", n)
	}
	if _, ok := rules[0][len(rules[0])-1].(*expr.Masq); !ok {
		t.Error("rule does not end in masquerade")
	}
	if len(natRules([]Pool{{CIDR: pfx("10.0.0.0/8")}})) != 0 {
		t.Error("rules for a pool without natOutgoing")
	}
}

func TestPrivilegedNATOutgoing(t *testing.T) {
	l := newBridgeLab(t)
	n1, n2 := l.nodes[0], l.nodes[1]
	pools := func(nat bool) []Pool {
		return []Pool{{Name: "default", CIDR: netip.MustParsePrefix("192.168.0.0/16"), IPIPMode: api.EncapNever, NATOutgoing: nat}}
	}
	l.startAll(t, pools(true))
	// Without NAT the outside host needs a way back to the pod.
	addStatic(t, l.router, "192.168.1.0/26", "10.0.1.11", "r1")

	// Another program's table in the same namespace must survive
	// everything rhizome does.
	other := &nftables.Table{Name: "someone-else", Family: nftables.TableFamilyIPv4}
	c, err := nftables.New(nftables.WithNetNSFd(int(n1.ns)))
	must(t, err)
	c.AddTable(other)
	c.AddChain(&nftables.Chain{Name: "theirs", Table: other})
	must(t, c.Flush())
	otherThere := func() bool {
		ts, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
		must(t, err)
		for _, tb := range ts {
			if tb.Name == other.Name {
				return true
			}
		}
		return false
	}

	nat := NewNATManager(n1.ns)
	outside := netip.MustParseAddr("10.0.1.1") // the router: in no pool
	check := func(step string, wantOutside, wantInside netip.Addr) {
		t.Helper()
		if src, err := tcpCheck(t, n1.pod.ns, l.router, outside); err != nil || src != wantOutside {
			t.Errorf("%s: pod -> %s arrived from %s (err %v), want %s", step, outside, src, err, wantOutside)
		}
		if src, err := tcpCheck(t, n1.pod.ns, n2.pod.ns, n2.pod.addr); err != nil || src != wantInside {
			t.Errorf("%s: pod -> pod arrived from %s (err %v), want %s", step, src, err, wantInside)
		}
	}

	must(t, nat.Set(pools(true)))
	check("natOutgoing on", n1.addr.Addr(), n1.pod.addr)
	if n, err := nat.NATRuleCount(); err != nil || n != 1 {
		t.Errorf("rule count = %d, %v; want 1", n, err)
	}
	must(t, nat.Set(pools(true))) // idempotent rewrite
	if n, _ := nat.NATRuleCount(); n != 1 {
		t.Errorf("rule count after rewriting = %d, want 1", n)
	}

	must(t, nat.Set(pools(false)))
	check("natOutgoing off", n1.pod.addr, n1.pod.addr)
	if n, _ := nat.NATRuleCount(); n != 0 {
		t.Errorf("rules left with natOutgoing off: %d", n)
	}

	must(t, nat.Set(pools(true)))
	check("natOutgoing on again", n1.addr.Addr(), n1.pod.addr)
	must(t, nat.Remove())
	check("table removed", n1.pod.addr, n1.pod.addr)
	must(t, nat.Remove()) // removing twice is fine
	if !otherThere() {
		t.Error("another program's nftables table was removed")
	}
}

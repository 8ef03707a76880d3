package bgp_test

import (
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/bgp"
	"github.com/rhizome-net/rhizome/bgp/bgplab"
)

// withdrawals counts withdraw events for the block of node i.
func withdrawals(v bgplab.View, i int) int {
	n := 0
	for _, r := range v.RouteEvents() {
		if r.Prefix == block(i) && r.Withdrawn {
			n++
		}
	}
	return n
}

// TestPrivilegedGracefulRestart kills a speaker without Cease (SIGKILL, and
// Stop as the agent does on restart): its peers keep its routes, and when
// it comes back they are refreshed without a withdraw. Shutdown, which
// sends a Cease, makes the peers withdraw at once.
func TestPrivilegedGracefulRestart(t *testing.T) {
	c := newCluster(t, "10.77.0.0/24", 3)
	for i, nd := range c.nodes {
		c.start(nd, i+1)
	}
	n3 := c.nodes[2].Addr.Addr()
	watchers := []*bgplab.Speaker{c.speakers["n1"], c.speakers["n2"]}
	for i, sp := range watchers {
		sp.Wait(30*time.Second, "mesh up", func(v bgplab.View) bool { return v.Established() == 2 && c.hasBlocks(others(3, i+1)...)(v) })
	}

	for _, how := range []string{"SIGKILL", "Stop"} {
		if how == "SIGKILL" {
			c.speakers["n3"].Kill()
		} else {
			c.speakers["n3"].Stop()
		}
		for i, sp := range watchers {
			sp.Wait(20*time.Second, how+": n3's session goes down", func(v bgplab.View) bool { return v.Peers[n3] != bgp.StateEstablished })
			time.Sleep(time.Second)
			if v := sp.View(); !c.hasBlocks(others(3, i+1)...)(v) || withdrawals(v, 3) != 0 {
				t.Fatalf("%s: after %s of n3 its routes were dropped: routes %v", sp.Node.Name, how, v.Routes)
			}
		}
		t.Logf("%s: peers keep n3's block while it is down", how)

		c.start(c.nodes[2], 3)
		for i, sp := range watchers {
			sp.Wait(30*time.Second, how+": n3 back", func(v bgplab.View) bool { return v.Peers[n3] == bgp.StateEstablished })
			// End-of-RIB has been sent with the table; give stale-route
			// removal time to run, then look again.
			time.Sleep(time.Second)
			if v := sp.View(); !c.hasBlocks(others(3, i+1)...)(v) || withdrawals(v, 3) != 0 {
				t.Fatalf("%s: after n3 came back (%s): routes %v, %d withdrawals of its block", sp.Node.Name, how, v.Routes, withdrawals(v, 3))
			}
		}
		for _, p := range c.speakers["n3"].Status() {
			if p.State == bgp.StateEstablished && p.PrefixesReceived != 1 {
				t.Errorf("restarted n3: peer %s sent %d prefixes, want 1", p.Address, p.PrefixesReceived)
			}
		}
	}

	// Shutdown sends a Cease: peers withdraw at once.
	c.speakers["n3"].Shutdown()
	for i, sp := range watchers {
		rest := others(3, i+1)
		rest = rest[:len(rest)-1] // without n3
		sp.Wait(10*time.Second, "Shutdown: n3's block withdrawn", c.hasBlocks(rest...))
		if withdrawals(sp.View(), 3) != 1 {
			t.Errorf("%s: %d withdrawals of n3's block after Shutdown, want 1", sp.Node.Name, withdrawals(sp.View(), 3))
		}
	}
}

package cni_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/rhizome-net/rhizome/cni"
	"github.com/rhizome-net/rhizome/daemon/cnisvc"
	"github.com/rhizome-net/rhizome/daemon/cnisvc/agenttest"
)

func rhizomeConf(t testing.TB, ag *agenttest.Agent, extra map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	p := map[string]any{"type": "rhizome-cni", "socket": ag.Socket}
	for k, v := range extra {
		p[k] = v
	}
	return confList(t, "rz-net", p)
}

// podLink reads the pod's interface: MTU, addresses, routes.
func podLink(t testing.TB, p *pod) (mtu int, addrs []string, routes []netlink.Route) {
	t.Helper()
	if err := p.netns.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		mtu = l.Attrs().MTU
		as, err := netlinksafe.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range as {
			addrs = append(addrs, a.IPNet.String())
		}
		routes, err = netlinksafe.RouteList(l, netlink.FAMILY_V4)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mtu, addrs, routes
}

func TestPrivilegedAddCheckDel(t *testing.T) {
	needRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.30.0.0/24"), agenttest.MTU(1410))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	p := n.newPod("default", "web-1")

	res := n.add(conf, p)
	addr := podAddr(t, res)
	if !netip.MustParsePrefix("10.30.0.0/24").Contains(addr) || res.IPs[0].Address.String() != addr.String()+"/32" {
		t.Fatalf("ADD result address %s, want a /32 of 10.30.0.0/24", res.IPs[0].Address.String())
	}
	hostName := cni.HostVethName("default", "web-1", p.rt.ContainerID, "eth0")
	if res.Interfaces[0].Name != hostName || len(hostName) != 13 {
		t.Fatalf("host interface %q, want %q", res.Interfaces[0].Name, hostName)
	}
	mtu, addrs, routes := podLink(t, p)
	if mtu != 1410 {
		t.Errorf("pod MTU %d, want the agent's 1410", mtu)
	}
	if !slices.Equal(addrs, []string{addr.String() + "/32"}) {
		t.Errorf("pod addresses %v", addrs)
	}
	var haveGwRoute, haveDefault bool
	for _, r := range routes {
		haveGwRoute = haveGwRoute || (r.Dst != nil && r.Dst.String() == "169.254.1.1/32" && r.Scope == netlink.SCOPE_LINK)
		haveDefault = haveDefault || ((r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == "169.254.1.1")
	}
	if !haveGwRoute || !haveDefault {
		t.Errorf("pod routes %v: want 169.254.1.1 dev eth0 scope link and default via 169.254.1.1", routes)
	}
	links, hostRoutes := n.hostState()
	if !slices.Equal(links, []string{hostName}) || len(hostRoutes) != 1 {
		t.Fatalf("host links %v, rhizome routes %v", links, hostRoutes)
	}
	n.inHost(func() error {
		l, err := netlinksafe.LinkByName(hostName)
		if err != nil {
			return err
		}
		rs, err := netlinksafe.RouteList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(rs) != 1 || rs[0].Dst.String() != addr.String()+"/32" || rs[0].Protocol != 94 || l.Attrs().MTU != 1410 {
			return fmt.Errorf("host veth %s (MTU %d) routes %v: want %s/32 proto 94", hostName, l.Attrs().MTU, rs, addr)
		}
		return nil
	})

	if err := n.cni.CheckNetworkList(context.Background(), conf, p.rt); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	// CHECK notices a missing host route.
	n.inHost(func() error {
		l, _ := netlinksafe.LinkByName(hostName)
		rs, _ := netlinksafe.RouteList(l, netlink.FAMILY_V4)
		return netlink.RouteDel(&rs[0])
	})
	err := n.cni.CheckNetworkList(context.Background(), conf, p.rt)
	wantErrText(t, err, "CHECK", "host has no route "+addr.String()+"/32")

	again := n.add(conf, p)
	if podAddr(t, again) != addr {
		t.Fatalf("repeated ADD gave %s, first %s", podAddr(t, again), addr)
	}
	if err := n.cni.CheckNetworkList(context.Background(), conf, p.rt); err != nil {
		t.Fatalf("CHECK after repeated ADD: %v", err)
	}

	n.del(conf, p)
	n.del(conf, p) // DEL is idempotent
	if links, routes := n.hostState(); len(links)+len(routes) != 0 {
		t.Fatalf("after DEL: host links %v, routes %v", links, routes)
	}
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("after DEL allocated: %v", got)
	}
}

func TestPrivilegedMTUFromConfig(t *testing.T) {
	needRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.31.0.0/24"), agenttest.MTU(1410))
	n := newNode(t)
	p := n.newPod("default", "mtu")
	n.add(rhizomeConf(t, ag, map[string]any{"mtu": 1280}), p)
	if mtu, _, _ := podLink(t, p); mtu != 1280 {
		t.Fatalf("pod MTU %d, want the config's 1280", mtu)
	}
}

func TestPrivilegedDelAfterNamespaceDeleted(t *testing.T) {
	needRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.32.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	p := n.newPod("default", "gone")
	n.add(conf, p)
	deleteNS(p.netns)
	n.del(conf, p)
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("after DEL allocated: %v", got)
	}
	waitNoLinks(t, n)
}

// waitNoLinks waits for the kernel to finish removing veths of deleted
// namespaces (it does so asynchronously).
func waitNoLinks(t testing.TB, n *node) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		links, routes := n.hostState()
		if len(links)+len(routes) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("leftover host links %v, routes %v", links, routes)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPrivilegedDelWhileAgentDown(t *testing.T) {
	needRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.33.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	p := n.newPod("default", "down")
	addr := podAddr(t, n.add(conf, p))

	ag.Stop()
	err := n.cni.DelNetworkList(context.Background(), conf, p.rt)
	wantErrText(t, err, "rhizome-node is not reachable at "+ag.Socket+": is the rhizome-node pod running on this node?")
	var te *types.Error
	if !errors.As(err, &te) || te.Code != 11 {
		t.Errorf("error %#v, want CNI code 11 (try again later)", err)
	}
	if _, held := ag.Allocated()[addr]; !held {
		t.Fatalf("%s released although the agent was down", addr)
	}
	ag.Start()
	n.del(conf, p) // the runtime retries
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("after DEL allocated: %v", got)
	}
}

func TestPrivilegedAgentNotReachable(t *testing.T) {
	needRoot(t)
	n := newNode(t)
	sock := filepath.Join(t.TempDir(), "nobody.sock")
	conf := confList(t, "rz-net", map[string]any{"type": "rhizome-cni", "socket": sock})
	p := n.newPod("default", "lonely")
	_, err := n.cni.AddNetworkList(context.Background(), conf, p.rt)
	wantErrText(t, err, "rhizome-node is not reachable at "+sock+": is the rhizome-node pod running on this node?")
	err = n.cni.GetStatusNetworkList(context.Background(), conf)
	wantErrText(t, err, "rhizome-node is not reachable")
	var te *types.Error
	if !errors.As(err, &te) || te.Code != 50 {
		t.Errorf("STATUS error %#v, want CNI code 50", err)
	}
	if links, _ := n.hostState(); len(links) != 0 {
		t.Fatalf("failed ADD left links %v", links)
	}
}

func TestPrivilegedBadAnnotation(t *testing.T) {
	needRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.34.0.0/24"))
	ag.Pods.SetPod("default", "bad", map[string]string{cnisvc.AnnotationIPv4Pools: `[pool-a]`})
	n := newNode(t)
	p := n.newPod("default", "bad")
	_, err := n.cni.AddNetworkList(context.Background(), rhizomeConf(t, ag, nil), p.rt)
	wantErrText(t, err, "pod default/bad", "annotation rhizome.io/ipv4-pools on the pod", "invalid character")
	var te *types.Error
	if !errors.As(err, &te) || te.Code != 101 {
		t.Errorf("error %#v, want code 101", err)
	}
}

func TestPrivilegedStatusAndGC(t *testing.T) {
	needRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.35.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	if err := n.cni.GetStatusNetworkList(context.Background(), conf); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	keep, leak := n.newPod("default", "keep"), n.newPod("default", "leak")
	keepAddr := podAddr(t, n.add(conf, keep))
	n.add(conf, leak)
	err := n.cni.GCNetworkList(context.Background(), conf, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.rt.ContainerID, IfName: "eth0"}}})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	got := ag.Allocated()
	if len(got) != 1 || got[keepAddr] == "" {
		t.Fatalf("after GC allocated %v, want only %s", got, keepAddr)
	}
}

func TestPrivilegedPing(t *testing.T) {
	needRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.36.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	a, b := n.newPod("default", "a"), n.newPod("default", "b")
	addrA, addrB := podAddr(t, n.add(conf, a)), podAddr(t, n.add(conf, b))
	// The host's own address, on its loopback (TEST-NET-1, inside the
	// test's namespace only).
	hostAddr := netip.MustParseAddr("192.0.2.1")
	n.inHost(func() error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: hostNetOf(hostAddr)})
	})
	for _, tc := range []struct {
		name string
		from ns.NetNS
		to   netip.Addr
	}{
		{"pod a to host", a.netns, hostAddr},
		{"host to pod a", n.host, addrA},
		{"pod a to pod b", a.netns, addrB},
		{"pod b to pod a", b.netns, addrA},
	} {
		if err := ping(tc.from, tc.to, 3*time.Second); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// An address no pod holds does not answer: the replies above came
	// through the pods' wiring.
	if err := ping(a.netns, netip.MustParseAddr("10.36.0.250"), 500*time.Millisecond); err == nil {
		t.Errorf("ping to an address no pod holds was answered")
	}
}

func TestPrivileged200PodsLeaveNothing(t *testing.T) {
	needRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.37.0.0/22"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	seen := map[netip.Addr]bool{}
	for i := range 200 {
		p := n.newPod("load", fmt.Sprintf("pod-%d", i))
		seen[podAddr(t, n.add(conf, p))] = true
		if i%3 == 0 {
			deleteNS(p.netns) // some pods lose their namespace first
		}
		n.del(conf, p)
		deleteNS(p.netns)
	}
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("after 200 ADD/DEL: %d addresses allocated: %v", len(got), got)
	}
	waitNoLinks(t, n)
	if len(seen) < 2 {
		t.Fatalf("200 pods used %d distinct addresses", len(seen))
	}
}

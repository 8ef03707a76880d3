package cni_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/rhizome-net/rhizome/cni"
	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/daemon/cnisvc"
	"github.com/rhizome-net/rhizome/daemon/cnisvc/agenttest"
	"github.com/rhizome-net/rhizome/ipam"
)

func rhizomeConf(t testing.TB, ag *agenttest.Agent, extra map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	p := map[string]any{"type": "rhizome-cni", "socket": ag.Socket}
	for k, v := range extra {
		p[k] = v
	}
	return cnitest.ConfList(t, "rz-net", p)
}

// podLink reads the pod's interface: MTU, addresses, routes.
func podLink(t testing.TB, p *cnitest.Pod) (mtu int, addrs []string, routes []netlink.Route) {
	t.Helper()
	if err := p.NetNS.Do(func(ns.NetNS) error {
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
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.30.0.0/24"), agenttest.MTU(1410))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	p := n.NewPod("default", "web-1")

	res := n.Add(conf, p)
	addr := cnitest.PodAddr(t, res)
	if !netip.MustParsePrefix("10.30.0.0/24").Contains(addr) || res.IPs[0].Address.String() != addr.String()+"/32" {
		t.Fatalf("ADD result address %s, want a /32 of 10.30.0.0/24", res.IPs[0].Address.String())
	}
	hostName := cni.HostVethName("default", "web-1", p.RT.ContainerID, "eth0")
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
	links, hostRoutes := n.HostState()
	if !slices.Equal(links, []string{hostName}) || len(hostRoutes) != 1 {
		t.Fatalf("host links %v, rhizome routes %v", links, hostRoutes)
	}
	n.InHost(func() error {
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

	if err := n.CNI.CheckNetworkList(context.Background(), conf, p.RT); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	// CHECK notices a missing host route.
	n.InHost(func() error {
		l, _ := netlinksafe.LinkByName(hostName)
		rs, _ := netlinksafe.RouteList(l, netlink.FAMILY_V4)
		return netlink.RouteDel(&rs[0])
	})
	err := n.CNI.CheckNetworkList(context.Background(), conf, p.RT)
	cnitest.WantErrText(t, err, "CHECK", "host has no route "+addr.String()+"/32")

	again := n.Add(conf, p)
	if cnitest.PodAddr(t, again) != addr {
		t.Fatalf("repeated ADD gave %s, first %s", cnitest.PodAddr(t, again), addr)
	}
	if err := n.CNI.CheckNetworkList(context.Background(), conf, p.RT); err != nil {
		t.Fatalf("CHECK after repeated ADD: %v", err)
	}

	n.Del(conf, p)
	n.Del(conf, p) // DEL is idempotent
	if links, routes := n.HostState(); len(links)+len(routes) != 0 {
		t.Fatalf("after DEL: host links %v, routes %v", links, routes)
	}
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("after DEL allocated: %v", got)
	}
}

func TestPrivilegedMTUFromConfig(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.31.0.0/24"), agenttest.MTU(1410))
	n := newNode(t)
	p := n.NewPod("default", "mtu")
	n.Add(rhizomeConf(t, ag, map[string]any{"mtu": 1280}), p)
	if mtu, _, _ := podLink(t, p); mtu != 1280 {
		t.Fatalf("pod MTU %d, want the config's 1280", mtu)
	}
}

func TestPrivilegedDelAfterNamespaceDeleted(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.32.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	p := n.NewPod("default", "gone")
	n.Add(conf, p)
	cnitest.DeleteNS(p.NetNS)
	n.Del(conf, p)
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("after DEL allocated: %v", got)
	}
	waitNoLinks(t, n)
}

// waitNoLinks waits for the kernel to finish removing veths of deleted
// namespaces (it does so asynchronously).
func waitNoLinks(t testing.TB, n *cnitest.Node) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		links, routes := n.HostState()
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
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.33.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	p := n.NewPod("default", "down")
	addr := cnitest.PodAddr(t, n.Add(conf, p))

	ag.Stop()
	err := n.CNI.DelNetworkList(context.Background(), conf, p.RT)
	cnitest.WantErrText(t, err, "rhizome-node is not reachable at "+ag.Socket+": is the rhizome-node pod running on this node?")
	var te *types.Error
	if !errors.As(err, &te) || te.Code != 11 {
		t.Errorf("error %#v, want CNI code 11 (try again later)", err)
	}
	if _, held := ag.Allocated()[addr]; !held {
		t.Fatalf("%s released although the agent was down", addr)
	}
	ag.Start()
	n.Del(conf, p) // the runtime retries
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("after DEL allocated: %v", got)
	}
}

func TestPrivilegedAgentNotReachable(t *testing.T) {
	cnitest.NeedRoot(t)
	n := newNode(t)
	sock := filepath.Join(t.TempDir(), "nobody.sock")
	conf := cnitest.ConfList(t, "rz-net", map[string]any{"type": "rhizome-cni", "socket": sock})
	p := n.NewPod("default", "lonely")
	_, err := n.CNI.AddNetworkList(context.Background(), conf, p.RT)
	cnitest.WantErrText(t, err, "rhizome-node is not reachable at "+sock+": is the rhizome-node pod running on this node?")
	err = n.CNI.GetStatusNetworkList(context.Background(), conf)
	cnitest.WantErrText(t, err, "rhizome-node is not reachable")
	var te *types.Error
	if !errors.As(err, &te) || te.Code != 50 {
		t.Errorf("STATUS error %#v, want CNI code 50", err)
	}
	if links, _ := n.HostState(); len(links) != 0 {
		t.Fatalf("failed ADD left links %v", links)
	}
}

func TestPrivilegedBadAnnotation(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.34.0.0/24"))
	ag.Pods.SetPod("default", "bad", map[string]string{cnisvc.AnnotationIPv4Pools: `[pool-a]`})
	n := newNode(t)
	p := n.NewPod("default", "bad")
	_, err := n.CNI.AddNetworkList(context.Background(), rhizomeConf(t, ag, nil), p.RT)
	cnitest.WantErrText(t, err, "pod default/bad", "annotation rhizome.io/ipv4-pools on the pod", "invalid character")
	var te *types.Error
	if !errors.As(err, &te) || te.Code != 101 {
		t.Errorf("error %#v, want code 101", err)
	}
}

func TestPrivilegedStatusAndGC(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.35.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	if err := n.CNI.GetStatusNetworkList(context.Background(), conf); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	keep, leak := n.NewPod("default", "keep"), n.NewPod("default", "leak")
	keepAddr := cnitest.PodAddr(t, n.Add(conf, keep))
	n.Add(conf, leak)
	err := n.CNI.GCNetworkList(context.Background(), conf, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.RT.ContainerID, IfName: "eth0"}}})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	got := ag.Allocated()
	if len(got) != 1 || got[keepAddr] == "" {
		t.Fatalf("after GC allocated %v, want only %s", got, keepAddr)
	}
}

func TestPrivilegedPing(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.36.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	a, b := n.NewPod("default", "a"), n.NewPod("default", "b")
	addrA, addrB := cnitest.PodAddr(t, n.Add(conf, a)), cnitest.PodAddr(t, n.Add(conf, b))
	// The host's own address, on its loopback (TEST-NET-1, inside the
	// test's namespace only).
	hostAddr := netip.MustParseAddr("192.0.2.1")
	n.InHost(func() error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: cnitest.HostNet(hostAddr)})
	})
	for _, tc := range []struct {
		name string
		from ns.NetNS
		to   netip.Addr
	}{
		{"pod a to host", a.NetNS, hostAddr},
		{"host to pod a", n.Host, addrA},
		{"pod a to pod b", a.NetNS, addrB},
		{"pod b to pod a", b.NetNS, addrA},
	} {
		if err := cnitest.Ping(tc.from, tc.to, 3*time.Second); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// An address no pod holds does not answer: the replies above came
	// through the pods' wiring.
	if err := cnitest.Ping(a.NetNS, netip.MustParseAddr("10.36.0.250"), 500*time.Millisecond); err == nil {
		t.Errorf("ping to an address no pod holds was answered")
	}
}

func TestPrivileged200PodsLeaveNothing(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.37.0.0/22"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	seen := map[netip.Addr]bool{}
	for i := range 200 {
		p := n.NewPod("load", fmt.Sprintf("pod-%d", i))
		seen[cnitest.PodAddr(t, n.Add(conf, p))] = true
		if i%3 == 0 {
			cnitest.DeleteNS(p.NetNS) // some pods lose their namespace first
		}
		n.Del(conf, p)
		cnitest.DeleteNS(p.NetNS)
	}
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("after 200 ADD/DEL: %d addresses allocated: %v", len(got), got)
	}
	waitNoLinks(t, n)
	if len(seen) < 2 {
		t.Fatalf("200 pods used %d distinct addresses", len(seen))
	}
}

func TestPrivilegedFailedAddReleasesAddress(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.38.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	// The namespace is checked after the agent assigned the address: a
	// path that is not a namespace, and one that does not exist.
	notNS := filepath.Join(t.TempDir(), "not-a-netns")
	if err := os.WriteFile(notNS, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for i, path := range []string{notNS, "/var/run/netns/rhizome-test-does-not-exist"} {
		p := n.NewPod("default", fmt.Sprintf("broken-%d", i))
		p.RT.NetNS = path
		_, err := n.CNI.AddNetworkList(context.Background(), conf, p.RT)
		cnitest.WantErrText(t, err, fmt.Sprintf("rhizome-cni: pod default/broken-%d", i), "open network namespace "+path)
		var te *types.Error
		if !errors.As(err, &te) || te.Code != 102 {
			t.Errorf("error %#v, want code 102", err)
		}
	}
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("failed ADDs left addresses allocated: %v", got)
	}
	// A claimed block shows the agent did allocate before the failure, so
	// the release above was the plugin's undo.
	if blocks, err := ipam.ListBlocks(context.Background(), ag.Store); err != nil || len(blocks) == 0 {
		t.Fatalf("no block claimed (%v): the ADDs failed before allocating", err)
	}
	if links, routes := n.HostState(); len(links)+len(routes) != 0 {
		t.Fatalf("failed ADDs left host links %v, routes %v", links, routes)
	}
}

func TestPrivilegedDualStack(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("v4", "10.39.0.0/24"), agenttest.Pool("v6", "fd00:39::/120"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, map[string]any{"assignIPv6": true})
	p := n.NewPod("default", "dual")
	res := n.Add(conf, p)
	if len(res.IPs) != 2 || res.IPs[1].Address.String()[:9] != "fd00:39::" || !strings.HasSuffix(res.IPs[1].Address.String(), "/128") ||
		res.IPs[1].Gateway.String() != "fe80::1" || len(res.Routes) != 2 {
		t.Fatalf("dual-stack result %v", res)
	}
	if err := n.CNI.CheckNetworkList(context.Background(), conf, p.RT); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	n.Del(conf, p)
	if links, routes := n.HostState(); len(links)+len(routes) != 0 || len(ag.Allocated()) != 0 {
		t.Fatalf("after DEL: links %v routes %v allocated %v", links, routes, ag.Allocated())
	}
}

// A pod's new sandbox reuses the host veth name; a late DEL of the old
// sandbox (whose namespace is gone) must not remove the new one's veth.
func TestPrivilegedLateDelOfOldSandbox(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t, agenttest.Pool("pool-a", "10.43.0.0/24"))
	n := newNode(t)
	conf := rhizomeConf(t, ag, nil)
	old := n.NewPod("default", "restarted")
	oldAddr := cnitest.PodAddr(t, n.Add(conf, old))
	cnitest.DeleteNS(old.NetNS)

	fresh := n.NewPod("default", "restarted")
	fresh.RT.ContainerID = "ctr-restarted-2"
	freshAddr := cnitest.PodAddr(t, n.Add(conf, fresh))
	n.Del(conf, old)
	if err := n.CNI.CheckNetworkList(context.Background(), conf, fresh.RT); err != nil {
		t.Fatalf("CHECK of the new sandbox after the old one's DEL: %v", err)
	}
	got := ag.Allocated()
	if _, held := got[oldAddr]; held || got[freshAddr] == "" || len(got) != 1 {
		t.Fatalf("allocated %v: want only the new sandbox's %s", got, freshAddr)
	}
}

func TestPrivilegedStatusWithoutPools(t *testing.T) {
	cnitest.NeedRoot(t)
	ag := agenttest.Start(t)
	n := newNode(t)
	info, err := n.CNI.GetVersionInfo(context.Background(), "rhizome-cni")
	if err != nil || !slices.Contains(info.SupportedVersions(), "1.1.0") {
		t.Fatalf("VERSION: %v, %v: want 1.1.0 among the supported versions", info, err)
	}
	err = n.CNI.GetStatusNetworkList(context.Background(), rhizomeConf(t, ag, nil))
	cnitest.WantErrText(t, err, "rhizome-node cannot allocate addresses: there are no enabled IP pools")
	var te *types.Error
	if !errors.As(err, &te) || te.Code != 50 {
		t.Errorf("STATUS error %#v, want CNI code 50", err)
	}
}

package lab

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/integration/vm"
)

// binDirEnv names a directory of prebuilt lab binaries (rhizome-node,
// rhizome-cni, rhizomectl, rhizome-lab) for TestMain to use instead of
// building them: `make test-kernel` builds them on the host and copies
// them into the qemu guest, where there is no Go toolchain.
const binDirEnv = "RHIZOME_LAB_BIN_DIR"

// requireIPIP skips on a kernel without ipip, such as the CI machine's,
// saying where the test runs instead; inside the test VM, where ipip is
// there, a missing module is a failure.
func requireIPIP(t *testing.T) {
	t.Helper()
	cnitest.NeedRoot(t)
	probe := fmt.Sprintf("rzk%d-probe", os.Getpid()%100000)
	if err := run("ip", "netns", "add", probe); err != nil {
		t.Fatal(err)
	}
	ok := kernelHasIPIP(probe)
	if err := run("ip", "netns", "del", probe); err != nil {
		t.Error(err)
	}
	switch {
	case ok:
	case os.Getenv(vm.InsideEnv) == "1":
		t.Fatal("the test VM's kernel has no ipip: check vm.DefaultModules")
	default:
		t.Skip("this kernel has no ipip (module ipip): the IPIP mode changes run in the qemu-booted kernel of `make test-kernel`")
	}
}

// seedPools are seed 000's pools, one per rack.
var seedPools = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24"), netip.MustParsePrefix("192.168.1.0/24")}

func inSeedPools(a netip.Addr) bool {
	return slices.ContainsFunc(seedPools, func(p netip.Prefix) bool { return p.Contains(a) })
}

// poolBlocks maps every block of the seed's pools to the node it is
// affine to, from `rhizomectl ipam show --show-blocks`.
func poolBlocks(t *testing.T, l *Lab) map[netip.Prefix]string {
	t.Helper()
	out, err := l.Ctl("ipam", "show", "--show-blocks")
	if err != nil {
		t.Fatal(err)
	}
	blocks := map[netip.Prefix]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "Block" {
			continue
		}
		if b, err := netip.ParsePrefix(f[1]); err == nil && inSeedPools(b.Addr()) {
			blocks[b] = f[3]
		}
	}
	return blocks
}

var podRoute = regexp.MustCompile(`^(\S+) dev rz\S+ scope link$`)

// poolRoutes are a node's rhizome routes (protocol 94) into the seed's
// pools, pod links written as "<ip> dev <pod veth> scope link", sorted,
// and the prefixes that have more than one route. A route outside the
// seed's pools is kept as it is, so that it fails the comparison: the
// blocks of the default pool the seed deletes (where the agents took their
// first tunnel addresses) must be gone once they are empty.
func poolRoutes(t *testing.T, l *Lab, node string) (routes, repeated []string) {
	t.Helper()
	out, err := l.Routes(node)
	if err != nil {
		t.Fatalf("routes of %s: %v\n%s", node, err, out)
	}
	seen := map[string]int{}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "blackhole" && len(f) > 1 {
			dst = f[1]
		}
		if seen[dst]++; seen[dst] == 2 {
			repeated = append(repeated, dst)
		}
		a, err := netip.ParsePrefix(dst)
		if err != nil {
			p, aerr := netip.ParseAddr(dst)
			if aerr != nil {
				continue
			}
			a = netip.PrefixFrom(p, 32)
		}
		if !inSeedPools(a.Addr()) {
			routes = append(routes, line+"   <- outside the pools")
			continue
		}
		routes = append(routes, podRoute.ReplaceAllString(line, "$1 dev <pod veth> scope link"))
	}
	sort.Strings(routes)
	return routes, repeated
}

// wantRoutes is what the agent on viewer must have in the seed's pools
// with every pool in mode: a blackhole per own block, a link route per
// local pod, and per other node's block the route the mode says — through
// tunl0 onlink to the hosting node (Always; CrossSubnet across racks), on
// the link to the hosting node's rack (CrossSubnet within a rack; Never),
// or none (Never across racks: the router routes pod prefixes).
func wantRoutes(l *Lab, mode string, viewer NodeState, blocks map[netip.Prefix]string) []string {
	var want []string
	for b, host := range blocks {
		if host == viewer.Name {
			want = append(want, "blackhole "+b.String())
			continue
		}
		h := nodeByName(l, host)
		link := ""
		if viewer.Router {
			for _, r := range l.State().Racks {
				if netip.MustParsePrefix(r.Subnet).Contains(h.Addr.Addr()) {
					link = r.Name
				}
			}
		} else if viewer.Addr.Masked() == h.Addr.Masked() {
			link = "eth0"
		}
		tunnel := fmt.Sprintf("%s via %s dev tunl0 onlink", b, h.Addr.Addr())
		direct := fmt.Sprintf("%s via %s dev %s", b, h.Addr.Addr(), link)
		switch {
		case mode == "Always", mode == "CrossSubnet" && link == "":
			want = append(want, tunnel)
		case link != "":
			want = append(want, direct)
		}
	}
	for _, p := range l.State().Pods {
		if p.Node == viewer.Name {
			want = append(want, p.IP.String()+" dev <pod veth> scope link")
		}
	}
	sort.Strings(want)
	return want
}

// tunnelState is tunl0 in a node's namespace: up or not, its IPv4
// addresses and its packet counters.
type tunnelState struct {
	Up     bool
	Addrs  []string
	TX, RX uint64
}

func tunl0(t *testing.T, n NodeState) tunnelState {
	t.Helper()
	h, err := netns.GetFromName(n.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName("tunl0")
	if err != nil {
		t.Fatalf("%s: tunl0: %v", n.Name, err)
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	s := tunnelState{Up: link.Attrs().Flags&net.FlagUp != 0}
	for _, a := range addrs {
		s.Addrs = append(s.Addrs, a.IPNet.String())
	}
	if st := link.Attrs().Statistics; st != nil {
		s.TX, s.RX = st.TxPackets, st.RxPackets
	}
	return s
}

// traffic opens TCP connections between the pairs of pods in turn until
// the returned stop is called, which returns how many were tried and the
// ones that failed.
func traffic(ctx context.Context, pairs [][2]Pod) (stop func() (int, []string)) {
	tctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var tries int
	var fails []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for tctx.Err() == nil {
			for _, p := range pairs {
				err := ask(ctx, p[0].NetNS, p[1])
				tries++
				if err != nil {
					fails = append(fails, fmt.Sprintf("%s -> %s: %v", p[0].Name, p[1].Name, err))
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return func() (int, []string) {
		cancel()
		wg.Wait()
		return tries, fails
	}
}

// TestKernelLabIPIPModeChanges is end-to-end scenario 2 (seed 004, mode
// changes) in a kernel with ipip: the seed 000 lab starts with both pools
// in ipipMode Always; the operator switches them to CrossSubnet, then to
// Never, with rhizomectl. After each change every node has exactly the
// routes the mode says (nothing of the old mode left, one route per
// prefix), tunl0 is up with a tunnel address while a pool uses IPIP and
// down without one after, every pod pair connects over TCP, and traffic
// goes through tunl0 exactly where the mode encapsulates. Pods keep
// connecting during each switch; the failures are counted and must be
// none.
func TestKernelLabIPIPModeChanges(t *testing.T) {
	requireIPIP(t)
	start := time.Now()
	l, ctx := upLab(t)
	if !l.State().IPIP {
		t.Fatal("the lab chose ipipMode Never in a kernel with ipip")
	}
	t.Logf("lab up in %s", time.Since(start).Round(time.Millisecond))
	waitConnected(t, ctx, l, "with ipipMode Always")
	n0, n1, n2 := nodeByName(l, "kube-node-0"), nodeByName(l, "kube-node-1"), nodeByName(l, "kube-node-2")
	p0, p1, p2, p3 := podByName(l, "nginx-0"), podByName(l, "nginx-1"), podByName(l, "nginx-2"), podByName(l, "nginx-3")
	if p0.Node != n0.Name || p1.Node != n1.Name || p2.Node != n2.Name {
		t.Fatalf("pods are not spread as the seed spreads them: %+v", l.State().Pods)
	}
	pairs := [][2]Pod{{p0, p1}, {p0, p2}, {p3, p1}} // within rack 0, across, across

	// checkMode waits until every node's routes are those of mode and
	// checks tunl0 on every node.
	checkMode := func(mode string) {
		t.Helper()
		blocks := poolBlocks(t, l)
		for _, n := range l.State().Nodes {
			want := wantRoutes(l, mode, n, blocks)
			eventually(t, fmt.Sprintf("%s has the routes of ipipMode %s", n.Name, mode), func() (bool, string) {
				got, repeated := poolRoutes(t, l, n.Name)
				return slices.Equal(got, want) && len(repeated) == 0,
					fmt.Sprintf("got:\n  %s\nwant:\n  %s\nprefixes with more than one route: %v",
						strings.Join(got, "\n  "), strings.Join(want, "\n  "), repeated)
			})
		}
		for _, n := range l.State().Nodes {
			eventually(t, fmt.Sprintf("%s: tunl0 as ipipMode %s needs it", n.Name, mode), func() (bool, string) {
				s := tunl0(t, n)
				switch {
				case mode == "Never":
					return !s.Up && len(s.Addrs) == 0, fmt.Sprintf("%+v, want down without an address", s)
				case n.Router: // no pool selects the router: no tunnel address
					return s.Up && len(s.Addrs) == 0, fmt.Sprintf("%+v, want up without an address", s)
				}
				ok := s.Up && len(s.Addrs) == 1
				if ok {
					a := netip.MustParsePrefix(s.Addrs[0])
					ok = a.Bits() == 32 && inSeedPools(a.Addr())
				}
				return ok, fmt.Sprintf("%+v, want up with one /32 from the node's pool", s)
			})
		}
	}
	// checkAddresses waits until each pool has exactly its pods'
	// addresses in use, plus one tunnel address per node it selects while
	// it uses IPIP: the tunnel addresses are released in Never.
	checkAddresses := func(mode string) {
		t.Helper()
		want := map[string]int{}
		for _, p := range l.State().Pods {
			for i, pool := range seedPools {
				if pool.Contains(p.IP) {
					want[seedPools[i].String()]++
				}
			}
		}
		if mode != "Never" {
			for _, n := range l.podNodes() {
				a := nodeByName(l, n).Addr.Addr().As4()
				want[seedPools[a[2]].String()]++ // rack i's nodes are in 10.0.i.0/24
			}
		}
		eventually(t, "the pools' addresses in use with ipipMode "+mode, func() (bool, string) {
			out, err := l.Ctl("ipam", "show")
			got := map[string]int{}
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 5 && f[0] == "IP" && f[1] == "Pool" {
					var n int
					fmt.Sscan(f[5], &n)
					got[f[2]] = n
				}
			}
			return err == nil && maps.Equal(got, want), fmt.Sprintf("in use %v, want %v:\n%s", got, want, out)
		})
	}
	// throughTunnel connects from one pod to another a few times and says
	// whether the packets went through tunl0 on both nodes.
	throughTunnel := func(from, to Pod) bool {
		t.Helper()
		a, b := nodeByName(l, from.Node), nodeByName(l, to.Node)
		time.Sleep(300 * time.Millisecond) // earlier connections closed
		ta, tb := tunl0(t, a), tunl0(t, b)
		const conns = 10
		for range conns {
			if err := ask(ctx, from.NetNS, to); err != nil {
				t.Fatalf("%s -> %s: %v", from.Name, to.Name, err)
			}
		}
		ta2, tb2 := tunl0(t, a), tunl0(t, b)
		sent, recv := ta2.TX-ta.TX, tb2.RX-tb.RX
		t.Logf("%d connections %s (%s) -> %s (%s): tunl0 sent %d packets on %s, received %d on %s",
			conns, from.Name, a.Name, to.Name, b.Name, sent, a.Name, recv, b.Name)
		// Each connection is at least 3 packets each way. The counters are
		// per node, not per connection: a late packet of an earlier
		// connection to another rack (its last ACK) may pass tunl0 while
		// these run, so "not through" allows a few.
		switch {
		case sent >= 3*conns && recv >= 3*conns:
			return true
		case sent < conns && recv < conns:
			return false
		}
		t.Errorf("%s -> %s: tunl0 counters moved partly (sent %d, received %d)", from.Name, to.Name, sent, recv)
		return false
	}
	expectTunnel := func(mode string, from, to Pod, want bool) {
		t.Helper()
		if got := throughTunnel(from, to); got != want {
			t.Errorf("ipipMode %s: traffic %s -> %s through tunl0 = %v, want %v", mode, from.Name, to.Name, got, want)
		}
	}

	checkMode("Always")
	checkAddresses("Always")
	expectTunnel("Always", p0, p1, true)
	expectTunnel("Always", p0, p2, true)

	for _, step := range []struct {
		mode         string
		inRack, span bool // traffic through tunl0 within a rack, across racks
	}{{"CrossSubnet", false, true}, {"Never", false, false}} {
		phase := time.Now()
		stop := traffic(ctx, pairs)
		for _, pool := range []string{"rack-0-ippool", "rack-1-ippool"} {
			if out, err := l.Ctl("patch", "ippool", pool, "-p", fmt.Sprintf(`{"spec": {"ipipMode": %q}}`, step.mode)); err != nil {
				t.Fatalf("switch %s to %s: %v\n%s", pool, step.mode, err, out)
			}
		}
		checkMode(step.mode)
		checkAddresses(step.mode)
		time.Sleep(time.Second) // connections after the last change, too
		tries, fails := stop()
		t.Logf("switch to ipipMode %s: routes and tunl0 settled in %s; %d of %d connections failed during the switch",
			step.mode, time.Since(phase).Round(time.Millisecond), len(fails), tries)
		if len(fails) > 0 {
			t.Errorf("connections failed during the switch to ipipMode %s (%d of %d): %v", step.mode, len(fails), tries, fails)
		}
		waitConnected(t, ctx, l, "with ipipMode "+step.mode)
		expectTunnel(step.mode, p0, p1, step.inRack)
		expectTunnel(step.mode, p0, p2, step.span)
	}
	out, err := l.Ctl("get", "ippool", "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	never := 0
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasSuffix(f[0], "-ippool") && f[4] == "Never" {
			never++
		}
	}
	if never != 2 {
		t.Errorf("rhizomectl get ippool -o wide does not show both pools with IPIPMODE Never:\n%s", out)
	}
	t.Logf("scenario 2 took %s", time.Since(start).Round(time.Millisecond))
}

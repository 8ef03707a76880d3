package dpbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/rhizome-net/rhizome/dataplane"
)

// VXLANResult holds the figures of one RunVXLAN: n VXLAN routes with one
// neighbour and one forwarding entry each (one remote node per block).
type VXLANResult struct {
	Routes int
	// Install is Set of the routes and of the entries into an empty
	// namespace with vxlan.rhizome up, until both reconcilers synced.
	Install time.Duration
	// IPBatch is `ip -batch` adding the same routes and neighbour entries
	// while `bridge -batch` adds the same forwarding entries (wall time).
	IPBatch time.Duration
	// Resync is a full sync of the neighbour reconciler (dump of both
	// tables), nothing differing.
	Resync       time.Duration
	InstallRatio float64
}

func (r VXLANResult) String() string {
	var b strings.Builder
	row := func(what string, d time.Duration, note string) {
		fmt.Fprintf(&b, "%-50s %10s %12.4fx%s\n", what, round(d), float64(d)/float64(r.IPBatch), note)
	}
	fmt.Fprintf(&b, "%-50s %10s %13s\n", fmt.Sprintf("VXLAN programming, %d routes + neigh + fdb", r.Routes), "time", "/ ip -batch")
	row("ip -batch + bridge -batch, side by side (baseline)", r.IPBatch, "")
	row("rhizome install from empty (Set)", r.Install, "  (target <= 1.5x ip -batch)")
	row("rhizome neighbour resync (dump), nothing changed", r.Resync, "")
	return b.String()
}

// vxlanEnv is an Env with vxlan.rhizome up on it.
func vxlanEnv() (*Env, dataplane.Link, error) {
	e, err := NewEnv()
	if err != nil {
		return nil, dataplane.Link{}, err
	}
	m, err := dataplane.NewVXLANManager(e.NS)
	if err != nil {
		e.Close()
		return nil, dataplane.Link{}, err
	}
	defer m.Close()
	dev, err := m.Ensure(dataplane.VXLANConfig{
		Local: netip.MustParseAddr("10.0.0.1"), Parent: e.Uplink.Index, MTU: dataplane.VXLANMTU(1500, false),
		Addr: netip.MustParseAddr("100.127.255.254"), Node: "bench",
	})
	if err != nil {
		e.Close()
		return nil, dataplane.Link{}, err
	}
	return e, dev.Link, nil
}

// vxlanPlan is n remote nodes with one /26 block each in 100.64.0.0/10:
// tunnel address the block's first host, a MAC of its own and an address
// in 10.0.0.0/16 (the uplink's subnet: the FDB's destinations).
func vxlanPlan(n int, dev dataplane.Link) dataplane.VXLANRoutes {
	in := dataplane.VXLANInput{
		Self:   "bench",
		Pools:  []dataplane.Pool{{Name: "vx", CIDR: netip.MustParsePrefix("100.64.0.0/10"), VXLANMode: "Always"}},
		Device: dev,
	}
	for i := range n {
		v := uint32(100)<<24 | uint32(64)<<16 | uint32(i)<<6
		block := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 26)
		in.Nodes = append(in.Nodes, dataplane.VXLANNode{
			Name: fmt.Sprintf("node-%05d", i),
			V4: dataplane.VXLANEndpoint{
				Addr:       netip.AddrFrom4([4]byte{10, 0, byte((i + 2) >> 8), byte(i + 2)}),
				TunnelAddr: block.Addr().Next(),
				MAC:        net.HardwareAddr{0x02, 0xbe, 0, 0, byte(i >> 8), byte(i)},
			},
			Blocks: []netip.Prefix{block},
		})
	}
	return dataplane.VXLANPlan(in)
}

// RunVXLAN measures installing n VXLAN routes with their neighbour and
// forwarding entries into an empty namespace, both reconcilers running as
// the agent runs them, then a full neighbour resync; and the same install
// by `ip -batch` and `bridge -batch` in a second fresh namespace.
func RunVXLAN(n int) (res VXLANResult, err error) {
	res = VXLANResult{Routes: n}
	e, dev, err := vxlanEnv()
	if err != nil {
		return res, err
	}
	defer e.Close()
	plan := vxlanPlan(n, dev)
	if len(plan.Routes) != n || len(plan.Neighbors) != n || len(plan.FDB) != n {
		return res, fmt.Errorf("plan has %d routes, %d neighbours, %d forwarding entries; want %d each",
			len(plan.Routes), len(plan.Neighbors), len(plan.FDB), n)
	}
	quiet := dataplane.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	routes, err := dataplane.NewRouteReconciler(e.NS, quiet)
	if err != nil {
		return res, err
	}
	defer routes.Close()
	neigh, err := dataplane.NewNeighborReconciler(e.NS, quiet)
	if err != nil {
		return res, err
	}
	defer neigh.Close()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 2)
	go func() { stopped <- routes.Run(ctx) }()
	go func() { stopped <- neigh.Run(ctx) }()
	defer func() {
		cancel()
		for range 2 {
			if rerr := <-stopped; err == nil {
				err = rerr
			}
		}
	}()
	settle()

	start := time.Now()
	routes.Set(plan.Routes)
	neigh.Set(plan.Neighbors, plan.FDB)
	for {
		r, nb := routes.Status(), neigh.Status()
		if !r.Time.Before(start) && !nb.Time.Before(start) {
			res.Install = time.Since(start)
			if err := (phase{"VXLAN routes", n, n, true}).check(r); err != nil {
				return res, err
			}
			if err := (phase{"neighbour and forwarding entries", 2 * n, 2 * n, true}).check(nb); err != nil {
				return res, err
			}
			break
		}
		if time.Since(start) > time.Minute {
			return res, fmt.Errorf("VXLAN install: no sync within a minute of Set")
		}
		time.Sleep(20 * time.Microsecond)
	}

	var resyncs []time.Duration
	for range rounds {
		settle()
		start := time.Now()
		r, err := neigh.Sync()
		resyncs = append(resyncs, time.Since(start))
		if err != nil {
			return res, err
		}
		if err := (phase{"neighbour resync", 2 * n, 0, true}).check(r); err != nil {
			return res, err
		}
	}
	res.Resync = median(resyncs)

	if res.IPBatch, err = ipBatchVXLAN(n); err != nil {
		return res, err
	}
	res.InstallRatio = float64(res.Install) / float64(res.IPBatch)
	return res, nil
}

// ipBatchVXLAN times `ip -batch` (routes and neighbours) and `bridge
// -batch` (forwarding entries), run side by side, installing the same
// plan in a fresh namespace with the same device.
func ipBatchVXLAN(n int) (time.Duration, error) {
	ipBin, err := exec.LookPath("ip")
	if err != nil {
		return 0, fmt.Errorf("the ip -batch baseline needs iproute2's ip: %w", err)
	}
	bridgeBin, err := exec.LookPath("bridge")
	if err != nil {
		return 0, fmt.Errorf("the baseline needs iproute2's bridge: %w", err)
	}
	e, dev, err := vxlanEnv()
	if err != nil {
		return 0, err
	}
	defer e.Close()
	plan := vxlanPlan(n, dev)
	var ipCmds, fdbCmds strings.Builder
	for _, r := range plan.Routes {
		fmt.Fprintf(&ipCmds, "route add %s via %s dev %s onlink proto 94\n", r.Prefix, r.Gateway, dev.Name)
	}
	for _, nb := range plan.Neighbors {
		fmt.Fprintf(&ipCmds, "neigh add %s lladdr %s dev %s nud permanent\n", nb.Addr, nb.MAC, dev.Name)
	}
	for _, f := range plan.FDB {
		fmt.Fprintf(&fdbCmds, "fdb add %s dev %s dst %s self permanent\n", f.MAC, dev.Name, f.Dst)
	}
	// The two run at the same time, as rhizome's two reconcilers do: the
	// figure is the wall time until both finished.
	errs := make(chan error, 2)
	start := time.Now()
	for _, job := range []struct {
		bin, cmds string
	}{{ipBin, ipCmds.String()}, {bridgeBin, fdbCmds.String()}} {
		f, err := os.CreateTemp("", "rhizome-batch-*")
		if err != nil {
			return 0, err
		}
		defer os.Remove(f.Name())
		if _, err := f.WriteString(job.cmds); err != nil {
			return 0, err
		}
		if err := f.Close(); err != nil {
			return 0, err
		}
		go func() {
			errs <- inNS(e.NS, func() error {
				// The child inherits the namespace of the locked thread that forks it.
				out, err := exec.Command(job.bin, "-batch", f.Name()).CombinedOutput()
				if err != nil {
					return fmt.Errorf("%s -batch: %w: %s", job.bin, err, out)
				}
				return nil
			})
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			return 0, err
		}
	}
	total := time.Since(start)
	return total, nil
}

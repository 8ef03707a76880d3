package kernel

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/daemon/netstate"
	"github.com/rhizome-net/rhizome/daemon/nodereg"
	"github.com/rhizome-net/rhizome/dataplane"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// vxlan is vxlan.rhizome, the node's VXLAN tunnel address and MAC (in its
// Node record), and the neighbour and forwarding entries to the other
// nodes' devices. IPv4 only: the node has no IPv6 address yet.
type vxlan struct {
	mgr   *dataplane.VXLANManager
	neigh *dataplane.NeighborReconciler
	name  string
	local netip.Addr // the node's address: the tunnel's outer source
	alloc *ipam.Allocator
	store datastore.Store
	res   *datastore.Resources
	log   *slog.Logger

	// Owned by sync.
	errLog  string // the last device error logged
	entries string // the neighbour and forwarding entries last set

	mu   sync.Mutex
	addr netip.Addr
}

// vxlanHandle is the allocation handle of the node's VXLAN tunnel address.
func vxlanHandle(node string) string { return "vxlan-tunnel-addr-" + node }

// sync keeps vxlan.rhizome as the pools need it, and the node's VXLAN
// tunnel address allocated from a VXLAN pool that selects the node. It
// returns the device (Index 0 when it is not up), or why it is not up.
func (v *vxlan) sync(ctx context.Context, in netstate.Snapshot, pools []dataplane.Pool, up dataplane.Uplink) (dataplane.Link, string) {
	if !dataplane.NeedsVXLAN(pools, false) {
		v.record(ctx, in, netip.Addr{}, nil)
		// Removing the device removes its routes and entries with it.
		if err := v.mgr.Remove(false); err != nil {
			v.logErr(err.Error())
		}
		return dataplane.Link{}, ""
	}
	names := vxlanPools(in)
	addr := tunnelAddr(ctx, v.alloc, v.store, vxlanHandle(v.name), in, names, v.current(), v.log.With("tunnel", "VXLAN"))
	var mac net.HardwareAddr
	if in.Self != nil {
		mac, _ = net.ParseMAC(in.Self.Spec.VXLANTunnelMACAddr) // nil: the device's, or derived
	}
	link, err := v.mgr.Ensure(dataplane.VXLANConfig{Local: v.local, Parent: up.Index,
		MTU: dataplane.VXLANMTU(up.MTU, false), Addr: addr, MAC: mac, Node: v.name})
	if err != nil {
		v.record(ctx, in, addr, mac)
		v.logErr(err.Error())
		return dataplane.Link{}, err.Error()
	}
	v.errLog = ""
	v.record(ctx, in, addr, link.MAC)
	return link.Link, ""
}

func (v *vxlan) logErr(msg string) {
	if msg != v.errLog {
		v.log.Error(dataplane.VXLANDevice, "err", msg)
		v.errLog = msg
	}
}

// setEntries hands the plan's neighbour and forwarding entries to the
// reconciler when they changed.
func (v *vxlan) setEntries(p dataplane.VXLANRoutes) {
	var b strings.Builder
	for _, n := range p.Neighbors {
		b.WriteString(n.String() + "\n")
	}
	for _, f := range p.FDB {
		b.WriteString(f.String() + "\n")
	}
	key := "set\n" + b.String()
	if key == v.entries {
		return
	}
	v.neigh.Set(p.Neighbors, p.FDB)
	v.entries = key
}

// vxlanPools are the enabled IPv4 pools with VXLAN that select the node:
// where its VXLAN tunnel address comes from.
func vxlanPools(in netstate.Snapshot) []string {
	var names []string
	for _, p := range in.Pools {
		c, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil || !c.Addr().Is4() {
			continue
		}
		if !p.Spec.Disabled && (p.Spec.VXLANMode == api.EncapAlways || p.Spec.VXLANMode == api.EncapCrossSubnet) &&
			p.SelectsNode(in.Self.Labels) {
			names = append(names, p.Name)
		}
	}
	return names
}

// current is the node's VXLAN tunnel address; invalid without one.
func (v *vxlan) current() netip.Addr {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.addr
}

// record records the VXLAN tunnel address and MAC in the Node
// (ipv4VXLANTunnelAddr, vxlanTunnelMACAddr) and releases the address when
// it goes.
func (v *vxlan) record(ctx context.Context, in netstate.Snapshot, addr netip.Addr, mac net.HardwareAddr) {
	v.mu.Lock()
	v.addr = addr
	v.mu.Unlock()
	wantAddr, wantMAC := "", ""
	if addr.IsValid() {
		wantAddr = addr.String()
	}
	if mac != nil {
		wantMAC = mac.String()
	}
	if in.Self != nil && in.Self.Spec.IPv4VXLANTunnelAddr == wantAddr && in.Self.Spec.VXLANTunnelMACAddr == wantMAC {
		return
	}
	if !addr.IsValid() {
		if _, err := v.alloc.ReleaseHandle(ctx, vxlanHandle(v.name)); err != nil {
			v.log.Warn("release the VXLAN tunnel address", "err", err)
			return
		}
	}
	if _, err := nodereg.Modify(ctx, v.res, v.name, func(node *api.Node) error {
		node.Spec.IPv4VXLANTunnelAddr, node.Spec.VXLANTunnelMACAddr = wantAddr, wantMAC
		return nil
	}); err != nil {
		v.log.Warn("record the VXLAN tunnel address in the Node", "addr", wantAddr, "mac", wantMAC, "err", err)
		return
	}
	v.log.Info("VXLAN tunnel address", "addr", wantAddr, "mac", wantMAC)
}

// vxlanInput is what VXLANPlan needs, from the followed state: the node
// records (addresses, VXLAN tunnel addresses and MACs) and every block's
// affine node.
func vxlanInput(self string, in netstate.Snapshot, pools []dataplane.Pool, up dataplane.Uplink, others []dataplane.Uplink, dev dataplane.Link) dataplane.VXLANInput {
	blocks := map[string][]netip.Prefix{}
	for _, b := range slices.SortedFunc(maps.Keys(in.Affinities), func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	}) {
		n := in.Affinities[b]
		blocks[n] = append(blocks[n], b)
	}
	out := dataplane.VXLANInput{Self: self, Pools: pools, Uplink: up, Others: others, Device: dev}
	for _, n := range in.Nodes {
		vn := dataplane.VXLANNode{Name: n.Name, Blocks: blocks[n.Name]}
		if n.Spec.BGP != nil {
			if p, err := netip.ParsePrefix(n.Spec.BGP.IPv4Address); err == nil {
				vn.V4.Addr = p.Addr()
			} else if a, err := netip.ParseAddr(n.Spec.BGP.IPv4Address); err == nil {
				vn.V4.Addr = a
			}
		}
		vn.V4.TunnelAddr, _ = netip.ParseAddr(n.Spec.IPv4VXLANTunnelAddr)
		vn.V4.MAC, _ = net.ParseMAC(n.Spec.VXLANTunnelMACAddr)
		out.Nodes = append(out.Nodes, vn)
	}
	return out
}

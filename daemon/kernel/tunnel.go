package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/daemon/netstate"
	"github.com/rhizome-net/rhizome/daemon/nodereg"
	"github.com/rhizome-net/rhizome/dataplane"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// tunnel is tunl0 and the node's IPIP tunnel address.
type tunnel struct {
	mgr   *dataplane.TunnelManager
	name  string
	alloc *ipam.Allocator
	store datastore.Store
	res   *datastore.Resources
	log   *slog.Logger

	// Owned by sync.
	on      bool   // tunl0 was made ready for IPIP pools
	ipipLog string // the last tunl0 error logged

	mu   sync.Mutex
	addr netip.Addr
}

// tunnelHandle is the allocation handle of the node's IPIP tunnel address.
func tunnelHandle(node string) string { return "ipip-tunnel-addr-" + node }

// syncTunnel keeps tunl0 as the IPIP pools need it, and the node's tunnel
// address allocated from an IPIP pool that selects the node. It returns
// tunl0, or why IPIP routes cannot be installed.
func (n *tunnel) sync(ctx context.Context, in netstate.Snapshot, pools []dataplane.Pool, uplinkMTU int) (dataplane.Link, string) {
	if !dataplane.NeedsIPIP(pools) {
		n.record(ctx, in, netip.Addr{})
		if n.on {
			if err := n.mgr.Release(); err != nil {
				n.log.Warn("release tunl0", "err", err)
			} else {
				n.on = false
			}
		}
		return dataplane.Link{}, ""
	}
	var names []string
	for _, p := range in.Pools {
		if !p.Spec.Disabled && p.Spec.IPIPMode != "" && p.Spec.IPIPMode != api.EncapNever && p.SelectsNode(in.Self.Labels) {
			names = append(names, p.Name)
		}
	}
	addr := tunnelAddr(ctx, n.alloc, n.store, tunnelHandle(n.name), in, names, n.current(), n.log.With("tunnel", "IPIP"))
	n.record(ctx, in, addr)
	link, err := n.mgr.Ensure(dataplane.TunnelMTU(uplinkMTU), addr)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, dataplane.ErrNoIPIP) {
			msg = fmt.Sprintf("pools %v: %s", ipipPools(pools), dataplane.ErrNoIPIP)
		}
		if msg != n.ipipLog {
			n.log.Error("tunl0", "err", msg)
			n.ipipLog = msg
		}
		return dataplane.Link{}, msg
	}
	n.ipipLog = ""
	n.on = true
	return link, ""
}

func ipipPools(pools []dataplane.Pool) []string {
	var out []string
	for _, p := range pools {
		if p.IPIPMode == api.EncapAlways || p.IPIPMode == api.EncapCrossSubnet {
			out = append(out, p.Name)
		}
	}
	sort.Strings(out)
	return out
}

func inPools(a netip.Addr, pools []*api.IPPool, names []string) bool {
	for _, p := range pools {
		if c, err := netip.ParsePrefix(p.Spec.CIDR); err == nil && c.Contains(a) && slices.Contains(names, p.Name) {
			return true
		}
	}
	return false
}

// current is the node's tunnel address; invalid without one.
func (n *tunnel) current() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addr
}

// tunnelAddr is the address a tunnel device of the node should carry:
// none when no pool asks for the tunnel, the current one while it is in
// those pools, else one allocated with handle h (a failure is logged and
// leaves the device without an address until the next sync).
func tunnelAddr(ctx context.Context, alloc *ipam.Allocator, store datastore.Store, h string, in netstate.Snapshot, pools []string,
	current netip.Addr, log *slog.Logger) netip.Addr {
	if len(pools) == 0 {
		return netip.Addr{}
	}
	if current.IsValid() && inPools(current, in.Pools, pools) {
		return current
	}
	a, err := allocateTunnel(ctx, alloc, store, h, in, pools)
	if err != nil {
		log.Error("allocate the tunnel address", "pools", pools, "err", err)
	}
	return a
}

// allocateTunnel returns a tunnel address of the node from pools: the one
// its handle already holds (after a restart), else a new one with use
// Tunnel.
func allocateTunnel(ctx context.Context, alloc *ipam.Allocator, store datastore.Store, h string, in netstate.Snapshot, pools []string) (netip.Addr, error) {
	if have, err := ipam.ByHandle(ctx, store, h); err == nil && len(have) > 0 {
		if inPools(have[0], in.Pools, pools) {
			return have[0], nil
		}
		if _, err := alloc.ReleaseHandle(ctx, h); err != nil {
			return netip.Addr{}, err
		}
	}
	got, err := alloc.AutoAssign(ctx, ipam.Request{Handle: h, Pools: pools, Use: api.UseTunnel})
	if err != nil {
		return netip.Addr{}, err
	}
	return got[0].Addr, nil
}

// record records the tunnel address in the Node (ipv4TunnelAddr) and
// releases the old one when it changes.
func (n *tunnel) record(ctx context.Context, in netstate.Snapshot, addr netip.Addr) {
	stored := ""
	if in.Self != nil && in.Self.Spec.BGP != nil {
		stored = in.Self.Spec.BGP.IPv4TunnelAddr
	}
	want := ""
	if addr.IsValid() {
		want = addr.String()
	}
	n.mu.Lock()
	n.addr = addr
	n.mu.Unlock()
	if stored == want {
		return
	}
	if !addr.IsValid() {
		if _, err := n.alloc.ReleaseHandle(ctx, tunnelHandle(n.name)); err != nil {
			n.log.Warn("release the IPIP tunnel address", "err", err)
			return
		}
	}
	if _, err := nodereg.Modify(ctx, n.res, n.name, func(node *api.Node) error {
		if node.Spec.BGP == nil {
			node.Spec.BGP = &api.NodeBGPSpec{}
		}
		node.Spec.BGP.IPv4TunnelAddr = want
		return nil
	}); err != nil {
		n.log.Warn("record the IPIP tunnel address in the Node", "addr", want, "err", err)
		return
	}
	n.log.Info("IPIP tunnel address", "addr", want)
}

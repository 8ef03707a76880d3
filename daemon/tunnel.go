package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/dataplane"
	"github.com/rhizome-net/rhizome/ipam"
)

// tunnelHandle is the allocation handle of the node's IPIP tunnel address.
func tunnelHandle(node string) string { return "ipip-tunnel-addr-" + node }

// syncTunnel keeps tunl0 as the IPIP pools need it, and the node's tunnel
// address allocated from an IPIP pool that selects the node. It returns
// tunl0, or why IPIP routes cannot be installed.
func (n *network) syncTunnel(ctx context.Context, in routingInput, pools []dataplane.Pool) (dataplane.Link, string) {
	if !dataplane.NeedsIPIP(pools) {
		n.setTunnelAddr(ctx, in, netip.Addr{})
		if n.tunnelOn {
			if err := n.tunnel.Release(); err != nil {
				n.log.Warn("release tunl0", "err", err)
			} else {
				n.tunnelOn = false
			}
		}
		return dataplane.Link{}, ""
	}
	var names []string
	for _, p := range in.pools {
		sel, err := api.ParseSelector(p.Spec.NodeSelector)
		if err == nil && !p.Spec.Disabled && p.Spec.IPIPMode != "" && p.Spec.IPIPMode != api.EncapNever && sel.Matches(labels.Set(in.self.Labels)) {
			names = append(names, p.Name)
		}
	}
	addr := n.currentTunnelAddr()
	if len(names) == 0 {
		addr = netip.Addr{}
	} else if !addr.IsValid() || !inPools(addr, in.pools, names) {
		a, err := n.allocTunnelAddr(ctx, in, names)
		if err != nil {
			n.log.Error("allocate the IPIP tunnel address", "pools", names, "err", err)
		}
		addr = a
	}
	n.setTunnelAddr(ctx, in, addr)
	link, err := n.tunnel.Ensure(dataplane.TunnelMTU(n.uplink.MTU), addr)
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
	n.tunnelOn = true
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

func (n *network) currentTunnelAddr() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.tunnelAddr
}

// allocTunnelAddr returns the node's tunnel address: the one its handle
// already holds (after a restart), else a new one with use Tunnel.
func (n *network) allocTunnelAddr(ctx context.Context, in routingInput, pools []string) (netip.Addr, error) {
	h := tunnelHandle(n.name)
	if have, err := ipam.ByHandle(ctx, n.store, h); err == nil && len(have) > 0 {
		if inPools(have[0], in.pools, pools) {
			return have[0], nil
		}
		if _, err := n.alloc.ReleaseHandle(ctx, h); err != nil {
			return netip.Addr{}, err
		}
	}
	got, err := n.alloc.AutoAssign(ctx, ipam.Request{Handle: h, Pools: pools, Use: api.UseTunnel})
	if err != nil {
		return netip.Addr{}, err
	}
	return got[0].Addr, nil
}

// setTunnelAddr records the tunnel address in the Node (ipv4TunnelAddr)
// and releases the old one when it changes.
func (n *network) setTunnelAddr(ctx context.Context, in routingInput, addr netip.Addr) {
	stored := ""
	if in.self != nil && in.self.Spec.BGP != nil {
		stored = in.self.Spec.BGP.IPv4TunnelAddr
	}
	want := ""
	if addr.IsValid() {
		want = addr.String()
	}
	n.mu.Lock()
	n.tunnelAddr = addr
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
	if _, err := modifyNode(ctx, n.res, n.name, func(node *api.Node) error {
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

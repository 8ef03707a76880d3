package bgp

import (
	"fmt"
	"net/netip"
	"sort"
)

// Advertisement is one prefix this node originates, with the next hop
// peers should use for it.
type Advertisement struct {
	Prefix  netip.Prefix `json:"prefix"`
	NextHop netip.Addr   `json:"nextHop"`
}

func (a Advertisement) String() string { return a.Prefix.String() + " via " + a.NextHop.String() }

// Origin is what a node originates, as plain values.
type Origin struct {
	// NodeV4 and NodeV6 are the node's addresses, the next hops of its
	// IPv4 and IPv6 prefixes. An invalid one means the node has none.
	NodeV4, NodeV6 netip.Addr
	// Blocks are the node's confirmed affine blocks.
	Blocks []netip.Prefix
	// Hosted are addresses in use on this node that lie outside its own
	// blocks: borrowed from another node's block, or fixed.
	Hosted []netip.Addr
	// NoExport are the CIDRs of pools with disableBGPExport.
	NoExport []netip.Prefix
}

// Advertisements returns what the node advertises, sorted by prefix:
// every block, a host route (/32, /128) for every hosted address that no
// advertised block covers, nothing inside a pool with disableBGPExport.
// The next hop is the node's address of the prefix's family; a prefix of a
// family the node has no address of is an error naming it.
func Advertisements(o Origin) ([]Advertisement, error) {
	noExport := func(p netip.Prefix) bool {
		for _, n := range o.NoExport {
			if n.Overlaps(p) && n.Bits() <= p.Bits() {
				return true
			}
		}
		return false
	}
	want := make(map[netip.Prefix]struct{})
	for _, b := range o.Blocks {
		b = b.Masked()
		if !noExport(b) {
			want[b] = struct{}{}
		}
	}
	var blocks []netip.Prefix
	for b := range want {
		blocks = append(blocks, b)
	}
	for _, a := range o.Hosted {
		h := netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		if noExport(h) || covered(blocks, h.Addr()) {
			continue
		}
		want[h] = struct{}{}
	}
	out := make([]Advertisement, 0, len(want))
	for p := range want {
		nh := o.NodeV4
		if p.Addr().Is6() {
			nh = o.NodeV6
		}
		if !nh.IsValid() {
			return nil, fmt.Errorf("advertise %s: the node has no address of its family to use as next hop: set spec.bgp.ipv6Address or ipv4Address on the Node", p)
		}
		out = append(out, Advertisement{Prefix: p, NextHop: nh})
	}
	sort.Slice(out, func(i, j int) bool { return lessPrefix(out[i].Prefix, out[j].Prefix) })
	return out, nil
}

func covered(blocks []netip.Prefix, a netip.Addr) bool {
	for _, b := range blocks {
		if b.Contains(a) {
			return true
		}
	}
	return false
}

func lessPrefix(a, b netip.Prefix) bool {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c < 0
	}
	return a.Bits() < b.Bits()
}

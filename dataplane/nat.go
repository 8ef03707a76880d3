package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NATTable is the nftables table (family inet) that holds rhizome's
// natOutgoing rules. rhizome writes no other table.
const NATTable = "rhizome"

const natChain = "nat-outgoing"

// NATManager keeps the natOutgoing table of one network namespace: traffic
// from a pool with natOutgoing to a destination outside all pools leaves
// with the node's address (masquerade).
type NATManager struct {
	ns netns.NsHandle
}

// NewNATManager manages the table in ns (netns.None() for the caller's
// namespace). It opens a netfilter socket per change, in that namespace.
func NewNATManager(ns netns.NsHandle) *NATManager { return &NATManager{ns: ns} }

func (m *NATManager) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if m.ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(m.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables connection: %w", err)
	}
	return c, nil
}

// Set rewrites the table for pools in one atomic transaction: the old
// rules and the new ones never coexist and no packet sees a half table.
// With no natOutgoing pool the table is removed.
func (m *NATManager) Set(pools []Pool) error {
	c, err := m.conn()
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: NATTable, Family: nftables.TableFamilyINet}
	// Create-if-missing then delete: deleting works whether or not the
	// table existed, all in the same transaction as the new contents.
	c.AddTable(t)
	c.DelTable(t)
	rules := natRules(pools)
	if len(rules) > 0 {
		c.AddTable(t)
		ch := c.AddChain(&nftables.Chain{
			Name:     natChain,
			Table:    t,
			Type:     nftables.ChainTypeNAT,
			Hooknum:  nftables.ChainHookPostrouting,
			Priority: nftables.ChainPriorityNATSource,
		})
		for _, exprs := range rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables table inet %s (%d natOutgoing rules): %w", NATTable, len(rules), err)
	}
	return nil
}

// Remove deletes the table (rhizome-node --cleanup). Other tables are not
// touched; a missing table is not an error.
func (m *NATManager) Remove() error { return m.Set(nil) }

// natRules builds one rule per natOutgoing pool:
//
//	meta nfproto ipvX  ip saddr POOL  ip daddr != P1 ... ip daddr != Pn  masquerade
//
// for every pool Pi of the same family.
func natRules(pools []Pool) [][]expr.Any {
	sorted := slices.Clone(pools)
	slices.SortFunc(sorted, func(a, b Pool) int { return comparePrefix(a.CIDR, b.CIDR) })
	var rules [][]expr.Any
	for _, p := range sorted {
		if !p.NATOutgoing || !p.CIDR.IsValid() {
			continue
		}
		v4 := p.CIDR.Addr().Is4()
		proto, srcOff, dstOff := byte(unix.NFPROTO_IPV6), uint32(8), uint32(24)
		if v4 {
			proto, srcOff, dstOff = unix.NFPROTO_IPV4, 12, 16
		}
		r := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		}
		r = append(r, matchPrefix(srcOff, p.CIDR, expr.CmpOpEq)...)
		for _, o := range sorted {
			if o.CIDR.IsValid() && o.CIDR.Addr().Is4() == v4 {
				r = append(r, matchPrefix(dstOff, o.CIDR, expr.CmpOpNeq)...)
			}
		}
		rules = append(rules, append(r, &expr.Masq{}))
	}
	return rules
}

// matchPrefix loads the address at offset of the network header and
// compares it, masked to the prefix, with the prefix.
func matchPrefix(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	p = p.Masked()
	n := uint32(p.Addr().BitLen() / 8)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n,
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()), Xor: make([]byte, n)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Addr().AsSlice()},
	}
}

// NATRuleCount returns how many natOutgoing rules the table holds in the
// namespace (0 when there is no table), for status and tests.
func (m *NATManager) NATRuleCount() (int, error) {
	c, err := m.conn()
	if err != nil {
		return 0, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return 0, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == NATTable {
			rules, err := c.GetRules(t, &nftables.Chain{Name: natChain, Table: t})
			if err != nil {
				return 0, fmt.Errorf("list rules of table inet %s: %w", NATTable, err)
			}
			return len(rules), nil
		}
	}
	return 0, nil
}

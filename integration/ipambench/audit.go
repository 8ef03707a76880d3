package ipambench

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// Holding is one acknowledged allocation: AutoAssign returned Addr for Handle.
type Holding struct {
	Addr   netip.Addr
	Handle string
}

// Audit compares the allocations a run was told about with the blocks etcd holds.
type Audit struct {
	Acked int
	// Duplicates counts addresses acknowledged to more than one holder.
	Duplicates int
	// Stored counts acknowledged allocations found in their block under their handle.
	Stored int
	// Unacked counts allocations stored in blocks that no holder was told about.
	Unacked int
	// Examples are the first few problems, for the failure message.
	Examples []string
}

// OK reports no duplicates, every acknowledged allocation stored and nothing else stored.
func (a Audit) OK() bool { return a.Duplicates == 0 && a.Stored == a.Acked && a.Unacked == 0 }

func (a Audit) String() string {
	return fmt.Sprintf("%d acknowledged, %d stored, %d duplicates, %d stored but not acknowledged %v",
		a.Acked, a.Stored, a.Duplicates, a.Unacked, a.Examples)
}

func (a *Audit) problem(format string, args ...any) {
	if len(a.Examples) < 5 {
		a.Examples = append(a.Examples, fmt.Sprintf(format, args...))
	}
}

// AuditStore reads every block and checks held against it. held must be every allocation that is live
// (acknowledged and not released) in the whole store.
func AuditStore(ctx context.Context, store datastore.Store, held []Holding) (Audit, error) {
	a := Audit{Acked: len(held)}
	owner := make(map[netip.Addr]string, len(held))
	for _, h := range held {
		if prev, ok := owner[h.Addr]; ok {
			a.Duplicates++
			a.problem("%s acknowledged to %s and to %s", h.Addr, prev, h.Handle)
			continue
		}
		owner[h.Addr] = h.Handle
	}
	blocks, err := ipam.ListBlocks(ctx, store)
	if err != nil {
		return a, fmt.Errorf("audit: %w", err)
	}
	for _, b := range blocks {
		for n, idx := range b.Allocations {
			if idx == nil {
				continue
			}
			if *idx < 0 || *idx >= len(b.Attributes) {
				return a, fmt.Errorf("audit: block %s: ordinal %d points at attribute %d of %d", b.CIDR, n, *idx, len(b.Attributes))
			}
			addr, stored := addrAt(b.CIDR, n), b.Attributes[*idx].Handle
			switch want, ok := owner[addr]; {
			case !ok:
				a.Unacked++
				a.problem("%s stored for %s, not acknowledged", addr, stored)
			case want != stored:
				a.Duplicates++
				a.problem("%s acknowledged to %s, stored for %s", addr, want, stored)
			default:
				a.Stored++
			}
		}
	}
	return a, nil
}

// addrAt is the address at ordinal n of block (a block is far smaller than 2^64 addresses).
func addrAt(block netip.Prefix, n int) netip.Addr {
	b := block.Addr().As16()
	lo := binary.BigEndian.Uint64(b[8:]) + uint64(n)
	binary.BigEndian.PutUint64(b[8:], lo)
	a := netip.AddrFrom16(b)
	if block.Addr().Is4() {
		return a.Unmap()
	}
	return a
}

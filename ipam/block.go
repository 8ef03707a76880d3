package ipam

import (
	"fmt"
	"net/netip"
	"slices"
)

// newBlock returns an empty block with every ordinal free, in order.
func newBlock(cidr netip.Prefix, affinity string) *Block {
	n := blockLen(cidr)
	b := &Block{
		CIDR:        cidr,
		Affinity:    affinity,
		Allocations: make([]*int, n),
		Unallocated: make([]int, n),
		Attributes:  []Attribute{},
	}
	for i := range b.Unallocated {
		b.Unallocated[i] = i
	}
	return b
}

// clone is a deep copy, so a batch can be planned on it and discarded.
func (b *Block) clone() *Block {
	c := *b
	c.Allocations = make([]*int, len(b.Allocations))
	for i, p := range b.Allocations {
		if p != nil {
			v := *p
			c.Allocations[i] = &v
		}
	}
	c.Unallocated = slices.Clone(b.Unallocated)
	c.Attributes = slices.Clone(b.Attributes)
	return &c
}

// inUse is the number of allocated ordinals.
func (b *Block) inUse() int { return len(b.Allocations) - len(b.Unallocated) }

// empty reports whether nothing is allocated.
func (b *Block) empty() bool { return len(b.Unallocated) == len(b.Allocations) }

// attributeOf returns the owner of ordinal n, if allocated.
func (b *Block) attributeOf(n int) (Attribute, bool) {
	if n < 0 || n >= len(b.Allocations) || b.Allocations[n] == nil {
		return Attribute{}, false
	}
	return b.Attributes[*b.Allocations[n]], true
}

// freeCandidates returns up to want free ordinals in FIFO order, skipping
// those skip rejects (reserved addresses). It changes nothing.
func (b *Block) freeCandidates(want int, skip func(netip.Addr) bool) []int {
	var out []int
	for _, n := range b.Unallocated {
		if len(out) == want {
			break
		}
		if skip != nil && skip(addrAt(b.CIDR, n)) {
			continue
		}
		out = append(out, n)
	}
	return out
}

// allocate hands out ordinal n (which must be free) to attr and returns the
// allocation's sequence number.
func (b *Block) allocate(n int, attr Attribute) (uint64, error) {
	i := slices.Index(b.Unallocated, n)
	if i < 0 || b.Allocations[n] != nil {
		return 0, fmt.Errorf("%s is not free in block %s", addrAt(b.CIDR, n), b.CIDR)
	}
	b.Unallocated = slices.Delete(b.Unallocated, i, i+1)
	b.Seq++
	attr.Seq = b.Seq
	idx := len(b.Attributes)
	b.Attributes = append(b.Attributes, attr)
	b.Allocations[n] = &idx
	return attr.Seq, nil
}

// release frees ordinal n and puts it at the tail of the free list, so it is
// not handed out again at once. It returns the released owner.
func (b *Block) release(n int) (Attribute, bool) {
	attr, ok := b.attributeOf(n)
	if !ok {
		return Attribute{}, false
	}
	idx := *b.Allocations[n]
	b.Allocations[n] = nil
	b.Unallocated = append(b.Unallocated, n)
	// Remove the attribute and renumber the ones after it.
	b.Attributes = slices.Delete(b.Attributes, idx, idx+1)
	for _, p := range b.Allocations {
		if p != nil && *p > idx {
			*p--
		}
	}
	return attr, true
}

// Allocated calls f with every allocated address of the block and its
// owner, in address order.
func (b *Block) Allocated(f func(netip.Addr, Attribute)) {
	for n, p := range b.Allocations {
		if p != nil && *p < len(b.Attributes) {
			f(addrAt(b.CIDR, n), b.Attributes[*p])
		}
	}
}

// ordinalsOf returns the ordinals held by handle.
func (b *Block) ordinalsOf(handle string) []int {
	var out []int
	for n, p := range b.Allocations {
		if p != nil && b.Attributes[*p].Handle == handle {
			out = append(out, n)
		}
	}
	return out
}

// verify checks the block's internal consistency: every ordinal is either
// free (listed once in Unallocated) or allocated (pointing at its own
// attribute), and every attribute is used exactly once.
func (b *Block) verify() error {
	if !b.CIDR.IsValid() || len(b.Allocations) != blockLen(b.CIDR) {
		return fmt.Errorf("block %s: %d allocation slots, want %d", b.CIDR, len(b.Allocations), blockLen(b.CIDR))
	}
	free := make([]bool, len(b.Allocations))
	for _, n := range b.Unallocated {
		if n < 0 || n >= len(free) || free[n] {
			return fmt.Errorf("block %s: free list has bad or repeated ordinal %d", b.CIDR, n)
		}
		free[n] = true
	}
	used := make([]bool, len(b.Attributes))
	for n, p := range b.Allocations {
		switch {
		case p == nil && !free[n]:
			return fmt.Errorf("block %s: ordinal %d neither allocated nor free", b.CIDR, n)
		case p != nil && free[n]:
			return fmt.Errorf("block %s: ordinal %d allocated and free", b.CIDR, n)
		case p != nil && (*p < 0 || *p >= len(used) || used[*p]):
			return fmt.Errorf("block %s: ordinal %d has bad or shared attribute index %d", b.CIDR, n, *p)
		case p != nil:
			used[*p] = true
			if b.Attributes[*p].Seq == 0 || b.Attributes[*p].Seq > b.Seq {
				return fmt.Errorf("block %s: ordinal %d has sequence %d outside 1..%d", b.CIDR, n, b.Attributes[*p].Seq, b.Seq)
			}
		}
	}
	for i, u := range used {
		if !u {
			return fmt.Errorf("block %s: attribute %d is not used", b.CIDR, i)
		}
	}
	return nil
}

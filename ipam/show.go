package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	"github.com/rhizome-net/rhizome/datastore"
)

// Usage is how full the pools and their blocks are (`rhizomectl ipam
// show`). In every row Total = InUse + Reserved + Free.
type Usage struct {
	Pools []PoolUsage `json:"pools"`
	// Unpooled are blocks outside every pool (their pool was deleted).
	Unpooled []BlockUsage `json:"unpooledBlocks"`
}

// PoolUsage is the usage of one pool. Counts are big: an IPv6 pool can
// hold 2^96 addresses.
type PoolUsage struct {
	Name     string       `json:"name"`
	CIDR     netip.Prefix `json:"cidr"`
	Disabled bool         `json:"disabled,omitempty"`
	Total    *big.Int     `json:"total"`
	InUse    *big.Int     `json:"inUse"`
	// Reserved counts the addresses that are not in use and that automatic
	// allocation never hands out: the pool's network and broadcast
	// addresses and IPReservation addresses inside the pool.
	Reserved *big.Int     `json:"reserved"`
	Free     *big.Int     `json:"free"`
	Blocks   []BlockUsage `json:"blocks"`
}

// BlockUsage is the usage of one block.
type BlockUsage struct {
	CIDR netip.Prefix `json:"cidr"`
	// Pool is the pool holding the block; empty when none does.
	Pool string `json:"pool,omitempty"`
	// Affinity is the node the block is affine to; empty when none.
	Affinity string `json:"affinity,omitempty"`
	Total    int    `json:"total"`
	InUse    int    `json:"inUse"`
	// Reserved counts free addresses automatic allocation skips.
	Reserved int `json:"reserved"`
	Free     int `json:"free"`
}

// view is what the usage views are computed from: pools and reservations,
// and the IPAM keys read at one revision.
type view struct {
	snap *snapshot
	st   *ipamState
}

func loadView(ctx context.Context, store datastore.Store) (*view, error) {
	snap, err := loadSnapshot(ctx, datastore.NewResources(store), "")
	if err != nil {
		return nil, err
	}
	st, err := readState(ctx, store)
	if err != nil {
		return nil, err
	}
	return &view{snap: snap, st: st}, nil
}

// ReadUsage computes the usage of every pool and block. Inconsistent
// blocks (see Check) are left out.
func ReadUsage(ctx context.Context, store datastore.Store) (*Usage, error) {
	v, err := loadView(ctx, store)
	if err != nil {
		return nil, err
	}
	u := &Usage{Pools: []PoolUsage{}, Unpooled: []BlockUsage{}}
	for _, p := range v.snap.pools {
		pu := PoolUsage{Name: p.Name, CIDR: p.cidr, Disabled: p.Spec.Disabled, InUse: new(big.Int),
			Total: new(big.Int).Lsh(big.NewInt(1), uint(addrBits(p.cidr.Addr())-p.cidr.Bits())), Blocks: []BlockUsage{}}
		reserved := v.snap.reservedCount(p)
		for _, cb := range v.st.blocks {
			if p.cidr.Contains(cb.b.CIDR.Addr()) {
				pu.Blocks = append(pu.Blocks, v.blockUsage(cb.b))
			}
		}
		// Addresses of any block (even one of another block size) that lie
		// in the pool; reserved ones in use count as in use only.
		v.st.owners(func(o AddressOwner) {
			if p.cidr.Contains(o.Addr) {
				pu.InUse.Add(pu.InUse, big.NewInt(1))
				if v.snap.isReserved(p, o.Addr) {
					reserved.Sub(reserved, big.NewInt(1))
				}
			}
		})
		pu.Reserved = reserved
		pu.Free = new(big.Int).Sub(pu.Total, pu.InUse)
		pu.Free.Sub(pu.Free, reserved)
		u.Pools = append(u.Pools, pu)
	}
	for _, cb := range v.st.blocks {
		if v.snap.poolOf(cb.b.CIDR.Addr()) == nil {
			u.Unpooled = append(u.Unpooled, v.blockUsage(cb.b))
		}
	}
	return u, nil
}

func (v *view) blockUsage(b *Block) BlockUsage {
	p := v.snap.poolOf(b.CIDR.Addr())
	bu := BlockUsage{CIDR: b.CIDR, Affinity: b.Affinity, Total: len(b.Allocations), InUse: b.inUse()}
	if p != nil {
		bu.Pool = p.Name
	}
	for _, n := range b.Unallocated {
		if v.snap.isReserved(p, addrAt(b.CIDR, n)) {
			bu.Reserved++
		}
	}
	bu.Free = len(b.Unallocated) - bu.Reserved
	return bu
}

// reservedCount is the number of addresses of p that automatic allocation
// skips, whether in use or not: the union of the network and broadcast
// addresses and every reservation, clipped to the pool.
func (s *snapshot) reservedCount(p *pool) *big.Int {
	lo, hi := addrToU128(p.cidr.Addr()), addrToU128(lastAddr(p.cidr))
	var ranges [][2]u128
	add := func(first, last u128) {
		if first.less(lo) {
			first = lo
		}
		if hi.less(last) {
			last = hi
		}
		if !last.less(first) {
			ranges = append(ranges, [2]u128{first, last})
		}
	}
	for _, a := range []netip.Addr{p.cidr.Addr(), lastAddr(p.cidr)} {
		if s.isReserved(p, a) {
			add(addrToU128(a), addrToU128(a))
		}
	}
	for _, r := range s.reserved {
		if r.first.Is4() == p.cidr.Addr().Is4() {
			add(addrToU128(r.first), addrToU128(r.last))
		}
	}
	slices.SortFunc(ranges, func(a, b [2]u128) int {
		switch {
		case a[0].less(b[0]):
			return -1
		case b[0].less(a[0]):
			return 1
		}
		return 0
	})
	total := new(big.Int)
	one := u128{0, 1}
	for i := 0; i < len(ranges); {
		first, last := ranges[i][0], ranges[i][1]
		for i++; i < len(ranges) && !last.add(one).less(ranges[i][0]); i++ {
			if last.less(ranges[i][1]) {
				last = ranges[i][1]
			}
		}
		total.Add(total, bigOf(last.sub(first).add(one)))
	}
	return total
}

func bigOf(v u128) *big.Int {
	b := new(big.Int).SetUint64(v.hi)
	b.Lsh(b, 64)
	return b.Or(b, new(big.Int).SetUint64(v.lo))
}

// AddressStatus says what an address is used for.
type AddressStatus string

// Address statuses of LookupAddress.
const (
	AddressInUse    AddressStatus = "inUse"
	AddressFree     AddressStatus = "free"
	AddressReserved AddressStatus = "reserved"
	AddressOutside  AddressStatus = "outside"
)

// AddressInfo is what LookupAddress found about one address.
type AddressInfo struct {
	Addr   netip.Addr    `json:"addr"`
	Status AddressStatus `json:"status"`
	// Pool is the pool holding the address; empty when outside every pool
	// (Pools then lists them).
	Pool         string       `json:"pool,omitempty"`
	PoolCIDR     netip.Prefix `json:"poolCIDR,omitzero"`
	PoolDisabled bool         `json:"poolDisabled,omitempty"`
	// Block is the block holding the address, if one exists.
	Block         netip.Prefix `json:"block,omitzero"`
	BlockAffinity string       `json:"blockAffinity,omitempty"`
	// Owner holds the address when it is in use.
	Owner *AddressOwner `json:"owner,omitempty"`
	// Reserved says why automatic allocation skips the address (also for
	// an address in use that was reserved after it was handed out).
	Reserved string   `json:"reserved,omitempty"`
	Pools    []string `json:"pools,omitempty"`
}

// LookupAddress says who holds addr, or that it is free, reserved (and
// why), or outside every pool.
func LookupAddress(ctx context.Context, store datastore.Store, addr netip.Addr) (*AddressInfo, error) {
	v, err := loadView(ctx, store)
	if err != nil {
		return nil, err
	}
	info := &AddressInfo{Addr: addr, Status: AddressFree}
	p := v.snap.poolOf(addr)
	if p != nil {
		info.Pool, info.PoolCIDR, info.PoolDisabled = p.Name, p.cidr, p.Spec.Disabled
	} else {
		info.Status = AddressOutside
		for _, q := range v.snap.pools {
			info.Pools = append(info.Pools, q.Name+" "+q.cidr.String())
		}
	}
	if v.snap.isReserved(p, addr) {
		info.Reserved = v.snap.reservedWhy(p, addr)
		if p != nil {
			info.Status = AddressReserved
		}
	}
	// A block outside every pool (its pool was deleted) can still hold it.
	for _, cb := range v.st.blocks {
		if !cb.b.CIDR.Contains(addr) {
			continue
		}
		if !info.Block.IsValid() {
			info.Block, info.BlockAffinity = cb.b.CIDR, cb.b.Affinity
		}
		n := ordinal(cb.b.CIDR, addr)
		if a, ok := cb.b.attributeOf(n); ok {
			o := ownerAt(cb.b, n, a)
			info.Owner, info.Status = &o, AddressInUse
			info.Block, info.BlockAffinity = cb.b.CIDR, cb.b.Affinity
			break
		}
	}
	return info, nil
}

// NodeUsage is what one node holds: its affine blocks, and every address
// allocated for it (borrowed ones from other nodes' blocks too).
type NodeUsage struct {
	Node      string         `json:"node"`
	Blocks    []BlockUsage   `json:"blocks"`
	Addresses []NodeAddress  `json:"addresses"`
	Pending   []BlockPending `json:"pendingAffinities,omitempty"`
}

// Summary is the one line that heads a node's usage, e.g. "Node a: 2
// blocks, 3 addresses."
func (u *NodeUsage) Summary() string {
	if len(u.Blocks)+len(u.Addresses)+len(u.Pending) == 0 {
		return fmt.Sprintf("Node %s holds no blocks and no addresses.", u.Node)
	}
	return fmt.Sprintf("Node %s: %s, %s.", u.Node, plural(len(u.Blocks), "block", "blocks"), plural(len(u.Addresses), "address", "addresses"))
}

// NodeAddress is one address a node holds.
type NodeAddress struct {
	AddressOwner
	// Borrowed: the block is not affine to the node.
	Borrowed bool `json:"borrowed"`
}

// BlockPending is an affinity of the node that is not confirmed.
type BlockPending struct {
	Block netip.Prefix  `json:"block"`
	State AffinityState `json:"state"`
}

// ReadNodeUsage says what node holds.
func ReadNodeUsage(ctx context.Context, store datastore.Store, node string) (*NodeUsage, error) {
	v, err := loadView(ctx, store)
	if err != nil {
		return nil, err
	}
	u := &NodeUsage{Node: node, Blocks: []BlockUsage{}, Addresses: []NodeAddress{}}
	for _, cb := range v.st.blocks {
		if cb.b.Affinity == node {
			u.Blocks = append(u.Blocks, v.blockUsage(cb.b))
		}
	}
	v.st.owners(func(o AddressOwner) {
		if o.Node == node {
			u.Addresses = append(u.Addresses, NodeAddress{AddressOwner: o, Borrowed: v.st.byCIDR[o.Block].b.Affinity != node})
		}
	})
	for _, a := range v.st.affinities {
		if a.Node == node && a.State != AffinityConfirmed {
			u.Pending = append(u.Pending, BlockPending{Block: a.Block, State: a.State})
		}
	}
	return u, nil
}

// WriteText writes the report for people: a summary, then each problem
// under a heading that says what it means.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Checked IPAM data at revision %d: %s, %s, %s, %s in use.\n", r.Revision,
		plural(r.Blocks, "block", "blocks"), plural(r.Affinities, "affinity", "affinities"),
		plural(r.Handles, "handle", "handles"), plural(r.AddressesInUse, "address", "addresses"))
	if r.LiveChecked {
		fmt.Fprintf(&b, "Compared with %s.\n", plural(r.LiveWorkloads, "live workload", "live workloads"))
	} else {
		b.WriteString("No live workloads given: every allocation counts as live, so leaked addresses and workloads\n" +
			"without an address were not looked for; only structural problems are reported.\n")
	}
	section := func(n int, title string, line func(i int) string) {
		if n == 0 {
			return
		}
		fmt.Fprintf(&b, "\n%s (%d):\n", title, n)
		for i := range n {
			b.WriteString("  " + line(i) + "\n")
		}
	}
	section(len(r.LeakedAddresses), "Leaked addresses: allocated, but no live workload holds them", func(i int) string {
		return r.LeakedAddresses[i].String()
	})
	section(len(r.WorkloadsWithoutAddress), "Live workloads without an address", func(i int) string {
		return r.WorkloadsWithoutAddress[i].String()
	})
	section(len(r.DuplicateAddresses), "Addresses with two owners (in overlapping blocks)", func(i int) string {
		d := r.DuplicateAddresses[i]
		owners := make([]string, len(d.Owners))
		for j, o := range d.Owners {
			owners[j] = fmt.Sprintf("%s in block %s (seq %d)", o.attribute().Owner(), o.Block, o.Seq)
		}
		return fmt.Sprintf("%s: %s", d.Addr, strings.Join(owners, "; "))
	})
	section(len(r.HandleMismatches), "Handles whose record disagrees with the blocks", func(i int) string {
		h := r.HandleMismatches[i]
		switch {
		case h.Revision == 0:
			return fmt.Sprintf("handle %s has no record; the blocks hold %s", h.Handle, formatCounts(h.Actual))
		case h.Error != "":
			return fmt.Sprintf("handle %s: record unreadable (%s); the blocks hold %s", h.Handle, h.Error, formatCounts(h.Actual))
		}
		return fmt.Sprintf("handle %s records %s; the blocks hold %s", h.Handle, formatCounts(h.Recorded), formatCounts(h.Actual))
	})
	section(len(r.OrphanHandles), "Orphan handles: a record, but no address", func(i int) string {
		h := r.OrphanHandles[i]
		return fmt.Sprintf("handle %s (records %s)", h.Handle, formatCounts(h.Recorded))
	})
	section(len(r.AffinitiesWithoutBlock), "Affinities without a block", func(i int) string {
		a := r.AffinitiesWithoutBlock[i]
		return fmt.Sprintf("node %s, block %s (%s, key %s)", a.Node, a.Block, orNone(string(a.State)), a.Key)
	})
	section(len(r.PendingAffinities), "Pending affinities: claims or releases left half done", func(i int) string {
		a := r.PendingAffinities[i]
		if a.BlockExists {
			return fmt.Sprintf("node %s, block %s (%s): the block exists and names the node", a.Node, a.Block, a.State)
		}
		return fmt.Sprintf("node %s, block %s (%s): no such block", a.Node, a.Block, a.State)
	})
	section(len(r.AffinityMismatches), "Blocks whose affinity disagrees with the affinity records", func(i int) string {
		m := r.AffinityMismatches[i]
		if m.AffinityNode == "" {
			return fmt.Sprintf("block %s names node %s, which has no affinity record for it", m.Block, m.BlockAffinity)
		}
		return fmt.Sprintf("block %s names %s, but node %s has an affinity record for it", m.Block, nodeOrNone(m.BlockAffinity), m.AffinityNode)
	})
	section(len(r.InconsistentBlocks), "Inconsistent blocks (left out of the other checks; repair by hand)", func(i int) string {
		return fmt.Sprintf("%s: %s", r.InconsistentBlocks[i].Key, r.InconsistentBlocks[i].Error)
	})
	if n := r.Problems(); n == 0 {
		b.WriteString("No problems found.\n")
	} else {
		fmt.Fprintf(&b, "\nFound %s.\n", plural(n, "problem", "problems"))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// plural is "1 block" or "2 blocks".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// AffineUsage is what the blocks confirmed affine to a node hold.
type AffineUsage struct {
	Blocks []netip.Prefix
	InUse  int
	// Free counts the free addresses automatic allocation may hand out:
	// reserved ones are left out, as in ReadUsage's Free.
	Free int
}

// Usage counts the node's confirmed affine blocks and the addresses in use
// and free in them. It reads only the node's affinity records and those
// blocks, not the whole IPAM data as ReadNodeUsage does, and the pools and
// reservations the allocator already holds, so an agent can call it
// periodically for its Node status and metrics. Addresses the node
// borrowed in other nodes' blocks are not counted.
func (a *Allocator) Usage(ctx context.Context) (AffineUsage, error) {
	var u AffineUsage
	prefix := affinityPrefix + a.node + "/"
	kvs, _, err := a.store.List(ctx, prefix)
	if err != nil {
		return u, fmt.Errorf("list affinities of node %s: %w", a.node, err)
	}
	snap := a.snap.Load()
	for _, kv := range kvs {
		var aff Affinity
		if json.Unmarshal(kv.Value, &aff) != nil || aff.State != AffinityConfirmed {
			continue
		}
		bkv, err := a.store.Get(ctx, blockPrefix+strings.TrimPrefix(kv.Key, prefix))
		if errors.Is(err, datastore.ErrNotFound) {
			continue
		}
		if err != nil {
			return u, err
		}
		b, err := decodeBlock(bkv.Value)
		if err != nil {
			return u, err
		}
		u.Blocks = append(u.Blocks, b.CIDR)
		u.InUse += b.inUse()
		p := snap.poolOf(b.CIDR.Addr())
		for _, n := range b.Unallocated {
			if !snap.isReserved(p, addrAt(b.CIDR, n)) {
				u.Free++
			}
		}
	}
	return u, nil
}

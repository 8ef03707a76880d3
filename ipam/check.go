package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// ipamKeyPrefix holds every IPAM key (blocks, affinities, handles, config),
// so one List reads them all at one revision.
const ipamKeyPrefix = "/rhizome/v1/ipam/"

// Workload is a workload the caller knows to be running: a pod in
// Kubernetes, or a handle a node agent serves. With a Handle it matches the
// allocations of that handle only (an older sandbox of the same pod then
// counts as leaked); without one it matches every allocation of
// Namespace/Pod.
type Workload struct {
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	Handle    string `json:"handle,omitempty"`
	Node      string `json:"node,omitempty"`
}

func (w Workload) String() string {
	var parts []string
	if w.Pod != "" {
		parts = append(parts, "pod "+w.Namespace+"/"+w.Pod)
	}
	if w.Handle != "" {
		parts = append(parts, "handle "+w.Handle)
	}
	if w.Node != "" {
		parts = append(parts, "on node "+w.Node)
	}
	return strings.Join(parts, " ")
}

// AddressOwner is one allocated address and who holds it.
type AddressOwner struct {
	Addr      netip.Addr   `json:"addr"`
	Block     netip.Prefix `json:"block"`
	Handle    string       `json:"handle"`
	Namespace string       `json:"namespace,omitempty"`
	Pod       string       `json:"pod,omitempty"`
	Node      string       `json:"node,omitempty"`
	Use       api.IPUse    `json:"use,omitempty"`
	// Seq is the allocation's sequence number: releasing with it frees
	// this allocation only, not a later one of the same address.
	Seq uint64 `json:"seq"`
}

func (o AddressOwner) attribute() Attribute {
	return Attribute{Handle: o.Handle, Namespace: o.Namespace, Pod: o.Pod, Node: o.Node, Use: o.Use, Seq: o.Seq}
}

func (o AddressOwner) String() string {
	s := o.attribute().Owner()
	if o.Node != "" {
		s += " on node " + o.Node
	}
	return fmt.Sprintf("%s held by %s, block %s, seq %d", o.Addr, s, o.Block, o.Seq)
}

// DuplicateAddress is an address allocated in more than one block (blocks
// that overlap, left by pools of different block sizes).
type DuplicateAddress struct {
	Addr   netip.Addr     `json:"addr"`
	Owners []AddressOwner `json:"owners"`
}

// HandleMismatch is a handle whose record does not count the addresses
// the blocks hold for it. Revision 0: there is no record at all.
type HandleMismatch struct {
	Handle   string         `json:"handle"`
	Revision int64          `json:"revision"`
	Recorded map[string]int `json:"recorded"`
	Actual   map[string]int `json:"actual"`
	// Node is the node the blocks hold the handle's addresses for (what a
	// repaired record names).
	Node string `json:"node,omitempty"`
	// Error says why the record could not be read, if it could not.
	Error string `json:"error,omitempty"`
}

// OrphanHandle is a handle record without any address.
type OrphanHandle struct {
	Handle   string         `json:"handle"`
	Revision int64          `json:"revision"`
	Recorded map[string]int `json:"recorded"`
}

// AffinityRecord is one stored affinity of a node to a block.
type AffinityRecord struct {
	Key      string        `json:"key"`
	Revision int64         `json:"revision"`
	Node     string        `json:"node"`
	Block    netip.Prefix  `json:"block"`
	State    AffinityState `json:"state"`
	// BlockExists (pending affinities): the block exists and names this
	// node, so the claim only lacks its confirmation.
	BlockExists bool `json:"blockExists"`
}

// AffinityMismatch is a block whose affinity field disagrees with the
// affinity records. Either the block names BlockAffinity and that node has
// no affinity record for it (AffinityNode empty), or AffinityNode has an
// affinity record for the block but the block names BlockAffinity (another
// node, or none).
type AffinityMismatch struct {
	Block         netip.Prefix `json:"block"`
	BlockRevision int64        `json:"blockRevision"`
	BlockAffinity string       `json:"blockAffinity"`
	AffinityNode  string       `json:"affinityNode,omitempty"`
	// AffinityRevision is the revision of AffinityNode's record.
	AffinityRevision int64 `json:"affinityRevision,omitempty"`
}

// BadBlock is a block record that cannot be read or is inconsistent in
// itself. Its addresses are left out of every other check.
type BadBlock struct {
	Key      string       `json:"key"`
	Block    netip.Prefix `json:"block"`
	Revision int64        `json:"revision"`
	Error    string       `json:"error"`
}

// Report is what Check found. Field names are stable: `rhizomectl ipam
// check -o` writes it as JSON and `ipam release --from-report` reads it.
type Report struct {
	// Revision is the datastore revision everything was read at. Repairs
	// are guarded by it: a key written since is left alone.
	Revision int64 `json:"revision"`
	// LiveChecked is false when Check was given no live workloads: every
	// allocation then counts as live, and leaked addresses and workloads
	// without an address are not looked for.
	LiveChecked    bool `json:"liveChecked"`
	LiveWorkloads  int  `json:"liveWorkloads"`
	Blocks         int  `json:"blocks"`
	Affinities     int  `json:"affinities"`
	Handles        int  `json:"handles"`
	AddressesInUse int  `json:"addressesInUse"`

	LeakedAddresses         []AddressOwner     `json:"leakedAddresses"`
	WorkloadsWithoutAddress []Workload         `json:"workloadsWithoutAddress"`
	DuplicateAddresses      []DuplicateAddress `json:"duplicateAddresses"`
	HandleMismatches        []HandleMismatch   `json:"handleMismatches"`
	OrphanHandles           []OrphanHandle     `json:"orphanHandles"`
	AffinitiesWithoutBlock  []AffinityRecord   `json:"affinitiesWithoutBlock"`
	PendingAffinities       []AffinityRecord   `json:"pendingAffinities"`
	AffinityMismatches      []AffinityMismatch `json:"affinityMismatches"`
	InconsistentBlocks      []BadBlock         `json:"inconsistentBlocks"`
}

// Problems is the number of problems found.
func (r *Report) Problems() int {
	return len(r.LeakedAddresses) + len(r.WorkloadsWithoutAddress) + len(r.DuplicateAddresses) +
		len(r.HandleMismatches) + len(r.OrphanHandles) + len(r.AffinitiesWithoutBlock) +
		len(r.PendingAffinities) + len(r.AffinityMismatches) + len(r.InconsistentBlocks)
}

// Repairable is the number of problems Repair fixes: handles and
// affinities. Leaked addresses, duplicate owners and inconsistent blocks
// are left to an operator.
func (r *Report) Repairable() int {
	return len(r.HandleMismatches) + len(r.OrphanHandles) + len(r.AffinitiesWithoutBlock) +
		len(r.PendingAffinities) + len(r.AffinityMismatches)
}

// checkedBlock is a readable, consistent block and its revision.
type checkedBlock struct {
	b   *Block
	rev int64
}

// ipamState is every IPAM key, read at one revision.
type ipamState struct {
	rev        int64
	blocks     []*checkedBlock // in address order
	byCIDR     map[netip.Prefix]*checkedBlock
	bad        []BadBlock
	badCIDRs   map[netip.Prefix]bool // blocks that exist but cannot be used
	affinities []AffinityRecord      // in key order
	handles    map[string]*storedHandle
}

type storedHandle struct {
	h   Handle
	rev int64
	err error
}

// readState reads blocks, affinities and handles in one List, so they are
// consistent with each other.
func readState(ctx context.Context, store datastore.Store) (*ipamState, error) {
	kvs, rev, err := store.List(ctx, ipamKeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("read IPAM data: %w", err)
	}
	s := &ipamState{rev: rev, byCIDR: map[netip.Prefix]*checkedBlock{}, badCIDRs: map[netip.Prefix]bool{},
		handles: map[string]*storedHandle{}}
	for _, kv := range kvs {
		switch {
		case strings.HasPrefix(kv.Key, blockPrefix):
			s.addBlock(kv)
		case strings.HasPrefix(kv.Key, affinityPrefix):
			s.addAffinity(kv)
		case strings.HasPrefix(kv.Key, handlePrefix):
			h := &storedHandle{rev: kv.Revision}
			if err := json.Unmarshal(kv.Value, &h.h); err != nil {
				h.err = err
			}
			s.handles[strings.TrimPrefix(kv.Key, handlePrefix)] = h
		}
	}
	slices.SortFunc(s.blocks, func(a, b *checkedBlock) int {
		if c := a.b.CIDR.Addr().Compare(b.b.CIDR.Addr()); c != 0 {
			return c
		}
		return a.b.CIDR.Bits() - b.b.CIDR.Bits() // the larger block first
	})
	return s, nil
}

func (s *ipamState) addBlock(kv datastore.KV) {
	cidr, err := parseBlockKeyName(strings.TrimPrefix(kv.Key, blockPrefix))
	if err != nil {
		s.bad = append(s.bad, BadBlock{Key: kv.Key, Revision: kv.Revision, Error: "the key does not name a block: " + err.Error()})
		return
	}
	b, err := decodeBlock(kv.Value)
	switch {
	case err == nil && b.CIDR != cidr:
		err = fmt.Errorf("the key names block %s but the record holds block %s", cidr, b.CIDR)
	case err == nil:
		err = b.verify()
	}
	if err != nil {
		s.bad = append(s.bad, BadBlock{Key: kv.Key, Block: cidr, Revision: kv.Revision, Error: err.Error()})
		s.badCIDRs[cidr] = true
		return
	}
	cb := &checkedBlock{b: b, rev: kv.Revision}
	s.blocks = append(s.blocks, cb)
	s.byCIDR[cidr] = cb
}

func (s *ipamState) addAffinity(kv datastore.KV) {
	a := AffinityRecord{Key: kv.Key, Revision: kv.Revision}
	rest := strings.TrimPrefix(kv.Key, affinityPrefix)
	if i := strings.LastIndexByte(rest, '/'); i > 0 {
		a.Node = rest[:i]
		a.Block, _ = parseBlockKeyName(rest[i+1:])
	}
	var v Affinity
	if json.Unmarshal(kv.Value, &v) == nil {
		a.State = v.State
	}
	s.affinities = append(s.affinities, a)
}

// owners calls fn for every allocated address of every readable block, in
// address order.
func (s *ipamState) owners(fn func(AddressOwner)) {
	for _, cb := range s.blocks {
		for n := range cb.b.Allocations {
			if a, ok := cb.b.attributeOf(n); ok {
				fn(ownerAt(cb.b, n, a))
			}
		}
	}
}

func ownerAt(b *Block, n int, a Attribute) AddressOwner {
	return AddressOwner{Addr: addrAt(b.CIDR, n), Block: b.CIDR, Handle: a.Handle, Namespace: a.Namespace,
		Pod: a.Pod, Node: a.Node, Use: a.Use, Seq: a.Seq}
}

// Check compares the stored IPAM data with itself and with the live
// workloads. It reads everything in one request and writes nothing.
//
// live == nil means the caller does not know which workloads run: every
// allocation then counts as live and only structural problems are reported
// (pass an empty, non-nil slice for "nothing runs"). Addresses with use
// Tunnel belong to nodes, not workloads, and always count as live.
func Check(ctx context.Context, store datastore.Store, live []Workload) (*Report, error) {
	for i, w := range live {
		if w.Handle == "" && w.Pod == "" {
			return nil, fmt.Errorf("%w: live workload %d (%+v) has neither a handle nor a pod", ErrBadRequest, i+1, w)
		}
	}
	s, err := readState(ctx, store)
	if err != nil {
		return nil, err
	}
	r := &Report{
		Revision: s.rev, LiveChecked: live != nil, LiveWorkloads: len(live),
		Blocks: len(s.blocks) + len(s.bad), Affinities: len(s.affinities), Handles: len(s.handles),
		LeakedAddresses: []AddressOwner{}, WorkloadsWithoutAddress: []Workload{}, DuplicateAddresses: []DuplicateAddress{},
		HandleMismatches: []HandleMismatch{}, OrphanHandles: []OrphanHandle{}, AffinitiesWithoutBlock: []AffinityRecord{},
		PendingAffinities: []AffinityRecord{}, AffinityMismatches: []AffinityMismatch{}, InconsistentBlocks: s.bad,
	}
	if r.InconsistentBlocks == nil {
		r.InconsistentBlocks = []BadBlock{}
	}
	s.owners(func(AddressOwner) { r.AddressesInUse++ })
	r.checkDuplicates(s)
	r.checkAffinities(s)
	r.checkHandles(s)
	if live != nil {
		r.checkLive(s, live)
	}
	return r, nil
}

// checkDuplicates finds addresses allocated in two overlapping blocks.
// Blocks are in address order with the larger first, so a block overlaps a
// later one only by containing it.
func (r *Report) checkDuplicates(s *ipamState) {
	dups := map[netip.Addr]*DuplicateAddress{}
	var order []netip.Addr
	for i, outer := range s.blocks {
		last := lastAddr(outer.b.CIDR)
		for _, inner := range s.blocks[i+1:] {
			if inner.b.CIDR.Addr().Compare(last) > 0 {
				break
			}
			for n := range inner.b.Allocations {
				ia, ok := inner.b.attributeOf(n)
				addr := addrAt(inner.b.CIDR, n)
				if !ok {
					continue
				}
				oa, ok := outer.b.attributeOf(ordinal(outer.b.CIDR, addr))
				if !ok {
					continue
				}
				d := dups[addr]
				if d == nil {
					d = &DuplicateAddress{Addr: addr, Owners: []AddressOwner{ownerAt(outer.b, ordinal(outer.b.CIDR, addr), oa)}}
					dups[addr] = d
					order = append(order, addr)
				}
				d.Owners = append(d.Owners, ownerAt(inner.b, n, ia))
			}
		}
	}
	slices.SortFunc(order, netip.Addr.Compare)
	for _, a := range order {
		r.DuplicateAddresses = append(r.DuplicateAddresses, *dups[a])
	}
}

// checkAffinities classifies every affinity record once, then finds blocks
// that name a node without a record.
func (r *Report) checkAffinities(s *ipamState) {
	recorded := map[string]bool{}
	for _, a := range s.affinities {
		recorded[a.Key] = true
		cb := s.byCIDR[a.Block]
		switch {
		case a.Block.IsValid() && s.badCIDRs[a.Block]:
			// The block exists but cannot be read; it is reported itself.
		case cb == nil && a.State == AffinityPending:
			r.PendingAffinities = append(r.PendingAffinities, a)
		case cb == nil:
			r.AffinitiesWithoutBlock = append(r.AffinitiesWithoutBlock, a)
		case cb.b.Affinity != a.Node:
			r.AffinityMismatches = append(r.AffinityMismatches, AffinityMismatch{Block: a.Block, BlockRevision: cb.rev,
				BlockAffinity: cb.b.Affinity, AffinityNode: a.Node, AffinityRevision: a.Revision})
		case a.State != AffinityConfirmed:
			a.BlockExists = true
			r.PendingAffinities = append(r.PendingAffinities, a)
		}
	}
	for _, cb := range s.blocks {
		if cb.b.Affinity != "" && !recorded[affinityKey(cb.b.Affinity, cb.b.CIDR)] {
			r.AffinityMismatches = append(r.AffinityMismatches, AffinityMismatch{Block: cb.b.CIDR, BlockRevision: cb.rev,
				BlockAffinity: cb.b.Affinity})
		}
	}
	slices.SortStableFunc(r.AffinityMismatches, func(a, b AffinityMismatch) int {
		return a.Block.Addr().Compare(b.Block.Addr())
	})
}

// checkHandles compares each handle record with the addresses the blocks
// hold for it. A record's count for a block that cannot be read is trusted.
func (r *Report) checkHandles(s *ipamState) {
	actual := map[string]map[string]int{}
	nodeOf := map[string]string{}
	s.owners(func(o AddressOwner) {
		if actual[o.Handle] == nil {
			actual[o.Handle] = map[string]int{}
			nodeOf[o.Handle] = o.Node
		}
		actual[o.Handle][o.Block.String()]++
	})
	for _, name := range slices.Sorted(maps.Keys(s.handles)) {
		h := s.handles[name]
		act := maps.Clone(actual[name])
		for k, n := range h.h.Blocks {
			if c, err := netip.ParsePrefix(k); err == nil && s.badCIDRs[c] {
				if act == nil {
					act = map[string]int{}
				}
				act[k] = n
			}
		}
		switch {
		case len(act) == 0:
			r.OrphanHandles = append(r.OrphanHandles, OrphanHandle{Handle: name, Revision: h.rev, Recorded: h.h.Blocks})
		case h.err != nil:
			r.HandleMismatches = append(r.HandleMismatches, HandleMismatch{Handle: name, Revision: h.rev, Actual: act,
				Node: nodeOf[name], Error: h.err.Error()})
		case !maps.Equal(h.h.Blocks, act):
			r.HandleMismatches = append(r.HandleMismatches, HandleMismatch{Handle: name, Revision: h.rev,
				Recorded: h.h.Blocks, Actual: act, Node: nodeOf[name]})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(actual)) {
		if _, ok := s.handles[name]; !ok {
			r.HandleMismatches = append(r.HandleMismatches, HandleMismatch{Handle: name, Actual: actual[name], Node: nodeOf[name]})
		}
	}
	slices.SortStableFunc(r.HandleMismatches, func(a, b HandleMismatch) int { return strings.Compare(a.Handle, b.Handle) })
}

// checkLive finds allocations no live workload holds, and live workloads
// that hold no allocation.
func (r *Report) checkLive(s *ipamState, live []Workload) {
	liveHandles, livePods := map[string]bool{}, map[string]bool{}
	for _, w := range live {
		if w.Handle != "" {
			liveHandles[w.Handle] = true
		} else {
			livePods[w.Namespace+"/"+w.Pod] = true
		}
	}
	heldHandles, heldPods := map[string]bool{}, map[string]bool{}
	s.owners(func(o AddressOwner) {
		heldHandles[o.Handle] = true
		heldPods[o.Namespace+"/"+o.Pod] = true
		if o.Use != api.UseTunnel && !liveHandles[o.Handle] && !livePods[o.Namespace+"/"+o.Pod] {
			r.LeakedAddresses = append(r.LeakedAddresses, o)
		}
	})
	seen := map[Workload]bool{}
	for _, w := range live {
		held := heldHandles[w.Handle]
		if w.Handle == "" {
			held = heldPods[w.Namespace+"/"+w.Pod]
		}
		if !held && !seen[w] {
			r.WorkloadsWithoutAddress = append(r.WorkloadsWithoutAddress, w)
		}
		seen[w] = true
	}
}

// errRepairSkipped: a repair's guard failed, the data changed since the
// check.
var errRepairSkipped = errors.New("changed since the check")

// Repair fixes the structural problems of a report: it deletes affinities
// without a block (pending ones too), confirms pending affinities whose
// block exists and names their node, creates the affinity record a block's
// affinity field names, deletes affinity records for a block that names
// another node, rewrites handle records to count what the blocks hold, and
// deletes orphan handles. It never frees an address: leaked addresses are
// released with ReleaseIPs.
//
// Every repair is one transaction guarded by the revisions in the report
// (the key's own, and for blocks "unchanged since the check"), so a repair
// based on what has changed since writes nothing. It returns what it fixed;
// when some repairs were skipped that way, the error wraps
// datastore.ErrConflict and the caller checks again.
func Repair(ctx context.Context, store datastore.Store, r *Report) ([]string, error) {
	var fixed, skipped []string
	do := func(what string, ops ...datastore.Op) error {
		_, err := writeTogether(ctx, store, txnRepair, ops...)
		switch {
		case err == nil:
			fixed = append(fixed, what)
		case errors.Is(err, datastore.ErrConflict), errors.Is(err, datastore.ErrExists), errors.Is(err, datastore.ErrNotFound):
			skipped = append(skipped, what)
		default:
			return fmt.Errorf("repair IPAM data (%s): %w", what, err)
		}
		return nil
	}
	// unchanged guards a block (or its absence) as of the check.
	unchanged := func(c netip.Prefix) []datastore.Op {
		if !c.IsValid() {
			return nil
		}
		return []datastore.Op{datastore.OpPrefixUnchangedSince(blockKey(c), r.Revision)}
	}
	confirmed, _ := json.Marshal(Affinity{State: AffinityConfirmed})

	for _, a := range append(slices.Clone(r.AffinitiesWithoutBlock), r.PendingAffinities...) {
		var err error
		if a.BlockExists {
			err = do(fmt.Sprintf("confirmed %s affinity of node %s to block %s (the block names the node)", a.State, a.Node, a.Block),
				append(unchanged(a.Block), datastore.OpUpdate(a.Key, confirmed, a.Revision))...)
		} else {
			err = do(fmt.Sprintf("deleted %s affinity of node %s to block %s (no such block)", orNone(string(a.State)), a.Node, a.Block),
				append(unchanged(a.Block), datastore.OpDelete(a.Key, a.Revision))...)
		}
		if err != nil {
			return fixed, err
		}
	}
	for _, m := range r.AffinityMismatches {
		var err error
		if m.AffinityNode == "" {
			err = do(fmt.Sprintf("created affinity of node %s to block %s (the block names the node)", m.BlockAffinity, m.Block),
				append(unchanged(m.Block), datastore.OpCreate(affinityKey(m.BlockAffinity, m.Block), confirmed))...)
		} else {
			err = do(fmt.Sprintf("deleted affinity of node %s to block %s (the block names %s)", m.AffinityNode, m.Block, nodeOrNone(m.BlockAffinity)),
				append(unchanged(m.Block), datastore.OpDelete(affinityKey(m.AffinityNode, m.Block), m.AffinityRevision))...)
		}
		if err != nil {
			return fixed, err
		}
	}
	for _, h := range r.HandleMismatches {
		var ops []datastore.Op
		for _, k := range slices.Sorted(maps.Keys(mergedKeys(h.Recorded, h.Actual))) {
			if c, err := netip.ParsePrefix(k); err == nil {
				ops = append(ops, unchanged(c)...)
			}
		}
		v, _ := json.Marshal(Handle{Blocks: h.Actual, Node: h.Node})
		if h.Revision == 0 {
			ops = append(ops, datastore.OpCreate(handleKey(h.Handle), v))
		} else {
			ops = append(ops, datastore.OpUpdate(handleKey(h.Handle), v, h.Revision))
		}
		if err := do(fmt.Sprintf("wrote handle %s as %s (was %s)", h.Handle, formatCounts(h.Actual), formatCounts(h.Recorded)), ops...); err != nil {
			return fixed, err
		}
	}
	for _, h := range r.OrphanHandles {
		if err := do(fmt.Sprintf("deleted handle %s (it holds no address)", h.Handle),
			datastore.OpDelete(handleKey(h.Handle), h.Revision)); err != nil {
			return fixed, err
		}
	}
	if len(skipped) > 0 {
		return fixed, fmt.Errorf("%d repairs not applied because the data %s (first: %s); check again: %w",
			len(skipped), errRepairSkipped, skipped[0], datastore.ErrConflict)
	}
	return fixed, nil
}

func mergedKeys(a, b map[string]int) map[string]int {
	out := maps.Clone(a)
	if out == nil {
		out = map[string]int{}
	}
	maps.Copy(out, b)
	return out
}

func nodeOrNone(n string) string {
	if n == "" {
		return "no node"
	}
	return "node " + n
}

// formatCounts writes a handle's per-block counts in block order.
func formatCounts(m map[string]int) string {
	if len(m) == 0 {
		return "{}"
	}
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, m[k]))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

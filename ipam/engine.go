package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// Request asks for addresses for one handle.
type Request struct {
	// Handle names the allocation ("<network>.<containerID>.<ifname>"
	// for a pod); releasing by handle frees every address it holds.
	Handle          string
	Namespace       string
	NamespaceLabels map[string]string
	Pod             string
	// Pools names the pools to draw from, in order (pod or namespace
	// annotation, CNI config). Empty: every matching Automatic pool.
	Pools []string
	// Count of addresses (default 1).
	Count int
	// Use of the addresses (default Workload).
	Use api.IPUse
	// Family 4 (default) or 6.
	Family int
}

func (r *Request) familyNum() int {
	if r.Family == 6 {
		return 6
	}
	return 4
}

// check validates the request and fills in its defaults.
func (r *Request) check() error {
	if r.Count == 0 {
		r.Count = 1
	}
	if r.Use == "" {
		r.Use = api.UseWorkload
	}
	switch {
	case r.Handle == "" || strings.ContainsAny(r.Handle, "/ \t\n"):
		return fmt.Errorf("%w: handle %q must be non-empty, without '/' or spaces", ErrBadRequest, r.Handle)
	case r.Count < 1 || r.Count > 256:
		return fmt.Errorf("%w: count %d out of range 1-256", ErrBadRequest, r.Count)
	case r.Family != 0 && r.Family != 4 && r.Family != 6:
		return fmt.Errorf("%w: family %d: use 4 or 6", ErrBadRequest, r.Family)
	case r.Use != "" && r.Use != api.UseWorkload && r.Use != api.UseTunnel:
		return fmt.Errorf("%w: use %q: use Workload or Tunnel", ErrBadRequest, r.Use)
	}
	return nil
}

// Assignment is one address handed out.
type Assignment struct {
	Addr  netip.Addr
	Block netip.Prefix
	Pool  string
	// Seq is the allocation's sequence number in its block.
	Seq uint64
	// Borrowed is true when the block is not affine to the node: the node
	// must advertise the address as a host route.
	Borrowed bool
}

// engine applies IPAM operations for one node (or for no node, for operator
// commands) against the store. It is not safe for concurrent use: the
// Allocator runs it from one goroutine, operator functions make their own.
type engine struct {
	store datastore.Store
	node  string
	// cache holds the node's affine blocks; nil for operator engines.
	cache map[netip.Prefix]*cachedBlock
	// readHandles lists handles that must be read before being written
	// (they turned out to exist when the engine assumed they did not).
	readHandles map[string]bool
}

func newEngine(store datastore.Store, node string, cached bool) *engine {
	e := &engine{store: store, node: node, readHandles: map[string]bool{}}
	if cached {
		e.cache = map[netip.Prefix]*cachedBlock{}
	}
	return e
}

// adopt caches a block if it is affine to this node.
func (e *engine) adopt(b *Block, rev int64) {
	if e.cache == nil {
		return
	}
	if b.Affinity == e.node {
		e.cache[b.CIDR] = &cachedBlock{b: b, rev: rev}
	} else {
		delete(e.cache, b.CIDR)
	}
}

// affineBlocks returns the cached blocks of pool p, in address order.
func (e *engine) affineBlocks(p *pool) []netip.Prefix {
	var out []netip.Prefix
	for c := range e.cache {
		if p.cidr.Contains(c.Addr()) {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// pick is one address chosen for a request before it is allocated.
type pick struct {
	w *workBlock
	n int
}

// planAssign plans an automatic assignment: affine blocks first, then a
// newly claimed block, then (without strict affinity) a borrowed address.
func (p *plan) planAssign(req *Request) ([]Assignment, error) {
	if err := req.check(); err != nil {
		return nil, err
	}
	count := req.Count
	pools, rejected := p.snap.selectPools(req)
	who := p.e.who(req)
	if len(pools) == 0 {
		if len(rejected) == 0 {
			return nil, fmt.Errorf("%w for %s: there are no IPv%d pools: create one (rhizomectl apply -f pool.yaml)", ErrNoUsablePool, who, req.familyNum())
		}
		return nil, fmt.Errorf("%w for %s: %s", ErrNoUsablePool, who, formatRejections(rejected))
	}
	var picks []pick
	taken := func(w *workBlock, n int) bool {
		return slices.ContainsFunc(picks, func(k pick) bool { return k.w == w && k.n == n })
	}
	collect := func(w *workBlock, pl *pool) {
		need := count - len(picks)
		for _, n := range w.b.freeCandidates(need+len(picks), func(a netip.Addr) bool { return p.snap.isReserved(pl, a) }) {
			if len(picks) < count && !taken(w, n) {
				picks = append(picks, pick{w, n})
			}
		}
	}
	why := map[string]string{}
	cfg := p.snap.config
	affine := func(pools []*pool) error {
		for _, pl := range pools {
			for _, c := range p.e.affineBlocks(pl) {
				if len(picks) == count {
					return nil
				}
				w, err := p.block(c)
				if err != nil {
					return err
				}
				if w != nil && w.b.Affinity == p.e.node {
					collect(w, pl)
				}
			}
		}
		return nil
	}
	claim := func(pools []*pool) error {
		for _, pl := range pools {
			for len(picks) < count {
				if !cfg.AutoAllocateBlocks {
					why[pl.Name] = "affine blocks full and autoAllocateBlocks is off"
					break
				}
				if cfg.MaxBlocksPerNode > 0 && len(p.e.cache) >= cfg.MaxBlocksPerNode {
					why[pl.Name] = fmt.Sprintf("affine blocks full and the node has maxBlocksPerNode (%d) blocks", cfg.MaxBlocksPerNode)
					break
				}
				c, err := p.e.claim(p.ctx, p.snap, pl, netip.Prefix{})
				if errors.Is(err, errPoolFull) {
					why[pl.Name] = "every block is claimed and affine blocks are full"
					break
				}
				if err != nil {
					return err
				}
				w, err := p.block(c)
				if err != nil {
					return err
				}
				if w == nil {
					break // released under us: try the next pool
				}
				collect(w, pl)
			}
		}
		return nil
	}
	if len(req.Pools) > 0 {
		// Pools the request names are used strictly in order: the first
		// pool's affine blocks, then a new block of it, then the next pool.
		for _, pl := range pools {
			if err := affine([]*pool{pl}); err != nil {
				return nil, err
			}
			if err := claim([]*pool{pl}); err != nil {
				return nil, err
			}
		}
	} else {
		// Automatic pools: any affine block first, so a node holds as few
		// blocks as it can; then new blocks, pool by pool.
		if err := affine(pools); err != nil {
			return nil, err
		}
		if err := claim(pools); err != nil {
			return nil, err
		}
	}
	// 3. Borrow.
	if len(picks) < count && !cfg.StrictAffinity {
		if err := p.borrow(pools, count, &picks); err != nil {
			return nil, err
		}
	}
	if len(picks) < count {
		var rs []rejection
		for _, pl := range pools {
			w := why[pl.Name]
			if w == "" {
				w = "no free address"
			}
			if cfg.StrictAffinity {
				w += "; strictAffinity is on, so no borrowing from other nodes' blocks"
			} else {
				w += "; no free address in other nodes' blocks either"
			}
			rs = append(rs, rejection{pl.Name, pl.cidr.String(), w})
		}
		rs = append(rs, rejected...)
		return nil, fmt.Errorf("%w: no free address for %s: %s", ErrExhausted, who, formatRejections(rs))
	}
	attr := attrFor(req, p.e.node)
	out := make([]Assignment, 0, count)
	for _, k := range picks {
		a, err := p.allocate(k.w, k.n, attr)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// borrow looks for free addresses in blocks of the pools that are not
// affine to this node.
func (p *plan) borrow(pools []*pool, count int, picks *[]pick) error {
	kvs, _, err := p.e.store.List(p.ctx, blockPrefix)
	if err != nil {
		return err
	}
	for _, pl := range pools {
		for _, kv := range kvs {
			if len(*picks) == count {
				return nil
			}
			cidr, err := parseBlockKeyName(strings.TrimPrefix(kv.Key, blockPrefix))
			if err != nil || !pl.cidr.Contains(cidr.Addr()) {
				continue
			}
			if _, mine := p.e.cache[cidr]; mine {
				continue
			}
			w, ok := p.blocks[cidr]
			if !ok {
				b, err := decodeBlock(kv.Value)
				if err != nil {
					continue
				}
				if len(b.freeCandidates(1, func(a netip.Addr) bool { return p.snap.isReserved(pl, a) })) == 0 {
					continue
				}
				w = p.addBlock(b, kv.Revision)
			}
			for _, n := range w.b.freeCandidates(count, func(a netip.Addr) bool { return p.snap.isReserved(pl, a) }) {
				if len(*picks) < count && !slices.ContainsFunc(*picks, func(k pick) bool { return k.w == w && k.n == n }) {
					*picks = append(*picks, pick{w, n})
				}
			}
		}
	}
	return nil
}

// planAssignIP plans the assignment of one given address.
func (p *plan) planAssignIP(addr netip.Addr, attr Attribute) (Assignment, error) {
	owner := attr.Owner()
	pl := p.snap.poolOf(addr)
	switch {
	case !addr.IsValid():
		return Assignment{}, fmt.Errorf("%w: no address given", ErrBadRequest)
	case pl == nil:
		return Assignment{}, fmt.Errorf("%w: %s requested for %s is outside every IP pool (%s)", ErrNotInPool, addr, owner, p.snap.poolList())
	case pl.Spec.Disabled:
		return Assignment{}, fmt.Errorf("%w: %s requested for %s lies in pool %s (%s), which is disabled", ErrPoolDisabled, addr, owner, pl.Name, pl.cidr)
	case !pl.allows(attr.Use):
		return Assignment{}, fmt.Errorf("%w: pool %s does not allow use %s (allowedUses %v)", ErrBadRequest, pl.Name, attr.Use, pl.Spec.AllowedUses)
	case p.snap.isReserved(pl, addr):
		return Assignment{}, fmt.Errorf("%w: %s requested for %s is %s", ErrReserved, addr, owner, p.snap.reservedWhy(pl, addr))
	}
	cidr := blockFor(addr, pl.Spec.BlockSize)
	w, err := p.block(cidr)
	if err != nil {
		return Assignment{}, err
	}
	if w == nil {
		// No block yet: claim it for this node, or create it unaffine
		// for operator requests.
		if p.e.node != "" {
			if _, err := p.e.claim(p.ctx, p.snap, pl, cidr); err != nil && !errors.Is(err, errPoolFull) {
				return Assignment{}, err
			}
			w, err = p.block(cidr)
			if err != nil {
				return Assignment{}, err
			}
		}
		if w == nil {
			w = &workBlock{b: newBlock(cidr, "")}
			p.blocks[cidr] = w
		}
	}
	n := ordinal(cidr, addr)
	if _, ok := w.b.attributeOf(n); ok {
		if w, err = p.verified(cidr); err != nil {
			return Assignment{}, err
		}
		if w == nil { // the block went away meanwhile: plan again
			return Assignment{}, fmt.Errorf("block %s was deleted meanwhile: %w", cidr, datastore.ErrConflict)
		}
		if cur, ok := w.b.attributeOf(n); ok {
			return Assignment{}, fmt.Errorf("%w: %s requested for %s is held by %s", ErrAddressInUse, addr, owner, cur.Owner())
		}
	}
	return p.allocate(w, n, attr)
}

// planRelease plans releasing every address of a handle. It returns what
// was released; an unknown handle releases nothing (release is idempotent).
func (p *plan) planRelease(handle string) ([]netip.Addr, error) {
	prevRead := p.e.readHandles[handle]
	p.e.readHandles[handle] = true // a release always starts from the stored handle
	h, err := p.handle(handle)
	if !prevRead {
		delete(p.e.readHandles, handle)
	}
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for key := range h.h.Blocks {
		cidr, err := netip.ParsePrefix(key)
		if err != nil {
			continue
		}
		w, err := p.block(cidr)
		if err != nil {
			return nil, err
		}
		if w == nil {
			delete(h.h.Blocks, key)
			h.changed = true
			continue
		}
		ords := w.b.ordinalsOf(handle)
		if len(ords) != h.h.Blocks[key] {
			// The stored handle and the cached block disagree: an
			// allocation whose outcome this allocator never learned (a
			// write cut off by an etcd restart) is in the store but not in
			// the cache. Releasing nothing on that copy would drop the
			// handle's record and leak the address.
			if w, err = p.verified(cidr); err != nil {
				return nil, err
			}
			if w == nil {
				delete(h.h.Blocks, key)
				h.changed = true
				continue
			}
			ords = w.b.ordinalsOf(handle)
		}
		for _, n := range ords {
			if _, err := p.release(w, n); err != nil {
				return nil, err
			}
			out = append(out, addrAt(cidr, n))
		}
		if h.h.Blocks[key] != 0 {
			// The handle counted addresses the block no longer has.
			delete(h.h.Blocks, key)
			h.changed = true
		}
	}
	return out, nil
}

// planReleaseIP plans releasing one address. With seq != 0 it releases only
// the allocation with that sequence number, so a late release cannot free
// an address that was handed out again. It reports whether it released.
func (p *plan) planReleaseIP(addr netip.Addr, seq uint64) (Attribute, bool, error) {
	pl := p.snap.poolOf(addr)
	if pl == nil {
		return Attribute{}, false, fmt.Errorf("%w: %s", ErrNotInPool, addr)
	}
	cidr := blockFor(addr, pl.Spec.BlockSize)
	w, err := p.block(cidr)
	if err != nil || w == nil {
		return Attribute{}, false, err
	}
	n := ordinal(cidr, addr)
	cur, ok := w.b.attributeOf(n)
	if !ok || (seq != 0 && cur.Seq != seq) {
		if w, err = p.verified(cidr); err != nil || w == nil {
			return Attribute{}, false, err
		}
		if cur, ok = w.b.attributeOf(n); !ok || (seq != 0 && cur.Seq != seq) {
			return Attribute{}, false, nil
		}
	}
	p.e.readHandles[cur.Handle] = true // decrement the stored handle
	attr, err := p.release(w, n)
	return attr, err == nil, err
}

func (e *engine) who(req *Request) string {
	var b strings.Builder
	if req.Pod != "" {
		fmt.Fprintf(&b, "pod %s/%s ", req.Namespace, req.Pod)
	}
	fmt.Fprintf(&b, "handle %s", req.Handle)
	if e.node != "" {
		fmt.Fprintf(&b, " on node %s", e.node)
	}
	return b.String()
}

func (s *snapshot) poolList() string {
	if len(s.pools) == 0 {
		return "there are no pools"
	}
	parts := make([]string, len(s.pools))
	for i, p := range s.pools {
		parts[i] = p.Name + " " + p.cidr.String()
	}
	return "pools: " + strings.Join(parts, ", ")
}

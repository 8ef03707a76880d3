package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// cachedBlock is a block as last written or read, with its revision. A
// stale block is re-read before use: a write to it failed, so the store may
// hold something else.
type cachedBlock struct {
	b     *Block
	rev   int64
	stale bool
}

// workBlock is a block touched by a plan: a private copy that becomes the
// cached block only if the plan's transaction commits.
type workBlock struct {
	b       *Block
	rev     int64 // 0: the block does not exist yet (create it)
	changed bool
	deleted bool // delete the block (it must be empty)
	// cached: copied from the engine's cache, not read by this plan. A
	// write guarded by its revision verifies it; a refusal must not rest
	// on it (see verified).
	cached bool
}

// workHandle is a handle touched by a plan.
type workHandle struct {
	h       Handle
	rev     int64 // 0: create
	changed bool
}

// plan collects the changes of one batch of operations; commit writes them
// in one transaction guarded by every revision they were planned on.
type plan struct {
	e       *engine
	ctx     context.Context
	snap    *snapshot
	blocks  map[netip.Prefix]*workBlock
	handles map[string]*workHandle
	// extra ops go into the same transaction (affinity changes).
	extra []datastore.Op
}

func (e *engine) newPlan(ctx context.Context, snap *snapshot) *plan {
	return &plan{e: e, ctx: ctx, snap: snap, blocks: map[netip.Prefix]*workBlock{}, handles: map[string]*workHandle{}}
}

// block returns the plan's copy of a block, reading it from the cache or
// the store. It returns nil when the block does not exist.
func (p *plan) block(cidr netip.Prefix) (*workBlock, error) {
	if w, ok := p.blocks[cidr]; ok {
		return w, nil
	}
	if c, ok := p.e.cache[cidr]; ok && !c.stale {
		w := &workBlock{b: c.b.clone(), rev: c.rev, cached: true}
		p.blocks[cidr] = w
		return w, nil
	}
	kv, err := p.e.store.Get(p.ctx, blockKey(cidr))
	if errors.Is(err, datastore.ErrNotFound) {
		delete(p.e.cache, cidr)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	b, err := decodeBlock(kv.Value)
	if err != nil {
		return nil, err
	}
	p.e.adopt(b.clone(), kv.Revision)
	w := &workBlock{b: b, rev: kv.Revision}
	p.blocks[cidr] = w
	return w, nil
}

// verified returns the plan's copy of a block read from the store rather
// than the cache, when the plan has not changed it yet. A decision that
// writes nothing (an address refused as in use, a release that finds the
// address already free) is otherwise never checked against the store: it
// must not rest on a cached copy that another node's write made stale.
//
// When the plan changed the cached copy already (an earlier operation of
// the batch), the copy cannot be re-read without losing that change: the
// cache entry is marked stale and a lost-guard error makes the allocator
// plan the whole batch again from the store. A nil block means the block
// is gone from the store.
func (p *plan) verified(cidr netip.Prefix) (*workBlock, error) {
	w, ok := p.blocks[cidr]
	if !ok || !w.cached {
		return w, nil
	}
	if c, ok := p.e.cache[cidr]; ok {
		c.stale = true
	}
	if w.changed {
		return nil, fmt.Errorf("cached block %s may be stale: %w", cidr, datastore.ErrConflict)
	}
	delete(p.blocks, cidr)
	return p.block(cidr)
}

// addBlock adds a block read elsewhere (a borrowing scan) to the plan.
func (p *plan) addBlock(b *Block, rev int64) *workBlock {
	if w, ok := p.blocks[b.CIDR]; ok {
		return w
	}
	w := &workBlock{b: b, rev: rev}
	p.blocks[b.CIDR] = w
	return w
}

// handle returns the plan's copy of a handle. A handle not yet known is
// assumed new (created by the commit); if it exists after all, the commit
// fails on its guard and the retry reads it.
func (p *plan) handle(name string) (*workHandle, error) {
	if w, ok := p.handles[name]; ok {
		return w, nil
	}
	w := &workHandle{h: Handle{Blocks: map[string]int{}}}
	if p.e.readHandles[name] {
		kv, err := p.e.store.Get(p.ctx, handleKey(name))
		switch {
		case err == nil:
			if w.h, err = decodeHandle(kv.Value); err != nil {
				return nil, fmt.Errorf("handle %s: %w", name, err)
			}
			w.rev = kv.Revision
		case !errors.Is(err, datastore.ErrNotFound):
			return nil, err
		}
	}
	p.handles[name] = w
	return w, nil
}

// allocate hands out ordinal n of w to attr.
func (p *plan) allocate(w *workBlock, n int, attr Attribute) (Assignment, error) {
	seq, err := w.b.allocate(n, attr)
	if err != nil {
		return Assignment{}, err
	}
	w.changed = true
	h, err := p.handle(attr.Handle)
	if err != nil {
		return Assignment{}, err
	}
	h.h.Blocks[w.b.CIDR.String()]++
	if h.h.Node == "" {
		h.h.Node = attr.Node // the index NodeHandles reads
	}
	h.changed = true
	pl := p.snap.poolOf(w.b.CIDR.Addr())
	a := Assignment{Addr: addrAt(w.b.CIDR, n), Block: w.b.CIDR, Seq: seq, Borrowed: w.b.Affinity != p.e.node}
	if pl != nil {
		a.Pool = pl.Name
	}
	return a, nil
}

// release frees ordinal n of w and updates its handle.
func (p *plan) release(w *workBlock, n int) (Attribute, error) {
	attr, ok := w.b.release(n)
	if !ok {
		return Attribute{}, nil
	}
	w.changed = true
	h, err := p.handle(attr.Handle)
	if err != nil {
		return Attribute{}, err
	}
	key := w.b.CIDR.String()
	if h.h.Blocks[key]--; h.h.Blocks[key] <= 0 {
		delete(h.h.Blocks, key)
	}
	h.changed = true
	return attr, nil
}

// ops turns the plan into guarded datastore operations.
func (p *plan) ops() ([]datastore.Op, error) {
	var ops []datastore.Op
	cidrs := make([]netip.Prefix, 0, len(p.blocks))
	for c, w := range p.blocks {
		if w.changed {
			cidrs = append(cidrs, c)
		}
	}
	slices.SortFunc(cidrs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	for _, c := range cidrs {
		w := p.blocks[c]
		if w.deleted {
			if w.rev != 0 {
				ops = append(ops, datastore.OpDelete(blockKey(c), w.rev))
			}
			continue
		}
		v, err := json.Marshal(w.b)
		if err != nil {
			return nil, err
		}
		if w.rev == 0 {
			ops = append(ops, datastore.OpCreate(blockKey(c), v))
		} else {
			ops = append(ops, datastore.OpUpdate(blockKey(c), v, w.rev))
		}
	}
	names := make([]string, 0, len(p.handles))
	for n, w := range p.handles {
		if w.changed {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		w := p.handles[n]
		switch {
		case len(w.h.Blocks) == 0 && w.rev != 0:
			ops = append(ops, datastore.OpDelete(handleKey(n), w.rev))
		case len(w.h.Blocks) == 0:
			// Created and emptied in the same plan: nothing to store.
		case w.rev == 0:
			v, _ := json.Marshal(w.h)
			ops = append(ops, datastore.OpCreate(handleKey(n), v))
		default:
			v, _ := json.Marshal(w.h)
			ops = append(ops, datastore.OpUpdate(handleKey(n), v, w.rev))
		}
	}
	return append(ops, p.extra...), nil
}

// commit writes the plan. On success the engine's cache takes the new
// blocks. On failure (a lost guard, or an unknown outcome) the touched
// blocks are marked stale, so the next plan reads them again.
func (p *plan) commit() error {
	ops, err := p.ops()
	if err != nil || len(ops) == 0 {
		return err
	}
	rev, err := writeTogether(p.ctx, p.e.store, txnAllocation, ops...)
	if err != nil {
		for c, w := range p.blocks {
			if cb, ok := p.e.cache[c]; ok && w.changed {
				cb.stale = true
			}
		}
		if errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrExists) {
			for n, w := range p.handles {
				if w.changed {
					p.e.readHandles[n] = true
				}
			}
		}
		return err
	}
	for c, w := range p.blocks {
		switch {
		case w.deleted:
			delete(p.e.cache, c)
		case w.changed:
			p.e.adopt(w.b, rev)
		}
	}
	for n, w := range p.handles {
		if w.changed {
			delete(p.e.readHandles, n)
		}
	}
	return nil
}

// attrFor builds the owner attribute of a request.
func attrFor(req *Request, node string) Attribute {
	use := req.Use
	if use == "" {
		use = api.UseWorkload
	}
	return Attribute{Handle: req.Handle, Namespace: req.Namespace, Pod: req.Pod, Node: node, Use: use}
}

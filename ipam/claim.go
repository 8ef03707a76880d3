package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strings"

	"github.com/rhizome-net/rhizome/datastore"
)

// errPoolFull: every block of the pool is claimed.
var errPoolFull = errors.New("every block of the pool is claimed")

// blockAt is the idx-th block of pool p.
func blockAt(p *pool, idx u128) netip.Prefix {
	host := uint(addrBits(p.cidr.Addr()) - p.Spec.BlockSize)
	a := u128ToAddr(addrToU128(p.cidr.Addr()).add(idx.shl(host)), p.cidr.Addr().Is4())
	return netip.PrefixFrom(a, p.Spec.BlockSize)
}

// probeOrder yields block indexes of pool p in a pseudo-random order seeded
// by the node name: a full-period walk start, start+step, start+2·step, …
// modulo the (power of two) block count, with an odd step. Different nodes
// try different blocks first, so claims rarely collide.
func probeOrder(p *pool, node string) (start, step u128, bitsN uint) {
	bitsN = uint(p.Spec.BlockSize - p.cidr.Bits())
	h := fnv.New128a()
	h.Write([]byte(node + "\x00" + p.Name))
	sum := h.Sum(nil)
	start = u128{beUint64(sum[:8]), beUint64(sum[8:])}.mask(bitsN)
	h.Write([]byte("step"))
	sum = h.Sum(nil)
	step = u128{beUint64(sum[:8]), beUint64(sum[8:]) | 1}.mask(bitsN)
	if bitsN == 0 {
		step = u128{}
	}
	return start, step, bitsN
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, c := range b {
		v = v<<8 | uint64(c)
	}
	return v
}

// claim makes a block of pool pl affine to this node and caches it. With a
// valid want it claims that block; otherwise the first free block in the
// node's probe order. The claim is two-phase: a pending affinity, then the
// block created together with the affinity's confirmation in one
// transaction. A lost race (the block appeared meanwhile) undoes the
// pending affinity and tries the next block.
func (e *engine) claim(ctx context.Context, snap *snapshot, pl *pool, want netip.Prefix) (netip.Prefix, error) {
	if e.node == "" {
		return netip.Prefix{}, fmt.Errorf("claim a block of pool %s: no node given", pl.Name)
	}
	kvs, _, err := e.store.List(ctx, blockPrefix)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("claim a block of pool %s for node %s: %w", pl.Name, e.node, err)
	}
	taken := make(map[netip.Prefix]bool, len(kvs))
	for _, kv := range kvs {
		if c, err := parseBlockKeyName(strings.TrimPrefix(kv.Key, blockPrefix)); err == nil {
			taken[c] = true
		}
	}
	try := func(cidr netip.Prefix) (bool, error) {
		ok, err := e.claimBlock(ctx, cidr)
		if err != nil {
			return false, fmt.Errorf("claim block %s of pool %s for node %s: %w", cidr, pl.Name, e.node, err)
		}
		return ok, nil
	}
	if want.IsValid() {
		if taken[want] {
			return netip.Prefix{}, errPoolFull
		}
		if ok, err := try(want); err != nil || !ok {
			return netip.Prefix{}, errors.Join(err, errPoolFull)
		}
		return want, nil
	}
	start, step, bitsN := probeOrder(pl, e.node)
	// A walk of len(taken)+1 distinct indexes reaches a free block if there
	// is one; blocks that hold only reserved addresses are passed over.
	limit := u128{0, uint64(len(taken)) + 1 + 64}
	total := u128{0, 1}.shl(bitsN)
	if bitsN >= 128 {
		total = u128{^uint64(0), ^uint64(0)}
	}
	for i := (u128{}); i.less(limit) && i.less(total); i = i.add(u128{0, 1}) {
		cidr := blockAt(pl, start.add(i.mul(step)).mask(bitsN))
		if taken[cidr] || snap.allReserved(pl, cidr) {
			continue
		}
		ok, err := try(cidr)
		if err != nil {
			return netip.Prefix{}, err
		}
		if ok {
			return cidr, nil
		}
		taken[cidr] = true
	}
	return netip.Prefix{}, errPoolFull
}

// claimBlock claims one block. It reports false when another node got the
// block first.
func (e *engine) claimBlock(ctx context.Context, cidr netip.Prefix) (bool, error) {
	akey := affinityKey(e.node, cidr)
	pending, _ := json.Marshal(Affinity{State: AffinityPending})
	arev, err := e.store.Create(ctx, akey, pending)
	if errors.Is(err, datastore.ErrExists) {
		// Left by an earlier attempt that died: continue from it.
		kv, gerr := e.store.Get(ctx, akey)
		if gerr != nil {
			return false, gerr
		}
		arev, err = kv.Revision, nil
	}
	if err != nil {
		return false, err
	}
	b := newBlock(cidr, e.node)
	bv, _ := json.Marshal(b)
	confirmed, _ := json.Marshal(Affinity{State: AffinityConfirmed})
	rev, err := writeTogether(ctx, e.store, txnClaim, datastore.OpCreate(blockKey(cidr), bv), datastore.OpUpdate(akey, confirmed, arev))
	if errors.Is(err, datastore.ErrExists) || errors.Is(err, datastore.ErrConflict) {
		// Lost the race for the block (or our pending affinity changed):
		// undo the pending affinity; a checker repairs it if this fails.
		_ = e.store.Delete(ctx, akey, arev)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	e.adopt(b, rev)
	return true, nil
}

// allReserved reports whether no address of block cidr can be handed out
// automatically. Only small blocks are checked one by one; a larger block
// always has a usable address unless a reservation covers it whole.
func (s *snapshot) allReserved(pl *pool, cidr netip.Prefix) bool {
	n := blockLen(cidr)
	if n > 64 {
		for _, r := range s.reserved {
			if r.contains(cidr.Addr()) && r.contains(lastAddr(cidr)) {
				return true
			}
		}
		return false
	}
	for i := range n {
		if !s.isReserved(pl, addrAt(cidr, i)) {
			return false
		}
	}
	return true
}

// releaseBlock gives up an empty affine block: the affinity goes to
// pendingDeletion, then block and affinity are deleted in one transaction
// guarded by the block's revision (so it is still empty). It reports false
// when the block changed meanwhile.
func (e *engine) releaseBlock(ctx context.Context, cidr netip.Prefix, rev int64) (bool, error) {
	akey := affinityKey(e.node, cidr)
	kv, err := e.store.Get(ctx, akey)
	if err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return false, err
	}
	ops := []datastore.Op{datastore.OpDelete(blockKey(cidr), rev)}
	if err == nil {
		pd, _ := json.Marshal(Affinity{State: AffinityPendingDeletion})
		arev, err := e.store.Update(ctx, akey, pd, kv.Revision)
		if err != nil {
			return false, err
		}
		ops = append(ops, datastore.OpDelete(akey, arev))
	}
	if _, err := writeTogether(ctx, e.store, txnRelease, ops...); err != nil {
		if errors.Is(err, datastore.ErrConflict) {
			// Someone allocated meanwhile: keep the block, confirm again.
			if kv, gerr := e.store.Get(ctx, akey); gerr == nil {
				c, _ := json.Marshal(Affinity{State: AffinityConfirmed})
				_, _ = e.store.Update(ctx, akey, c, kv.Revision)
			}
			if cb, ok := e.cache[cidr]; ok {
				cb.stale = true
			}
			return false, nil
		}
		return false, err
	}
	delete(e.cache, cidr)
	return true, nil
}

// load reads this node's affine blocks into the cache and finishes claims
// that an earlier run left half done: a pending affinity whose block exists
// with this node's affinity is confirmed; one without a block is removed.
func (e *engine) load(ctx context.Context) error {
	kvs, _, err := e.store.List(ctx, affinityPrefix+e.node+"/")
	if err != nil {
		return fmt.Errorf("read affinities of node %s: %w", e.node, err)
	}
	for _, kv := range kvs {
		cidr, err := parseBlockKeyName(kv.Key[strings.LastIndexByte(kv.Key, '/')+1:])
		if err != nil {
			continue
		}
		var a Affinity
		_ = json.Unmarshal(kv.Value, &a)
		bkv, err := e.store.Get(ctx, blockKey(cidr))
		switch {
		case errors.Is(err, datastore.ErrNotFound):
			_ = e.store.Delete(ctx, kv.Key, kv.Revision)
			continue
		case err != nil:
			return err
		}
		b, err := decodeBlock(bkv.Value)
		if err != nil {
			return err
		}
		if b.Affinity != e.node {
			_ = e.store.Delete(ctx, kv.Key, kv.Revision)
			continue
		}
		if a.State != AffinityConfirmed {
			c, _ := json.Marshal(Affinity{State: AffinityConfirmed})
			if _, err := e.store.Update(ctx, kv.Key, c, kv.Revision); err != nil {
				return err
			}
		}
		e.adopt(b, bkv.Revision)
	}
	return nil
}

package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/rhizome-net/rhizome/datastore"
)

// runOnce plans with fn on a fresh operator engine (no node, no cache) and
// commits, retrying when a guard was lost to a concurrent writer.
func runOnce(ctx context.Context, store datastore.Store, node string, fn func(p *plan) error) error {
	e := newEngine(store, node, false)
	for attempt := 0; ; attempt++ {
		snap, err := loadSnapshot(ctx, datastore.NewResources(store), "")
		if err != nil {
			return err
		}
		p := e.newPlan(ctx, snap)
		if err := fn(p); err != nil {
			return err
		}
		err = p.commit()
		if err == nil || !retryable(err) || attempt >= 8 {
			return err
		}
	}
}

// Released is one address an operator release freed.
type Released struct {
	Addr  netip.Addr
	Owner Attribute
}

// ReleaseIPs frees the given addresses, whoever holds them (an operator
// action: `rhizomectl ipam release`). Addresses that are not allocated are
// skipped. With seqs (same length as addrs, 0 = any) an address is freed
// only if its allocation still has that sequence number.
func ReleaseIPs(ctx context.Context, store datastore.Store, addrs []netip.Addr, seqs []uint64) ([]Released, error) {
	var out []Released
	err := runOnce(ctx, store, "", func(p *plan) error {
		out = out[:0]
		for i, a := range addrs {
			var seq uint64
			if i < len(seqs) {
				seq = seqs[i]
			}
			attr, ok, err := p.planReleaseIP(a, seq)
			if err != nil {
				return err
			}
			if ok {
				out = append(out, Released{Addr: a, Owner: attr})
			}
		}
		return nil
	})
	return out, err
}

// ReleaseHandle frees every address of handle without a node's allocator
// (operator and controller use).
func ReleaseHandle(ctx context.Context, store datastore.Store, handle string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := runOnce(ctx, store, "", func(p *plan) error {
		var err error
		out, err = p.planRelease(handle)
		return err
	})
	return out, err
}

// ReleaseNodeAffinities gives up the blocks of a node that is gone. For
// each block, in one transaction: the addresses the node held are freed
// with their handles, the affinity record is deleted, and the block is
// deleted when empty or else (it still holds addresses other nodes
// borrowed) kept without affinity. It returns the blocks it deleted and
// those it kept.
func ReleaseNodeAffinities(ctx context.Context, store datastore.Store, node string) (deleted, kept []netip.Prefix, err error) {
	kvs, _, err := store.List(ctx, affinityPrefix+node+"/")
	if err != nil {
		return nil, nil, fmt.Errorf("read affinities of node %s: %w", node, err)
	}
	for _, kv := range kvs {
		cidr, err := parseBlockKeyName(kv.Key[strings.LastIndexByte(kv.Key, '/')+1:])
		if err != nil {
			continue
		}
		var gone bool
		err = runOnce(ctx, store, node, func(p *plan) error {
			akv, err := store.Get(ctx, kv.Key)
			if errors.Is(err, datastore.ErrNotFound) {
				return nil // released meanwhile
			}
			if err != nil {
				return err
			}
			p.extra = []datastore.Op{datastore.OpDelete(kv.Key, akv.Revision)}
			w, err := p.block(cidr)
			if err != nil || w == nil {
				gone = true
				return err
			}
			for n := range w.b.Allocations {
				if attr, ok := w.b.attributeOf(n); ok && attr.Node == node {
					p.e.readHandles[attr.Handle] = true
					if _, err := p.release(w, n); err != nil {
						return err
					}
				}
			}
			if w.b.Affinity == node {
				w.b.Affinity = ""
				w.changed = true
			}
			gone = w.b.empty()
			w.deleted = gone
			return nil
		})
		if err != nil {
			return deleted, kept, fmt.Errorf("release block %s of node %s: %w", cidr, node, err)
		}
		if gone {
			deleted = append(deleted, cidr)
		} else {
			kept = append(kept, cidr)
		}
	}
	return deleted, kept, nil
}

// WriteConfig stores the IPAM configuration.
func WriteConfig(ctx context.Context, store datastore.Store, c Config) error {
	if c.MaxBlocksPerNode < 0 {
		return fmt.Errorf("ipam config: maxBlocksPerNode %d must be 0 (no limit) or positive", c.MaxBlocksPerNode)
	}
	v, _ := json.Marshal(c)
	_, err := store.Txn(ctx, datastore.OpPut(configKey, v))
	return err
}

// PatchConfig changes the stored IPAM configuration with edit, which gets
// the current configuration as JSON (the defaults when none is stored) and
// returns the new JSON. The result is decoded strictly and validated, then
// written guarded by the revision it was read at; when another writer got
// in between, it reads and edits again (up to 5 times). An error from edit
// or from the validation is returned as it is.
func PatchConfig(ctx context.Context, store datastore.Store, edit func(current []byte) ([]byte, error)) (Config, error) {
	for attempt := 0; ; attempt++ {
		kv, err := store.Get(ctx, configKey)
		doc := kv.Value
		if errors.Is(err, datastore.ErrNotFound) {
			doc, _ = json.Marshal(DefaultConfig())
		} else if err != nil {
			return Config{}, fmt.Errorf("read ipam config: %w", err)
		}
		edited, err := edit(doc)
		if err != nil {
			return Config{}, err
		}
		cfg, err := DecodeConfig(edited)
		if err != nil {
			return Config{}, err
		}
		value, _ := json.Marshal(cfg)
		op := datastore.OpUpdate(configKey, value, kv.Revision)
		if kv.Revision == 0 {
			op = datastore.OpCreate(configKey, value)
		}
		_, err = store.Txn(ctx, op)
		if (errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrExists)) && attempt < 5 {
			continue
		}
		if err != nil {
			return Config{}, fmt.Errorf("write ipam config: %w", err)
		}
		return cfg, nil
	}
}

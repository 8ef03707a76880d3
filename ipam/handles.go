package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/rhizome-net/rhizome/datastore"
)

// NodeHandles lists, sorted, the handles of network ("<network>.…") whose
// addresses are allocated to node. It reads the handle records of that
// network only, one prefix listing: a record names its node, so no block is
// read, whatever the size of the cluster. A record written before records
// named their node is resolved by reading the blocks it lists.
//
// An address whose handle has no record at all is not found here; Check
// reports such handles and Repair writes their records.
func NodeHandles(ctx context.Context, store datastore.Reader, node, network string) ([]string, error) {
	if network == "" || strings.ContainsAny(network, "/ \t\n") {
		return nil, fmt.Errorf("%w: network %q must be non-empty, without '/' or spaces", ErrBadRequest, network)
	}
	kvs, _, err := store.List(ctx, handleKey(network+"."))
	if err != nil {
		return nil, fmt.Errorf("read IPAM handles of network %s: %w", network, err)
	}
	var out []string
	legacy := map[netip.Prefix]*Block{} // blocks read for records without a node, by CIDR
	for _, kv := range kvs {
		name := strings.TrimPrefix(kv.Key, handlePrefix)
		h, err := decodeHandle(kv.Value)
		if err != nil {
			continue // Check reports it
		}
		switch h.Node {
		case node:
			out = append(out, name)
		case "":
			held, err := heldBy(ctx, store, legacy, name, h, node)
			if err != nil {
				return nil, err
			}
			if held {
				out = append(out, name)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// heldBy says whether one of the blocks a handle record lists holds an
// address of the handle allocated to node. blocks caches what was read.
func heldBy(ctx context.Context, store datastore.Reader, blocks map[netip.Prefix]*Block, name string, h Handle, node string) (bool, error) {
	for key := range h.Blocks {
		cidr, err := netip.ParsePrefix(key)
		if err != nil {
			continue
		}
		b, ok := blocks[cidr]
		if !ok {
			kv, err := store.Get(ctx, blockKey(cidr))
			switch {
			case errors.Is(err, datastore.ErrNotFound):
			case err != nil:
				return false, fmt.Errorf("read block %s of handle %s: %w", cidr, name, err)
			default:
				if b, err = decodeBlock(kv.Value); err != nil || b.verify() != nil {
					b = nil // Check reports it
				}
			}
			blocks[cidr] = b
		}
		if b == nil {
			continue
		}
		for _, n := range b.ordinalsOf(name) {
			if a, ok := b.attributeOf(n); ok && a.Node == node {
				return true, nil
			}
		}
	}
	return false, nil
}

// importBatch is how many blocks ImportBlocks writes per transaction (two
// operations each; etcd allows 128 per transaction).
const importBatch = 50

// ImportBlocks writes blocks that do not exist yet, each with a confirmed
// affinity record when it is affine to a node, importBatch blocks per
// transaction: for seeding benchmarks and tests with a full cluster, or
// migrating blocks from another IPAM. It does not write handle records
// (there may be hundreds of thousands): Check reports them missing and
// Repair writes them. A block that exists already fails its transaction
// with ErrExists.
func ImportBlocks(ctx context.Context, store datastore.Store, blocks []*Block) error {
	confirmed, _ := json.Marshal(Affinity{State: AffinityConfirmed})
	for len(blocks) > 0 {
		n := min(len(blocks), importBatch)
		var ops []datastore.Op
		for _, b := range blocks[:n] {
			if err := b.verify(); err != nil {
				return fmt.Errorf("import block %s: %w", b.CIDR, err)
			}
			v, err := json.Marshal(b)
			if err != nil {
				return fmt.Errorf("import block %s: %w", b.CIDR, err)
			}
			ops = append(ops, datastore.OpCreate(blockKey(b.CIDR), v))
			if b.Affinity != "" {
				ops = append(ops, datastore.OpCreate(affinityKey(b.Affinity, b.CIDR), confirmed))
			}
		}
		if _, err := writeTogether(ctx, store, txnImport, ops...); err != nil {
			return fmt.Errorf("import blocks %s to %s: %w", blocks[0].CIDR, blocks[n-1].CIDR, err)
		}
		blocks = blocks[n:]
	}
	return nil
}

package ipam

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/rhizome-net/rhizome/datastore"
)

// This file is how other packages read IPAM state: decoded, never as keys
// and JSON. NodeWatcher follows what one node's routing needs; ListBlocks
// reads every block once.

// NodeView is one consistent picture of what a node's routing needs from
// IPAM.
type NodeView struct {
	// OwnBlocks are the node's confirmed affine blocks, in address order.
	OwnBlocks []netip.Prefix
	// Hosted are the node's addresses in blocks that are not affine to it
	// (borrowed addresses, or fixed addresses outside its blocks), in
	// address order.
	Hosted []netip.Addr
	// Handles are the node's addresses by allocation handle, each list in
	// address order.
	Handles map[string][]netip.Addr
	// Affinities are every block's affine node, this node's and the
	// others' (blocks affine to no node are absent): what routing that is
	// computed from the datastore (VXLAN) needs.
	Affinities map[netip.Prefix]string
}

// NodeWatcher keeps a NodeView of one node up to date by following the
// blocks and the node's affinities in the datastore. A relist after a
// compaction swaps in a complete new state: View never returns a partial
// one.
type NodeWatcher struct {
	node     string
	onChange func()
	synced   chan struct{}
	done     chan struct{}

	mu sync.Mutex
	// blocks are every block, by CIDR: a node's addresses may sit in any.
	blocks map[netip.Prefix]*Block
	// confirmed are the blocks the node's affinity record confirms.
	confirmed map[netip.Prefix]bool
}

// WatchOption changes how WatchNode follows the datastore.
type WatchOption func(*watchOptions)

type watchOptions struct{ log *slog.Logger }

// WatchLogger is where the watcher reports datastore trouble (default
// slog.Default()).
func WatchLogger(l *slog.Logger) WatchOption { return func(o *watchOptions) { o.log = l } }

// WatchNode starts following node's IPAM state until ctx ends. onChange
// (which may be nil) is called after every change that concerns the node:
// one of its blocks or affinities, or an address it holds, before or after
// the change; after a change of any block's affine node; and after every
// full listing. Synced is closed once both the
// blocks and the affinities have been listed.
func WatchNode(ctx context.Context, store datastore.ListWatcher, node string, onChange func(), opts ...WatchOption) *NodeWatcher {
	o := watchOptions{log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if onChange == nil {
		onChange = func() {}
	}
	w := &NodeWatcher{node: node, onChange: onChange, synced: make(chan struct{}), done: make(chan struct{}),
		blocks: map[netip.Prefix]*Block{}, confirmed: map[netip.Prefix]bool{}}
	var done sync.WaitGroup
	var pending atomic.Int32 // follows not listed yet
	pending.Store(2)
	for _, f := range []struct {
		prefix string
		h      datastore.Handler
	}{
		{blockPrefix, blockFollower{w}},
		{affinityPrefix + node + "/", affinityFollower{w}},
	} {
		done.Add(1)
		go func() {
			defer done.Done()
			datastore.Follow(ctx, store, f.prefix, f.h, datastore.OnChange(onChange),
				datastore.OnSynced(func() {
					if pending.Add(-1) == 0 {
						close(w.synced)
					}
				}), datastore.FollowLogger(o.log))
		}()
	}
	go func() { done.Wait(); close(w.done) }()
	return w
}

// Synced is closed once the watcher has read the whole state once.
func (w *NodeWatcher) Synced() <-chan struct{} { return w.synced }

// Done is closed when the watcher has stopped (its context ended).
func (w *NodeWatcher) Done() <-chan struct{} { return w.done }

// View returns the node's current IPAM state.
func (w *NodeWatcher) View() NodeView {
	w.mu.Lock()
	defer w.mu.Unlock()
	return nodeView(w.node, w.blocks, w.confirmed)
}

// nodeView computes node's view of blocks, given the blocks its affinity
// records confirm.
func nodeView(node string, blocks map[netip.Prefix]*Block, confirmed map[netip.Prefix]bool) NodeView {
	v := NodeView{Handles: map[string][]netip.Addr{}, Affinities: map[netip.Prefix]string{}}
	cidrs := slices.SortedFunc(maps.Keys(blocks), comparePrefix)
	for _, c := range cidrs {
		b := blocks[c]
		if b.Affinity != "" {
			v.Affinities[c] = b.Affinity
		}
		own := b.Affinity == node
		if own && confirmed[c] {
			v.OwnBlocks = append(v.OwnBlocks, c)
		}
		b.Allocated(func(a netip.Addr, attr Attribute) {
			if attr.Node != node {
				return
			}
			v.Handles[attr.Handle] = append(v.Handles[attr.Handle], a)
			if !own {
				v.Hosted = append(v.Hosted, a)
			}
		})
	}
	for _, addrs := range v.Handles {
		slices.SortFunc(addrs, netip.Addr.Compare)
	}
	slices.SortFunc(v.Hosted, netip.Addr.Compare)
	return v
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// concerns says whether block b (nil: none) matters to node: it is affine
// to the node or holds one of its addresses.
func concerns(node string, b *Block) bool {
	if b == nil {
		return false
	}
	if b.Affinity == node {
		return true
	}
	for _, a := range b.Attributes {
		if a.Node == node {
			return true
		}
	}
	return false
}

// blockFollower applies the blocks to a NodeWatcher.
type blockFollower struct{ w *NodeWatcher }

func (f blockFollower) Replace(kvs []datastore.KV) {
	blocks := make(map[netip.Prefix]*Block, len(kvs))
	for _, kv := range kvs {
		if b, ok := decodeBlockKV(kv); ok {
			blocks[b.CIDR] = b
		}
	}
	f.w.mu.Lock()
	f.w.blocks = blocks
	f.w.mu.Unlock()
}

func (f blockFollower) Apply(ev datastore.Event) bool {
	cidr, err := parseBlockKeyName(strings.TrimPrefix(ev.KV.Key, blockPrefix))
	if err != nil {
		return false
	}
	var b *Block
	if ev.Type == datastore.EventPut {
		var ok bool
		if b, ok = decodeBlockKV(ev.KV); !ok {
			return false // the checker reports it; keep what was known
		}
	}
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	old := f.w.blocks[cidr]
	if b == nil {
		delete(f.w.blocks, cidr)
	} else {
		f.w.blocks[cidr] = b
	}
	return concerns(f.w.node, old) || concerns(f.w.node, b) || affinity(old) != affinity(b)
}

// affinity is the node block b (nil: none) is affine to.
func affinity(b *Block) string {
	if b == nil {
		return ""
	}
	return b.Affinity
}

// decodeBlockKV decodes a stored block whose key and CIDR agree.
func decodeBlockKV(kv datastore.KV) (*Block, bool) {
	cidr, err := parseBlockKeyName(strings.TrimPrefix(kv.Key, blockPrefix))
	if err != nil {
		return nil, false
	}
	b, err := decodeBlock(kv.Value)
	if err != nil || b.CIDR != cidr {
		return nil, false
	}
	return b, true
}

// affinityFollower applies one node's affinity records to a NodeWatcher.
type affinityFollower struct{ w *NodeWatcher }

func (f affinityFollower) Replace(kvs []datastore.KV) {
	confirmed := map[netip.Prefix]bool{}
	for _, kv := range kvs {
		if c, ok := f.confirmed(kv); ok {
			confirmed[c] = true
		}
	}
	f.w.mu.Lock()
	f.w.confirmed = confirmed
	f.w.mu.Unlock()
}

func (f affinityFollower) Apply(ev datastore.Event) bool {
	cidr, err := parseBlockKeyName(ev.KV.Key[strings.LastIndexByte(ev.KV.Key, '/')+1:])
	if err != nil {
		return false
	}
	now := false
	if ev.Type == datastore.EventPut {
		_, now = f.confirmed(ev.KV)
	}
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	was := f.w.confirmed[cidr]
	if now {
		f.w.confirmed[cidr] = true
	} else {
		delete(f.w.confirmed, cidr)
	}
	return was != now
}

// confirmed returns the block of an affinity record in state confirmed.
func (f affinityFollower) confirmed(kv datastore.KV) (netip.Prefix, bool) {
	cidr, err := parseBlockKeyName(kv.Key[strings.LastIndexByte(kv.Key, '/')+1:])
	if err != nil {
		return netip.Prefix{}, false
	}
	a, err := decodeAffinity(kv.Value)
	if err != nil || a.State != AffinityConfirmed {
		return netip.Prefix{}, false
	}
	return cidr, true
}

// ListBlocks reads every block, in address order. A stored block that
// cannot be decoded, or whose key names another block, is an error (Check
// reports every such block; ListBlocks stops at the first).
func ListBlocks(ctx context.Context, store datastore.Reader) ([]*Block, error) {
	kvs, _, err := store.List(ctx, blockPrefix)
	if err != nil {
		return nil, fmt.Errorf("read IPAM blocks: %w", err)
	}
	out := make([]*Block, 0, len(kvs))
	for _, kv := range kvs {
		b, ok := decodeBlockKV(kv)
		if !ok {
			return nil, fmt.Errorf("read IPAM blocks: the record at %s is not a block of that name (rhizomectl ipam check)", kv.Key)
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b *Block) int { return comparePrefix(a.CIDR, b.CIDR) })
	return out, nil
}

package netstate

import (
	"encoding/json"
	"net/netip"
	"slices"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// This file is the one place outside ipam that decodes IPAM records (the
// blocks, and this node's affinities); an ipam read view replaces it.

var blockPrefix = ipam.BlockPrefix

func affinityPrefix(self string) string { return ipam.AffinityPrefix + self + "/" }

// ipamState is every block and this node's affinities, by key.
type ipamState struct {
	blocks   map[string]*ipam.Block
	affinity map[string]ipam.AffinityState
}

func newIPAMState() ipamState {
	return ipamState{blocks: map[string]*ipam.Block{}, affinity: map[string]ipam.AffinityState{}}
}

// fill adds this node's blocks and addresses to in. Call it with the
// State's lock held.
func (st *ipamState) fill(self string, in *Snapshot) {
	keys := make([]string, 0, len(st.blocks))
	for k := range st.blocks {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b := st.blocks[k]
		own := b.Affinity == self
		if own && st.affinity[ipam.AffinityKey(self, b.CIDR)] == ipam.AffinityConfirmed {
			in.OwnBlocks = append(in.OwnBlocks, b.CIDR)
		}
		b.Allocated(func(a netip.Addr, attr ipam.Attribute) {
			if attr.Node != self {
				return
			}
			in.Handles[attr.Handle] = append(in.Handles[attr.Handle], a)
			if !own {
				in.Hosted = append(in.Hosted, a)
			}
		})
	}
}

// blockMirror keeps every block; it shares State's lock.
type blockMirror struct{ s *State }

func (m blockMirror) replace(kvs []datastore.KV) {
	blocks := make(map[string]*ipam.Block, len(kvs))
	for _, kv := range kvs {
		b := &ipam.Block{}
		if json.Unmarshal(kv.Value, b) == nil {
			blocks[kv.Key] = b
		}
	}
	m.s.mu.Lock()
	m.s.ipam.blocks = blocks
	m.s.mu.Unlock()
}

// put stores the block; it matters when the block is this node's, or
// holds an address of this node, before or after.
func (m blockMirror) put(kv datastore.KV) bool {
	b := &ipam.Block{}
	if json.Unmarshal(kv.Value, b) != nil {
		return false
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	old := m.s.ipam.blocks[kv.Key]
	m.s.ipam.blocks[kv.Key] = b
	return concerns(m.s.self, old) || concerns(m.s.self, b)
}

func (m blockMirror) del(key string) bool {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	old := m.s.ipam.blocks[key]
	delete(m.s.ipam.blocks, key)
	return concerns(m.s.self, old)
}

func concerns(self string, b *ipam.Block) bool {
	if b == nil {
		return false
	}
	if b.Affinity == self {
		return true
	}
	for _, a := range b.Attributes {
		if a.Node == self {
			return true
		}
	}
	return false
}

// affinityMirror keeps this node's affinity states; it shares State's lock.
type affinityMirror struct{ s *State }

func (m affinityMirror) replace(kvs []datastore.KV) {
	aff := make(map[string]ipam.AffinityState, len(kvs))
	for _, kv := range kvs {
		var a ipam.Affinity
		if json.Unmarshal(kv.Value, &a) == nil {
			aff[kv.Key] = a.State
		}
	}
	m.s.mu.Lock()
	m.s.ipam.affinity = aff
	m.s.mu.Unlock()
}

func (m affinityMirror) put(kv datastore.KV) bool {
	var a ipam.Affinity
	if json.Unmarshal(kv.Value, &a) != nil {
		return false
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	old, had := m.s.ipam.affinity[kv.Key]
	m.s.ipam.affinity[kv.Key] = a.State
	return !had || old != a.State
}

func (m affinityMirror) del(key string) bool {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	_, had := m.s.ipam.affinity[key]
	delete(m.s.ipam.affinity, key)
	return had
}

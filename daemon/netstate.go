package daemon

import (
	"encoding/json"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// netState mirrors what the node's routing depends on: the Nodes, BGP
// configurations, BGP peers and pools, every IPAM block, and this node's
// affinities. Three follows fill it; the network loop reads snapshots.
type netState struct {
	self string

	mu       sync.Mutex
	nodes    map[string]*api.Node
	configs  map[string]*api.BGPConfiguration
	peers    map[string]*api.BGPPeer
	pools    map[string]*api.IPPool
	blocks   map[string]*ipam.Block
	affinity map[string]ipam.AffinityState // this node's, by key
}

func newNetState(self string) *netState {
	s := &netState{self: self}
	s.resources().reset()
	s.blockMirror().reset()
	s.affinityMirror().reset()
	return s
}

// routingInput is one consistent copy of the state.
type routingInput struct {
	self    *api.Node // nil until the node is registered
	nodes   []api.Node
	configs []api.BGPConfiguration
	peers   []api.BGPPeer
	pools   []*api.IPPool
	// ownBlocks are the confirmed affine blocks of this node.
	ownBlocks []netip.Prefix
	// hosted are this node's addresses in blocks of other nodes
	// (borrowed, or fixed addresses).
	hosted []netip.Addr
	// handles are this node's addresses by allocation handle.
	handles map[string][]netip.Addr
}

func (s *netState) snapshot() routingInput {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := routingInput{handles: map[string][]netip.Addr{}}
	for _, k := range slices.Sorted(maps.Keys(s.nodes)) {
		in.nodes = append(in.nodes, *s.nodes[k])
		if s.nodes[k].Name == s.self {
			in.self = s.nodes[k]
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.configs)) {
		in.configs = append(in.configs, *s.configs[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.peers)) {
		in.peers = append(in.peers, *s.peers[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.pools)) {
		in.pools = append(in.pools, s.pools[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.blocks)) {
		b := s.blocks[k]
		own := b.Affinity == s.self
		if own && s.affinity[ipam.AffinityKey(s.self, b.CIDR)] == ipam.AffinityConfirmed {
			in.ownBlocks = append(in.ownBlocks, b.CIDR)
		}
		b.Allocated(func(a netip.Addr, attr ipam.Attribute) {
			if attr.Node != s.self {
				return
			}
			in.handles[attr.Handle] = append(in.handles[attr.Handle], a)
			if !own {
				in.hosted = append(in.hosted, a)
			}
		})
	}
	return in
}

// The three mirrors share netState's lock.

type resourceMirror struct{ s *netState }
type blockMirror struct{ s *netState }
type affinityMirror struct{ s *netState }

func (s *netState) resources() mirror      { return resourceMirror{s} }
func (s *netState) blockMirror() mirror    { return blockMirror{s} }
func (s *netState) affinityMirror() mirror { return affinityMirror{s} }

func (m resourceMirror) reset() {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	m.s.nodes = map[string]*api.Node{}
	m.s.configs = map[string]*api.BGPConfiguration{}
	m.s.peers = map[string]*api.BGPPeer{}
	m.s.pools = map[string]*api.IPPool{}
}

// put stores the resource. A Node counts as changed only when its spec or
// labels did: heartbeats rewrite every Node's status all the time.
func (m resourceMirror) put(kv datastore.KV) bool {
	kind := resourceKind(kv.Key)
	if kind == "" {
		return false
	}
	obj, err := api.New(kind)
	if err != nil || api.DecodeInto(kv.Value, obj) != nil {
		return false
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	switch o := obj.(type) {
	case *api.Node:
		old := m.s.nodes[kv.Key]
		m.s.nodes[kv.Key] = o
		return old == nil || !reflect.DeepEqual(old.Spec, o.Spec) || !maps.Equal(old.Labels, o.Labels)
	case *api.BGPConfiguration:
		m.s.configs[kv.Key] = o
	case *api.BGPPeer:
		m.s.peers[kv.Key] = o
	case *api.IPPool:
		m.s.pools[kv.Key] = o
	}
	return true
}

func (m resourceMirror) del(key string) bool {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	n := len(m.s.nodes) + len(m.s.configs) + len(m.s.peers) + len(m.s.pools)
	delete(m.s.nodes, key)
	delete(m.s.configs, key)
	delete(m.s.peers, key)
	delete(m.s.pools, key)
	return n != len(m.s.nodes)+len(m.s.configs)+len(m.s.peers)+len(m.s.pools)
}

// resourceKind is the kind of a resource key among those routing reads.
func resourceKind(key string) string {
	for _, k := range []string{api.KindNode, api.KindBGPConfiguration, api.KindBGPPeer, api.KindIPPool} {
		if strings.HasPrefix(key, datastore.ResourceKindPrefix(k)) {
			return k
		}
	}
	return ""
}

func (m blockMirror) reset() {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	m.s.blocks = map[string]*ipam.Block{}
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
	old := m.s.blocks[kv.Key]
	m.s.blocks[kv.Key] = b
	return m.s.concerns(old) || m.s.concerns(b)
}

func (m blockMirror) del(key string) bool {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	old := m.s.blocks[key]
	delete(m.s.blocks, key)
	return m.s.concerns(old)
}

func (s *netState) concerns(b *ipam.Block) bool {
	if b == nil {
		return false
	}
	if b.Affinity == s.self {
		return true
	}
	for _, a := range b.Attributes {
		if a.Node == s.self {
			return true
		}
	}
	return false
}

func (m affinityMirror) reset() {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	m.s.affinity = map[string]ipam.AffinityState{}
}

func (m affinityMirror) put(kv datastore.KV) bool {
	var a ipam.Affinity
	if json.Unmarshal(kv.Value, &a) != nil {
		return false
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	old, had := m.s.affinity[kv.Key]
	m.s.affinity[kv.Key] = a.State
	return !had || old != a.State
}

func (m affinityMirror) del(key string) bool {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	_, had := m.s.affinity[key]
	delete(m.s.affinity, key)
	return had
}

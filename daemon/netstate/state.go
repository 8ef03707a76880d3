// Package netstate is the cluster state the node's routing follows: the
// Nodes, BGP configurations, BGP peers and pools, mirrored from the
// datastore by datastore.Follow, and this node's IPAM state (its blocks and
// addresses), read through ipam.WatchNode. Readers take consistent
// snapshots; a relist after a compaction swaps in a complete new view, so
// no snapshot is ever half-filled.
package netstate

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// State mirrors what the node's routing depends on. Run fills it; readers
// take snapshots and subscribe to changes.
type State struct {
	self string

	mu        sync.Mutex
	resources resources
	ipam      *ipam.NodeWatcher // nil until Run starts it

	subMu  sync.Mutex
	subs   []chan struct{}
	synced chan struct{}
}

// resources are the API resources routing reads, by key.
type resources struct {
	nodes   map[string]*api.Node
	configs map[string]*api.BGPConfiguration
	peers   map[string]*api.BGPPeer
	pools   map[string]*api.IPPool
}

func (r *resources) count() int { return len(r.nodes) + len(r.configs) + len(r.peers) + len(r.pools) }

// New returns an empty state of the node self.
func New(self string) *State {
	return &State{self: self, resources: newResources(), synced: make(chan struct{})}
}

func newResources() resources {
	return resources{nodes: map[string]*api.Node{}, configs: map[string]*api.BGPConfiguration{},
		peers: map[string]*api.BGPPeer{}, pools: map[string]*api.IPPool{}}
}

// Snapshot is one consistent copy of the state.
type Snapshot struct {
	Self    *api.Node // nil until the node is registered
	Nodes   []api.Node
	Configs []api.BGPConfiguration
	Peers   []api.BGPPeer
	Pools   []*api.IPPool
	// OwnBlocks are the confirmed affine blocks of this node.
	OwnBlocks []netip.Prefix
	// Hosted are this node's addresses in blocks of other nodes
	// (borrowed, or fixed addresses).
	Hosted []netip.Addr
	// Handles are this node's addresses by allocation handle.
	Handles map[string][]netip.Addr
	// Affinities are every block's affine node (VXLAN routes them).
	Affinities map[netip.Prefix]string
}

// Snapshot copies the state.
func (s *State) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := Snapshot{Handles: map[string][]netip.Addr{}}
	r := &s.resources
	for _, k := range slices.Sorted(maps.Keys(r.nodes)) {
		in.Nodes = append(in.Nodes, *r.nodes[k])
		if r.nodes[k].Name == s.self {
			in.Self = r.nodes[k]
		}
	}
	for _, k := range slices.Sorted(maps.Keys(r.configs)) {
		in.Configs = append(in.Configs, *r.configs[k])
	}
	for _, k := range slices.Sorted(maps.Keys(r.peers)) {
		in.Peers = append(in.Peers, *r.peers[k])
	}
	for _, k := range slices.Sorted(maps.Keys(r.pools)) {
		in.Pools = append(in.Pools, r.pools[k])
	}
	if s.ipam != nil {
		v := s.ipam.View()
		in.OwnBlocks, in.Hosted, in.Handles, in.Affinities = v.OwnBlocks, v.Hosted, v.Handles, v.Affinities
	}
	return in
}

// Subscribe returns a channel that receives after changes that matter to
// routing (several changes may come as one).
func (s *State) Subscribe() <-chan struct{} {
	c := make(chan struct{}, 1)
	s.subMu.Lock()
	s.subs = append(s.subs, c)
	s.subMu.Unlock()
	return c
}

func (s *State) changed() {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	for _, c := range s.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// Synced is closed once every part of the state was listed.
func (s *State) Synced() <-chan struct{} { return s.synced }

// Run follows the datastore until ctx ends.
func (s *State) Run(ctx context.Context, store datastore.Store, log *slog.Logger) {
	var pending atomic.Int32 // parts not listed yet
	pending.Store(2)
	synced := func() {
		if pending.Add(-1) == 0 {
			close(s.synced)
		}
	}
	w := ipam.WatchNode(ctx, store, s.self, s.changed, ipam.WatchLogger(log))
	s.mu.Lock()
	s.ipam = w
	s.mu.Unlock()
	go func() {
		select {
		case <-w.Synced():
			synced()
		case <-ctx.Done():
		}
	}()
	datastore.Follow(ctx, store, datastore.ResourcePrefix, resourceMirror{s},
		datastore.OnChange(s.changed), datastore.OnSynced(synced), datastore.FollowLogger(log))
	<-w.Done()
}

// resourceMirror keeps the resources; it shares State's lock.
type resourceMirror struct{ s *State }

// Replace swaps in a complete listing.
func (m resourceMirror) Replace(kvs []datastore.KV) {
	r := newResources()
	for _, kv := range kvs {
		if obj := decodeResource(kv); obj != nil {
			r.set(kv.Key, obj)
		}
	}
	m.s.mu.Lock()
	m.s.resources = r
	m.s.mu.Unlock()
}

// Apply stores or removes one resource; it says whether routing cares.
func (m resourceMirror) Apply(ev datastore.Event) bool {
	if ev.Type == datastore.EventDelete {
		return m.del(ev.KV.Key)
	}
	return m.put(ev.KV)
}

// put stores the resource. A Node counts as changed only when its spec or
// labels did: heartbeats rewrite every Node's status all the time.
func (m resourceMirror) put(kv datastore.KV) bool {
	obj := decodeResource(kv)
	if obj == nil {
		return false
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	if n, ok := obj.(*api.Node); ok {
		old := m.s.resources.nodes[kv.Key]
		m.s.resources.nodes[kv.Key] = n
		return old == nil || !reflect.DeepEqual(old.Spec, n.Spec) || !maps.Equal(old.Labels, n.Labels)
	}
	m.s.resources.set(kv.Key, obj)
	return true
}

func (r *resources) set(key string, obj api.Object) {
	switch o := obj.(type) {
	case *api.Node:
		r.nodes[key] = o
	case *api.BGPConfiguration:
		r.configs[key] = o
	case *api.BGPPeer:
		r.peers[key] = o
	case *api.IPPool:
		r.pools[key] = o
	}
}

func (m resourceMirror) del(key string) bool {
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	r := &m.s.resources
	n := r.count()
	delete(r.nodes, key)
	delete(r.configs, key)
	delete(r.peers, key)
	delete(r.pools, key)
	return n != r.count()
}

// decodeResource decodes a resource of a kind routing reads; nil for
// others.
func decodeResource(kv datastore.KV) api.Object {
	kind := resourceKind(kv.Key)
	if kind == "" {
		return nil
	}
	obj, err := api.New(kind)
	if err != nil || api.DecodeInto(kv.Value, obj) != nil {
		return nil
	}
	return obj
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

// Package nodereg keeps this node's Node resource: it finds the node's
// address, registers the node (address, Kubernetes labels, route reflector
// role), re-registers it when the labels change, writes its heartbeat and
// status, and creates the default pool in a cluster that has none.
package nodereg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

const (
	// RouteReflectorLabel on a Kubernetes Node makes the node a route
	// reflector: its value is the cluster ID when it looks like an IPv4
	// address, else ("true") the BGPConfiguration's routeReflectorClusterID.
	RouteReflectorLabel = "rhizome.io/route-reflector"
	// rrFromLabel marks a Node whose routeReflectorClusterID the agent set
	// from RouteReflectorLabel, so removing the label clears it again while
	// a cluster ID an operator patched in stays.
	rrFromLabel = "rhizome.io/route-reflector-from-label"
	// DefaultPoolName is the pool created when the cluster has none.
	DefaultPoolName = "default-ipv4-ippool"
	// KubernetesNodeAnnotation marks a rhizome Node registered by an agent
	// running with Kubernetes: the controller deletes it when its
	// Kubernetes Node is gone.
	KubernetesNodeAnnotation = "rhizome.io/kubernetes-node"
)

// Facts are what the agent knows about its node at start.
type Facts struct {
	Name    string
	IPv4    netip.Prefix
	Version string
	// Kubernetes: the node is a Kubernetes node (the controller deletes
	// its Node when the Kubernetes Node is deleted), and its labels come
	// from the Kubernetes Node.
	Kubernetes bool
}

// Modify reads the Node, lets fn change it and writes it back guarded
// by the revision it read, retrying when another writer got in between. A
// missing Node is created.
func Modify(ctx context.Context, res *datastore.Resources, name string, fn func(n *api.Node) error) (*api.Node, error) {
	for attempt := 0; ; attempt++ {
		obj, err := res.Get(ctx, api.KindNode, name)
		create := errors.Is(err, datastore.ErrNotFound)
		var n *api.Node
		switch {
		case create:
			n = &api.Node{TypeMeta: api.TypeMeta{APIVersion: api.GroupVersion, Kind: api.KindNode}, ObjectMeta: api.ObjectMeta{Name: name}}
		case err != nil:
			return nil, fmt.Errorf("read node %s: %w", name, err)
		default:
			n = obj.(*api.Node)
		}
		if err := fn(n); err != nil {
			return nil, err
		}
		if create {
			obj, err = res.Create(ctx, n)
		} else {
			obj, err = res.Update(ctx, n)
		}
		if (errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrExists)) && attempt < 20 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("write node %s: %w", name, err)
		}
		return obj.(*api.Node), nil
	}
}

// registerNode writes the node's address, labels (from Kubernetes; nil
// without, where the stored labels set with rhizomectl are kept) and route
// reflector role into its Node resource, keeping everything an operator
// set (AS number, a patched-in cluster ID, labels without Kubernetes).
func registerNode(ctx context.Context, res *datastore.Resources, f Facts, labels map[string]string, globalRRID string) (*api.Node, error) {
	return Modify(ctx, res, f.Name, func(n *api.Node) error {
		if n.Spec.BGP == nil {
			n.Spec.BGP = &api.NodeBGPSpec{}
		}
		if f.IPv4.IsValid() {
			n.Spec.BGP.IPv4Address = f.IPv4.String()
		}
		if f.Kubernetes {
			n.Labels = maps.Clone(labels)
			applyRouteReflectorLabel(n, labels[RouteReflectorLabel], globalRRID)
			if n.Annotations == nil {
				n.Annotations = map[string]string{}
			}
			n.Annotations[KubernetesNodeAnnotation] = "true"
		}
		if n.Status == nil {
			n.Status = &api.NodeStatus{}
		}
		n.Status.AgentVersion = f.Version
		n.Status.LastHeartbeat = time.Now().UTC().Format(time.RFC3339)
		return nil
	})
}

func applyRouteReflectorLabel(n *api.Node, label, globalRRID string) {
	switch {
	case label == "" && n.Annotations[rrFromLabel] != "":
		n.Spec.BGP.RouteReflectorClusterID = ""
		delete(n.Annotations, rrFromLabel)
	case label == "":
	default:
		id := globalRRID
		if a, err := netip.ParseAddr(label); err == nil && a.Is4() {
			id = label
		}
		n.Spec.BGP.RouteReflectorClusterID = id
		if n.Annotations == nil {
			n.Annotations = map[string]string{}
		}
		n.Annotations[rrFromLabel] = "true"
	}
}

// heartbeat refreshes the node's status.
func heartbeat(ctx context.Context, res *datastore.Resources, name, version string, st api.NodeStatus) error {
	_, err := Modify(ctx, res, name, func(n *api.Node) error {
		st.AgentVersion = version
		st.LastHeartbeat = time.Now().UTC().Format(time.RFC3339)
		n.Status = &st
		return nil
	})
	return err
}

// HeartbeatStale says whether the node's agent has not written a heartbeat
// for ttl. A node that never ran an agent (an external router, a node
// being set up) is not stale.
func HeartbeatStale(n *api.Node, now time.Time, ttl time.Duration) bool {
	if ttl <= 0 || n.Status == nil || n.Status.LastHeartbeat == "" {
		return false
	}
	t, err := time.Parse(time.RFC3339, n.Status.LastHeartbeat)
	return err == nil && now.Sub(t) > ttl
}

// EnsureDefaultPool creates default-ipv4-ippool when the cluster has no
// pool at all, as a fresh cluster needs one to run pods. Several agents may
// race to do it: one creates it, the others see it exists.
func EnsureDefaultPool(ctx context.Context, res *datastore.Resources, cidr, ipip string, nat bool) (created bool, err error) {
	if cidr == "" {
		return false, nil
	}
	for attempt := 0; ; attempt++ {
		pools, _, err := res.ListPools(ctx)
		if err != nil {
			return false, fmt.Errorf("list pools: %w", err)
		}
		if len(pools) > 0 {
			return false, nil
		}
		p := &api.IPPool{
			TypeMeta:   api.TypeMeta{APIVersion: api.GroupVersion, Kind: api.KindIPPool},
			ObjectMeta: api.ObjectMeta{Name: DefaultPoolName},
			Spec:       api.IPPoolSpec{CIDR: cidr, IPIPMode: api.EncapMode(ipip), NATOutgoing: nat},
		}
		_, err = res.Create(ctx, p)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, datastore.ErrExists):
			return false, nil
		case errors.Is(err, datastore.ErrConflict) && attempt < 5:
			// Another agent created a pool between our list and our
			// create, which is guarded on the pools being unchanged: look
			// again.
			continue
		}
		return false, fmt.Errorf("create %s from RHIZOME_DEFAULT_IPV4_POOL_CIDR=%s: %w", DefaultPoolName, cidr, err)
	}
}

// Registrar keeps the node's Node resource registered and its heartbeat
// fresh.
type Registrar struct {
	res     *datastore.Resources
	facts   Facts
	log     *slog.Logger
	relabel chan map[string]string
	// onLabels sees new Kubernetes labels before the Node shows them.
	onLabels func(map[string]string)

	registered atomic.Bool
	lastBeat   atomic.Int64 // unix nanoseconds of the last successful write
}

// Option configures a Registrar.
type Option func(*Registrar)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(r *Registrar) { r.log = l } }

// OnLabels sets a function that sees the Kubernetes Node's new labels
// right before a re-registration writes them (the allocator places pods by
// them).
func OnLabels(fn func(map[string]string)) Option { return func(r *Registrar) { r.onLabels = fn } }

// NewRegistrar returns a Registrar of the node f describes.
func NewRegistrar(res *datastore.Resources, f Facts, opts ...Option) *Registrar {
	r := &Registrar{res: res, facts: f, log: slog.Default(), relabel: make(chan map[string]string, 1)}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Register writes the node's Node resource with the given Kubernetes
// labels (nil without Kubernetes).
func (r *Registrar) Register(ctx context.Context, labels map[string]string) error {
	globalRRID := api.DefaultRouteReflectorClusterID
	if obj, err := r.res.Get(ctx, api.KindBGPConfiguration, "default"); err == nil {
		globalRRID = api.EffectiveBGP(obj.(*api.BGPConfiguration), nil).RouteReflectorClusterID
	} else if !errors.Is(err, datastore.ErrNotFound) {
		return fmt.Errorf("read BGPConfiguration default: %w", err)
	}
	n, err := registerNode(ctx, r.res, r.facts, labels, globalRRID)
	if err != nil {
		return err
	}
	r.registered.Store(true)
	r.lastBeat.Store(time.Now().UnixNano())
	r.log.Info("node registered", "addr", n.Spec.BGP.IPv4Address, "labels", len(n.Labels),
		"routeReflectorClusterID", n.Spec.BGP.RouteReflectorClusterID)
	return nil
}

// Relabel asks Run to re-register the node with new Kubernetes labels; only
// the newest labels are kept.
func (r *Registrar) Relabel(labels map[string]string) {
	select {
	case <-r.relabel:
	default:
	}
	select {
	case r.relabel <- labels:
	default:
	}
}

// Run writes the heartbeat every interval, with the status that status
// returns, and re-registers on new labels, until ctx ends.
func (r *Registrar) Run(ctx context.Context, interval time.Duration, status func(context.Context) api.NodeStatus) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case labels := <-r.relabel:
			if r.onLabels != nil {
				r.onLabels(labels)
			}
			if err := r.Register(ctx, labels); err != nil && ctx.Err() == nil {
				r.log.Warn("update node labels", "err", err)
			}
		case <-t.C:
			if err := heartbeat(ctx, r.res, r.facts.Name, r.facts.Version, status(ctx)); err != nil {
				if ctx.Err() == nil {
					r.log.Warn("heartbeat", "err", err)
				}
				continue
			}
			r.lastBeat.Store(time.Now().UnixNano())
		}
	}
}

// Ready says why the node does not count as registered and reachable: not
// registered yet, or no write for longer than maxAge.
func (r *Registrar) Ready(maxAge time.Duration) error {
	last := time.Unix(0, r.lastBeat.Load())
	switch {
	case !r.registered.Load():
		return errors.New("node not registered yet")
	case time.Since(last) > maxAge:
		return fmt.Errorf("datastore not reachable: no heartbeat written since %s", last.UTC().Format(time.RFC3339))
	}
	return nil
}

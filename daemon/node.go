package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
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
)

// nodeFacts is what the agent knows about its node at start.
type nodeFacts struct {
	name    string
	ipv4    netip.Prefix
	version string
	// labels are the Kubernetes Node's; nil without Kubernetes, where the
	// stored labels (set with rhizomectl) are kept.
	labels map[string]string
	// kubernetes: the node is a Kubernetes node (the controller deletes
	// its Node when the Kubernetes Node is deleted).
	kubernetes bool
}

// modifyNode reads the Node, lets fn change it and writes it back guarded
// by the revision it read, retrying when another writer got in between. A
// missing Node is created.
func modifyNode(ctx context.Context, res *datastore.Resources, name string, fn func(n *api.Node) error) (*api.Node, error) {
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

// registerNode writes the node's address, labels (from Kubernetes) and
// route reflector role into its Node resource, keeping everything an
// operator set (AS number, a patched-in cluster ID, labels without
// Kubernetes).
func registerNode(ctx context.Context, res *datastore.Resources, f nodeFacts, globalRRID string) (*api.Node, error) {
	return modifyNode(ctx, res, f.name, func(n *api.Node) error {
		if n.Spec.BGP == nil {
			n.Spec.BGP = &api.NodeBGPSpec{}
		}
		if f.ipv4.IsValid() {
			n.Spec.BGP.IPv4Address = f.ipv4.String()
		}
		if f.kubernetes {
			n.Labels = maps.Clone(f.labels)
			applyRouteReflectorLabel(n, f.labels[RouteReflectorLabel], globalRRID)
			if n.Annotations == nil {
				n.Annotations = map[string]string{}
			}
			n.Annotations[kubernetesNode] = "true"
		}
		if n.Status == nil {
			n.Status = &api.NodeStatus{}
		}
		n.Status.AgentVersion = f.version
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
	_, err := modifyNode(ctx, res, name, func(n *api.Node) error {
		st.AgentVersion = version
		st.LastHeartbeat = time.Now().UTC().Format(time.RFC3339)
		n.Status = &st
		return nil
	})
	return err
}

// ensureDefaultPool creates default-ipv4-ippool when the cluster has no
// pool at all, as a fresh cluster needs one to run pods. Several agents may
// race to do it: one creates it, the others see it exists.
func ensureDefaultPool(ctx context.Context, res *datastore.Resources, cidr, ipip string, nat bool) (created bool, err error) {
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

func isNotFound(err error) bool { return errors.Is(err, datastore.ErrNotFound) }

// Package controller is the cluster-wide cleanup role that one agent at a
// time runs: it releases the addresses, blocks and affinities of nodes that
// are gone, and the addresses of pods that are gone once they stayed leaked
// for a grace period. Who runs it is decided by an Elector; whether a node
// or pod is gone, by a ClusterView.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/daemon/nodereg"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// ElectionPrefix is where the agents elect the one that runs the
// controller.
const ElectionPrefix = "/rhizome/v1/controller/leader"

// Elector decides which agent runs the controller. datastore.Election
// implements it on etcd; client-go's leaderelection with a Lease can on
// the Kubernetes API.
type Elector interface {
	// Lead campaigns as id until elected, then runs term with a context
	// that ends when ctx ends or the leadership is lost, and gives the
	// role up when term returns. It returns nil when ctx ended, else why
	// the campaign or the term ended.
	Lead(ctx context.Context, id string, term func(ctx context.Context)) error
}

// ClusterView is what the controller asks about the cluster: which nodes
// are gone and which pods live. The Kubernetes view asks the API server;
// without Kubernetes (HeartbeatView), nodes are gone when their heartbeat
// is too old and there is no cluster-wide list of pods (each agent's CNI
// GC frees its own node's leaks).
type ClusterView interface {
	// NodeGone says whether the rhizome Node's node no longer exists, and
	// whether its Node resource goes too (its Kubernetes Node was deleted)
	// or stays (its agent only stopped beating).
	NodeGone(ctx context.Context, n *api.Node, now time.Time) (gone, deleteNode bool, err error)
	// LiveWorkloads lists the running pods; ok is false when this view has
	// no such list.
	LiveWorkloads(ctx context.Context) (live []ipam.Workload, ok bool, err error)
	// PodGone re-checks one pod right before its address is freed.
	PodGone(ctx context.Context, namespace, name string) (bool, error)
}

// Metrics are what the controller counts.
type Metrics struct {
	// Leader is 1 while this agent runs the controller.
	Leader prometheus.Gauge
	// Releases counts freed addresses by reason (node-gone, pod-gone).
	Releases *prometheus.CounterVec
}

// Controller releases what nodes and pods that are gone left behind.
type Controller struct {
	store    datastore.Store
	res      *datastore.Resources
	view     ClusterView
	log      *slog.Logger
	grace    time.Duration
	metrics  Metrics
	now      func() time.Time
	leakedAt map[leakKey]time.Time
}

// Option configures a Controller.
type Option func(*Controller)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(c *Controller) { c.log = l } }

// WithGracePeriod sets how long an address must stay leaked before it is
// freed; 0 (the default) frees no leaked addresses.
func WithGracePeriod(d time.Duration) Option { return func(c *Controller) { c.grace = d } }

// WithMetrics sets the metrics to update.
func WithMetrics(m Metrics) Option { return func(c *Controller) { c.metrics = m } }

// WithClock sets the clock (for tests).
func WithClock(now func() time.Time) Option { return func(c *Controller) { c.now = now } }

// New returns a controller over store, asking view about the cluster.
func New(store datastore.Store, view ClusterView, opts ...Option) *Controller {
	c := &Controller{store: store, res: datastore.NewResources(store), view: view, log: slog.Default(), now: time.Now,
		leakedAt: map[leakKey]time.Time{}}
	for _, o := range opts {
		o(c)
	}
	if c.metrics.Leader == nil {
		c.metrics.Leader = prometheus.NewGauge(prometheus.GaugeOpts{Name: "rhizome_controller_leader"})
	}
	if c.metrics.Releases == nil {
		c.metrics.Releases = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rhizome_ipam_gc_releases_total"}, []string{"reason"})
	}
	return c
}

type leakKey struct {
	addr netip.Addr
	seq  uint64
}

// Run campaigns for the controller role with el and runs a pass every
// interval while elected, until ctx ends. A lost leadership ends the
// term; it campaigns again.
func (c *Controller) Run(ctx context.Context, el Elector, id string, interval time.Duration) {
	for ctx.Err() == nil {
		if err := el.Lead(ctx, id, func(ctx context.Context) { c.term(ctx, id, interval) }); err != nil && ctx.Err() == nil {
			c.log.Warn("controller election", "err", err)
			sleep(ctx, time.Second)
		}
	}
}

func (c *Controller) term(ctx context.Context, id string, interval time.Duration) {
	c.log.Info("controller elected: releasing what gone nodes and pods left behind", "node", id)
	c.metrics.Leader.Set(1)
	defer c.metrics.Leader.Set(0)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := c.RunOnce(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("controller pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RunOnce is one pass: release gone nodes, then leaked addresses.
func (c *Controller) RunOnce(ctx context.Context) error {
	if err := c.releaseGoneNodes(ctx); err != nil {
		return err
	}
	return c.releaseLeaks(ctx)
}

func (c *Controller) releaseGoneNodes(ctx context.Context) error {
	objs, _, err := c.res.List(ctx, api.KindNode)
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	now := c.now()
	for _, o := range objs {
		n := o.(*api.Node)
		gone, deleteNode, err := c.view.NodeGone(ctx, n, now)
		if err != nil {
			return fmt.Errorf("is node %s gone: %w", n.Name, err)
		}
		if gone {
			if err := c.releaseNode(ctx, n, deleteNode); err != nil {
				return err
			}
		}
	}
	return nil
}

// releaseNode frees every address a gone node held, then its blocks and
// affinities; with Kubernetes it deletes the Node resource as well.
func (c *Controller) releaseNode(ctx context.Context, n *api.Node, deleteNode bool) error {
	u, err := ipam.ReadNodeUsage(ctx, c.store, n.Name)
	if err != nil {
		return fmt.Errorf("read IPAM of gone node %s: %w", n.Name, err)
	}
	var addrs []netip.Addr
	var seqs []uint64
	for _, a := range u.Addresses {
		addrs = append(addrs, a.Addr)
		seqs = append(seqs, a.Seq)
	}
	if len(addrs) > 0 {
		rel, err := ipam.ReleaseIPs(ctx, c.store, addrs, seqs)
		if err != nil {
			return fmt.Errorf("release the addresses of gone node %s: %w", n.Name, err)
		}
		c.metrics.Releases.WithLabelValues("node-gone").Add(float64(len(rel)))
	}
	deleted, kept, err := ipam.ReleaseNodeAffinities(ctx, c.store, n.Name)
	if err != nil {
		return fmt.Errorf("release the blocks of gone node %s: %w", n.Name, err)
	}
	if len(addrs)+len(deleted)+len(kept) > 0 {
		c.log.Info("released a gone node's addresses and blocks", "node", n.Name, "addresses", len(addrs),
			"blocksDeleted", len(deleted), "blocksKept", len(kept))
	}
	if deleteNode {
		if _, err := c.res.Delete(ctx, api.KindNode, n.Name, 0); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("delete node %s: %w", n.Name, err)
		}
		c.log.Info("deleted the Node of a deleted Kubernetes node", "node", n.Name)
	}
	return nil
}

// releaseLeaks frees addresses that no live pod has held for the grace
// period, each re-validated right before: the pod is asked for directly,
// and the release names the allocation's sequence number, so an address
// handed out again meanwhile stays.
func (c *Controller) releaseLeaks(ctx context.Context) error {
	if c.grace <= 0 {
		return nil
	}
	live, ok, err := c.view.LiveWorkloads(ctx)
	if err != nil || !ok {
		return err
	}
	report, err := ipam.Check(ctx, c.store, live)
	if err != nil {
		return fmt.Errorf("check IPAM: %w", err)
	}
	now := c.now()
	still := map[leakKey]time.Time{}
	for _, o := range report.LeakedAddresses {
		k := leakKey{o.Addr, o.Seq}
		first, seen := c.leakedAt[k]
		if !seen {
			first = now
		}
		if now.Sub(first) < c.grace {
			still[k] = first
			continue
		}
		if o.Pod != "" {
			gone, err := c.view.PodGone(ctx, o.Namespace, o.Pod)
			if err != nil {
				still[k] = first
				c.log.Warn("re-check pod before releasing its address", "pod", o.Namespace+"/"+o.Pod, "err", err)
				continue
			}
			if !gone {
				continue // it lives after all (created since the list)
			}
		}
		rel, err := ipam.ReleaseIPs(ctx, c.store, []netip.Addr{o.Addr}, []uint64{o.Seq})
		if err != nil {
			still[k] = first
			c.log.Warn("release leaked address", "addr", o.Addr, "err", err)
			continue
		}
		if len(rel) > 0 {
			c.metrics.Releases.WithLabelValues("pod-gone").Inc()
			c.log.Info("released a leaked address: its pod is gone", "addr", o.Addr, "pod", o.Namespace+"/"+o.Pod,
				"handle", o.Handle, "node", o.Node, "leakedFor", now.Sub(first).Round(time.Second))
		}
	}
	c.leakedAt = still
	return nil
}

// HeartbeatView is the view without Kubernetes: a node is gone when its
// agent has not written a heartbeat for TTL, and there is no list of live
// pods.
type HeartbeatView struct{ TTL time.Duration }

// NodeGone says whether n's heartbeat is older than TTL; its Node stays.
func (v HeartbeatView) NodeGone(_ context.Context, n *api.Node, now time.Time) (bool, bool, error) {
	return nodereg.HeartbeatStale(n, now, v.TTL), false, nil
}

// LiveWorkloads: no list of pods without Kubernetes.
func (HeartbeatView) LiveWorkloads(context.Context) ([]ipam.Workload, bool, error) {
	return nil, false, nil
}

// PodGone is never asked (LiveWorkloads has no list).
func (HeartbeatView) PodGone(context.Context, string, string) (bool, error) { return false, nil }

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// electionPrefix is where the agents elect the one that runs the
// controller.
const electionPrefix = "/rhizome/v1/controller/leader"

// clusterView is what the controller asks about the cluster: which nodes
// are gone and which pods live. The Kubernetes view asks the API server;
// without Kubernetes, nodes are gone when their heartbeat is too old and
// there is no cluster-wide list of pods (each agent's CNI GC frees its own
// node's leaks).
type clusterView interface {
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

// controller releases what nodes and pods that are gone left behind. One
// agent at a time runs it.
type controller struct {
	store    datastore.Store
	res      *datastore.Resources
	view     clusterView
	log      *slog.Logger
	grace    time.Duration
	metrics  *metrics
	now      func() time.Time
	leakedAt map[leakKey]time.Time
}

type leakKey struct {
	addr netip.Addr
	seq  uint64
}

// runElected campaigns for the controller role and runs the controller
// every interval while elected, until ctx ends. Losing the etcd session
// (etcd restarted, the lease expired) ends the term; it campaigns again.
func (c *controller) runElected(ctx context.Context, cli *clientv3.Client, node string, interval time.Duration) {
	for ctx.Err() == nil {
		if err := c.term(ctx, cli, node, interval); err != nil && ctx.Err() == nil {
			c.log.Warn("controller election", "err", err)
			sleep(ctx, time.Second)
		}
	}
}

func (c *controller) term(ctx context.Context, cli *clientv3.Client, node string, interval time.Duration) error {
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(15), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("etcd session: %w", err)
	}
	defer session.Close()
	election := concurrency.NewElection(session, electionPrefix)
	if err := election.Campaign(ctx, node); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	c.log.Info("controller elected: releasing what gone nodes and pods left behind", "node", node)
	c.metrics.leader.Set(1)
	defer c.metrics.leader.Set(0)
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = election.Resign(rctx)
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := c.runOnce(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("controller pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-session.Done():
			return fmt.Errorf("etcd session lost")
		case <-t.C:
		}
	}
}

// runOnce is one pass: release gone nodes, then leaked addresses.
func (c *controller) runOnce(ctx context.Context) error {
	if err := c.releaseGoneNodes(ctx); err != nil {
		return err
	}
	return c.releaseLeaks(ctx)
}

func (c *controller) releaseGoneNodes(ctx context.Context) error {
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
func (c *controller) releaseNode(ctx context.Context, n *api.Node, deleteNode bool) error {
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
		c.metrics.gcReleases.WithLabelValues("node-gone").Add(float64(len(rel)))
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
		if _, err := c.res.Delete(ctx, api.KindNode, n.Name, 0); err != nil && !isNotFound(err) {
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
func (c *controller) releaseLeaks(ctx context.Context) error {
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
			c.metrics.gcReleases.WithLabelValues("pod-gone").Inc()
			c.log.Info("released a leaked address: its pod is gone", "addr", o.Addr, "pod", o.Namespace+"/"+o.Pod,
				"handle", o.Handle, "node", o.Node, "leakedFor", now.Sub(first).Round(time.Second))
		}
	}
	c.leakedAt = still
	return nil
}

// heartbeatView: without Kubernetes a node is gone when its agent has not
// written a heartbeat for ttl.
type heartbeatView struct{ ttl time.Duration }

func (v heartbeatView) NodeGone(_ context.Context, n *api.Node, now time.Time) (bool, bool, error) {
	return heartbeatStale(n, now, v.ttl), false, nil
}

// heartbeatStale: the node's agent has not written a heartbeat for ttl. A
// node that never ran an agent (an external router, a node being set up)
// is not stale.
func heartbeatStale(n *api.Node, now time.Time, ttl time.Duration) bool {
	if ttl <= 0 || n.Status == nil || n.Status.LastHeartbeat == "" {
		return false
	}
	t, err := time.Parse(time.RFC3339, n.Status.LastHeartbeat)
	return err == nil && now.Sub(t) > ttl
}

func (heartbeatView) LiveWorkloads(context.Context) ([]ipam.Workload, bool, error) {
	return nil, false, nil
}
func (heartbeatView) PodGone(context.Context, string, string) (bool, error) { return false, nil }

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

package ipambench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
	"github.com/rhizome-net/rhizome/ipam"
)

// cluster is one embedded etcd with one pool, and the allocators (simulated nodes) started against it.
type cluster struct {
	srv    *etcdtest.Server
	admin  *datastore.Etcd
	counts *Counts
}

// newCluster starts etcd (syncing to disk when fsync is set) and creates pool "bench" with /26 blocks.
func newCluster(tb testing.TB, fsync bool, poolCIDR string) *cluster {
	tb.Helper()
	var opts []etcdtest.Option
	if fsync {
		opts = append(opts, etcdtest.WithFsync())
	}
	srv := etcdtest.Start(tb, opts...)
	c := &cluster{srv: srv, admin: srv.Store(tb), counts: &Counts{}}
	pool := &api.IPPool{ObjectMeta: api.ObjectMeta{Name: "bench"}, Spec: api.IPPoolSpec{CIDR: poolCIDR, BlockSize: 26}}
	api.SetDefaults(pool)
	if _, _, err := datastore.NewResources(c.admin).Apply(context.Background(), pool); err != nil {
		tb.Fatalf("create pool %s: %v", poolCIDR, err)
	}
	return c
}

// allocator starts the allocator of node with its own etcd client, as a node agent would, and counts
// its requests in c.counts. Empty blocks are kept (no idle release) so warm rounds find them claimed.
func (c *cluster) allocator(tb testing.TB, node string) *ipam.Allocator {
	tb.Helper()
	store := CountingStore{Store: c.srv.Store(tb), C: c.counts}
	a, err := ipam.NewAllocator(context.Background(), store, node,
		ipam.WithIdleRelease(0), ipam.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		tb.Fatalf("allocator for node %s: %v", node, err)
	}
	tb.Cleanup(a.Close)
	return a
}

// handleName is a handle as the CNI plugin makes them: "<network>.<64 hex digits of container ID>".
func handleName(scope string, i int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d", scope, i))
	return "rhizome." + hex.EncodeToString(sum[:])
}

// request is a pod's address request.
func request(handle string, i int) ipam.Request {
	return ipam.Request{Handle: handle, Namespace: "default", Pod: fmt.Sprintf("bench-%d", i)}
}

// fillForeignBlocks writes n blocks of pool poolCIDR (from its start, /26 each) affine to other nodes, each
// half full of realistic attributes, with their confirmed affinities: a pool other nodes already use.
func (c *cluster) fillForeignBlocks(tb testing.TB, poolCIDR string, n int) {
	tb.Helper()
	base := netip.MustParsePrefix(poolCIDR).Addr()
	blocks := make([]*ipam.Block, 0, n)
	for i := range n {
		cidr := netip.PrefixFrom(addrAt(netip.PrefixFrom(base, 26), i*64), 26)
		node := fmt.Sprintf("other-%d", i/4) // a few blocks per node, as after some churn
		blocks = append(blocks, halfFullBlock(cidr, node))
	}
	if err := ipam.ImportBlocks(context.Background(), c.admin, blocks); err != nil {
		tb.Fatalf("write foreign blocks: %v", err)
	}
}

// halfFullBlock is a /26 block affine to node with its first 32 ordinals handed out.
func halfFullBlock(cidr netip.Prefix, node string) *ipam.Block {
	const size, used = 64, 32
	b := &ipam.Block{CIDR: cidr, Affinity: node, Allocations: make([]*int, size), Attributes: []ipam.Attribute{}}
	for n := range size {
		if n < used {
			idx := len(b.Attributes)
			b.Seq++
			b.Attributes = append(b.Attributes, ipam.Attribute{
				Handle: handleName(cidr.String(), n), Namespace: "default", Pod: fmt.Sprintf("pod-%d", n),
				Node: node, Use: api.UseWorkload, Seq: b.Seq,
			})
			b.Allocations[n] = &idx
			continue
		}
		b.Unallocated = append(b.Unallocated, n)
	}
	return b
}

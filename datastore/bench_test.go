package datastore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// One writer's guarded read-modify-write cycle without the read: Update at the revision the last write
// returned, as the IPAM hot path does with blocks it keeps in memory.
func BenchmarkUpdate(b *testing.B) {
	s := etcdtest.Start(b).Store(b)
	ctx := context.Background()
	value := make([]byte, 1024)
	rev, err := s.Create(ctx, "/bench/k", value)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if rev, err = s.Update(ctx, "/bench/k", value, rev); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "txn/s")
}

// The baseline for BenchmarkUpdate: the same guarded write with the etcd client alone.
func BenchmarkUpdateBaselineClient(b *testing.B) {
	cli := etcdtest.Start(b).Store(b).Client()
	ctx := context.Background()
	value := string(make([]byte, 1024))
	resp, err := cli.Put(ctx, "/bench/k", value)
	if err != nil {
		b.Fatal(err)
	}
	rev := resp.Header.Revision
	b.ReportAllocs()
	for b.Loop() {
		r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision("/bench/k"), "=", rev)).
			Then(clientv3.OpPut("/bench/k", value)).Commit()
		if err != nil || !r.Succeeded {
			b.Fatalf("txn: %v", err)
		}
		rev = r.Header.Revision
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "txn/s")
}

// Many writers, each on its own key, through one client: a two-op transaction (block + handle) per write.
func BenchmarkTxnParallel(b *testing.B) {
	s := etcdtest.Start(b).Store(b)
	ctx := context.Background()
	value := make([]byte, 1024)
	var id atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		key := fmt.Sprintf("/bench/block-%d", id.Add(1))
		rev, err := s.Create(ctx, key, value)
		if err != nil {
			b.Error(err)
			return
		}
		for i := 0; pb.Next(); i++ {
			rev, err = s.Txn(ctx, datastore.OpUpdate(key, value, rev), datastore.OpPut(fmt.Sprintf("%s/handle-%d", key, i), value))
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "txn/s")
}

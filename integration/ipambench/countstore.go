package ipambench

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/rhizome-net/rhizome/datastore"
)

// Counts are what CountingStores saw; several stores (one per simulated node) may share one Counts.
type Counts struct {
	// Txns counts writes: Txn, Create, Update and Delete calls (each is one etcd transaction).
	Txns atomic.Int64
	// LostGuards counts writes that failed because a guard did not hold (ErrConflict or ErrExists):
	// another writer got there first.
	LostGuards atomic.Int64
	// Reads counts Get and List calls.
	Reads atomic.Int64
}

// CountSnapshot is Counts at one moment.
type CountSnapshot struct{ Txns, LostGuards, Reads int64 }

// Snapshot reads the counters.
func (c *Counts) Snapshot() CountSnapshot {
	return CountSnapshot{Txns: c.Txns.Load(), LostGuards: c.LostGuards.Load(), Reads: c.Reads.Load()}
}

// Sub is what happened between o and s.
func (s CountSnapshot) Sub(o CountSnapshot) CountSnapshot {
	return CountSnapshot{Txns: s.Txns - o.Txns, LostGuards: s.LostGuards - o.LostGuards, Reads: s.Reads - o.Reads}
}

// CountingStore is a datastore.Store that counts the requests passed through it.
type CountingStore struct {
	datastore.Store
	C *Counts
}

var _ datastore.Store = CountingStore{}

func (s CountingStore) write(err error) {
	s.C.Txns.Add(1)
	if errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrExists) {
		s.C.LostGuards.Add(1)
	}
}

// Get reads one key.
func (s CountingStore) Get(ctx context.Context, key string) (datastore.KV, error) {
	s.C.Reads.Add(1)
	return s.Store.Get(ctx, key)
}

// List reads every key under prefix.
func (s CountingStore) List(ctx context.Context, prefix string) ([]datastore.KV, int64, error) {
	s.C.Reads.Add(1)
	return s.Store.List(ctx, prefix)
}

// Create writes key if it does not exist.
func (s CountingStore) Create(ctx context.Context, key string, value []byte) (int64, error) {
	rev, err := s.Store.Create(ctx, key, value)
	s.write(err)
	return rev, err
}

// Update overwrites key if it is still at rev.
func (s CountingStore) Update(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	rev, err := s.Store.Update(ctx, key, value, rev)
	s.write(err)
	return rev, err
}

// Delete removes key if it is still at rev.
func (s CountingStore) Delete(ctx context.Context, key string, rev int64) error {
	err := s.Store.Delete(ctx, key, rev)
	s.write(err)
	return err
}

// Txn applies ops atomically.
func (s CountingStore) Txn(ctx context.Context, ops ...datastore.Op) (int64, error) {
	rev, err := s.Store.Txn(ctx, ops...)
	s.write(err)
	return rev, err
}

package datastore_test

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// countingHandler counts the listings a Mirror is given, so the test knows the follower really listed again.
type countingHandler struct {
	*datastore.Mirror[string]
	replaces atomic.Int64
}

func (h *countingHandler) Replace(kvs []datastore.KV) {
	h.replaces.Add(1)
	h.Mirror.Replace(kvs)
}

// A follower's watch revision is compacted away twice while writes continue: it lists again each time, and
// no reader, snapshotting all the while, ever sees a view without the keys that were never deleted. After the
// writes stop the view equals the store.
func TestFollowRelistAfterCompactionSwapsAtomically(t *testing.T) {
	srv := etcdtest.Start(t)
	admin := srv.Store(t)
	ln := startLink(t, srv.Endpoints()[0])
	followStore, err := datastore.New(datastore.Config{Endpoints: []string{ln.Endpoint()}, RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { followStore.Close() })

	const prefix, stable = "/follow/", 150
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bg := context.Background()
	for i := range stable {
		if _, err := admin.Create(bg, fmt.Sprintf("%sstable-%03d", prefix, i), []byte("0")); err != nil {
			t.Fatal(err)
		}
	}

	h := &countingHandler{Mirror: datastore.NewMirror(func(kv datastore.KV) (string, bool) {
		return string(kv.Value), true
	}, nil)}
	synced := make(chan struct{})
	var changes atomic.Int64
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		datastore.Follow(ctx, followStore, prefix, h, datastore.OnSynced(func() { close(synced) }),
			datastore.OnChange(func() { changes.Add(1) }), datastore.FollowRetry(20*time.Millisecond))
	}()
	select {
	case <-synced:
	case <-time.After(10 * time.Second):
		t.Fatal("follower not synced after 10s")
	}

	// Readers snapshot as fast as they can; every snapshot must hold every stable key.
	var bad atomic.Int64
	var badExample atomic.Value
	var snaps atomic.Int64
	stopReaders := make(chan struct{})
	var readers sync.WaitGroup
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stopReaders:
					return
				default:
				}
				h.Snapshot(func(view map[string]string) {
					snaps.Add(1)
					for i := range stable {
						if _, ok := view[fmt.Sprintf("%sstable-%03d", prefix, i)]; !ok {
							bad.Add(1)
							badExample.Store(fmt.Sprintf("stable-%03d missing from a view of %d keys", i, len(view)))
							return
						}
					}
				})
			}
		}()
	}

	// The writer rewrites stable keys and creates and deletes churn keys, through its own connection.
	stopWriter := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for n := 0; ; n++ {
			select {
			case <-stopWriter:
				writerDone <- nil
				return
			default:
			}
			key := fmt.Sprintf("%sstable-%03d", prefix, n%stable)
			if _, err := admin.Update(bg, key, []byte(fmt.Sprint(n)), 0); err != nil {
				writerDone <- err
				return
			}
			churn := fmt.Sprintf("%schurn-%d", prefix, n%20)
			if n%40 < 20 {
				_, err = admin.Create(bg, churn, []byte("x"))
			} else {
				err = admin.Delete(bg, churn, 0)
			}
			if err != nil {
				writerDone <- err
				return
			}
		}
	}()

	for round := range 2 {
		before := h.replaces.Load()
		time.Sleep(100 * time.Millisecond)
		ln.SetDown(true)
		time.Sleep(200 * time.Millisecond)
		_, rev, err := admin.List(bg, "/nothing/")
		if err != nil {
			t.Fatal(err)
		}
		srv.Compact(t, rev)
		ln.SetDown(false)
		deadline := time.Now().Add(15 * time.Second)
		for h.replaces.Load() == before {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the follower did not list again after the compaction", round)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	close(stopWriter)
	if err := <-writerDone; err != nil {
		t.Fatalf("writer: %v", err)
	}
	close(stopReaders)
	readers.Wait()
	if n := bad.Load(); n > 0 {
		t.Fatalf("%d of %d snapshots were incomplete during a relist, e.g. %v", n, snaps.Load(), badExample.Load())
	}

	// The view converges to the store.
	kvs, _, err := admin.List(bg, prefix)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, kv := range kvs {
		want[kv.Key] = string(kv.Value)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got map[string]string
		h.Snapshot(func(view map[string]string) { got = maps.Clone(view) })
		if maps.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the view did not converge: %d keys, the store has %d", len(got), len(want))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h.replaces.Load() < 3 || changes.Load() < 3 {
		t.Fatalf("%d listings, %d changes: want the first listing and two relists", h.replaces.Load(), changes.Load())
	}
	t.Logf("%d snapshots, %d listings, %d changes", snaps.Load(), h.replaces.Load(), changes.Load())
	cancel()
	<-followed
}

// Follow reports a put that the handler says does not matter as no change, and one that does as a change.
func TestFollowReportsOnlyChangesThatMatter(t *testing.T) {
	s := etcdtest.Start(t).Store(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := datastore.NewMirror(func(kv datastore.KV) (string, bool) { return string(kv.Value), true },
		func(old string, hadOld bool, new string, hasNew bool) bool { return hadOld != hasNew || old != new })
	changed := make(chan struct{}, 100)
	synced := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		datastore.Follow(ctx, s, "/m/", m, datastore.OnSynced(func() { close(synced) }),
			datastore.OnChange(func() { changed <- struct{}{} }))
	}()
	<-synced
	<-changed // the first listing
	bg := context.Background()
	rev, err := s.Create(bg, "/m/a", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	waitChange(t, changed)
	if _, err := s.Update(bg, "/m/a", []byte("1"), rev); err != nil { // same value
		t.Fatal(err)
	}
	if _, err := s.Create(bg, "/m/b", []byte("2")); err != nil {
		t.Fatal(err)
	}
	waitChange(t, changed) // b, and only b: the rewrite of a came first and did not count
	select {
	case <-changed:
		t.Fatal("a rewrite with the same value counted as a change")
	case <-time.After(200 * time.Millisecond):
	}
	var got map[string]string
	m.Snapshot(func(v map[string]string) { got = maps.Clone(v) })
	if !maps.Equal(got, map[string]string{"/m/a": "1", "/m/b": "2"}) {
		t.Fatalf("view %v", got)
	}
	cancel()
	<-done
}

func waitChange(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no change reported after 10s")
	}
}

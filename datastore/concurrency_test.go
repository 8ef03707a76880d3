package datastore_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// Read-modify-write increments of one counter from many goroutines (and two clients): each revision has
// exactly one winner, every loser sees ErrConflict, and no increment is lost.
func TestConcurrentUpdatesOneWinnerPerRevision(t *testing.T) {
	const writers, increments = 16, 50
	srv := etcdtest.Start(t)
	stores := []datastore.Store{srv.Store(t), srv.Store(t)}
	ctx := context.Background()
	const key = "/concurrency/counter"
	mustCreate(t, stores[0], key, "0")

	var (
		mu        sync.Mutex
		winners   = map[int64]int{} // revision read -> successful updates from it
		conflicts int
	)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		s := stores[w%len(stores)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for done := 0; done < increments; {
				kv, err := s.Get(ctx, key)
				if err != nil {
					errs <- err
					return
				}
				n, err := strconv.Atoi(string(kv.Value))
				if err != nil {
					errs <- err
					return
				}
				_, err = s.Update(ctx, key, []byte(strconv.Itoa(n+1)), kv.Revision)
				mu.Lock()
				switch {
				case err == nil:
					winners[kv.Revision]++
					done++
				case errors.Is(err, datastore.ErrConflict) && !errors.Is(err, datastore.ErrNotFound):
					conflicts++
				default:
					mu.Unlock()
					errs <- err
					return
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	kv, err := stores[1].Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(kv.Value), strconv.Itoa(writers*increments); got != want {
		t.Fatalf("counter %s, want %s (updates lost or doubled)", got, want)
	}
	for rev, n := range winners {
		if n != 1 {
			t.Errorf("%d updates succeeded from revision %d, want 1", n, rev)
		}
	}
	if len(winners) != writers*increments {
		t.Errorf("%d successful updates, want %d", len(winners), writers*increments)
	}
	t.Logf("%d updates, %d conflicts", len(winners), conflicts)
}

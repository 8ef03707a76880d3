package nodereg

import (
	"context"
	"sync"
	"testing"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// Agents of a fresh cluster start together: exactly one creates the
// default pool and none fails (a create that loses the race on the pool
// prefix looks again instead of exiting).
func TestEnsureDefaultPoolRace(t *testing.T) {
	srv := etcdtest.Start(t)
	const agents = 8
	var wg sync.WaitGroup
	created := make(chan bool, agents)
	errs := make(chan error, agents)
	for range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := EnsureDefaultPool(context.Background(), datastore.NewResources(srv.Store(t)), "192.168.0.0/16", "Always", true)
			created <- c
			errs <- err
		}()
	}
	wg.Wait()
	close(created)
	close(errs)
	n := 0
	for c := range created {
		if c {
			n++
		}
	}
	for err := range errs {
		if err != nil {
			t.Errorf("an agent failed to start: %v", err)
		}
	}
	if n != 1 {
		t.Errorf("%d agents created the default pool, want exactly 1", n)
	}
}

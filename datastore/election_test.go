package datastore_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// Two candidates: one leads at a time, and the second takes over when the
// first one's term ends.
func TestElectionOneLeaderAtATime(t *testing.T) {
	srv := etcdtest.Start(t)
	elect := func() *datastore.Election {
		e, err := datastore.NewElection(datastore.Config{Endpoints: srv.Endpoints()}, "/test/leader", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Close() })
		return e
	}
	a, b := elect(), elect()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var leaders atomic.Int32
	var most atomic.Int32
	aIn, aOut := make(chan struct{}), make(chan struct{})
	bIn := make(chan struct{})
	term := func(in, out chan struct{}) func(context.Context) {
		return func(ctx context.Context) {
			n := leaders.Add(1)
			if n > most.Load() {
				most.Store(n)
			}
			close(in)
			select {
			case <-out:
			case <-ctx.Done():
			}
			leaders.Add(-1)
		}
	}
	aDone := make(chan error, 1)
	go func() { aDone <- a.Lead(ctx, "a", term(aIn, aOut)) }()
	<-aIn
	bDone := make(chan error, 1)
	bCtx, bCancel := context.WithCancel(ctx)
	defer bCancel()
	go func() { bDone <- b.Lead(bCtx, "b", term(bIn, make(chan struct{}))) }()
	select {
	case <-bIn:
		t.Fatal("b was elected while a leads")
	case <-time.After(500 * time.Millisecond):
	}
	close(aOut) // a's term ends: a resigns
	if err := <-aDone; err != nil {
		t.Fatalf("a: %v", err)
	}
	select {
	case <-bIn:
	case <-ctx.Done():
		t.Fatal("b was not elected after a resigned")
	}
	bCancel()
	if err := <-bDone; err != nil {
		t.Fatalf("b: %v", err)
	}
	if most.Load() != 1 {
		t.Fatalf("%d leaders at once", most.Load())
	}
}

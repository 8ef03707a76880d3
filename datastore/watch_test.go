package datastore_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

const eventTimeout = 10 * time.Second

// nextEvent waits for one event.
func nextEvent(t *testing.T, ch <-chan datastore.Event) datastore.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed, want an event")
		}
		return ev
	case <-time.After(eventTimeout):
		t.Fatalf("no event within %s", eventTimeout)
	}
	panic("not reached")
}

// wantClosed waits for the channel to close without another event.
func wantClosed(t *testing.T, ch <-chan datastore.Event) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("got %+v, want the channel closed", ev)
		}
	case <-time.After(eventTimeout):
		t.Fatalf("watch channel still open after %s", eventTimeout)
	}
}

// wantQuiet checks that no event arrives for a moment.
func wantQuiet(t *testing.T, ch <-chan datastore.Event) {
	t.Helper()
	select {
	case ev := <-ch:
		t.Fatalf("unexpected event %+v", ev)
	case <-time.After(200 * time.Millisecond):
	}
}

// counter writes the values 1, 2, 3, ... to one key; a watcher must see each exactly once, in order.
type counter struct {
	t     *testing.T
	s     datastore.Store
	key   string
	n     int
	rev   int64
	revOf map[int]int64
}

func newCounter(t *testing.T, s datastore.Store, key string) *counter {
	return &counter{t: t, s: s, key: key, revOf: map[int]int64{}}
}

// write writes the next value.
func (c *counter) write() {
	c.t.Helper()
	c.n++
	var err error
	if c.rev == 0 {
		c.rev, err = c.s.Create(context.Background(), c.key, []byte(strconv.Itoa(c.n)))
	} else {
		c.rev, err = c.s.Update(context.Background(), c.key, []byte(strconv.Itoa(c.n)), c.rev)
	}
	if err != nil {
		c.t.Fatalf("write %d: %v", c.n, err)
	}
	c.revOf[c.n] = c.rev
}

// expect reads events from ch until value to has been seen, and fails on any gap, repeat or reordering.
func (c *counter) expect(ch <-chan datastore.Event, from, to int) {
	c.t.Helper()
	for want := from; want <= to; want++ {
		ev := nextEvent(c.t, ch)
		got, err := strconv.Atoi(string(ev.KV.Value))
		if ev.Type != datastore.EventPut || ev.KV.Key != c.key || err != nil || got != want {
			c.t.Fatalf("event %v %s=%q (err %v), want put %s=%d", ev.Type, ev.KV.Key, ev.KV.Value, ev.Err, c.key, want)
		}
		if rev := c.revOf[want]; rev != 0 && ev.KV.Revision != rev {
			c.t.Fatalf("value %d at revision %d, want %d", want, ev.KV.Revision, rev)
		}
		// The first event's previous value may be compacted away already.
		if prev := strconv.Itoa(want - 1); want > from && string(ev.PrevValue) != prev {
			c.t.Fatalf("value %d: previous value %q, want %q", want, ev.PrevValue, prev)
		}
	}
}

func TestWatchDeliversEveryChangeInOrder(t *testing.T) {
	s := etcdtest.Start(t).Store(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := s.Watch(ctx, "/w/", 0)

	revA1 := mustCreate(t, s, "/w/a", "1")
	mustCreate(t, s, "/x/outside", "ignored")
	revA2, err := s.Update(ctx, "/w/a", []byte("2"), revA1)
	wantErr(t, err, nil)
	revB := mustCreate(t, s, "/w/b", "b")
	wantErr(t, s.Delete(ctx, "/w/a", revA2), nil)
	revTxn, err := s.Txn(ctx, datastore.OpPut("/w/c", []byte("c")), datastore.OpDelete("/w/b", revB))
	wantErr(t, err, nil)

	type want struct {
		typ       datastore.EventType
		key, val  string
		prev      string
		rev, crev int64
	}
	for i, w := range []want{
		{datastore.EventPut, "/w/a", "1", "", revA1, revA1},
		{datastore.EventPut, "/w/a", "2", "1", revA2, revA1},
		{datastore.EventPut, "/w/b", "b", "", revB, revB},
		{datastore.EventDelete, "/w/a", "", "2", revA2 + 2, 0},
		{datastore.EventPut, "/w/c", "c", "", revTxn, revTxn},
		{datastore.EventDelete, "/w/b", "", "b", revTxn, 0},
	} {
		ev := nextEvent(t, ch)
		got := want{ev.Type, ev.KV.Key, string(ev.KV.Value), string(ev.PrevValue), ev.KV.Revision, ev.KV.CreateRevision}
		if got != w || ev.Err != nil {
			t.Fatalf("event %d: got %+v (err %v), want %+v", i, got, ev.Err, w)
		}
	}
	wantQuiet(t, ch)
	cancel()
	wantClosed(t, ch)
}

func TestWatchFromOldRevisionReplays(t *testing.T) {
	s := etcdtest.Start(t).Store(t)
	c := newCounter(t, s, "/replay/k")
	for range 5 {
		c.write()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := s.Watch(ctx, "/replay/", c.revOf[2])
	c.expect(ch, 2, 5)
	c.write()
	c.expect(ch, 6, 6)
	wantQuiet(t, ch)
}

func TestWatchResumesAfterServerRestart(t *testing.T) {
	srv := etcdtest.Start(t)
	s := srv.Store(t)
	c := newCounter(t, srv.Store(t), "/restart/k")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	running := s.Watch(ctx, "/restart/", 0)
	for range 10 {
		c.write()
	}
	c.expect(running, 1, 10)
	fresh := s.Watch(ctx, "/restart/", 0) // no event yet: resumes from the revision it started at

	start := time.Now()
	srv.Restart(t)
	t.Logf("restart took %s", time.Since(start))
	for range 10 {
		c.write()
	}
	c.expect(running, 11, 20)
	c.expect(fresh, 11, 20)
	wantQuiet(t, running)
	wantQuiet(t, fresh)
	if kv, err := s.Get(ctx, "/restart/k"); err != nil || string(kv.Value) != "20" {
		t.Fatalf("after restart: %+v, %v", kv, err)
	}
}

func TestWatchResumesAfterBrokenStream(t *testing.T) {
	srv := etcdtest.Start(t)
	ln := startLink(t, srv.Endpoints()[0])
	watchStore, err := datastore.New(datastore.Config{Endpoints: []string{ln.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watchStore.Close() })
	c := newCounter(t, srv.Store(t), "/broken/k")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	ch := watchStore.Watch(ctx, "/broken/", 0)
	for range 5 {
		c.write()
	}
	c.expect(ch, 1, 5)
	// Cut the stream between events, then while events are in flight.
	ln.Cut()
	for i := range 45 {
		c.write()
		if i%10 == 0 {
			ln.Cut()
		}
	}
	c.expect(ch, 6, 50)
	wantQuiet(t, ch)
	if n := ln.accepted.Load(); n < 2 {
		t.Fatalf("the link accepted %d connections: the stream was never broken", n)
	}
}

func TestWatchFromCompactedRevision(t *testing.T) {
	srv := etcdtest.Start(t)
	s := srv.Store(t)
	c := newCounter(t, s, "/compact/k")
	for range 5 {
		c.write()
	}
	srv.Compact(t, c.revOf[4])

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := s.Watch(ctx, "/compact/", c.revOf[2])
	ev := nextEvent(t, ch)
	if ev.Type != datastore.EventError || !errors.Is(ev.Err, datastore.ErrCompacted) || ev.CompactRevision != c.revOf[4] {
		t.Fatalf("got %+v, want an error event wrapping ErrCompacted at revision %d", ev, c.revOf[4])
	}
	t.Log(ev.Err)
	wantClosed(t, ch)

	// From the compaction revision on, the history is still there.
	c.expect(s.Watch(ctx, "/compact/", c.revOf[4]), 4, 5)
}

// The resume point of a watch can be compacted while the stream is down: the watch reports it rather than
// skipping what it missed.
func TestWatchResumePointCompacted(t *testing.T) {
	srv := etcdtest.Start(t)
	ln := startLink(t, srv.Endpoints()[0])
	watchStore, err := datastore.New(datastore.Config{Endpoints: []string{ln.Endpoint()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watchStore.Close() })
	c := newCounter(t, srv.Store(t), "/lost/k")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	ch := watchStore.Watch(ctx, "/lost/", 0)
	for range 3 {
		c.write()
	}
	c.expect(ch, 1, 3)
	ln.SetDown(true)
	for range 3 {
		c.write()
	}
	srv.Compact(t, c.revOf[6])
	ln.SetDown(false)

	ev := nextEvent(t, ch)
	if ev.Type != datastore.EventError || !errors.Is(ev.Err, datastore.ErrCompacted) || ev.CompactRevision != c.revOf[6] {
		t.Fatalf("got %+v, want an error event wrapping ErrCompacted at revision %d", ev, c.revOf[6])
	}
	wantClosed(t, ch)
}

func TestWatchEndsWhenStoreCloses(t *testing.T) {
	srv := etcdtest.Start(t)
	s, err := datastore.New(datastore.Config{Endpoints: srv.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	ch := s.Watch(context.Background(), "/", 0)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wantClosed(t, ch)
}

func TestWatchManyPrefixes(t *testing.T) {
	srv := etcdtest.Start(t)
	s := srv.Store(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 20
	chans := make([]<-chan datastore.Event, n)
	for i := range n {
		chans[i] = s.Watch(ctx, fmt.Sprintf("/many/%02d/", i), 0)
	}
	for i := range n {
		mustCreate(t, s, fmt.Sprintf("/many/%02d/k", i), strconv.Itoa(i))
	}
	for i, ch := range chans {
		ev := nextEvent(t, ch)
		if ev.KV.Key != fmt.Sprintf("/many/%02d/k", i) {
			t.Fatalf("watch %d got %s", i, ev.KV.Key)
		}
	}
}

package datastore

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// Handler receives what Follow reads under one prefix. Follow calls it from one goroutine.
type Handler interface {
	// Replace installs a complete listing of the prefix, sorted by key: the first one, and again after a
	// compaction or a broken watch. It must swap in the new view at once (build it aside, then exchange it
	// under the handler's lock), so that a reader never sees a partial or empty view while a listing is
	// applied. A relist of a view that did not change is a no-op for the reader.
	Replace(kvs []KV)
	// Apply applies one put or delete seen after the listing. It returns whether the change matters to the
	// handler's owner (Follow then calls the OnChange callback).
	Apply(ev Event) (changed bool)
}

// FollowOption changes what Follow reports.
type FollowOption func(*followOptions)

type followOptions struct {
	onChange func()
	onSynced func()
	log      *slog.Logger
	retry    time.Duration
}

// OnChange is called after every Replace and after every Apply that returned true.
func OnChange(fn func()) FollowOption { return func(o *followOptions) { o.onChange = fn } }

// OnSynced is called once, after the first Replace.
func OnSynced(fn func()) FollowOption { return func(o *followOptions) { o.onSynced = fn } }

// FollowLogger is where Follow reports failed listings and broken watches (default slog.Default()).
func FollowLogger(l *slog.Logger) FollowOption { return func(o *followOptions) { o.log = l } }

// FollowRetry is how long Follow waits after a failed listing before it lists again (default 1s).
func FollowRetry(d time.Duration) FollowOption { return func(o *followOptions) { o.retry = d } }

// Follow keeps h equal to the keys under prefix until ctx is done: it lists the prefix and hands the listing
// to h.Replace, then applies the watch's events from the listing's revision + 1 with h.Apply. After a
// compaction or a watch that ended for another reason it lists again and hands h the complete new listing in
// one Replace: a handler never sees a relist as a reset followed by a refill.
//
// The revision Follow resumes from is the listing's; it is not given to the handler. A backend with a
// different notion of revision (a Kubernetes resourceVersion) only has to honour List's and Watch's contract.
func Follow(ctx context.Context, store ListWatcher, prefix string, h Handler, opts ...FollowOption) {
	o := followOptions{onChange: func() {}, onSynced: func() {}, log: slog.Default(), retry: time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	first := true
	for ctx.Err() == nil {
		kvs, rev, err := store.List(ctx, prefix)
		if err != nil {
			if ctx.Err() == nil {
				o.log.Warn("list datastore; retrying", "prefix", prefix, "err", err)
				pause(ctx, o.retry)
			}
			continue
		}
		h.Replace(kvs)
		o.onChange()
		if first {
			o.onSynced()
			first = false
		}
		for ev := range store.Watch(ctx, prefix, rev+1) {
			switch ev.Type {
			case EventPut, EventDelete:
				if h.Apply(ev) {
					o.onChange()
				}
			case EventError:
				if !errors.Is(ev.Err, ErrCompacted) && ctx.Err() == nil {
					o.log.Warn("watch datastore; listing again", "prefix", prefix, "err", ev.Err)
				}
			}
		}
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Mirror is a ready-made Handler: a copy of every key under a prefix that readers can take consistent
// snapshots of while Follow updates it. Decode is optional; a value it rejects is kept out of the mirror
// (the owner's checker reports such records).
type Mirror[T any] struct {
	decode func(KV) (T, bool)
	// changed, if set, says whether a put (old, new; hadOld false for a new key) or a delete matters.
	changed func(old T, hadOld bool, new T, hasNew bool) bool

	mu   sync.Mutex
	view map[string]T
}

// NewMirror returns an empty mirror that decodes values with decode (which returns false to skip a value)
// and reports every change as mattering unless changed says otherwise (changed may be nil).
func NewMirror[T any](decode func(KV) (T, bool), changed func(old T, hadOld bool, new T, hasNew bool) bool) *Mirror[T] {
	return &Mirror[T]{decode: decode, changed: changed, view: map[string]T{}}
}

// Replace swaps in a view built from kvs.
func (m *Mirror[T]) Replace(kvs []KV) {
	view := make(map[string]T, len(kvs))
	for _, kv := range kvs {
		if v, ok := m.decode(kv); ok {
			view[kv.Key] = v
		}
	}
	m.mu.Lock()
	m.view = view
	m.mu.Unlock()
}

// Apply applies one put or delete.
func (m *Mirror[T]) Apply(ev Event) bool {
	var v T
	has := false
	if ev.Type == EventPut {
		v, has = m.decode(ev.KV)
	}
	m.mu.Lock()
	old, had := m.view[ev.KV.Key]
	if has {
		m.view[ev.KV.Key] = v
	} else {
		delete(m.view, ev.KV.Key)
	}
	m.mu.Unlock()
	if !had && !has {
		return false
	}
	if m.changed == nil {
		return true
	}
	return m.changed(old, had, v, has)
}

// Snapshot calls fn with the current view. fn must not keep the map or change it.
func (m *Mirror[T]) Snapshot(fn func(view map[string]T)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fn(m.view)
}

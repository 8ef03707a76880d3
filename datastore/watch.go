package datastore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// How long a watch waits before it opens a new etcd watch after one ended without progress.
const (
	watchRetryMin = 50 * time.Millisecond
	watchRetryMax = 2 * time.Second
)

// Watch streams the changes under prefix from fromRev (inclusive; 0 = from now) until ctx is done or the store
// is closed. See Store.Watch. With fromRev 0 it reads the current revision before it returns (one round trip):
// every change made after Watch returns is delivered.
//
// The etcd client already resumes a broken stream from the revision after the last event it received. On top
// of that, a watch that the client gives up on (leader lost, server gone for longer) is opened again here
// from the revision after the last event delivered, and events below that revision are dropped, so a resume
// at any layer neither loses nor repeats an event.
func (e *Etcd) Watch(ctx context.Context, prefix string, fromRev int64) <-chan Event {
	out := make(chan Event)
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(e.done, cancel)
	w := &watcher{e: e, prefix: prefix, next: fromRev, out: out}
	if fromRev == 0 {
		// "From now" is pinned to a revision read before Watch returns, so every change made after it
		// returns is delivered, and a resume before the first event knows where to start. (The etcd
		// watch's own created-revision is read after the watch is registered and can be later than its
		// real start.) If etcd cannot be reached now, the watch starts when it can.
		if rev, err := e.currentRevision(ctx, prefix); err == nil {
			w.next = rev + 1
		}
	}
	go func() {
		defer close(out)
		defer stop()
		defer cancel()
		w.run(ctx)
	}()
	return out
}

type watcher struct {
	e      *Etcd
	prefix string
	// next is the first revision not delivered yet; 0 until the start of a "from now" watch is known.
	next int64
	out  chan<- Event
}

func (w *watcher) run(ctx context.Context) {
	wait := watchRetryMin
	for {
		progressed, done := w.stream(ctx)
		if done {
			return
		}
		if progressed {
			wait = watchRetryMin
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, watchRetryMax)
	}
}

// stream runs one etcd watch until it ends. done says the watch is over for good (ctx done, compacted, or an
// error that retrying cannot fix, reported as the last event).
func (w *watcher) stream(ctx context.Context) (progressed, done bool) {
	if w.next == 0 {
		rev, err := w.e.currentRevision(ctx, w.prefix)
		if err != nil {
			return false, w.over(ctx)
		}
		w.next = rev + 1
	}

	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := w.e.cli.Watch(sctx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(w.next),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify())
	for resp := range wch {
		if resp.CompactRevision != 0 {
			w.send(ctx, Event{
				Type: EventError,
				Err: fmt.Errorf("watch %s from revision %d: %w (compacted up to %d): list again",
					w.prefix, w.next, ErrCompacted, resp.CompactRevision),
				CompactRevision: resp.CompactRevision,
			})
			return progressed, true
		}
		if err := resp.Err(); err != nil {
			if w.over(ctx) {
				return progressed, true
			}
			if permanentWatchError(err) {
				w.send(ctx, Event{Type: EventError, Err: fmt.Errorf("watch %s from revision %d: %w", w.prefix, w.next, err)})
				return progressed, true
			}
			return progressed, false // the client closes the channel after an error: open a new watch
		}
		for _, ev := range resp.Events {
			if ev.Kv.ModRevision < w.next {
				continue // delivered before a resume
			}
			if !w.send(ctx, eventFrom(ev)) {
				return progressed, true
			}
		}
		if n := len(resp.Events); n > 0 {
			w.next = max(w.next, resp.Events[n-1].Kv.ModRevision+1)
			progressed = true
		} else if resp.IsProgressNotify() {
			// Every change up to the header revision has been sent.
			w.next = max(w.next, resp.Header.Revision+1)
		}
	}
	if w.over(ctx) {
		return progressed, true
	}
	if w.e.cli.Ctx().Err() != nil {
		w.send(ctx, Event{Type: EventError, Err: fmt.Errorf("watch %s: the etcd client was closed: %w", w.prefix, ErrUnavailable)})
		return progressed, true
	}
	return progressed, false
}

// over says whether the watch's caller or the store ended it (the store's end reaches ctx a moment later).
func (w *watcher) over(ctx context.Context) bool {
	return ctx.Err() != nil || w.e.done.Err() != nil
}

func (w *watcher) send(ctx context.Context, ev Event) bool {
	select {
	case w.out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// currentRevision is the store revision now, read with a request that touches one key at most.
func (e *Etcd) currentRevision(ctx context.Context, key string) (int64, error) {
	ctx, cancel, start := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, key, clientv3.WithCountOnly())
	if err != nil {
		return 0, e.wrap("get", key, start, err)
	}
	return resp.Header.Revision, nil
}

// permanentWatchError says whether opening the watch again cannot help: the request itself is refused. Such
// an error ends the watch with an EventError; anything else (unavailable, leader lost, stream reset) is
// retried.
func permanentWatchError(err error) bool {
	var code codes.Code
	var etcdErr rpctypes.EtcdError
	if errors.As(err, &etcdErr) {
		code = etcdErr.Code()
	} else if s, ok := status.FromError(err); ok {
		code = s.Code()
	} else {
		return false
	}
	switch code {
	case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.FailedPrecondition, codes.OutOfRange:
		return true
	}
	return false
}

func eventFrom(ev *clientv3.Event) Event {
	var prev []byte
	if ev.PrevKv != nil {
		prev = ev.PrevKv.Value
	}
	if ev.Type == mvccpb.DELETE {
		return Event{Type: EventDelete, KV: KV{Key: string(ev.Kv.Key), Revision: ev.Kv.ModRevision}, PrevValue: prev}
	}
	return Event{Type: EventPut, KV: kvFrom(ev.Kv), PrevValue: prev}
}

package netstate

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/rhizome-net/rhizome/datastore"
)

// mirror receives what follow reads under one prefix: replace with a full
// listing, then put and del per key. Each returns whether the change
// matters to the owner (follow then calls changed).
//
// replace must build the new contents completely and swap them in at once:
// readers of the mirror never see a half-filled state (an empty one would
// withdraw the node's own blocks and remove its BGP peers).
type mirror interface {
	replace(kvs []datastore.KV)
	put(kv datastore.KV) bool
	del(key string) bool
}

// follow keeps m equal to the keys under prefix: it lists, then applies the
// watch's events from the listing's revision on; after a compaction or a
// broken watch it lists again. changed is called after every listing and
// every event that matters; synced once after the first listing.
func follow(ctx context.Context, store datastore.Store, prefix string, m mirror, changed func(), synced func(), log *slog.Logger) {
	first := true
	for ctx.Err() == nil {
		kvs, rev, err := store.List(ctx, prefix)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("list datastore", "prefix", prefix, "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		m.replace(kvs)
		changed()
		if first {
			synced()
			first = false
		}
		for ev := range store.Watch(ctx, prefix, rev+1) {
			var matters bool
			switch ev.Type {
			case datastore.EventPut:
				matters = m.put(ev.KV)
			case datastore.EventDelete:
				matters = m.del(ev.KV.Key)
			case datastore.EventError:
				if !errors.Is(ev.Err, datastore.ErrCompacted) && ctx.Err() == nil {
					log.Warn("watch datastore; listing again", "prefix", prefix, "err", ev.Err)
				}
			}
			if matters {
				changed()
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

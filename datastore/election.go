package datastore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrLeadershipLost: the elected term ended because the store stopped
// vouching for it (etcd restarted, the lease expired).
var ErrLeadershipLost = errors.New("leadership lost")

// Election elects one leader at a time among the holders of one prefix,
// with etcd's concurrency package: a lease-backed session per campaign, so
// a leader that stops answering loses the role after the session's TTL.
//
// It has an etcd client of its own, closed by Close: a campaign cancelled
// while etcd is unreachable resigns with the client's context and would
// otherwise hold its owner's exit forever.
type Election struct {
	store  *Etcd
	prefix string
	ttl    time.Duration
}

// NewElection connects an election under prefix. ttl (rounded to seconds,
// at least one) is how long a leader that vanished keeps the role.
func NewElection(cfg Config, prefix string, ttl time.Duration) (*Election, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, fmt.Errorf("election %s: %w", prefix, err)
	}
	return &Election{store: s, prefix: prefix, ttl: ttl}, nil
}

// Lead campaigns as id until elected, then calls term with a context that
// ends when ctx does or the leadership is lost, and resigns when term
// returns. It returns nil when ctx ended, ErrLeadershipLost (wrapped) when
// the session behind the term was lost, or why the campaign failed.
func (e *Election) Lead(ctx context.Context, id string, term func(ctx context.Context)) error {
	ttl := max(int(e.ttl/time.Second), 1)
	session, err := concurrency.NewSession(e.store.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("election %s: session: %w", e.prefix, err)
	}
	defer session.Close()
	el := concurrency.NewElection(session, e.prefix)
	if err := el.Campaign(ctx, id); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("election %s: campaign as %s: %w", e.prefix, id, err)
	}
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-session.Done():
			cancel()
		case <-tctx.Done():
		}
	}()
	term(tctx)
	rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer rcancel()
	_ = el.Resign(rctx)
	select {
	case <-session.Done():
		if ctx.Err() == nil {
			return fmt.Errorf("election %s: %s: %w", e.prefix, id, ErrLeadershipLost)
		}
	default:
	}
	return nil
}

// Close ends every campaign and term and closes the election's client.
func (e *Election) Close() error { return e.store.Close() }

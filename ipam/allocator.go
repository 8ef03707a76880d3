package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// Allocator hands out addresses for one node. It keeps the node's affine
// blocks and their revisions in memory and runs every operation through one
// goroutine that batches what is pending into one transaction (group
// commit): under load, one etcd round trip serves many requests.
type Allocator struct {
	node  string
	store datastore.Store
	res   *datastore.Resources
	log   *slog.Logger
	opts  options

	snap atomic.Pointer[snapshot]
	ops  chan *op
	// reloaded tells the loop a new snapshot is in: pools may be gone.
	reloaded chan struct{}

	// labelsMu orders snapshot stores against SetNodeLabels; pendingLabels
	// are labels set ahead of the store, kept until a load shows them.
	labelsMu      sync.Mutex
	pendingLabels map[string]string

	// The loop goroutine owns eng and emptySince.
	eng        *engine
	emptySince map[netip.Prefix]time.Time

	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed chan struct{}
}

type options struct {
	log          *slog.Logger
	idleRelease  time.Duration
	maxBatch     int
	writeTimeout time.Duration
}

// Option configures an Allocator.
type Option func(*options)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithIdleRelease sets how long a non-first affine block must stay empty
// before it is given back (default 5 minutes; 0 keeps empty blocks).
func WithIdleRelease(d time.Duration) Option { return func(o *options) { o.idleRelease = d } }

// WithMaxBatch caps how many operations share one transaction (default 128).
func WithMaxBatch(n int) Option { return func(o *options) { o.maxBatch = n } }

// WithWriteTimeout bounds each transaction (default 10 s).
func WithWriteTimeout(d time.Duration) Option { return func(o *options) { o.writeTimeout = d } }

type opKind int

const (
	opAssign opKind = iota
	opAssignIP
	opRelease
	opReleaseIP
)

type op struct {
	kind   opKind
	ctx    context.Context
	req    *Request
	addr   netip.Addr
	seq    uint64
	attr   Attribute
	handle string
	reply  chan opResult
}

type opResult struct {
	assigned []Assignment
	released []netip.Addr
	err      error
}

// NewAllocator loads node's affine blocks and the pools, finishes claims an
// earlier run left half done, and starts serving. Close stops it.
func NewAllocator(ctx context.Context, store datastore.Store, node string, opts ...Option) (*Allocator, error) {
	if node == "" || strings.Contains(node, "/") {
		return nil, fmt.Errorf("%w: node name %q", ErrBadRequest, node)
	}
	o := options{log: slog.Default(), idleRelease: 5 * time.Minute, maxBatch: 128, writeTimeout: 10 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	a := &Allocator{
		node:       node,
		store:      store,
		res:        datastore.NewResources(store),
		log:        o.log.With("node", node),
		opts:       o,
		ops:        make(chan *op, 1024),
		reloaded:   make(chan struct{}, 1),
		eng:        newEngine(store, node, true),
		emptySince: map[netip.Prefix]time.Time{},
		closed:     make(chan struct{}),
	}
	snap, err := loadSnapshot(ctx, a.res, node)
	if err != nil {
		return nil, fmt.Errorf("ipam for node %s: %w", node, err)
	}
	a.snap.Store(snap)
	if err := a.eng.load(ctx); err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Add(2)
	go a.loop(runCtx)
	go a.watch(runCtx)
	return a, nil
}

// Close stops the allocator. Operations in flight get ErrAllocatorDown.
func (a *Allocator) Close() {
	select {
	case <-a.closed:
		return
	default:
	}
	close(a.closed)
	a.cancel()
	a.wg.Wait()
}

// Node is the node the allocator serves.
func (a *Allocator) Node() string { return a.node }

// AutoAssign hands out req.Count addresses from the pools the request
// selects. The addresses and the handle are stored before it returns. When
// it returns an error the addresses may still have been stored (a timeout,
// a cancelled ctx): releasing the handle cleans up either way.
func (a *Allocator) AutoAssign(ctx context.Context, req Request) ([]Assignment, error) {
	r, err := a.do(ctx, &op{kind: opAssign, req: &req})
	return r.assigned, err
}

// AssignIP hands out one given address (a fixed pod address).
func (a *Allocator) AssignIP(ctx context.Context, addr netip.Addr, attr Attribute) (Assignment, error) {
	if attr.Use == "" {
		attr.Use = api.UseWorkload
	}
	attr.Node = a.node
	if attr.Handle == "" || strings.ContainsAny(attr.Handle, "/ \t\n") {
		return Assignment{}, fmt.Errorf("%w: handle %q must be non-empty, without '/' or spaces", ErrBadRequest, attr.Handle)
	}
	r, err := a.do(ctx, &op{kind: opAssignIP, addr: addr, attr: attr})
	if err != nil {
		return Assignment{}, err
	}
	return r.assigned[0], nil
}

// ReleaseHandle frees every address of handle. Releasing an unknown handle
// succeeds and frees nothing.
func (a *Allocator) ReleaseHandle(ctx context.Context, handle string) ([]netip.Addr, error) {
	r, err := a.do(ctx, &op{kind: opRelease, handle: handle})
	return r.released, err
}

// ReleaseIP frees one address; with seq != 0 only the allocation with that
// sequence number. It reports whether it freed anything.
func (a *Allocator) ReleaseIP(ctx context.Context, addr netip.Addr, seq uint64) (bool, error) {
	r, err := a.do(ctx, &op{kind: opReleaseIP, addr: addr, seq: seq})
	return len(r.released) > 0, err
}

func (a *Allocator) do(ctx context.Context, o *op) (opResult, error) {
	o.ctx = ctx
	o.reply = make(chan opResult, 1)
	select {
	case a.ops <- o:
	case <-ctx.Done():
		return opResult{}, ctx.Err()
	case <-a.closed:
		return opResult{}, ErrAllocatorDown
	}
	select {
	case r := <-o.reply:
		return r, r.err
	case <-ctx.Done():
		return opResult{}, ctx.Err()
	case <-a.closed:
		return opResult{}, ErrAllocatorDown
	}
}

// loop serves operations in batches until ctx ends.
func (a *Allocator) loop(ctx context.Context) {
	defer a.wg.Done()
	tick := time.NewTicker(a.idleTick())
	defer tick.Stop()
	for {
		var batch []*op
		select {
		case o := <-a.ops:
			batch = append(batch, o)
		case <-tick.C:
			a.releaseOrphanBlocks(ctx)
			a.releaseIdleBlocks(ctx)
			continue
		case <-a.reloaded:
			a.releaseOrphanBlocks(ctx)
			continue
		case <-ctx.Done():
			return
		}
	drain:
		for len(batch) < a.opts.maxBatch {
			select {
			case o := <-a.ops:
				batch = append(batch, o)
			default:
				break drain
			}
		}
		a.process(ctx, batch)
		a.releaseOrphanBlocks(ctx) // a release may have emptied one
	}
}

func (a *Allocator) idleTick() time.Duration {
	if a.opts.idleRelease <= 0 {
		return time.Hour
	}
	return min(max(a.opts.idleRelease/4, 10*time.Millisecond), 30*time.Second)
}

// process plans the batch on copies of the blocks it touches and commits
// it in one transaction. A lost guard (another writer changed a block or a
// handle) re-reads what changed and plans again.
func (a *Allocator) process(ctx context.Context, batch []*op) {
	pending := batch
	for attempt := 0; len(pending) > 0; attempt++ {
		wctx, cancel := context.WithTimeout(ctx, a.opts.writeTimeout)
		p := a.eng.newPlan(wctx, a.snap.Load())
		results := make(map[*op]opResult, len(pending))
		refused := make(map[*op]opResult)
		var planned []*op
		for _, o := range pending {
			if err := o.ctx.Err(); err != nil {
				o.reply <- opResult{err: err}
				continue
			}
			r := a.apply(p, o)
			planned = append(planned, o)
			if r.err != nil && !retryable(r.err) {
				// Fails on its own, the rest of the batch goes on. The
				// refusal may rest on what an earlier operation of the
				// batch planned (an address it took, a block it filled),
				// so it is answered with the batch, and planned again if
				// the batch is.
				refused[o] = r
				continue
			}
			results[o] = r
		}
		var err error
		if planErr := firstErr(results); planErr != nil {
			err = planErr // a store error while planning: retry or fail all
		} else {
			err = p.commit()
		}
		cancel()
		if err == nil {
			for _, o := range planned {
				if r, ok := refused[o]; ok {
					o.reply <- r
					continue
				}
				o.reply <- results[o]
			}
			a.noteEmpty(p)
			return
		}
		if !retryable(err) || attempt >= 8 || ctx.Err() != nil {
			// Without a lost guard the outcome of the write is unknown:
			// fail the operations; releasing their handles cleans up.
			for _, o := range planned {
				o.reply <- opResult{err: fmt.Errorf("ipam write for node %s: %w", a.node, err)}
			}
			return
		}
		pending = planned
	}
}

// apply plans one operation.
func (a *Allocator) apply(p *plan, o *op) opResult {
	switch o.kind {
	case opAssign:
		as, err := p.planAssign(o.req)
		return opResult{assigned: as, err: err}
	case opAssignIP:
		as, err := p.planAssignIP(o.addr, o.attr)
		return opResult{assigned: []Assignment{as}, err: err}
	case opRelease:
		rel, err := p.planRelease(o.handle)
		return opResult{released: rel, err: err}
	case opReleaseIP:
		_, ok, err := p.planReleaseIP(o.addr, o.seq)
		if ok {
			return opResult{released: []netip.Addr{o.addr}}
		}
		return opResult{err: err}
	}
	return opResult{err: fmt.Errorf("unknown operation %d", o.kind)}
}

// retryable errors are lost guards: nothing was written, and a fresh read
// and another plan can cure them. Anything else (an unreachable store, a
// timeout) may have been applied or not, so it is not retried here.
func retryable(err error) bool {
	return errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrExists)
}

func firstErr(rs map[*op]opResult) error {
	for _, r := range rs {
		if r.err != nil {
			return r.err
		}
	}
	return nil
}

// noteEmpty records when affine blocks became empty, for idle release.
func (a *Allocator) noteEmpty(p *plan) {
	for c, w := range p.blocks {
		if !w.changed {
			continue
		}
		if w.b.empty() {
			if _, ok := a.emptySince[c]; !ok {
				a.emptySince[c] = time.Now()
			}
		} else {
			delete(a.emptySince, c)
		}
	}
}

// releaseOrphanBlocks gives back at once the empty affine blocks that no
// pool holds any more (their pool was deleted), as Calico releases a
// deleted pool's affinities: nothing can be allocated from them, and the
// node would go on routing and advertising them. Blocks that still hold
// addresses stay until those are released.
func (a *Allocator) releaseOrphanBlocks(ctx context.Context) {
	snap := a.snap.Load()
	var orphans []netip.Prefix
	for c, cb := range a.eng.cache {
		if !cb.stale && cb.b.empty() && snap.poolOf(c.Addr()) == nil {
			orphans = append(orphans, c)
		}
	}
	for _, c := range orphans {
		a.releaseEmpty(ctx, c, "no pool holds it")
	}
}

// releaseEmpty gives back the empty affine block c, saying why.
func (a *Allocator) releaseEmpty(ctx context.Context, c netip.Prefix, why string) {
	wctx, cancel := context.WithTimeout(ctx, a.opts.writeTimeout)
	ok, err := a.eng.releaseBlock(wctx, c, a.eng.cache[c].rev)
	cancel()
	delete(a.emptySince, c)
	if err != nil {
		a.log.Warn("release empty block", "block", c, "why", why, "err", err)
		return
	}
	if ok {
		a.log.Info("released empty block", "block", c, "why", why)
	}
}

// releaseIdleBlocks gives back affine blocks that stayed empty for the idle
// period, keeping at least one block.
func (a *Allocator) releaseIdleBlocks(ctx context.Context) {
	if a.opts.idleRelease <= 0 || len(a.emptySince) == 0 {
		return
	}
	var idle []netip.Prefix
	for c, since := range a.emptySince {
		cb, ok := a.eng.cache[c]
		if !ok || !cb.b.empty() || cb.stale {
			delete(a.emptySince, c)
			continue
		}
		if time.Since(since) >= a.opts.idleRelease {
			idle = append(idle, c)
		}
	}
	sort.Slice(idle, func(i, j int) bool { return idle[i].Addr().Compare(idle[j].Addr()) < 0 })
	for _, c := range idle {
		if len(a.eng.cache) <= 1 {
			return
		}
		a.releaseEmpty(ctx, c, "idle")
	}
}

// watch keeps the snapshot (pools, reservations, IPAM config, this node's
// labels) current: it notes the store revision, loads, then waits for any
// relevant change after that revision.
func (a *Allocator) watch(ctx context.Context) {
	defer a.wg.Done()
	for ctx.Err() == nil {
		_, rev, err := a.store.List(ctx, configKey)
		if err == nil {
			var snap *snapshot
			if snap, err = loadSnapshot(ctx, a.res, a.node); err == nil {
				a.storeSnapshot(snap)
				select {
				case a.reloaded <- struct{}{}:
				default:
				}
				a.waitForChange(ctx, rev+1)
				continue
			}
		}
		if ctx.Err() == nil {
			a.log.Warn("reload pools", "err", err)
		}
		sleep(ctx, time.Second)
	}
}

// waitForChange returns when something the snapshot depends on changes
// after rev (or the watch fails).
func (a *Allocator) waitForChange(ctx context.Context, rev int64) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := a.store.Watch(wctx, datastore.ResourcePrefix, rev)
	cfg := a.store.Watch(wctx, configKey, rev)
	relevant := func(key string) bool {
		return strings.HasPrefix(key, datastore.ResourceKindPrefix(api.KindIPPool)) ||
			strings.HasPrefix(key, datastore.ResourceKindPrefix(api.KindIPReservation)) ||
			key == datastore.ResourceKey(api.KindNode, a.node)
	}
	for {
		select {
		case ev, ok := <-res:
			if !ok || ev.Type == datastore.EventError || relevant(ev.KV.Key) {
				return
			}
		case <-cfg:
			return
		case <-ctx.Done():
			return
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// Refresh reloads pools, reservations, configuration and labels now,
// instead of waiting for the watch.
func (a *Allocator) Refresh(ctx context.Context) error {
	snap, err := loadSnapshot(ctx, a.res, a.node)
	if err != nil {
		return err
	}
	a.storeSnapshot(snap)
	return nil
}

// SetNodeLabels makes pool choice use these node labels at once, ahead of
// the store: the agent calls it before it writes the labels to the Node,
// so a pod created after the Node shows new labels is placed by them.
// They hold until a reload from the store shows the same labels.
func (a *Allocator) SetNodeLabels(l map[string]string) {
	a.labelsMu.Lock()
	defer a.labelsMu.Unlock()
	a.pendingLabels = maps.Clone(l)
	a.snap.Store(a.snap.Load().withLabels(a.pendingLabels))
}

// storeSnapshot installs a freshly loaded snapshot, keeping labels set by
// SetNodeLabels that the store does not show yet.
func (a *Allocator) storeSnapshot(s *snapshot) {
	a.labelsMu.Lock()
	defer a.labelsMu.Unlock()
	if a.pendingLabels != nil {
		if maps.Equal(map[string]string(s.nodeLabels), a.pendingLabels) {
			a.pendingLabels = nil
		} else {
			s = s.withLabels(a.pendingLabels)
		}
	}
	a.snap.Store(s)
}

// ByHandle returns the addresses a handle holds.
func ByHandle(ctx context.Context, store datastore.Reader, handle string) ([]netip.Addr, error) {
	kv, err := store.Get(ctx, handleKey(handle))
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var h Handle
	if err := json.Unmarshal(kv.Value, &h); err != nil {
		return nil, fmt.Errorf("handle %s: %w", handle, err)
	}
	var out []netip.Addr
	for key := range h.Blocks {
		cidr, err := netip.ParsePrefix(key)
		if err != nil {
			continue
		}
		bkv, err := store.Get(ctx, blockKey(cidr))
		if errors.Is(err, datastore.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		b, err := decodeBlock(bkv.Value)
		if err != nil {
			return nil, err
		}
		for _, n := range b.ordinalsOf(handle) {
			out = append(out, addrAt(cidr, n))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out, nil
}

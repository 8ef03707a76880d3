package ipam

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// beforeTxn is a FAKE store (a wrapper of the real one) for a fault that
// cannot be caused from outside reliably: another node's write landing
// between the allocator's planning and its commit. Once armed, it runs
// hook before the next transaction.
type beforeTxn struct {
	datastore.Store
	mu   sync.Mutex
	hook func()
}

func (s *beforeTxn) arm(hook func()) { s.mu.Lock(); s.hook = hook; s.mu.Unlock() }

func (s *beforeTxn) Txn(ctx context.Context, ops ...datastore.Op) (int64, error) {
	s.mu.Lock()
	hook := s.hook
	s.hook = nil
	s.mu.Unlock()
	if hook != nil {
		hook()
	}
	return s.Store.Txn(ctx, ops...)
}

// Two pods of one node ask for the same fixed address in one batch: the
// second is refused because the first took it. If the batch's write then
// loses to another node, which took the address meanwhile, the refusal
// must name that node's pod, the holder, not the first pod, which never
// held the address (porcupine found this in the chaos runs).
func TestRefusalWaitsForItsBatch(t *testing.T) {
	c := newCluster(t)
	c.apply(newTestPool("p", "10.0.0.0/24", 26))
	ctx := context.Background()
	other := c.allocator("node-b")
	// An address of node-b's block: node-a's requests borrow it.
	addr := assign(t, other, "b-first").Addr.Next()

	store := &beforeTxn{Store: c.store()}
	a, err := NewAllocator(ctx, store, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	// One batch, built by hand: the allocator's loop would batch these
	// only when they arrive together.
	a.Close() // stops the loop: process runs here alone
	mk := func(handle string) *op {
		return &op{kind: opAssignIP, ctx: ctx, addr: addr, attr: Attribute{Handle: handle, Namespace: "ns", Pod: handle, Node: "node-a", Use: api.UseWorkload},
			reply: make(chan opResult, 1)}
	}
	first, second := mk("a-first"), mk("a-second")
	store.arm(func() {
		if _, err := other.AssignIP(ctx, addr, Attribute{Handle: "b-winner", Namespace: "ns", Pod: "winner"}); err != nil {
			t.Errorf("node-b's assignment: %v", err)
		}
	})
	a.process(ctx, []*op{first, second})
	for _, o := range []*op{first, second} {
		select {
		case r := <-o.reply:
			if !errors.Is(r.err, ErrAddressInUse) || !strings.Contains(r.err.Error(), "b-winner") {
				t.Errorf("%s: %v, want address in use, held by node-b's b-winner", o.attr.Handle, r.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s got no answer", o.attr.Handle)
		}
	}
}

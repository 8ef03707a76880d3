// Package datastore is rhizome's small key-value store over etcd v3: reads, guarded writes and watches, with
// conflicts, absence and unavailability as distinct errors.
//
// Every write that matters is guarded: created only if absent, or updated and deleted only at the revision the
// writer read. Values are opaque bytes; encoding belongs to the callers. Tests run against a real embedded etcd
// (package etcdtest); there is no in-memory imitation of etcd's semantics.
package datastore

import (
	"context"
	"errors"
)

// Errors returned by a Store wrap one of these sentinels (test with errors.Is) and name the key and what was
// expected, e.g. "update /rhizome/v1/resources/ippool/a: revision conflict (expected 12, current 15)".
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: a create found the key already there.
	ErrExists = errors.New("already exists")
	// ErrConflict: a guarded write lost, someone else wrote first. Read again and retry.
	ErrConflict = errors.New("revision conflict")
	// ErrUnavailable: etcd did not answer in time (not reachable, no leader). A write that fails with it may or
	// may not have been applied.
	ErrUnavailable = errors.New("datastore unavailable")
	// ErrCompacted: a watch's start revision is no longer available. List again and watch from the list's
	// revision + 1.
	ErrCompacted = errors.New("revision compacted")
)

// KV is one stored key and its value.
type KV struct {
	Key   string
	Value []byte
	// Revision is the store revision of the key's last write (etcd ModRevision): the guard for Update and
	// Delete.
	Revision int64
	// CreateRevision is the store revision at which the key was created.
	CreateRevision int64
}

// Store is what rhizome keeps its state in. Every method takes a context; when it has no deadline the store
// applies its own request timeout, so no call waits forever for an unreachable etcd.
//
// It is made of the parts below so that a consumer can ask for what it uses (Follow needs a ListWatcher, a
// read-only query a Reader), and so that a backend without multi-key transactions (the Kubernetes API) can
// implement everything but Transactor. See docs/datastore-seam.md.
type Store interface {
	Reader
	Writer
	Watcher
	Transactor
	// Close releases the connection and ends every watch.
	Close() error
}

// Reader reads keys.
type Reader interface {
	// Get reads one key. ErrNotFound if it does not exist.
	Get(ctx context.Context, key string) (KV, error)
	// List returns every key under prefix, sorted by key, and the store revision it was read at (watch from
	// that revision + 1 to see every later change).
	List(ctx context.Context, prefix string) ([]KV, int64, error)
}

// Writer writes one key at a time, each write guarded by the key's revision: compare-and-swap on one object,
// which every backend has.
type Writer interface {
	// Create writes key if it does not exist yet (ErrExists otherwise) and returns the new revision.
	Create(ctx context.Context, key string, value []byte) (int64, error)
	// Update overwrites key if its revision is still rev and returns the new revision. ErrConflict if the key
	// was written since; ErrNotFound (and ErrConflict) if it was deleted. With rev 0 it overwrites whatever
	// is stored, but never creates (ErrNotFound).
	Update(ctx context.Context, key string, value []byte, rev int64) (int64, error)
	// Delete removes key if its revision is still rev; rev 0 removes it unconditionally. ErrConflict if the
	// key was written since; ErrNotFound if it does not exist.
	Delete(ctx context.Context, key string, rev int64) error
}

// Watcher streams changes.
type Watcher interface {
	// Watch streams changes under prefix from fromRev (inclusive; 0 = from now) until ctx is done or the store
	// is closed, then closes the channel. It resumes transparently after a broken stream or a server restart
	// from the last delivered revision + 1, never losing or repeating events. If fromRev (or the resume point)
	// has been compacted, it sends one EventError wrapping ErrCompacted (with CompactRevision set) and closes:
	// the caller lists again. An EventError is always the last event.
	Watch(ctx context.Context, prefix string, fromRev int64) <-chan Event
}

// ListWatcher is what Follow needs: a listing and the changes after it.
type ListWatcher interface {
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	Watcher
}

// Transactor writes several keys atomically. It is etcd-shaped: a Kubernetes backend has no equivalent.
// Its users are ipam (all in ipam's writeTogether, which says what to do instead) and Resources'
// cross-object checks.
type Transactor interface {
	// Txn applies all ops atomically or none. When a guard fails it returns an error that wraps ErrConflict
	// (ErrExists for a failed OpCreate, ErrNotFound too where the key is gone) and names the first key whose
	// guard failed. It returns the new revision.
	Txn(ctx context.Context, ops ...Op) (int64, error)
}

// EventType says what an Event reports.
type EventType int

// The kinds of Event.
const (
	EventPut EventType = iota + 1
	EventDelete
	EventError
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventError:
		return "error"
	}
	return "unknown"
}

// Event is one change seen by a watch.
type Event struct {
	Type EventType
	// KV is the key after the change. For a delete: Key and Revision (the delete's revision) only.
	KV KV
	// PrevValue is the value before the change, where etcd still had it.
	PrevValue []byte
	// Err is set on EventError: it wraps ErrCompacted, or the error that ended the watch.
	Err error
	// CompactRevision is the store's compaction revision when Err wraps ErrCompacted.
	CompactRevision int64
}

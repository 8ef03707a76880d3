package datastore

import (
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// OpType says what an Op does.
type OpType int

// The kinds of Op.
const (
	OpTypeCreate          OpType = iota + 1 // write if absent
	OpTypeUpdate                            // write if unchanged since a revision
	OpTypeDelete                            // delete if unchanged since a revision
	OpTypePut                               // write unguarded
	OpTypePrefixUnchanged                   // write nothing; guard that no key under a prefix changed
)

func (t OpType) String() string {
	switch t {
	case OpTypeCreate:
		return "create"
	case OpTypeUpdate:
		return "update"
	case OpTypeDelete:
		return "delete"
	case OpTypePut:
		return "put"
	case OpTypePrefixUnchanged:
		return "check"
	}
	return "unknown"
}

// Op is one guarded operation in a transaction. Construct it with OpCreate, OpUpdate, OpDelete, OpPut or
// OpPrefixUnchangedSince.
type Op struct {
	typ   OpType
	key   string
	value []byte
	rev   int64
}

// OpCreate writes key only if it does not exist (etcd CreateRevision == 0).
func OpCreate(key string, value []byte) Op {
	return Op{typ: OpTypeCreate, key: key, value: value}
}

// OpUpdate writes key only if its revision is still rev. With rev 0 it only requires that the key exists.
func OpUpdate(key string, value []byte, rev int64) Op {
	return Op{typ: OpTypeUpdate, key: key, value: value, rev: rev}
}

// OpDelete deletes key only if its revision is still rev. With rev 0 it only requires that the key exists.
func OpDelete(key string, rev int64) Op {
	return Op{typ: OpTypeDelete, key: key, rev: rev}
}

// OpPut writes key whatever is stored (for configuration and status that one writer owns).
func OpPut(key string, value []byte) Op {
	return Op{typ: OpTypePut, key: key, value: value}
}

// OpPrefixUnchangedSince writes nothing; it fails the transaction with ErrConflict if any key under prefix was
// created or written after revision rev (for example the revision of the List a decision was based on).
// Deletions under prefix do not fail it: etcd can only compare keys that exist.
func OpPrefixUnchangedSince(prefix string, rev int64) Op {
	return Op{typ: OpTypePrefixUnchanged, key: prefix, rev: rev}
}

// Type says what the op does.
func (o Op) Type() OpType { return o.typ }

// Key is the key the op writes or guards (the prefix for OpPrefixUnchangedSince).
func (o Op) Key() string { return o.key }

// String describes the op for logs and errors.
func (o Op) String() string {
	switch o.typ {
	case OpTypeUpdate, OpTypeDelete, OpTypePrefixUnchanged:
		return fmt.Sprintf("%s %s@%d", o.typ, o.key, o.rev)
	}
	return fmt.Sprintf("%s %s", o.typ, o.key)
}

// guarded reports whether the op carries a compare.
func (o Op) guarded() bool { return o.typ != OpTypePut }

// compare is the op's guard; call it only when guarded.
func (o Op) compare() clientv3.Cmp {
	switch o.typ {
	case OpTypeCreate:
		return clientv3.Compare(clientv3.CreateRevision(o.key), "=", 0)
	case OpTypePrefixUnchanged:
		return clientv3.Compare(clientv3.ModRevision(o.key), "<", o.rev+1).WithPrefix()
	}
	if o.rev == 0 {
		return clientv3.Compare(clientv3.CreateRevision(o.key), ">", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(o.key), "=", o.rev)
}

// then is what the op does when every guard holds, or false when it writes nothing.
func (o Op) then() (clientv3.Op, bool) {
	switch o.typ {
	case OpTypeCreate, OpTypeUpdate, OpTypePut:
		return clientv3.OpPut(o.key, string(o.value)), true
	case OpTypeDelete:
		return clientv3.OpDelete(o.key), true
	}
	return clientv3.Op{}, false
}

// orElse reads, in the same transaction as a failed guard, what is needed to say which guard failed and why,
// so a conflict costs no further round trip. Keys only: the values are not needed.
func (o Op) orElse() clientv3.Op {
	if o.typ == OpTypePrefixUnchanged {
		return clientv3.OpGet(o.key, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithMinModRev(o.rev+1), clientv3.WithLimit(1))
	}
	return clientv3.OpGet(o.key, clientv3.WithKeysOnly())
}

// guardError says why the op's guard failed given what orElse read, or nil if it held.
func (o Op) guardError(kvs []*mvccpb.KeyValue) error {
	var cur *mvccpb.KeyValue
	if len(kvs) > 0 {
		cur = kvs[0]
	}
	switch o.typ {
	case OpTypeCreate:
		if cur != nil {
			return fmt.Errorf("create %s: %w (revision %d)", o.key, ErrExists, cur.ModRevision)
		}
	case OpTypePrefixUnchanged:
		if cur != nil {
			return fmt.Errorf("check %s: %w (%s written at revision %d, after %d)",
				o.key, ErrConflict, cur.Key, cur.ModRevision, o.rev)
		}
	case OpTypeUpdate, OpTypeDelete:
		switch {
		case cur == nil && o.rev == 0:
			return fmt.Errorf("%s %s: %w", o.typ, o.key, ErrNotFound)
		case cur == nil:
			// Both: the writer lost a race (conflict), and what it wanted to change is gone (not found).
			return fmt.Errorf("%s %s: %w (expected %d, key was deleted): %w", o.typ, o.key, ErrConflict, o.rev, ErrNotFound)
		case o.rev != 0 && cur.ModRevision != o.rev:
			return fmt.Errorf("%s %s: %w (expected %d, current %d)", o.typ, o.key, ErrConflict, o.rev, cur.ModRevision)
		}
	}
	return nil
}

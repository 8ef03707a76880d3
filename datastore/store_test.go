package datastore_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// wantErr fails the test unless err wraps want (nil: no error) and its message holds every fragment.
func wantErr(t *testing.T, err, want error, fragments ...string) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want one wrapping %q", err, want)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}

func mustCreate(t *testing.T, s datastore.Store, key, value string) int64 {
	t.Helper()
	rev, err := s.Create(context.Background(), key, []byte(value))
	if err != nil {
		t.Fatalf("create %s: %v", key, err)
	}
	return rev
}

func TestGetCreateUpdateDelete(t *testing.T) {
	s := etcdtest.Start(t).Store(t)
	ctx := context.Background()
	const key = "/rhizome/v1/resources/ippool/a"

	_, err := s.Get(ctx, key)
	wantErr(t, err, datastore.ErrNotFound, key)

	rev1 := mustCreate(t, s, key, "one")
	kv, err := s.Get(ctx, key)
	wantErr(t, err, nil)
	if want := (datastore.KV{Key: key, Value: []byte("one"), Revision: rev1, CreateRevision: rev1}); !equalKV(kv, want) {
		t.Fatalf("got %+v, want %+v", kv, want)
	}

	_, err = s.Create(ctx, key, []byte("again"))
	wantErr(t, err, datastore.ErrExists, "create "+key, "already exists")

	rev2, err := s.Update(ctx, key, []byte("two"), rev1)
	wantErr(t, err, nil)
	if rev2 <= rev1 {
		t.Fatalf("update returned revision %d, want > %d", rev2, rev1)
	}
	_, err = s.Update(ctx, key, []byte("stale"), rev1)
	wantErr(t, err, datastore.ErrConflict, "update "+key, "revision conflict (expected", "current")
	if errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("conflict on an existing key also wraps ErrNotFound: %v", err)
	}
	kv, _ = s.Get(ctx, key)
	if string(kv.Value) != "two" || kv.Revision != rev2 || kv.CreateRevision != rev1 {
		t.Fatalf("after a lost update got %+v, want value two at %d created at %d", kv, rev2, rev1)
	}

	rev3, err := s.Update(ctx, key, []byte("three"), 0) // rev 0: whatever is stored
	wantErr(t, err, nil)

	err = s.Delete(ctx, key, rev2)
	wantErr(t, err, datastore.ErrConflict, "delete "+key)
	err = s.Delete(ctx, key, rev3)
	wantErr(t, err, nil)

	_, err = s.Get(ctx, key)
	wantErr(t, err, datastore.ErrNotFound)
	_, err = s.Update(ctx, key, []byte("four"), rev3)
	wantErr(t, err, datastore.ErrNotFound, "update "+key, "deleted")
	wantErr(t, err, datastore.ErrConflict) // a lost guard, too
	_, err = s.Update(ctx, key, []byte("four"), 0)
	wantErr(t, err, datastore.ErrNotFound)
	err = s.Delete(ctx, key, 0)
	wantErr(t, err, datastore.ErrNotFound, "delete "+key)
	err = s.Delete(ctx, key, rev3)
	wantErr(t, err, datastore.ErrNotFound)

	// Unconditional delete of an existing key.
	mustCreate(t, s, key, "five")
	wantErr(t, s.Delete(ctx, key, 0), nil)
}

func TestList(t *testing.T) {
	s := etcdtest.Start(t).Store(t)
	ctx := context.Background()

	kvs, rev0, err := s.List(ctx, "/p/")
	wantErr(t, err, nil)
	if len(kvs) != 0 || rev0 == 0 {
		t.Fatalf("empty prefix: got %d keys at revision %d", len(kvs), rev0)
	}
	for _, k := range []string{"/p/c", "/p/a", "/p/b/x", "/q/a", "/pa"} {
		mustCreate(t, s, k, "v"+k)
	}
	kvs, rev, err := s.List(ctx, "/p/")
	wantErr(t, err, nil)
	var keys []string
	for _, kv := range kvs {
		keys = append(keys, kv.Key)
		if string(kv.Value) != "v"+kv.Key || kv.Revision == 0 {
			t.Errorf("%s: got value %q revision %d", kv.Key, kv.Value, kv.Revision)
		}
	}
	if got, want := strings.Join(keys, " "), "/p/a /p/b/x /p/c"; got != want {
		t.Fatalf("listed %q, want %q", got, want)
	}
	if rev != rev0+5 {
		t.Fatalf("list revision %d, want %d (5 writes after %d)", rev, rev0+5, rev0)
	}
}

func TestTxnAllOrNothing(t *testing.T) {
	s := etcdtest.Start(t).Store(t)
	ctx := context.Background()
	revA := mustCreate(t, s, "/t/a", "a1")
	revB := mustCreate(t, s, "/t/b", "b1")
	if _, err := s.Update(ctx, "/t/b", []byte("b2"), revB); err != nil {
		t.Fatal(err)
	}
	before, beforeRev, err := s.List(ctx, "/t/")
	wantErr(t, err, nil)

	for _, tc := range []struct {
		name  string
		ops   []datastore.Op
		want  error
		names string
	}{
		{"update with a stale revision", []datastore.Op{
			datastore.OpUpdate("/t/a", []byte("a2"), revA),
			datastore.OpCreate("/t/new", []byte("n")),
			datastore.OpUpdate("/t/b", []byte("b3"), revB),
			datastore.OpPut("/t/put", []byte("p")),
		}, datastore.ErrConflict, "update /t/b: revision conflict (expected"},
		{"create of an existing key", []datastore.Op{
			datastore.OpPut("/t/put", []byte("p")),
			datastore.OpCreate("/t/a", []byte("a")),
		}, datastore.ErrExists, "create /t/a: already exists"},
		{"delete of a missing key", []datastore.Op{
			datastore.OpUpdate("/t/a", []byte("a2"), revA),
			datastore.OpDelete("/t/missing", 0),
		}, datastore.ErrNotFound, "delete /t/missing: not found"},
		{"first failing guard is named", []datastore.Op{
			datastore.OpCreate("/t/b", []byte("b")),
			datastore.OpCreate("/t/a", []byte("a")),
		}, datastore.ErrExists, "create /t/b"},
		{"prefix changed since a read", []datastore.Op{
			datastore.OpPrefixUnchangedSince("/t/", revA),
			datastore.OpPut("/t/put", []byte("p")),
		}, datastore.ErrConflict, "check /t/: revision conflict (/t/b written at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Txn(ctx, tc.ops...)
			wantErr(t, err, tc.want, tc.names)
			after, afterRev, err := s.List(ctx, "/t/")
			wantErr(t, err, nil)
			if afterRev != beforeRev || len(after) != len(before) {
				t.Fatalf("a failed txn changed the store: revision %d -> %d, %d -> %d keys", beforeRev, afterRev, len(before), len(after))
			}
		})
	}

	// All guards hold: every op applies, at one revision.
	kvB, _ := s.Get(ctx, "/t/b")
	rev, err := s.Txn(ctx,
		datastore.OpPrefixUnchangedSince("/t/", beforeRev),
		datastore.OpUpdate("/t/a", []byte("a2"), revA),
		datastore.OpDelete("/t/b", kvB.Revision),
		datastore.OpCreate("/t/c", []byte("c1")),
		datastore.OpPut("/t/d", []byte("d1")),
	)
	wantErr(t, err, nil)
	if rev != beforeRev+1 {
		t.Fatalf("txn revision %d, want %d", rev, beforeRev+1)
	}
	kvs, _, _ := s.List(ctx, "/t/")
	var got []string
	for _, kv := range kvs {
		got = append(got, kv.Key+"="+string(kv.Value))
		if kv.Revision != rev {
			t.Errorf("%s at revision %d, want %d", kv.Key, kv.Revision, rev)
		}
	}
	if g, w := strings.Join(got, " "), "/t/a=a2 /t/c=c1 /t/d=d1"; g != w {
		t.Fatalf("after txn: %s, want %s", g, w)
	}
	// Writes elsewhere and deletions under the prefix do not trip the prefix guard (etcd cannot compare
	// absent keys).
	mustCreate(t, s, "/elsewhere", "e")
	wantErr(t, s.Delete(ctx, "/t/d", rev), nil)
	if _, err := s.Txn(ctx, datastore.OpPrefixUnchangedSince("/t/", rev), datastore.OpPut("/t/e", nil)); err != nil {
		t.Fatalf("prefix guard after a deletion: %v", err)
	}
}

func equalKV(a, b datastore.KV) bool {
	return a.Key == b.Key && string(a.Value) == string(b.Value) && a.Revision == b.Revision && a.CreateRevision == b.CreateRevision
}

package datastore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

func pool(name, cidr string) *api.IPPool {
	return &api.IPPool{ObjectMeta: api.ObjectMeta{Name: name}, Spec: api.IPPoolSpec{CIDR: cidr}}
}

// Two writers creating overlapping pools at the same moment: the overlap
// check and the write are one transaction, so exactly one pool lands.
func TestConcurrentOverlappingPoolsOneWins(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	for round := 0; round < 20; round++ {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		cidrs := []string{fmt.Sprintf("10.%d.0.0/16", round), fmt.Sprintf("10.%d.128.0/17", round)}
		for i := range 2 {
			res := datastore.NewResources(srv.Store(t))
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = res.Create(ctx, pool(fmt.Sprintf("r%d-p%d", round, i), cidrs[i]))
			}()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case errors.Is(err, datastore.ErrConflict), errors.Is(err, api.ErrInvalid):
			default:
				t.Fatalf("round %d: unexpected error %v", round, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d overlapping pools created (%v), want exactly 1", round, won, errs)
		}
	}
	pools, _, err := datastore.NewResources(srv.Store(t)).ListPools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 20 {
		t.Fatalf("%d pools stored, want 20", len(pools))
	}
	for i, p := range pools {
		if err := api.ValidatePoolOverlap(p, pools); err != nil {
			t.Errorf("pool %d: %v", i, err)
		}
	}
}

// Patches are relative, so concurrent patches of different fields all land.
func TestConcurrentPatchesAllLand(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	res := datastore.NewResources(srv.Store(t))
	if _, err := res.Create(ctx, &api.Node{ObjectMeta: api.ObjectMeta{Name: "n1"}}); err != nil {
		t.Fatal(err)
	}
	const writers = 8
	var wg sync.WaitGroup
	for i := range writers {
		r := datastore.NewResources(srv.Store(t))
		wg.Add(1)
		go func() {
			defer wg.Done()
			patch := fmt.Sprintf(`{"metadata":{"labels":{"k%d":"v"}}}`, i)
			if _, err := r.Patch(ctx, api.KindNode, "n1", []byte(patch)); err != nil {
				t.Errorf("patch %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	obj, err := res.Get(ctx, api.KindNode, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(obj.GetObjectMeta().Labels); got != writers {
		t.Fatalf("node has %d labels after %d concurrent patches: %v", got, writers, obj.GetObjectMeta().Labels)
	}
}

func TestUpdateKeepsIdentityAndStatus(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	res := datastore.NewResources(srv.Store(t))
	n := &api.Node{ObjectMeta: api.ObjectMeta{Name: "n1"}, Status: &api.NodeStatus{IPsInUse: 7}}
	created, err := res.Create(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	uid := created.GetObjectMeta().UID
	if uid == "" || created.GetObjectMeta().CreationTimestamp == "" {
		t.Fatalf("create did not set uid/creationTimestamp: %+v", created.GetObjectMeta())
	}
	// An operator replaces the spec without status or identity.
	updated, err := res.Update(ctx, &api.Node{ObjectMeta: api.ObjectMeta{Name: "n1"},
		Spec: api.NodeSpec{BGP: &api.NodeBGPSpec{RouteReflectorClusterID: "244.0.0.1"}}})
	if err != nil {
		t.Fatal(err)
	}
	got := updated.(*api.Node)
	if got.UID != uid || got.Status == nil || got.Status.IPsInUse != 7 {
		t.Fatalf("update lost identity or status: uid %q (want %q), status %+v", got.UID, uid, got.Status)
	}
	// The same through a stale read: refused.
	created.GetObjectMeta().Labels = map[string]string{"a": "b"}
	if _, err := res.Update(ctx, created); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("update with stale resourceVersion: got %v, want ErrConflict", err)
	}
}

func TestMergePatch(t *testing.T) {
	for _, tc := range []struct{ doc, patch, want string }{
		{`{"a":1,"b":{"c":2,"d":3}}`, `{"b":{"c":null,"e":4}}`, `{"a":1,"b":{"d":3,"e":4}}`},
		{`{"a":[1,2]}`, `{"a":[3]}`, `{"a":[3]}`},
		{`{"a":1}`, `{"a":{"b":1}}`, `{"a":{"b":1}}`},
		{`{}`, `{"spec":{"bgp":{"asNumber":"64514"}}}`, `{"spec":{"bgp":{"asNumber":"64514"}}}`},
	} {
		got, err := datastore.MergePatch([]byte(tc.doc), []byte(tc.patch))
		if err != nil {
			t.Errorf("MergePatch(%s, %s): %v", tc.doc, tc.patch, err)
			continue
		}
		if string(got) != tc.want {
			t.Errorf("MergePatch(%s, %s) = %s, want %s", tc.doc, tc.patch, got, tc.want)
		}
	}
	for _, bad := range []string{`[1]`, `{`, `"x"`} {
		if _, err := datastore.MergePatch([]byte(`{}`), []byte(bad)); err == nil {
			t.Errorf("MergePatch accepted %s", bad)
		}
	}
}

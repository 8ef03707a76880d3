package datastore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/rhizome-net/rhizome/api"
)

// ResourcePrefix is where rhizome resources live: <prefix><kind>/<name>.
const ResourcePrefix = "/rhizome/v1/resources/"

// ResourceKey is the key of one resource.
func ResourceKey(kind, name string) string {
	return ResourceKindPrefix(kind) + name
}

// ResourceKindPrefix is the key prefix of every resource of one kind.
func ResourceKindPrefix(kind string) string {
	return ResourcePrefix + strings.ToLower(kind) + "/"
}

// Resources reads and writes rhizome resources (api.Object) in a Store.
// Every write applies defaults, validates the object on its own and against
// what is stored (pool overlap, immutable fields), and is guarded by a
// revision, so concurrent writers cannot overwrite each other unnoticed.
type Resources struct {
	store Store
	now   func() time.Time
}

// NewResources returns a resource client over store.
func NewResources(store Store) *Resources {
	return &Resources{store: store, now: time.Now}
}

// Store returns the underlying key-value store.
func (r *Resources) Store() Store { return r.store }

// Get reads one resource.
func (r *Resources) Get(ctx context.Context, kind, name string) (api.Object, error) {
	kv, err := r.store.Get(ctx, ResourceKey(kind, name))
	if err != nil {
		return nil, resourceError(kind, name, err)
	}
	return decodeStored(kind, kv)
}

// List reads every resource of one kind, sorted by name, and the revision
// they were read at.
func (r *Resources) List(ctx context.Context, kind string) ([]api.Object, int64, error) {
	kvs, rev, err := r.store.List(ctx, ResourceKindPrefix(kind))
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", kind, err)
	}
	objs := make([]api.Object, 0, len(kvs))
	for _, kv := range kvs {
		obj, err := decodeStored(kind, kv)
		if err != nil {
			return nil, 0, err
		}
		objs = append(objs, obj)
	}
	return objs, rev, nil
}

// ListPools reads every IPPool.
func (r *Resources) ListPools(ctx context.Context) ([]*api.IPPool, int64, error) {
	objs, rev, err := r.List(ctx, api.KindIPPool)
	if err != nil {
		return nil, 0, err
	}
	pools := make([]*api.IPPool, len(objs))
	for i, o := range objs {
		pools[i] = o.(*api.IPPool)
	}
	return pools, rev, nil
}

// Create stores a new resource. It fails with ErrExists when one of the
// same kind and name is stored already.
func (r *Resources) Create(ctx context.Context, obj api.Object) (api.Object, error) {
	kind, name := identity(obj)
	api.SetDefaults(obj)
	if err := api.Validate(obj); err != nil {
		return nil, err
	}
	meta := obj.GetObjectMeta()
	meta.ResourceVersion = ""
	meta.UID = newUID()
	meta.CreationTimestamp = r.now().UTC().Format(time.RFC3339)

	ops, err := r.crossChecks(ctx, obj)
	if err != nil {
		return nil, err
	}
	value, err := api.MarshalJSON(obj)
	if err != nil {
		return nil, fmt.Errorf("encode %s %q: %w", kind, name, err)
	}
	ops = append(ops, OpCreate(ResourceKey(kind, name), value))
	rev, err := r.store.Txn(ctx, ops...)
	if err != nil {
		return nil, r.writeError(kind, name, err)
	}
	meta.ResourceVersion = strconv.FormatInt(rev, 10)
	return obj, nil
}

// Update replaces a stored resource. When obj carries a resourceVersion the
// write succeeds only if the stored object still has it (ErrConflict
// otherwise); without one, it is guarded by the revision read just before.
// Immutable fields are checked against the stored object. A Node's status
// is kept when obj carries none.
func (r *Resources) Update(ctx context.Context, obj api.Object) (api.Object, error) {
	kind, name := identity(obj)
	api.SetDefaults(obj)
	meta := obj.GetObjectMeta()

	current, err := r.Get(ctx, kind, name)
	if err != nil {
		return nil, err
	}
	curMeta := current.GetObjectMeta()
	guard, _ := strconv.ParseInt(curMeta.ResourceVersion, 10, 64)
	if meta.ResourceVersion != "" {
		want, err := strconv.ParseInt(meta.ResourceVersion, 10, 64)
		if err != nil {
			return nil, &api.ValidationError{Kind: kind, Name: name, Errors: []api.FieldError{{
				Field: "metadata.resourceVersion", Rule: fmt.Sprintf("%q is not a revision number", meta.ResourceVersion)}}}
		}
		if want != guard {
			return nil, conflictError(kind, name, want, guard)
		}
	}
	if err := api.ValidateUpdate(current, obj); err != nil {
		return nil, err
	}
	meta.UID = curMeta.UID
	meta.CreationTimestamp = curMeta.CreationTimestamp
	if n, ok := obj.(*api.Node); ok && n.Status == nil {
		n.Status = current.(*api.Node).Status
	}

	ops, err := r.crossChecks(ctx, obj)
	if err != nil {
		return nil, err
	}
	meta.ResourceVersion = ""
	value, err := api.MarshalJSON(obj)
	if err != nil {
		return nil, fmt.Errorf("encode %s %q: %w", kind, name, err)
	}
	ops = append(ops, OpUpdate(ResourceKey(kind, name), value, guard))
	rev, err := r.store.Txn(ctx, ops...)
	if err != nil {
		return nil, r.writeError(kind, name, err)
	}
	meta.ResourceVersion = strconv.FormatInt(rev, 10)
	return obj, nil
}

// Apply creates obj, or updates the stored one of the same kind and name.
// It reports whether it created.
func (r *Resources) Apply(ctx context.Context, obj api.Object) (api.Object, bool, error) {
	kind, name := identity(obj)
	for attempt := 0; ; attempt++ {
		_, err := r.Get(ctx, kind, name)
		switch {
		case errors.Is(err, ErrNotFound):
			created, err := r.Create(ctx, obj)
			if errors.Is(err, ErrExists) && attempt < 3 {
				continue // created meanwhile: update it instead
			}
			return created, true, err
		case err != nil:
			return nil, false, err
		}
		updated, err := r.Update(ctx, obj)
		if errors.Is(err, ErrNotFound) && attempt < 3 {
			continue // deleted meanwhile: create it instead
		}
		return updated, false, err
	}
}

// Delete removes a resource. With rev 0 it removes whatever is stored;
// otherwise only the object at that revision. It returns what was deleted.
func (r *Resources) Delete(ctx context.Context, kind, name string, rev int64) (api.Object, error) {
	current, err := r.Get(ctx, kind, name)
	if err != nil {
		return nil, err
	}
	stored, _ := strconv.ParseInt(current.GetObjectMeta().ResourceVersion, 10, 64)
	if rev != 0 && rev != stored {
		return nil, conflictError(kind, name, rev, stored)
	}
	if err := r.store.Delete(ctx, ResourceKey(kind, name), stored); err != nil {
		return nil, r.writeError(kind, name, err)
	}
	return current, nil
}

// Patch applies a JSON merge patch (RFC 7386) to a stored resource and
// updates it, retrying when another writer got in between (a merge patch is
// relative to whatever is stored).
func (r *Resources) Patch(ctx context.Context, kind, name string, patch []byte) (api.Object, error) {
	for attempt := 0; ; attempt++ {
		kv, err := r.store.Get(ctx, ResourceKey(kind, name))
		if err != nil {
			return nil, resourceError(kind, name, err)
		}
		merged, err := MergePatch(kv.Value, patch)
		if err != nil {
			return nil, fmt.Errorf("patch %s %q: %w", kind, name, err)
		}
		info, err := api.LookupKind(kind)
		if err != nil {
			return nil, err
		}
		obj := info.New()
		if err := api.DecodeInto(merged, obj); err != nil {
			return nil, fmt.Errorf("patch %s %q: %w", kind, name, err)
		}
		if k, n := identity(obj); k != kind || n != name {
			return nil, &api.ValidationError{Kind: kind, Name: name, Errors: []api.FieldError{{
				Field: "metadata.name", Rule: fmt.Sprintf("a patch cannot change kind or name (got %s %q)", k, n)}}}
		}
		obj.GetObjectMeta().ResourceVersion = strconv.FormatInt(kv.Revision, 10)
		updated, err := r.Update(ctx, obj)
		if errors.Is(err, ErrConflict) && attempt < 100 && ctx.Err() == nil {
			// Lost to a concurrent writer: back off a little, at random,
			// so a crowd of patchers does not collide in lock step.
			time.Sleep(time.Duration(mrand.Int64N(int64(time.Millisecond) * int64(min(attempt+1, 20)))))
			continue
		}
		return updated, err
	}
}

// crossChecks validates obj against the other stored resources and returns
// guards that make the write fail if those resources change before it lands.
func (r *Resources) crossChecks(ctx context.Context, obj api.Object) ([]Op, error) {
	pool, ok := obj.(*api.IPPool)
	if !ok {
		return nil, nil
	}
	pools, rev, err := r.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	if err := api.ValidatePoolOverlap(pool, pools); err != nil {
		return nil, err
	}
	// No pool may be created or changed between this check and the write.
	return []Op{OpPrefixUnchangedSince(ResourceKindPrefix(api.KindIPPool), rev)}, nil
}

func (r *Resources) writeError(kind, name string, err error) error {
	if errors.Is(err, ErrConflict) {
		return fmt.Errorf("%s %q was changed by another writer while this one was in flight: read it again and retry: %w", kind, name, err)
	}
	return resourceError(kind, name, err)
}

func resourceError(kind, name string, err error) error {
	switch {
	case errors.Is(err, ErrNotFound):
		return fmt.Errorf("%s %q not found: %w", kind, name, ErrNotFound)
	case errors.Is(err, ErrExists):
		return fmt.Errorf("%s %q already exists (use apply or replace to change it): %w", kind, name, ErrExists)
	}
	return fmt.Errorf("%s %q: %w", kind, name, err)
}

func conflictError(kind, name string, want, have int64) error {
	return fmt.Errorf("%s %q was changed since it was read (resourceVersion %d, stored %d): read it again and retry: %w",
		kind, name, want, have, ErrConflict)
}

func decodeStored(kind string, kv KV) (api.Object, error) {
	info, err := api.LookupKind(kind)
	if err != nil {
		return nil, err
	}
	obj := info.New()
	if err := api.DecodeInto(kv.Value, obj); err != nil {
		return nil, fmt.Errorf("stored %s at %s is unreadable: %w", kind, kv.Key, err)
	}
	obj.GetObjectMeta().ResourceVersion = strconv.FormatInt(kv.Revision, 10)
	return obj, nil
}

func identity(obj api.Object) (kind, name string) {
	api.SetDefaults(obj) // sets Kind from the Go type
	return obj.GetTypeMeta().Kind, obj.GetObjectMeta().Name
}

func newUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

package api

import (
	"errors"
	"fmt"
	"net/netip"
)

// ValidateUpdate checks newObj as Validate does and, against oldObj (the
// stored object it replaces), that the kind and name are the same and that
// immutable fields keep their values: an IPPool's spec.cidr and
// spec.blockSize. Like Validate it returns nil or a *ValidationError.
func ValidateUpdate(oldObj, newObj Object) error {
	if isNilObject(oldObj) || isNilObject(newObj) {
		return fmt.Errorf("%w: update needs the old and the new object", ErrInvalid)
	}
	var errs fieldErrors
	if err := Validate(newObj); err != nil {
		var ve *ValidationError
		if !errors.As(err, &ve) {
			return err
		}
		errs = append(errs, ve.Errors...)
	}
	newKind, oldKind := kindOf(newObj), kindOf(oldObj)
	oldName, newName := oldObj.GetObjectMeta().Name, newObj.GetObjectMeta().Name
	switch {
	case oldKind != newKind:
		errs.add("kind", "cannot change from %s to %s: delete the old object and create the new one", oldKind, newKind)
	case oldName != newName:
		errs.add("metadata.name", "is immutable (was %q, now %q): create a new %s instead", oldName, newName, newKind)
	}
	if o, ok := oldObj.(*IPPool); ok {
		if n, ok := newObj.(*IPPool); ok {
			if !sameCIDR(o.Spec.CIDR, n.Spec.CIDR) {
				errs.add("spec.cidr", "is immutable (was %s, now %s): create a new pool and disable the old one",
					o.Spec.CIDR, n.Spec.CIDR)
			}
			if ob, nb := effectiveBlockSize(&o.Spec), effectiveBlockSize(&n.Spec); ob != nb {
				errs.add("spec.blockSize", "is immutable (was %d, now %d): create a new pool with the new block size and disable the old one",
					ob, nb)
			}
		}
	}
	return errs.result(newKind, newName)
}

// sameCIDR compares two pool CIDRs as prefixes when both parse.
func sameCIDR(a, b string) bool {
	pa, errA := netip.ParsePrefix(a)
	pb, errB := netip.ParsePrefix(b)
	if errA != nil || errB != nil {
		return a == b
	}
	return pa.Masked() == pb.Masked()
}

// effectiveBlockSize is the pool's block size, or the default SetDefaults
// would give it.
func effectiveBlockSize(s *IPPoolSpec) int {
	if s.BlockSize != 0 {
		return s.BlockSize
	}
	c := *s
	c.AllowedUses = nil // defaultIPPool writes to the slice
	defaultIPPool(&c)
	return c.BlockSize
}

// ValidatePoolOverlap checks that pool overlaps none of others (another
// version of pool itself, with the same name, is ignored), as in
// `IPPool "b": spec.cidr 10.0.0.0/8 overlaps IPPool "a" (10.1.0.0/16)`.
// Pools of others whose CIDR does not parse are skipped. It returns nil or
// a *ValidationError.
func ValidatePoolOverlap(pool *IPPool, others []*IPPool) error {
	if pool == nil {
		return nil
	}
	var errs fieldErrors
	p, err := netip.ParsePrefix(pool.Spec.CIDR)
	if err != nil {
		errs.add("spec.cidr", "%q is not a CIDR (e.g. 10.244.0.0/16): %s", pool.Spec.CIDR, stripNetipPrefix(err))
		return errs.result(KindIPPool, pool.Name)
	}
	for _, o := range others {
		if o == nil || o.Name == pool.Name {
			continue
		}
		q, err := netip.ParsePrefix(o.Spec.CIDR)
		if err != nil {
			continue
		}
		if p.Masked().Overlaps(q.Masked()) {
			errs.add("spec.cidr", "%s overlaps IPPool %q (%s)", pool.Spec.CIDR, o.Name, o.Spec.CIDR)
		}
	}
	return errs.result(KindIPPool, pool.Name)
}

package dataplane

import (
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/rhizome-net/rhizome/api"
)

// routeImage is what the reconciler believes the main table holds: the
// routes of rhizome's protocol by prefix, and the routes of other
// protocols (to report conflicts and never write over them). A dump fills
// it; the reconciler's own successful writes keep it current; anything
// else that changes the table must throw it away (see explains), so that
// the next sync dumps again. Diffing against it is what makes a sync after
// a small change cost only that change.
type routeImage struct {
	owned   map[netip.Prefix][]netlink.Route
	foreign map[netip.Prefix][]netlink.Route
}

// newImage sorts a dump of the main table.
func newImage(dump []netlink.Route) *routeImage {
	img := &routeImage{
		owned:   make(map[netip.Prefix][]netlink.Route, len(dump)),
		foreign: make(map[netip.Prefix][]netlink.Route),
	}
	for _, k := range dump {
		p, ok := routeKey(k)
		if !ok {
			continue
		}
		if k.Protocol == api.RouteProtocol {
			img.owned[p] = append(img.owned[p], k)
		} else {
			img.foreign[p] = append(img.foreign[p], k)
		}
	}
	return img
}

// replacement rewrites the route old (in the image) as new.
type replacement struct {
	old netlink.Route
	new *netlink.Route
}

// syncPlan is the writes that make the table match the desired routes,
// as far as the image knows it.
type syncPlan struct {
	dels      []netlink.Route
	replaces  []replacement
	adds      []*netlink.Route
	inPlace   int // desired routes already right
	conflicts []Conflict
}

// diff compares the desired routes with the image. For every wanted
// prefix: keep our route if it is right, else rewrite our route, else add
// one unless another protocol routes the prefix (a conflict, reported and
// left alone). Our routes for prefixes no longer wanted go, except pod
// routes (see isPodRoute), and so do extra routes of ours for a prefix.
func (img *routeImage) diff(want map[netip.Prefix]Route) syncPlan {
	var plan syncPlan
	known := 0 // wanted prefixes with routes of ours in the image
	for p, w := range want {
		have, others := img.owned[p], img.foreign[p]
		if len(have) > 0 {
			known++
		}
		for _, f := range others {
			plan.conflicts = append(plan.conflicts, Conflict{Prefix: p, Route: describe(f)})
		}
		keep := slices.IndexFunc(have, func(k netlink.Route) bool { return sameRoute(k, w) })
		switch {
		case keep >= 0:
			plan.inPlace++
		case len(have) > 0:
			// Rewrite the first in place (same metric, so the kernel
			// replaces exactly that entry); the others go below.
			nr := toNetlink(w)
			nr.Priority = have[0].Priority
			plan.replaces = append(plan.replaces, replacement{old: have[0], new: nr})
			keep = 0
		case len(others) == 0:
			plan.adds = append(plan.adds, toNetlink(w))
		}
		for i, k := range have {
			if i != keep {
				plan.dels = append(plan.dels, k) // duplicates of ours (another metric)
			}
		}
	}
	if known == len(img.owned) {
		return plan // every route of ours is for a wanted prefix
	}
	for p, ks := range img.owned {
		if _, wanted := want[p]; wanted {
			continue
		}
		for _, k := range ks {
			if !isPodRoute(k) {
				plan.dels = append(plan.dels, k)
			}
		}
	}
	return plan
}

// add records a route the reconciler wrote.
func (img *routeImage) add(k netlink.Route) {
	p, ok := routeKey(k)
	if ok {
		img.owned[p] = append(img.owned[p], k)
	}
}

// remove forgets a route of ours the reconciler deleted or replaced.
func (img *routeImage) remove(k netlink.Route) {
	p, ok := routeKey(k)
	if !ok {
		return
	}
	ks := slices.DeleteFunc(img.owned[p], func(o netlink.Route) bool { return sameEntry(o, k) })
	if len(ks) == 0 {
		delete(img.owned, p)
		return
	}
	img.owned[p] = ks
}

// explains says whether a route event of the main table is one the image
// already accounts for: the echo of the reconciler's own add, replace or
// delete. Every other change (a route of ours added, changed or deleted by
// someone else, any route of another protocol coming or going) means the
// image may no longer be the table.
func (img *routeImage) explains(u netlink.RouteUpdate) bool {
	if u.Protocol != api.RouteProtocol {
		return false
	}
	p, ok := routeKey(u.Route)
	if !ok {
		return false
	}
	has := slices.ContainsFunc(img.owned[p], func(k netlink.Route) bool { return sameEntry(k, u.Route) })
	switch u.Type {
	case unix.RTM_NEWROUTE:
		return has
	case unix.RTM_DELROUTE:
		// The image not holding the route is the echo of our delete, or
		// of a route we never knew of leaving: either way the image is
		// right about it. (Our own replace sends no delete.)
		return !has
	}
	return false
}

// routesVia reports whether any route in the image (ours or another's)
// goes through the link with index link. The kernel drops IPv4 routes of
// a link that goes down or loses its last address without a route event.
func (img *routeImage) routesVia(link int) bool {
	via := func(k netlink.Route) bool {
		if k.LinkIndex == link {
			return true
		}
		return slices.ContainsFunc(k.MultiPath, func(h *netlink.NexthopInfo) bool { return h.LinkIndex == link })
	}
	for _, m := range []map[netip.Prefix][]netlink.Route{img.owned, img.foreign} {
		for _, ks := range m {
			if slices.ContainsFunc(ks, via) {
				return true
			}
		}
	}
	return false
}

package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NeighborReconciler keeps the neighbour entries and the forwarding (FDB)
// entries of rhizome's VXLAN devices (VXLANDevice, VXLANDeviceV6) in one
// network namespace equal to the desired set, as RouteReconciler does for
// routes. The devices are rhizome's, so every permanent neighbour entry
// and every forwarding entry on them is too: a restarted agent adopts
// what it finds (no flush), repairs what was deleted or changed by hand,
// and removes what is no longer wanted. Entries the kernel makes itself
// (non-permanent neighbours) are left to it. Entries name their device;
// the index is looked up at every sync, so a recreated device is filled
// again without a new Set.
type NeighborReconciler struct {
	reconcilerConfig
	ns netns.NsHandle
	h  *netlink.Handle

	mu       sync.Mutex // guards neigh, fdb, haveWant and last
	neigh    map[neighborKey]Neighbor
	fdb      map[fdbKey]FDBEntry
	haveWant bool
	last     SyncResult

	syncMu sync.Mutex // one sync at a time; guards devs
	devs   map[int]string
	kick   chan struct{}
}

// neighborKey and fdbKey identify kernel entries by device name, not
// index (a recreated device keeps its name).
type neighborKey struct {
	dev  string
	addr netip.Addr
}

type fdbKey struct {
	dev string
	mac string // net.HardwareAddr as a string of bytes
}

// NewNeighborReconciler opens a route-netlink handle in ns (netns.None()
// for the caller's namespace). Nothing is written until Set is called.
func NewNeighborReconciler(ns netns.NsHandle, opts ...ReconcilerOption) (*NeighborReconciler, error) {
	h, err := newHandle(ns)
	if err != nil {
		return nil, err
	}
	return &NeighborReconciler{
		reconcilerConfig: newReconcilerConfig(opts),
		ns:               ns,
		h:                h,
		kick:             make(chan struct{}, 1),
	}, nil
}

// Close releases the netlink handle; the entries stay in the kernel.
func (r *NeighborReconciler) Close() { r.h.Close() }

// Set replaces the desired entries (VXLANPlan's Neighbors and FDB) and asks
// Run for a sync. The first call also means "the desired state is
// complete": only then are unwanted entries deleted.
func (r *NeighborReconciler) Set(neighbors []Neighbor, fdb []FDBEntry) {
	nm := make(map[neighborKey]Neighbor, len(neighbors))
	for _, n := range neighbors {
		nm[neighborKey{n.Link.Name, n.Addr.Unmap()}] = n
	}
	fm := make(map[fdbKey]FDBEntry, len(fdb))
	for _, f := range fdb {
		fm[fdbKey{f.Link.Name, string(f.MAC)}] = f
	}
	r.mu.Lock()
	r.neigh, r.fdb, r.haveWant = nm, fm, true
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Status returns the result of the last sync.
func (r *NeighborReconciler) Status() SyncResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Sync reads the entries of the VXLAN devices and makes them match the
// desired ones. It returns an error when they cannot be read; failures of
// single entries are in SyncResult.Errors (the next sync retries them).
// Owned counts desired entries (neighbours and forwarding) in place.
func (r *NeighborReconciler) Sync() (SyncResult, error) {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	r.mu.Lock()
	wantN, wantF, ready := r.neigh, r.fdb, r.haveWant
	r.mu.Unlock()
	res := SyncResult{Time: time.Now(), Full: true}
	if !ready {
		return res, nil
	}
	devs := make(map[string]int)
	r.devs = make(map[int]string)
	for _, name := range []string{VXLANDevice, VXLANDeviceV6} {
		link, err := r.h.LinkByName(name)
		var nf netlink.LinkNotFoundError
		switch {
		case errors.As(err, &nf):
			continue
		case err != nil:
			return res, fmt.Errorf("neighbour sync: look up %s: %w", name, err)
		case link.Type() != "vxlan":
			continue // not rhizome's device: VXLANManager reports it
		}
		devs[name] = link.Attrs().Index
		r.devs[link.Attrs().Index] = name
	}

	haveN := make(map[neighborKey]netlink.Neigh)
	haveF := make(map[fdbKey][]netlink.Neigh)
	for name, idx := range devs {
		for _, fam := range []int{unix.AF_INET, unix.AF_INET6, unix.AF_BRIDGE} {
			ks, err := retryDump("list neighbours of "+name, func() ([]netlink.Neigh, error) { return r.h.NeighList(idx, fam) })
			if err != nil {
				return res, fmt.Errorf("neighbour sync: %w", err)
			}
			for _, k := range ks {
				if k.LinkIndex != idx {
					continue
				}
				if fam == unix.AF_BRIDGE {
					key := fdbKey{name, string(k.HardwareAddr)}
					haveF[key] = append(haveF[key], k)
					continue
				}
				a, ok := netip.AddrFromSlice(k.IP)
				if !ok {
					continue
				}
				haveN[neighborKey{name, a.Unmap()}] = k
			}
		}
	}

	// Forwarding entries first: a neighbour entry is only useful once
	// its MAC can be reached.
	for key, w := range wantF {
		idx, ok := devs[key.dev]
		if !ok {
			res.Errors = append(res.Errors, fmt.Errorf("forwarding entry %s: device %s is missing", w, key.dev))
			continue
		}
		have := haveF[key]
		delete(haveF, key)
		right := false
		for _, k := range have {
			if sameAddr(k.IP, w.Dst) && k.State&netlink.NUD_PERMANENT != 0 && !right {
				right = true
				continue
			}
			r.del(&k, fmt.Sprintf("forwarding entry %s dst %s on %s", k.HardwareAddr, k.IP, key.dev), &res)
		}
		if right {
			res.Owned++
			continue
		}
		if err := r.h.NeighSet(fdbNeigh(idx, w.MAC, w.Dst)); err != nil {
			res.Errors = append(res.Errors, fmt.Errorf("add forwarding entry %s: %w", w, err))
			continue
		}
		res.Owned++
		if len(have) > 0 {
			res.Replaced++
		} else {
			res.Added++
		}
	}
	for key, ks := range haveF {
		for _, k := range ks {
			r.del(&k, fmt.Sprintf("stale forwarding entry %s dst %s on %s", k.HardwareAddr, k.IP, key.dev), &res)
		}
	}

	for key, w := range wantN {
		idx, ok := devs[key.dev]
		if !ok {
			res.Errors = append(res.Errors, fmt.Errorf("neighbour %s: device %s is missing", w, key.dev))
			continue
		}
		k, have := haveN[key]
		delete(haveN, key)
		if have && k.State&netlink.NUD_PERMANENT != 0 && k.HardwareAddr.String() == w.MAC.String() {
			res.Owned++
			continue
		}
		if err := r.h.NeighSet(neighbor(idx, key.addr, w.MAC)); err != nil {
			res.Errors = append(res.Errors, fmt.Errorf("add neighbour %s: %w", w, err))
			continue
		}
		res.Owned++
		if have {
			res.Replaced++
		} else {
			res.Added++
		}
	}
	for key, k := range haveN {
		if k.State&netlink.NUD_PERMANENT != 0 {
			r.del(&k, fmt.Sprintf("stale neighbour %s on %s", key.addr, key.dev), &res)
		}
	}

	for _, e := range res.Errors {
		r.log.Error("neighbour sync", "err", e)
	}
	if res.Added+res.Replaced+res.Deleted > 0 {
		r.log.Debug("neighbours synced", "added", res.Added, "replaced", res.Replaced, "deleted", res.Deleted)
	}
	r.mu.Lock()
	r.last = res
	r.mu.Unlock()
	return res, nil
}

func (r *NeighborReconciler) del(k *netlink.Neigh, what string, res *SyncResult) {
	if err := r.h.NeighDel(k); err != nil && !errors.Is(err, unix.ENOENT) {
		res.Errors = append(res.Errors, fmt.Errorf("delete %s: %w", what, err))
		return
	}
	res.Deleted++
}

// neighbor renders a permanent neighbour entry.
func neighbor(link int, addr netip.Addr, mac net.HardwareAddr) *netlink.Neigh {
	fam := unix.AF_INET
	if addr.Is6() {
		fam = unix.AF_INET6
	}
	return &netlink.Neigh{LinkIndex: link, Family: fam, State: netlink.NUD_PERMANENT, IP: addr.AsSlice(), HardwareAddr: mac}
}

// fdbNeigh renders a permanent forwarding entry of a VXLAN device.
func fdbNeigh(link int, mac net.HardwareAddr, dst netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{LinkIndex: link, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: dst.Unmap().AsSlice(), HardwareAddr: mac}
}

// Run syncs whenever Set is called, whenever netlink reports a change of
// an entry on a VXLAN device that the desired state does not explain (an
// entry deleted or changed by hand), or a VXLAN device changes, and every
// resync period, until ctx ends.
func (r *NeighborReconciler) Run(ctx context.Context) error {
	tick := time.NewTicker(r.resync)
	defer tick.Stop()
	soon := time.NewTimer(time.Hour)
	soon.Stop()
	defer soon.Stop()
	for {
		done := make(chan struct{})
		neighs, links, err := r.subscribe(done)
		if err != nil {
			r.log.Error("subscribe to neighbour and link changes; resyncing periodically only until it works", "err", err)
		}
		r.syncLogged()
		closed := false
		for !closed {
			select {
			case <-ctx.Done():
				close(done)
				drain(neighs, links)
				return nil
			case <-r.kick:
				r.syncLogged()
			case <-soon.C:
				r.syncLogged()
			case <-tick.C:
				r.syncLogged()
				closed = neighs == nil
			case u, ok := <-neighs:
				if !ok {
					closed = true
				} else if r.unexplained(u) {
					soon.Reset(r.delay)
				}
			case u, ok := <-links:
				if !ok {
					closed = true
				} else if n := u.Attrs().Name; n == VXLANDevice || n == VXLANDeviceV6 {
					soon.Reset(r.delay)
				}
			}
		}
		close(done)
		drain(neighs, links)
	}
}

func (r *NeighborReconciler) syncLogged() {
	if _, err := r.Sync(); err != nil {
		r.log.Error("neighbour sync", "err", err)
	}
}

func (r *NeighborReconciler) subscribe(done chan struct{}) (chan netlink.NeighUpdate, chan netlink.LinkUpdate, error) {
	ns := r.ns
	neighs := make(chan netlink.NeighUpdate, 1024)
	links := make(chan netlink.LinkUpdate, 64)
	onErr := func(err error) { r.log.Debug("netlink event socket", "err", err) }
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{
		Namespace: &ns, ErrorCallback: onErr, ReceiveBufferSize: 8 << 20, ReceiveBufferForceSize: true,
	}); err != nil {
		return nil, nil, fmt.Errorf("subscribe to neighbour changes: %w", err)
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: &ns, ErrorCallback: onErr}); err != nil {
		drain(neighs, nil) // its reader stops when the caller closes done
		return nil, nil, fmt.Errorf("subscribe to link changes: %w", err)
	}
	return neighs, links, nil
}

// drain empties the event channels after their done channel closed, so
// the library's readers can finish.
func drain(neighs chan netlink.NeighUpdate, links chan netlink.LinkUpdate) {
	if neighs != nil {
		go func() {
			for range neighs {
			}
		}()
	}
	if links != nil {
		go func() {
			for range links {
			}
		}()
	}
}

// unexplained reports whether a neighbour event on a VXLAN device differs
// from what the desired state says (the echo of the reconciler's own
// writes does not).
func (r *NeighborReconciler) unexplained(u netlink.NeighUpdate) bool {
	r.syncMu.Lock()
	dev, ours := r.devs[u.LinkIndex]
	r.syncMu.Unlock()
	if !ours {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.haveWant {
		return false
	}
	added := u.Type == unix.RTM_NEWNEIGH
	if u.Family == unix.AF_BRIDGE {
		w, wanted := r.fdb[fdbKey{dev, string(u.HardwareAddr)}]
		if !wanted {
			return added // an entry appeared that should not be there
		}
		return !added || !sameAddr(u.IP, w.Dst)
	}
	a, ok := netip.AddrFromSlice(u.IP)
	if !ok {
		return false
	}
	w, wanted := r.neigh[neighborKey{dev, a.Unmap()}]
	permanent := u.State&netlink.NUD_PERMANENT != 0
	if !wanted {
		return added && permanent
	}
	return !added || !permanent || u.HardwareAddr.String() != w.MAC.String()
}

package dataplane

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// dumpRetries bounds how often a dump interrupted by a concurrent change
// (NLM_F_DUMP_INTR, reported as netlink.ErrDumpInterrupted) is repeated.
const dumpRetries = 10

// retryDump runs a netlink dump again while the kernel reports it was
// interrupted by a concurrent change, so callers only ever see a
// consistent result or a real error. Every dump of this package goes
// through here.
func retryDump[T any](what string, dump func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpRetries {
		var res []T
		res, err = dump()
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) && !errors.Is(err, unix.EINTR) {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	return nil, fmt.Errorf("%s: still interrupted after %d tries: %w", what, dumpRetries, err)
}

// newHandle opens a route-netlink handle in the network namespace ns
// (netns.None() or a handle of the current namespace for the caller's
// own). Only NETLINK_ROUTE is opened: a minimal kernel refuses the XFRM and
// netfilter sockets the default handle would also open.
func newHandle(ns netns.NsHandle) (*netlink.Handle, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if ns.IsOpen() {
		h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("open route netlink socket in namespace %s: %w", ns, err)
	}
	return h, nil
}

package daemon

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netns"

	"github.com/rhizome-net/rhizome/dataplane"
)

// Cleanup removes what rhizome-node put into this host's kernel, for
// uninstalling: every route of rhizome's protocol except the pods' own
// (they go with their veths), tunl0's address (tunl0 is taken down; the
// kernel's fallback device itself stays), the VXLAN devices (with their
// neighbour and forwarding entries) and the natOutgoing table. Other
// routes and tables are not touched. Nothing in the datastore changes.
func Cleanup(log *slog.Logger) error {
	var errs []error
	r, err := dataplane.NewRouteReconciler(netns.None(), dataplane.WithLogger(log))
	if err != nil {
		errs = append(errs, err)
	} else {
		r.Set(nil)
		res, err := r.Sync()
		r.Close()
		if err == nil && len(res.Errors) > 0 {
			err = errors.Join(res.Errors...)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove routes: %w", err))
		} else {
			log.Info("removed rhizome routes", "deleted", res.Deleted)
		}
	}
	tm, err := dataplane.NewTunnelManager(netns.None())
	if err == nil {
		err = tm.Release()
		tm.Close()
	}
	if err != nil && !errors.Is(err, dataplane.ErrNoIPIP) {
		errs = append(errs, fmt.Errorf("release tunl0: %w", err))
	}
	vm, err := dataplane.NewVXLANManager(netns.None())
	if err == nil {
		err = errors.Join(vm.Remove(false), vm.Remove(true))
		vm.Close()
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("remove the VXLAN devices: %w", err))
	}
	if err := dataplane.NewNATManager(netns.None()).Remove(); err != nil {
		errs = append(errs, fmt.Errorf("remove the %s nftables table: %w", dataplane.NATTable, err))
	} else {
		log.Info("removed the natOutgoing table", "table", dataplane.NATTable)
	}
	return errors.Join(errs...)
}

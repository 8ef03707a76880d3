package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

func newIPAMReleaseCommand(o *Options) *cobra.Command {
	var ips []string
	var fromReport, liveFile string
	var force bool
	cmd := &cobra.Command{
		Use:   "release (--ip ADDRESS... [--live FILE] [--force] | --from-report REPORT.json)",
		Short: "Free addresses by hand, or the leaked addresses of a check report",
		Long: `Free addresses whose owner is gone.

--ip frees the given addresses. An allocated address counts as in use, and is
refused, unless --live names the running workloads (as for ipam check) and
none of them holds it; --force frees it anyway. Nothing is freed when any
address is refused.

--from-report frees the leaked addresses a report of rhizomectl ipam check
--live FILE -o REPORT.json lists, each only if it is still held by the same
allocation (sequence number): an address released or handed out again since
the check is left alone.

Each address freed is printed with its former owner.`,
		Example: `  rhizomectl ipam release --ip 192.168.0.5 --force
  rhizomectl ipam check --live pods.json -o report.json; rhizomectl ipam release --from-report report.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case fromReport != "" && (len(ips) > 0 || force || liveFile != ""):
				return errors.New("--from-report frees what the report lists: give it without --ip, --live and --force")
			case fromReport != "":
				return o.releaseFromReport(fromReport)
			case len(ips) == 0:
				return errors.New("name what to release: --ip ADDRESS (repeatable) or --from-report REPORT.json (written by rhizomectl ipam check -o)")
			}
			var live []ipam.Workload
			if liveFile != "" {
				var err error
				if live, err = readLive(liveFile, cmd); err != nil {
					return err
				}
			}
			return o.releaseIPs(ips, live, force)
		},
	}
	cmd.Flags().StringArrayVar(&ips, "ip", nil, "address to free (repeatable)")
	cmd.Flags().StringVar(&fromReport, "from-report", "", "free the leaked addresses of this ipam check report")
	cmd.Flags().StringVar(&liveFile, "live", "", "JSON or YAML file listing the live workloads: addresses none of them holds are not in use")
	cmd.Flags().BoolVar(&force, "force", false, "free addresses even when they are in use")
	return cmd
}

func (o *Options) releaseIPs(ips []string, live []ipam.Workload, force bool) error {
	store, err := o.kv()
	if err != nil {
		return err
	}
	ctx := context.Background()
	// With live workloads, an address is free to release when the check
	// calls it leaked (by the same allocation).
	leaked := map[netip.Addr]uint64{}
	if live != nil {
		report, err := ipam.Check(ctx, store, live)
		if err != nil {
			return err
		}
		for _, l := range report.LeakedAddresses {
			leaked[l.Addr] = l.Seq
		}
	}
	var addrs []netip.Addr
	var seqs []uint64
	var refused []string
	for _, s := range ips {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("--ip %q is not an IP address (for example 192.168.0.5)", s)
		}
		info, err := ipam.LookupAddress(ctx, store, addr)
		if err != nil {
			return err
		}
		switch {
		case info.Status != ipam.AddressInUse && info.Status != ipam.AddressOutside:
			fmt.Fprintf(o.streams.Out, "%s is not allocated (%s): nothing to release\n", addr, info.Status)
			continue
		case info.Owner == nil:
			refused = append(refused, fmt.Sprintf("%s is outside every IP pool: nothing to release", addr))
			continue
		case info.Pool == "":
			refused = append(refused, fmt.Sprintf("%s (held by %s) lies in block %s, outside every IP pool: recreate its pool to release it",
				addr, owner(info.Owner), info.Block))
			continue
		case !force && (live == nil || leaked[addr] != info.Owner.Seq):
			why := "pass --force to release it anyway"
			if live != nil {
				why = "a live workload holds it; pass --force to release it anyway"
			}
			refused = append(refused, fmt.Sprintf("%s is in use by %s: %s", addr, owner(info.Owner), why))
			continue
		}
		addrs, seqs = append(addrs, addr), append(seqs, info.Owner.Seq)
	}
	if len(refused) > 0 {
		return fmt.Errorf("nothing was released: %s", strings.Join(refused, "; "))
	}
	released, err := ipam.ReleaseIPs(ctx, store, addrs, seqs)
	if err != nil {
		return err
	}
	o.printReleased(released)
	if len(released) < len(addrs) {
		return fmt.Errorf("%d of %d addresses were not released: their allocation changed while this ran; look again with rhizomectl ipam show --ip",
			len(addrs)-len(released), len(addrs))
	}
	return nil
}

// releaseChunk bounds the addresses of one ReleaseIPs transaction: each
// touches up to a block and a handle, and etcd caps a transaction at 128
// operations by default.
const releaseChunk = 32

func (o *Options) releaseFromReport(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read the check report: %w", err)
	}
	var r ipam.Report
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return fmt.Errorf("check report %s: %w (write one with rhizomectl ipam check --live FILE -o %s)", path, err, path)
	}
	if !r.LiveChecked {
		return fmt.Errorf("check report %s was made without --live, so it lists no leaked addresses: run rhizomectl ipam check --live FILE -o %s", path, path)
	}
	if len(r.LeakedAddresses) == 0 {
		fmt.Fprintf(o.streams.Out, "Report %s lists no leaked addresses: nothing to release.\n", path)
		return nil
	}
	store, err := o.kv()
	if err != nil {
		return err
	}
	ctx := context.Background()
	var released []ipam.Released
	var failed []string
	leaks := r.LeakedAddresses
	for len(leaks) > 0 {
		chunk := leaks[:min(releaseChunk, len(leaks))]
		leaks = leaks[len(chunk):]
		rel, err := releaseLeaks(ctx, store, chunk)
		if errors.Is(err, ipam.ErrNotInPool) {
			// One address lies outside every pool: release one by one.
			for _, l := range chunk {
				one, err := releaseLeaks(ctx, store, []ipam.AddressOwner{l})
				if err != nil {
					failed = append(failed, fmt.Sprintf("%s: %s", l.Addr, oneLine(err)))
				}
				rel = append(rel, one...)
			}
		} else if err != nil {
			o.printReleased(released)
			return err
		}
		released = append(released, rel...)
	}
	o.printReleased(released)
	done := map[netip.Addr]bool{}
	for _, r := range released {
		done[r.Addr] = true
	}
	for _, l := range r.LeakedAddresses {
		if !done[l.Addr] {
			fmt.Fprintf(o.streams.Out, "skipped %s: no longer held by allocation %d of handle %s (released or handed out again since the check)\n",
				l.Addr, l.Seq, l.Handle)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d addresses could not be released: %s", len(failed), strings.Join(failed, "; "))
	}
	return nil
}

func releaseLeaks(ctx context.Context, store datastore.Store, leaks []ipam.AddressOwner) ([]ipam.Released, error) {
	addrs := make([]netip.Addr, len(leaks))
	seqs := make([]uint64, len(leaks))
	for i, l := range leaks {
		addrs[i], seqs[i] = l.Addr, l.Seq
	}
	return ipam.ReleaseIPs(ctx, store, addrs, seqs)
}

func (o *Options) printReleased(rel []ipam.Released) {
	for _, r := range rel {
		fmt.Fprintf(o.streams.Out, "released %s (was %s, seq %d)\n", r.Addr, owner(&ipam.AddressOwner{
			Handle: r.Owner.Handle, Namespace: r.Owner.Namespace, Pod: r.Owner.Pod, Node: r.Owner.Node}), r.Owner.Seq)
	}
}

// owner names who holds an address: "pod default/web-0 (handle h) on node n".
func owner(a *ipam.AddressOwner) string {
	s := ipam.Attribute{Handle: a.Handle, Namespace: a.Namespace, Pod: a.Pod}.Owner()
	if a.Node != "" {
		s += " on node " + a.Node
	}
	return s
}

package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

func newIPAMCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ipam",
		Short: "Show, check and repair IP address management",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newIPAMShowCommand(o), newIPAMCheckCommand(o), newIPAMReleaseCommand(o))
	return cmd
}

// kv is the datastore, connected on first use.
func (o *Options) kv() (datastore.Store, error) {
	res, err := o.resources()
	if err != nil {
		return nil, err
	}
	return res.Store(), nil
}

func newIPAMShowCommand(o *Options) *cobra.Command {
	var showBlocks bool
	var ip, node string
	cmd := &cobra.Command{
		Use:   "show [--show-blocks | --ip ADDRESS | --node NODE]",
		Short: "Show how full the IP pools are, who holds an address, or what a node holds",
		Long: `Show how full the IP pools are: one row per pool, and with --show-blocks one
row per block with the node it is affine to.

IPS RESERVED counts addresses that are not in use and that automatic
allocation never hands out: a pool's network and broadcast addresses and the
addresses of IPReservations. In every row IPS TOTAL = IPS IN USE +
IPS RESERVED + IPS FREE.

--ip says who holds an address, or that it is free, reserved (and why) or
outside every pool. --node lists the blocks affine to a node and every address
allocated for it, borrowed ones in other nodes' blocks included.`,
		Example: `  rhizomectl ipam show --show-blocks
  rhizomectl ipam show --ip 192.168.0.5
  rhizomectl ipam show --node kube-node-0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			store, err := o.kv()
			if err != nil {
				return err
			}
			ctx := context.Background()
			switch {
			case ip != "":
				addr, err := netip.ParseAddr(ip)
				if err != nil {
					return fmt.Errorf("--ip %q is not an IP address (for example 192.168.0.5)", ip)
				}
				info, err := ipam.LookupAddress(ctx, store, addr)
				if err != nil {
					return err
				}
				return writeAddressInfo(o.streams.Out, info)
			case node != "":
				u, err := ipam.ReadNodeUsage(ctx, store, node)
				if err != nil {
					return err
				}
				return writeNodeUsage(o.streams.Out, u)
			}
			u, err := ipam.ReadUsage(ctx, store)
			if err != nil {
				return err
			}
			if len(u.Pools) == 0 && len(u.Unpooled) == 0 {
				fmt.Fprintln(o.streams.Err, "No IP pools found: create one with rhizomectl apply -f pool.yaml.")
				return nil
			}
			return usageTable(u, showBlocks).write(o.streams.Out)
		},
	}
	cmd.Flags().BoolVar(&showBlocks, "show-blocks", false, "add one row per block, with its node affinity")
	cmd.Flags().StringVar(&ip, "ip", "", "say who holds this address, or why nobody does")
	cmd.Flags().StringVar(&node, "node", "", "list the blocks and addresses of this node")
	cmd.MarkFlagsMutuallyExclusive("show-blocks", "ip", "node")
	return cmd
}

func usageTable(u *ipam.Usage, blocks bool) tableData {
	t := tableData{header: []string{"GROUPING", "CIDR", "POOL", "IPS TOTAL", "IPS IN USE", "IPS RESERVED", "IPS FREE"}}
	if blocks {
		t.header = []string{"GROUPING", "CIDR", "POOL", "AFFINITY", "IPS TOTAL", "IPS IN USE", "IPS RESERVED", "IPS FREE"}
	}
	blockRow := func(b ipam.BlockUsage) []string {
		return append([]string{"Block", b.CIDR.String(), orDash(b.Pool), orNoneNode(b.Affinity)},
			counts(big.NewInt(int64(b.Total)), big.NewInt(int64(b.InUse)), big.NewInt(int64(b.Reserved)), big.NewInt(int64(b.Free)))...)
	}
	for _, p := range u.Pools {
		name := p.Name
		if p.Disabled {
			name += " (disabled)"
		}
		row := []string{"IP Pool", p.CIDR.String(), name}
		if blocks {
			row = append(row, "-")
		}
		t.rows = append(t.rows, append(row, counts(p.Total, p.InUse, p.Reserved, p.Free)...))
		if blocks {
			for _, b := range p.Blocks {
				t.rows = append(t.rows, blockRow(b))
			}
		}
	}
	if blocks {
		for _, b := range u.Unpooled {
			t.rows = append(t.rows, blockRow(b))
		}
	}
	return t
}

// counts formats total, then in use, reserved and free with their share of
// the total: "5 (2%)".
func counts(total, inUse, reserved, free *big.Int) []string {
	pct := func(n *big.Int) string {
		f, _ := new(big.Float).Quo(new(big.Float).SetInt(n), new(big.Float).SetInt(total)).Float64()
		return fmt.Sprintf("%s (%d%%)", n, int(math.Round(f*100)))
	}
	return []string{total.String(), pct(inUse), pct(reserved), pct(free)}
}

func orNoneNode(n string) string {
	if n == "" {
		return "none"
	}
	return n
}

// kvLines writes "  key:  value" lines, aligned.
func kvLines(w *tabwriter.Writer, pairs ...string) {
	for i := 0; i+1 < len(pairs); i += 2 {
		fmt.Fprintf(w, "  %s:\t%s\n", pairs[i], pairs[i+1])
	}
}

func writeAddressInfo(out interface{ Write([]byte) (int, error) }, info *ipam.AddressInfo) error {
	w := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	block := "none claimed yet"
	if info.Block.IsValid() {
		block = fmt.Sprintf("%s (affinity %s)", info.Block, orNoneNode(info.BlockAffinity))
	}
	pool := "none: outside every IP pool"
	if info.Pool != "" {
		pool = fmt.Sprintf("%s (%s)", info.Pool, info.PoolCIDR)
		if info.PoolDisabled {
			pool = fmt.Sprintf("%s (%s, disabled: no new allocations)", info.Pool, info.PoolCIDR)
		}
	}
	switch info.Status {
	case ipam.AddressInUse:
		own := info.Owner
		fmt.Fprintf(w, "%s is in use\n", info.Addr)
		kvLines(w, "namespace", orDash(own.Namespace), "pod", orDash(own.Pod), "handle", own.Handle, "node", orDash(own.Node),
			"use", orDash(string(own.Use)), "seq", strconv.FormatUint(own.Seq, 10), "block", block, "pool", pool)
		if info.Reserved != "" {
			kvLines(w, "note", "reserved since it was handed out: "+info.Reserved)
		}
	case ipam.AddressFree:
		fmt.Fprintf(w, "%s is free\n", info.Addr)
		kvLines(w, "pool", pool, "block", block)
	case ipam.AddressReserved:
		fmt.Fprintf(w, "%s is reserved: automatic allocation never hands it out\n", info.Addr)
		kvLines(w, "why", info.Reserved, "pool", pool, "block", block)
	default:
		pools := "there are no pools"
		if len(info.Pools) > 0 {
			pools = "pools: " + strings.Join(info.Pools, ", ")
		}
		fmt.Fprintf(w, "%s is outside every IP pool (%s)\n", info.Addr, pools)
	}
	return w.Flush()
}

func writeNodeUsage(out interface{ Write([]byte) (int, error) }, u *ipam.NodeUsage) error {
	fmt.Fprintln(out, u.Summary())
	if len(u.Blocks) > 0 {
		t := tableData{header: []string{"BLOCK", "POOL", "IPS TOTAL", "IPS IN USE", "IPS RESERVED", "IPS FREE"}}
		for _, b := range u.Blocks {
			t.rows = append(t.rows, append([]string{b.CIDR.String(), orDash(b.Pool)},
				counts(big.NewInt(int64(b.Total)), big.NewInt(int64(b.InUse)), big.NewInt(int64(b.Reserved)), big.NewInt(int64(b.Free)))...))
		}
		fmt.Fprintln(out)
		if err := t.write(out); err != nil {
			return err
		}
	}
	if len(u.Addresses) > 0 {
		t := tableData{header: []string{"ADDRESS", "BLOCK", "BORROWED", "NAMESPACE", "POD", "HANDLE", "SEQ"}}
		for _, a := range u.Addresses {
			borrowed := "no"
			if a.Borrowed {
				borrowed = "yes"
			}
			t.rows = append(t.rows, []string{a.Addr.String(), a.Block.String(), borrowed, orDash(a.Namespace), orDash(a.Pod),
				a.Handle, strconv.FormatUint(a.Seq, 10)})
		}
		fmt.Fprintln(out)
		if err := t.write(out); err != nil {
			return err
		}
	}
	for _, p := range u.Pending {
		fmt.Fprintf(out, "\nAffinity to block %s is %s: rhizomectl ipam check says why.\n", p.Block, p.State)
	}
	return nil
}

func newIPAMCheckCommand(o *Options) *cobra.Command {
	var output, liveFile string
	var repair bool
	cmd := &cobra.Command{
		Use:   "check [-o REPORT.json] [--live FILE] [--repair]",
		Short: "Find leaked addresses and inconsistent IPAM data",
		Long: `Check compares the IPAM data with itself and with the live workloads, and
reports leaked addresses (allocated, but no live workload holds them), live
workloads without an address, addresses with two owners, handles whose record
disagrees with the blocks, orphan handles, affinities without a block, pending
affinities (claims left half done), blocks whose affinity disagrees with the
affinity records, and blocks inconsistent in themselves.

--live names a JSON or YAML file listing the running workloads:
  [{"namespace": "default", "pod": "web-0", "handle": "k8s-pod-network.0123abcd", "node": "node-1"}]
An entry with a handle matches that handle's addresses only; without one, every
address of its namespace/pod. Without --live every allocation counts as live:
only structural problems are reported. (Reading the live workloads from
Kubernetes and the node agents comes later.)

--repair fixes handles and affinities, each write guarded by the revision the
check read; it never frees an address. Leaked addresses are freed with
rhizomectl ipam release --from-report REPORT.json.

Exit status: 0 when no problems are found, 1 when there are problems (or the
check failed).`,
		Example: `  rhizomectl ipam check
  rhizomectl ipam check --live pods.json -o report.json
  rhizomectl ipam release --from-report report.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var live []ipam.Workload
			if liveFile != "" {
				var err error
				if live, err = readLive(liveFile, cmd); err != nil {
					return err
				}
			}
			store, err := o.kv()
			if err != nil {
				return err
			}
			ctx := context.Background()
			report, err := ipam.Check(ctx, store, live)
			if err != nil {
				return err
			}
			if repair && report.Repairable() > 0 {
				fixed, rerr := ipam.Repair(ctx, store, report)
				for _, f := range fixed {
					fmt.Fprintf(o.streams.Out, "repaired: %s\n", f)
				}
				if rerr != nil && !errors.Is(rerr, datastore.ErrConflict) {
					return rerr
				}
				if rerr != nil {
					fmt.Fprintf(o.streams.Out, "not repaired: %s\n", oneLine(rerr))
				}
				fmt.Fprintln(o.streams.Out)
				if report, err = ipam.Check(ctx, store, live); err != nil {
					return err
				}
			}
			if err := report.WriteText(o.streams.Out); err != nil {
				return err
			}
			if output != "" {
				data, _ := json.MarshalIndent(report, "", "  ")
				if err := os.WriteFile(output, append(data, '\n'), 0o644); err != nil {
					return fmt.Errorf("write the report: %w", err)
				}
			}
			return problemsError(report, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "also write the report as JSON to this file (for ipam release --from-report)")
	cmd.Flags().StringVar(&liveFile, "live", "", "JSON or YAML file listing the live workloads, or - for standard input")
	cmd.Flags().BoolVar(&repair, "repair", false, "fix handles and affinities (never frees addresses), then check again")
	return cmd
}

// problemsError is the one-line summary of a report with problems, saying
// what fixes which, or nil.
func problemsError(r *ipam.Report, output string) error {
	n := r.Problems()
	if n == 0 {
		return nil
	}
	var hints []string
	if k := r.Repairable(); k > 0 {
		hints = append(hints, fmt.Sprintf("rhizomectl ipam check --repair fixes the %d with handles and affinities", k))
	}
	if k := len(r.LeakedAddresses); k > 0 {
		file := output
		if file == "" {
			file = "REPORT.json"
			hints = append(hints, "write the report with -o REPORT.json")
		}
		hints = append(hints, fmt.Sprintf("rhizomectl ipam release --from-report %s frees the %d leaked addresses", file, k))
	}
	if k := n - r.Repairable() - len(r.LeakedAddresses); k > 0 {
		hints = append(hints, fmt.Sprintf("the other %d need a person (see above)", k))
	}
	return fmt.Errorf("ipam check found %d problems: %s", n, strings.Join(hints, "; "))
}

// readLive reads the live workloads file: a JSON or YAML list.
func readLive(path string, cmd *cobra.Command) ([]ipam.Workload, error) {
	data, err := readSource(path, cmd.InOrStdin())
	if err != nil {
		return nil, fmt.Errorf("read live workloads: %w", err)
	}
	live := []ipam.Workload{}
	if err := yaml.UnmarshalStrict(data, &live); err != nil {
		return nil, fmt.Errorf(`live workloads file %s: %w (want a list like [{"namespace": "default", "pod": "web-0", "handle": "...", "node": "node-1"}])`, path, err)
	}
	for i, w := range live {
		if w.Handle == "" && w.Pod == "" {
			return nil, fmt.Errorf("live workloads file %s: entry %d has neither a handle nor a pod: give at least one", path, i+1)
		}
	}
	if live == nil { // the file said null
		live = []ipam.Workload{}
	}
	return live, nil
}

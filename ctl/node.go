package ctl

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rhizome-net/rhizome/daemon/nodestatus"
)

func newNodeCommand(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Commands for the rhizome-node agent on this host",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newNodeStatusCommand(o))
	return cmd
}

func newNodeStatusCommand(o *Options) *cobra.Command {
	var addr, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent on this host and its BGP sessions",
		Long: `Show whether rhizome-node runs on this host and the state of its BGP
sessions, one table per address family, like calicoctl node status:
PEER TYPE says why a session exists (node-to-node mesh, route reflector,
route reflector client, global, node specific), STATE is "up" once it is
established, INFO the reason it is not. -o wide adds each peer's AS, node
and prefix counts; -o json prints the agent's whole report.

It asks the agent's status address (RHIZOME_STATUS_ADDR, 127.0.0.1:9099 by
default), so run it on the node.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), o.Timeout)
			defer cancel()
			r, err := nodestatus.Fetch(ctx, addr)
			if err != nil {
				return err
			}
			switch output {
			case "", "wide":
				return r.WriteText(o.streams.Out, output == "wide")
			case "json":
				enc := json.NewEncoder(o.streams.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			return fmt.Errorf("output %q: want wide or json", output)
		},
	}
	cmd.Flags().StringVar(&addr, "status-addr", envOr("RHIZOME_STATUS_ADDR", "127.0.0.1:9099"), "the agent's status address [RHIZOME_STATUS_ADDR]")
	cmd.Flags().StringVarP(&output, "output", "o", "", "wide or json")
	return cmd
}

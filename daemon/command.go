package daemon

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// NewCommand is rhizome-node's command line.
func NewCommand(version string, stderr io.Writer) *cobra.Command {
	var cfg Config
	var cleanup bool
	cmd := &cobra.Command{
		Use:   "rhizome-node",
		Short: "rhizome's per-node agent: IPAM for the CNI plugin, node registration, the controller role",
		Long: `rhizome-node runs on every node. It registers the node, serves the CNI
plugins' address requests on a unix socket from the node's affine address
blocks, mirrors the Kubernetes Node's labels and reads pod and namespace
annotations, and on one node at a time releases what deleted nodes and pods
left behind.

Every flag can also be set through the environment variable named in its
help; a flag given on the command line wins.`,
		Version:       version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := NewLogger(stderr, cfg.LogLevel, cfg.LogFormat)
			if err != nil {
				return err
			}
			if cleanup {
				return Cleanup(log)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			log.Info("starting rhizome-node", "version", version, "node", cfg.NodeName)
			return Run(ctx, cfg, log, version)
		},
	}
	cfg.BindFlags(cmd.Flags(), os.Getenv)
	cmd.Flags().BoolVar(&cleanup, "cleanup", false, "remove rhizome's routes, tunl0 address and natOutgoing table from this host, then exit (uninstall)")
	return cmd
}

// Main runs rhizome-node and returns its exit code.
func Main(version string, args []string) int {
	cmd := NewCommand(version, os.Stderr)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "rhizome-node: %v\n", err)
		return 1
	}
	return 0
}

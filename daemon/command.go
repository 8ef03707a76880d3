package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
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
				return errors.Join(Cleanup(log), uninstallCNI(log, cfg.CNIBinDir, cfg.CNIConfDir, cfg.CNISocket))
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			log.Info("starting rhizome-node", "version", version, "node", cfg.NodeName)
			return Run(ctx, cfg, log, version)
		},
	}
	cfg.BindFlags(cmd.Flags(), os.Getenv)
	cmd.Flags().BoolVar(&cleanup, "cleanup", false, "uninstall from this host, then exit: rhizome's routes, tunl0 address and natOutgoing table, the CNI plugins and conflist, the socket")
	cmd.AddCommand(newInstallCNICommand(stderr))
	return cmd
}

func newInstallCNICommand(stderr io.Writer) *cobra.Command {
	var cfg Config
	var src string
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install the CNI plugins and the conflist on this host (the DaemonSet's init container)",
		Long: `install-cni copies rhizome-cni and rhizome-ipam from --src-dir (default: the
directory of this binary) into the CNI bin directory and writes ` + ConflistName + `
(rhizome-cni with the socket and MTU, then portmap) into the CNI conf
directory. Files are written under a temporary name and renamed into place;
files that are already right are left alone.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(*cobra.Command, []string) error {
			log, err := NewLogger(stderr, cfg.LogLevel, cfg.LogFormat)
			if err != nil {
				return err
			}
			if src == "" {
				exe, err := os.Executable()
				if err != nil {
					return err
				}
				src = filepath.Dir(exe)
			}
			return InstallCNI(log, src, cfg.CNIBinDir, cfg.CNIConfDir, cfg.CNISocket, cfg.MTU)
		},
	}
	cfg.BindFlags(cmd.Flags(), os.Getenv)
	cmd.Flags().StringVar(&src, "src-dir", "", "where the plugin binaries to install are (default: this binary's directory)")
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

// Command rhizome-lab builds, checks and removes the rhizome lab: a cluster
// of network namespaces on this machine running the real binaries. `make
// lab`, `make lab-up` and `make lab-down` call it.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/rhizome-net/rhizome/integration/lab"
	"github.com/rhizome-net/rhizome/internal/toolcache"
)

func main() {
	if err := command().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "rhizome-lab:", err)
		os.Exit(1)
	}
}

func command() *cobra.Command {
	opts := lab.Options{Log: os.Stdout}
	var topoFile string
	var keep bool
	root := &cobra.Command{
		Use:   "rhizome-lab",
		Short: "A rhizome cluster in network namespaces on this machine",
		Long: `rhizome-lab builds a cluster from a topology (default: seed 000, four nodes
in two racks behind a router that is the route reflector): etcd in its own
namespace, rhizome-node in a namespace per node, pods wired by rhizome-cni
through libcni, each answering TCP. It needs root and the binaries of
make build (--bin-dir).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&opts.BinDir, "bin-dir", "bin", "directory of rhizome-node, rhizome-cni, rhizomectl and rhizome-lab")
	root.PersistentFlags().StringVar(&opts.StateDir, "state-dir", ".cache/lab", "where the lab keeps its state, sockets and logs")
	root.PersistentFlags().StringVar(&opts.Prefix, "prefix", "rzlab-", "prefix of every namespace the lab makes")
	root.PersistentFlags().BoolVar(&opts.Kubernetes, "kubernetes", false, "run with kube-apiserver, controller manager, scheduler and a lab kubelet per node (K8S=1)")
	// Where `make kube-tools` puts them; without a home directory the flag must say.
	kubeBin, _ := toolcache.KubeDir()
	root.PersistentFlags().StringVar(&opts.KubeBinDir, "kube-bin-dir", kubeBin, "directory of kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (make kube-tools; default $"+toolcache.KubeBinEnv+" or the per-user tools cache)")
	topology := func() (*lab.Topology, error) {
		if topoFile == "" {
			return lab.Seed000(), nil
		}
		return lab.LoadTopology(topoFile)
	}
	bringUp := func(ctx context.Context) (*lab.Lab, bool, error) {
		if os.Geteuid() != 0 {
			return nil, false, fmt.Errorf("the lab makes network namespaces: run it as root")
		}
		t, err := topology()
		if err != nil {
			return nil, false, err
		}
		start := time.Now()
		l, err := lab.Up(ctx, t, opts)
		if err != nil {
			return nil, false, err
		}
		wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		took, fails := l.WaitConnected(wctx)
		cancel()
		fmt.Println()
		if err := l.Report(os.Stdout); err != nil {
			fmt.Println("report:", err)
		}
		pods := len(l.State().Pods)
		if len(fails) > 0 {
			fmt.Printf("\nFAIL: %d of %d pod pairs cannot connect over TCP (after %s):\n", len(fails), pods*(pods-1), took.Round(time.Millisecond))
			for _, f := range fails {
				fmt.Println("  " + f.String())
			}
			return l, false, nil
		}
		fmt.Printf("\nPASS: all %d pod pairs connect over TCP; lab up and every pod reachable in %s (the last check took %s)\n",
			pods*(pods-1), time.Since(start).Round(time.Millisecond), took.Round(time.Millisecond))
		return l, true, nil
	}
	runCmd := &cobra.Command{
		Use:   "run",
		Short: "Bring the lab up, print the report, check every pod pair over TCP, take it down (unless --keep)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, ok, err := bringUp(cmd.Context())
			if err != nil {
				return err
			}
			if keep {
				l.Explore(os.Stdout)
			} else if err := l.Down(); err != nil {
				return fmt.Errorf("take the lab down: %w", err)
			}
			if !ok {
				return fmt.Errorf("FAIL")
			}
			return nil
		},
	}
	runCmd.Flags().StringVar(&topoFile, "topology", "", "topology YAML (default: seed 000)")
	runCmd.Flags().BoolVar(&keep, "keep", false, "leave the lab up (KEEP=1)")
	upCmd := &cobra.Command{
		Use:   "up",
		Short: "Bring the lab up and leave it up",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, ok, err := bringUp(cmd.Context())
			if err != nil {
				return err
			}
			l.Explore(os.Stdout)
			if !ok {
				return fmt.Errorf("FAIL")
			}
			return nil
		},
	}
	upCmd.Flags().StringVar(&topoFile, "topology", "", "topology YAML (default: seed 000)")
	downCmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the lab's processes and delete its namespaces",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			l, err := lab.Open(opts)
			if err != nil {
				return err
			}
			return l.Down()
		},
	}
	reportCmd := &cobra.Command{
		Use:   "report",
		Short: "Print the report of the lab that is up",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			l, err := lab.Open(opts)
			if err != nil {
				return err
			}
			return l.Report(os.Stdout)
		},
	}
	var dir, socket, name string
	var port int
	var peer bool
	etcdCmd := &cobra.Command{
		Use: "etcd", Hidden: true, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return lab.ServeEtcd(cmd.Context(), dir, socket) },
	}
	etcdCmd.Flags().StringVar(&dir, "dir", "", "data directory")
	etcdCmd.Flags().StringVar(&socket, "socket", "", "client unix socket")
	respCmd := &cobra.Command{
		Use: "responder", Hidden: true, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return lab.Respond(cmd.Context(), port, name, peer) },
	}
	respCmd.Flags().IntVar(&port, "port", 80, "TCP port")
	respCmd.Flags().StringVar(&name, "name", "", "what to answer")
	respCmd.Flags().BoolVar(&peer, "peer", false, "answer with the client's address instead")
	root.AddCommand(runCmd, upCmd, downCmd, reportCmd, etcdCmd, respCmd, apiProxyCommand(), kubeletCommand())
	ctx, _ := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	root.SetContext(ctx)
	return root
}

// apiProxyCommand relays 127.0.0.1:6443 inside the nodes to the API server
// on the host's loopback (lab up --kubernetes starts it).
func apiProxyCommand() *cobra.Command {
	var target, listen string
	var namespaces []string
	c := &cobra.Command{
		Use: "apiproxy", Hidden: true, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lab.ServeAPIProxy(cmd.Context(), slog.Default(), target, listen, namespaces)
		},
	}
	c.Flags().StringVar(&target, "target", "", "the API server's address (host:port)")
	c.Flags().StringVar(&listen, "listen", lab.RelayAddr, "address to listen on inside each namespace")
	c.Flags().StringArrayVar(&namespaces, "netns", nil, "a namespace to listen in (repeat)")
	return c
}

// kubeletCommand is the lab kubelet of one node (lab up --kubernetes
// starts one per node, inside the node's namespace).
func kubeletCommand() *cobra.Command {
	cfg := lab.KubeletConfig{Log: slog.Default()}
	c := &cobra.Command{
		Use: "kubelet", Hidden: true, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return lab.RunKubelet(cmd.Context(), cfg) },
	}
	c.Flags().StringVar(&cfg.Node, "node", "", "node name")
	c.Flags().StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig of the node")
	c.Flags().StringVar(&cfg.NodeIP, "node-ip", "", "the node's address")
	c.Flags().StringVar(&cfg.BinDir, "bin-dir", "", "directory of rhizome-cni and rhizome-lab")
	c.Flags().StringVar(&cfg.StateDir, "state-dir", "", "where the kubelet records its pods")
	c.Flags().StringVar(&cfg.Prefix, "prefix", "", "prefix of the pods' namespace names")
	c.Flags().StringVar(&cfg.CNISocket, "cni-socket", "", "the node's agent socket")
	return c
}

// Package ctl implements rhizomectl, the operator CLI: resource commands
// (apply, create, replace, delete, get, patch, edit) against the etcd datastore.
package ctl

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rhizome-net/rhizome/datastore"
)

// Streams are the command's standard streams.
type Streams struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
}

// Options are the global flags, shared by every subcommand.
type Options struct {
	Endpoints []string
	CertFile  string
	KeyFile   string
	CAFile    string
	Timeout   time.Duration

	streams Streams
	store   datastore.Store // connected on first use
}

// envOr returns the environment variable's value, or def when unset.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// NewCommand returns the rhizomectl root command.
func NewCommand(streams Streams, opts ...Option) *cobra.Command {
	o := &Options{streams: streams}
	s := newSettings(opts)
	root := &cobra.Command{
		Use:   "rhizomectl",
		Short: "Operate rhizome: IP pools, BGP, nodes and IPAM",
		Long: `rhizomectl manages rhizome resources (IPPool, IPReservation, BGPConfiguration,
BGPPeer, Node) stored in etcd, the way calicoctl manages Calico's.

Connection settings come from flags or the environment:
  RHIZOME_ETCD_ENDPOINTS   comma-separated etcd URLs (default http://127.0.0.1:2379)
  RHIZOME_ETCD_CERT_FILE   client certificate
  RHIZOME_ETCD_KEY_FILE    client key
  RHIZOME_ETCD_CA_FILE     CA bundle of the etcd servers`,
		Version:       s.version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.Err)

	f := root.PersistentFlags()
	f.StringSliceVar(&o.Endpoints, "etcd-endpoints",
		strings.Split(envOr("RHIZOME_ETCD_ENDPOINTS", "http://127.0.0.1:2379"), ","),
		"etcd endpoints, comma-separated [RHIZOME_ETCD_ENDPOINTS]")
	f.StringVar(&o.CertFile, "etcd-cert", envOr("RHIZOME_ETCD_CERT_FILE", ""), "etcd client certificate [RHIZOME_ETCD_CERT_FILE]")
	f.StringVar(&o.KeyFile, "etcd-key", envOr("RHIZOME_ETCD_KEY_FILE", ""), "etcd client key [RHIZOME_ETCD_KEY_FILE]")
	f.StringVar(&o.CAFile, "etcd-ca", envOr("RHIZOME_ETCD_CA_FILE", ""), "etcd CA bundle [RHIZOME_ETCD_CA_FILE]")
	f.DurationVar(&o.Timeout, "timeout", 5*time.Second, "how long to wait for etcd before giving up")

	root.AddCommand(
		newApplyCommand(o),
		newCreateCommand(o),
		newReplaceCommand(o),
		newDeleteCommand(o),
		newGetCommand(o),
		newPatchCommand(o),
		newEditCommand(o),
		newIPAMCommand(o),
		newNodeCommand(o),
		newVersionCommand(s.version),
	)
	root.PersistentPostRun = func(*cobra.Command, []string) { o.close() }
	return root
}

// Main runs rhizomectl with args and returns the process exit code. Errors
// are printed as one line on stderr.
func Main(args []string, streams Streams, opts ...Option) int {
	cmd := NewCommand(streams, opts...)
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintf(streams.Err, "error: %s\n", oneLine(err))
		return 1
	}
	return 0
}

func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

// resources connects to the datastore on first use.
func (o *Options) resources() (*datastore.Resources, error) {
	if o.store == nil {
		s, err := datastore.New(datastore.Config{
			Endpoints:      o.Endpoints,
			CertFile:       o.CertFile,
			KeyFile:        o.KeyFile,
			CAFile:         o.CAFile,
			DialTimeout:    o.Timeout,
			RequestTimeout: o.Timeout,
		})
		if err != nil {
			return nil, err
		}
		o.store = s
	}
	return datastore.NewResources(o.store), nil
}

func (o *Options) close() {
	if o.store != nil {
		_ = o.store.Close()
		o.store = nil
	}
}

// errSome reports that a command failed for some of its objects; each
// failure was printed already.
var errSome = errors.New("some objects failed (see above)")

package ctl

import (
	"fmt"

	"github.com/spf13/cobra"
)

// An Option changes the command NewCommand and Main build.
type Option func(*settings)

type settings struct {
	version string
}

// WithVersion sets the version `rhizomectl version` and `rhizomectl --version` print; the build
// stamps it into the binary (make build: git describe). Without it they print "dev".
func WithVersion(v string) Option { return func(s *settings) { s.version = v } }

func newSettings(opts []Option) settings {
	s := settings{version: "dev"}
	for _, o := range opts {
		o(&s)
	}
	return s
}

// newVersionCommand prints the client's version, the same line as --version. It needs no datastore
// (each agent's version is in its Node's status.agentVersion: rhizomectl get node NAME -o yaml).
func newVersionCommand(version string) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print rhizomectl's version (no datastore needed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "rhizomectl version %s\n", version)
			return err
		},
	}
}

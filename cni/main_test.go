package cni_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/rhizome-net/rhizome/cni/cnitest"
)

// pluginDir holds rhizome-cni and rhizome-ipam, built once by TestMain.
var pluginDir string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() == 0 {
			dir, err := os.MkdirTemp("", "rhizome-cni-bin")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			if err := cnitest.BuildPlugins(dir); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			pluginDir = dir
		}
		return m.Run()
	}()
	os.Exit(code)
}

func newNode(t testing.TB, paths ...string) *cnitest.Node {
	t.Helper()
	return cnitest.NewNode(t, append([]string{pluginDir}, paths...)...)
}

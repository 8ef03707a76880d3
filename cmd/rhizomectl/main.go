// Command rhizomectl is rhizome's operator CLI.
package main

import (
	"os"

	"github.com/rhizome-net/rhizome/ctl"
)

// version is set at build time (-ldflags -X main.version=..., make build).
var version = "dev"

func main() {
	os.Exit(ctl.Main(os.Args[1:], ctl.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}, ctl.WithVersion(version)))
}

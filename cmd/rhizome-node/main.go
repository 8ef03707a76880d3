// Command rhizome-node is rhizome's per-node agent.
package main

import (
	"os"

	"github.com/rhizome-net/rhizome/daemon"
)

// version is set at build time (-ldflags -X main.version=..., make build).
var version = "dev"

func main() { os.Exit(daemon.Main(version, os.Args[1:])) }

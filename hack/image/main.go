// Command image writes rhizome's container image as a `docker save` tarball, without docker:
//
//	go run ./hack/image --bin-dir bin/image --out bin/rhizome-image.tar --tag rhizome/rhizome-node:v0.1.0
//
// The binaries in --bin-dir must be static (CGO_ENABLED=0); `make image` builds them reproducibly
// and runs this. Load the result with `docker load -i` or `ctr -n k8s.io image import`.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/rhizome-net/rhizome/hack/image/nodeimage"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	binDir := fs.String("bin-dir", "bin", "directory holding "+fmt.Sprint(nodeimage.Binaries()))
	out := fs.String("out", "image.tar", "image tarball to write (docker save format)")
	tag := fs.String("tag", "rhizome/rhizome-node:dev", "repository:version recorded in the tarball")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (all options are flags, see -h)", fs.Args())
	}

	img, err := nodeimage.Build(*binDir)
	if err != nil {
		return err
	}
	size, err := nodeimage.WriteTarball(img, *tag, *out)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("image digest: %w", err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return fmt.Errorf("image config digest: %w", err)
	}
	fmt.Fprintf(stdout, "image    %s -> %s\n", *tag, *out)
	fmt.Fprintf(stdout, "digest   %s (manifest)\n", digest)
	fmt.Fprintf(stdout, "id       %s (config; docker images shows this)\n", id)
	fmt.Fprintf(stdout, "size     %s tarball, %s layer compressed, %s uncompressed\n",
		mib(size), mib(img.LayerBytes), mib(img.UncompressedBytes))
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%d bytes (%.1f MiB)", n, float64(n)/(1<<20)) }

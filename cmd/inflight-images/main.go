// Command inflight-images builds the extproc and controller images as OCI
// image layouts without Docker (see package deploy/images), prints each
// image's digest and layer sizes, and with --pin writes the digests into
// deploy/kustomization.yaml and the Helm chart's values.yaml.
//
//	go run ./cmd/inflight-images --out out/images --revision $(git rev-parse HEAD)
//
// make images runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/inflight-dev/inflight/deploy/images"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "inflight-images:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	o := images.DefaultOptions()
	pin := false
	fs := flag.NewFlagSet("inflight-images", flag.ContinueOnError)
	o.AddFlags(fs)
	fs.BoolVar(&pin, "pin", false, "write the digests into deploy/kustomization.yaml and deploy/helm/inflight/values.yaml")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if !filepath.IsAbs(o.Out) {
		o.Out = filepath.Join(o.Repo, o.Out)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	results, err := images.Build(ctx, o)
	if err != nil {
		return err
	}
	for _, r := range results {
		fmt.Printf("%s\t%s\t%s", r.Name, r.Digest, r.Layout)
		for p, n := range r.Sizes {
			fmt.Printf("\t%s layer %.1f MiB", p, float64(n)/(1<<20))
		}
		fmt.Println()
	}
	if pin {
		if err := images.Pin(o.Repo, o.Version, results); err != nil {
			return err
		}
		fmt.Println("pinned in deploy/kustomization.yaml and deploy/helm/inflight/values.yaml")
	}
	return nil
}

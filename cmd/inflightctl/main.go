// Command inflightctl is inflight's command-line tool. Subcommands:
//
//	envoyfilter   render the EnvoyFilter that plugs a workload (or a gateway) into inflight
//	status        the managed Deployments as the leading controller sees them
//
// Run "inflightctl <subcommand> -h" for its flags.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "inflightctl:", err)
		os.Exit(1)
	}
}

// subcommand runs one subcommand with its arguments.
type subcommand func(ctx context.Context, args []string, stdout, stderr io.Writer) error

func subcommands() map[string]subcommand {
	return map[string]subcommand{
		"envoyfilter": runEnvoyFilter,
		"status":      runStatus,
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, "usage: inflightctl <subcommand> [flags]\n\nsubcommands:\n  envoyfilter   render the EnvoyFilter for a workload or a gateway\n  status        the managed Deployments as the leading controller sees them")
		if len(args) == 0 {
			return fmt.Errorf("no subcommand")
		}
		return nil
	}
	cmd, ok := subcommands()[args[0]]
	if !ok {
		return fmt.Errorf("unknown subcommand %q (want envoyfilter or status)", args[0])
	}
	return cmd(ctx, args[1:], stdout, stderr)
}

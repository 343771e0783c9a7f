package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/inflight-dev/inflight/cmd/internal/logging"
)

// Options are every setting of the extproc binary.
type Options struct {
	GRPCListen   string
	AdminListen  string
	ReplicaName  string
	MaxTargets   int
	DrainTimeout time.Duration
	Log          logging.Options
}

// DefaultOptions returns the shipped defaults.
func DefaultOptions() Options {
	name, _ := os.Hostname()
	if pod := os.Getenv("POD_NAME"); pod != "" {
		name = pod
	}
	return Options{
		GRPCListen:   ":9002",
		AdminListen:  ":9090",
		ReplicaName:  name,
		MaxTargets:   1000,
		DrainTimeout: 25 * time.Second,
		Log:          logging.DefaultOptions(),
	}
}

// Bind registers the flags on fs.
func (o *Options) Bind(fs *flag.FlagSet) {
	fs.StringVar(&o.GRPCListen, "grpc-listen", o.GRPCListen, "address of the ext_proc gRPC server (and the gRPC health service)")
	fs.StringVar(&o.AdminListen, "admin-listen", o.AdminListen, "address of the admin HTTP server: /v1/snapshot, /metrics, /healthz, /readyz (keep it inside the cluster)")
	fs.StringVar(&o.ReplicaName, "replica-name", o.ReplicaName, "name of this replica in snapshots (default: $POD_NAME, else the host name)")
	fs.IntVar(&o.MaxTargets, "max-targets", o.MaxTargets, "bound on distinct targets; requests for further ones count under reason=\"overflow\"")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout, "on SIGTERM, how long open streams may finish before they are cut")
	o.Log.AddFlags(fs)
}

// Validate reports every invalid option, naming the flag, the value and
// what is allowed.
func (o *Options) Validate() error {
	var errs []error
	for _, a := range []struct{ flag, v string }{{"grpc-listen", o.GRPCListen}, {"admin-listen", o.AdminListen}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			errs = append(errs, fmt.Errorf("--%s=%q: want host:port (host may be empty): %v", a.flag, a.v, err))
		}
	}
	if o.GRPCListen == o.AdminListen {
		errs = append(errs, fmt.Errorf("--grpc-listen and --admin-listen are both %q: they must differ", o.GRPCListen))
	}
	if o.ReplicaName == "" {
		errs = append(errs, errors.New("--replica-name is empty: set it or $POD_NAME"))
	}
	if o.MaxTargets < 1 || o.MaxTargets > 100000 {
		errs = append(errs, fmt.Errorf("--max-targets=%d: want 1 to 100000", o.MaxTargets))
	}
	if o.DrainTimeout < 0 || o.DrainTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("--drain-timeout=%s: want 0s to 10m", o.DrainTimeout))
	}
	errs = append(errs, o.Log.Validate())
	return errors.Join(errs...)
}

// Command demo is inflight's end-to-end demo (make demo): a real
// kube-apiserver and etcd, two extproc processes, two controller processes
// (one leads through the Lease), a model Deployment annotated for inflight,
// a simulated GPU fleet that follows that Deployment's replicas, and the
// Envoy-faithful ext_proc harness acting as the mesh, replaying the Azure
// LLM conversation trace time-compressed. It prints one status line per
// second, then a summary (GPU-hours, waits, scale events, leaked counts),
// the controllers' Events, a PNG timeline and `inflightctl status`.
//
// Every process it starts leads its own process group and is stopped on
// exit, on error and on SIGINT/SIGTERM; the last line says whether any child
// process is left.
//
// The program's state lives in one demo value owned by run; the status and
// sampling loop is one goroutine. There is no package-level mutable state.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling/sim"
	"github.com/inflight-dev/inflight/scaling/sim/traces"
	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/demo/replay"
)

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errInterrupted):
		fmt.Fprintln(os.Stderr, "demo: interrupted")
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

var errInterrupted = errors.New("interrupted")

// Options are the demo's flags.
type Options struct {
	Trace      string
	Shape      string
	Speed      float64
	Minutes    float64
	Initial    int
	Target     float64
	MinReplica int
	MaxReplica int
	// ReleaseDelay is the extproc's --release-delay in demo time.
	ReleaseDelay time.Duration
	Envoy        string
	Prometheus   bool
	PNG          string
	Dir          string
	Bin          string
	NoBuild      bool
	Tail         time.Duration
}

// DefaultOptions are the demo's defaults for the repository at root.
func DefaultOptions(root string) Options {
	return Options{
		Trace:        traces.AzureConv,
		Speed:        20,
		Minutes:      60,
		Initial:      8,
		Target:       5,
		MinReplica:   1,
		ReleaseDelay: extproc.DefaultReleaseDelay,
		MaxReplica:   16,
		Envoy:        "mixed",
		PNG:          filepath.Join(root, ".cache", "demo", "timeline.png"),
		Dir:          filepath.Join(root, ".cache", "demo", "run"),
		Bin:          filepath.Join(root, ".cache", "demo", "bin"),
	}
}

// AddFlags registers the flags on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Trace, "trace", o.Trace, "request trace: a built-in name ("+strings.Join(traces.Names(), ", ")+") or a CSV file (TIMESTAMP,ContextTokens,GeneratedTokens)")
	fs.StringVar(&o.Shape, "shape", o.Shape, "replay a synthetic shape (step, ramp, flash-crowd, on-off, diurnal) drawn from the trace's requests instead of the trace itself")
	fs.Float64Var(&o.Speed, "speed", o.Speed, "time compression: trace time, service times and cold starts run this many times faster")
	fs.Float64Var(&o.Minutes, "minutes", o.Minutes, "replay only the first this many minutes of the trace")
	fs.IntVar(&o.Initial, "initial", o.Initial, "replicas the model Deployment starts with (ready)")
	fs.Float64Var(&o.Target, "target", o.Target, "inflight.dev/target: requests in flight per replica")
	fs.IntVar(&o.MinReplica, "min-replicas", o.MinReplica, "inflight.dev/min-replicas; 0 runs a gateway-only install (the harness as the ingress gateway, control profile, no sidecars) that holds requests while the model is at zero")
	fs.IntVar(&o.MaxReplica, "max-replicas", o.MaxReplica, "inflight.dev/max-replicas")
	fs.DurationVar(&o.ReleaseDelay, "release-delay", o.ReleaseDelay, "with -min-replicas 0: the extproc's --release-delay in demo time (divided by -speed; the gateway's EDS lag is 100 ms demo time)")
	fs.StringVar(&o.Envoy, "envoy", o.Envoy, "sidecar Envoy versions: mixed, 1.36 or 1.37")
	fs.BoolVar(&o.Prometheus, "prometheus", o.Prometheus, "also run /usr/bin/prometheus scraping the extprocs and controllers")
	fs.StringVar(&o.PNG, "png", o.PNG, "where to write the timeline PNG")
	fs.StringVar(&o.Dir, "dir", o.Dir, "folder for the processes' logs, the kubeconfig and Prometheus data")
	fs.StringVar(&o.Bin, "bin", o.Bin, "folder the extproc, controller and inflightctl binaries are built into (and read from with -no-build)")
	fs.BoolVar(&o.NoBuild, "no-build", o.NoBuild, "use the binaries already in -bin and the cached control plane")
	fs.DurationVar(&o.Tail, "tail", o.Tail, "after the load, how long to wait for the scale-down to 1 replica (0: 4 × scale-down-delay + 30 s)")
}

// Validate reports every invalid flag at once, naming it, its value and
// what is allowed.
func (o Options) Validate() error {
	var errs []error
	bad := func(flag string, v any, want string) {
		errs = append(errs, fmt.Errorf("-%s %v: want %s", flag, v, want))
	}
	if o.Speed < 1 || o.Speed > 200 {
		bad("speed", o.Speed, "between 1 and 200")
	}
	if !(o.Minutes > 0) {
		bad("minutes", o.Minutes, "> 0")
	}
	if o.MaxReplica < 1 || o.MaxReplica > 64 {
		bad("max-replicas", o.MaxReplica, "between 1 and 64")
	}
	if o.MinReplica < 0 || o.MinReplica > o.MaxReplica {
		bad("min-replicas", o.MinReplica, fmt.Sprintf("between 0 and -max-replicas (%d)", o.MaxReplica))
	}
	if o.ReleaseDelay < 200*time.Millisecond || o.ReleaseDelay > time.Minute {
		bad("release-delay", o.ReleaseDelay, "between 200ms (twice the gateway's EDS lag) and 1m")
	}
	if o.Initial < 1 || o.Initial > o.MaxReplica {
		bad("initial", o.Initial, fmt.Sprintf("between 1 and -max-replicas (%d)", o.MaxReplica))
	}
	if !(o.Target > 0) {
		bad("target", o.Target, "> 0")
	}
	if o.Tail < 0 {
		bad("tail", o.Tail, "≥ 0 (0: 4 × scale-down-delay + 30 s)")
	}
	if _, err := replay.ParseVersions(o.Envoy); err != nil {
		errs = append(errs, fmt.Errorf("-envoy: %w", err))
	}
	return errors.Join(errs...)
}

func run(args []string, stdout, stderr io.Writer) error {
	root, err := controlplane.RepoRoot()
	if err != nil {
		return fmt.Errorf("run the demo from inside the repository: %w", err)
	}
	opt := DefaultOptions(root)
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	opt.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := opt.Validate(); err != nil {
		return err
	}
	tr, err := loadTrace(opt.Trace, opt.Shape, opt.Minutes)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	d := &demo{opt: opt, root: root, out: stdout, errw: stderr, trace: tr, started: time.Now()}
	err = d.run(ctx)
	if d.lastScreen != "" {
		fmt.Fprintf(stdout, "\n%s", d.lastScreen)
	}
	if ctx.Err() != nil && err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return errInterrupted
	}
	return err
}

func loadTrace(path, shape string, minutes float64) (sim.Trace, error) {
	tr, err := traces.Load(path)
	if err != nil {
		return sim.Trace{}, fmt.Errorf("-trace: %w", err)
	}
	if shape != "" {
		var names []string
		found := false
		for _, s := range sim.Shapes() {
			names = append(names, s.Name)
			if s.Name == shape {
				tr, found = sim.Synthesize(s, tr.Requests, 1), true
				tr.Name = shape + " (tokens from " + filepath.Base(path) + ")"
				break
			}
		}
		if !found {
			return sim.Trace{}, fmt.Errorf("-shape %q: want one of %s", shape, strings.Join(names, ", "))
		}
	}
	horizon := minutes * 60
	n := 0
	for n < len(tr.Requests) && tr.Requests[n].Arrival < horizon {
		n++
	}
	tr.Requests = tr.Requests[:n]
	if n == 0 {
		return sim.Trace{}, fmt.Errorf("%s: no request in the first %g minutes", path, minutes)
	}
	tr.Duration = min(tr.Duration, horizon)
	return tr, nil
}

// Command inflight-sim replays request traces through the inflight scaling
// policy and the baseline autoscalers on a GPU replica model, and writes
// markdown tables and PNG plots of GPU-hours against queue waits.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/inflight-dev/inflight/scaling/sim"
	"github.com/inflight-dev/inflight/scaling/sim/traces"
)

// Options are the command's settings.
type Options struct {
	Trace       string // CSV trace (TIMESTAMP,ContextTokens,GeneratedTokens)
	Out         string // output directory
	Seed        uint64 // synthetic traces
	Synthetic   bool
	Ablation    bool
	Batch       int
	PrefillTPS  float64
	MsPerToken  float64
	ColdStart   time.Duration
	MaxReplicas int
	Parallel    int
	Quiet       bool
	// HeldOut are further seeds: every synthetic shape is also drawn with
	// each of them ("step@s2"), traces the policy was not developed on.
	HeldOut string
	// Traces and Policies restrict the run to the named traces (base names,
	// e.g. "step,ramp") and policies; empty: all. For iterating.
	Traces, Policies string
}

// DefaultOptions returns the documented run's settings.
func DefaultOptions() Options {
	m := sim.DefaultModel()
	return Options{
		Trace: traces.AzureConv, Out: "scaling/sim/results", Seed: 1,
		Synthetic: true, Ablation: true, Batch: m.Batch, PrefillTPS: m.PrefillTPS,
		MsPerToken: m.SecPerToken * 1000, ColdStart: time.Duration(m.ColdStart) * time.Second,
		MaxReplicas: 200, Parallel: min(2, runtime.NumCPU()), HeldOut: "2,3",
	}
}

// Flags registers the options on fs.
func (o *Options) Flags(fs *flag.FlagSet) {
	fs.StringVar(&o.Trace, "trace", o.Trace, "trace to replay: a built-in name ("+strings.Join(traces.Names(), ", ")+") or a CSV file (TIMESTAMP,ContextTokens,GeneratedTokens); empty: synthetic traces only")
	fs.StringVar(&o.Out, "out", o.Out, "directory for results.md, runs.csv, timeline.png and frontier.png")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the synthetic traces")
	fs.BoolVar(&o.Synthetic, "synthetic", o.Synthetic, "also run the synthetic traces (step, ramp, flash-crowd, on-off, diurnal)")
	fs.BoolVar(&o.Ablation, "ablation", o.Ablation, "also run inflight with each ingredient switched off")
	fs.IntVar(&o.Batch, "batch", o.Batch, "requests a replica serves at once")
	fs.Float64Var(&o.PrefillTPS, "prefill-tps", o.PrefillTPS, "prefill tokens per second")
	fs.Float64Var(&o.MsPerToken, "ms-per-token", o.MsPerToken, "milliseconds per generated token")
	fs.DurationVar(&o.ColdStart, "cold-start", o.ColdStart, "time from scale-up to a ready replica")
	fs.IntVar(&o.MaxReplicas, "max-replicas", o.MaxReplicas, "replica bound of every autoscaler")
	fs.IntVar(&o.Parallel, "parallel", o.Parallel, "simulations run at once")
	fs.BoolVar(&o.Quiet, "quiet", o.Quiet, "no progress line on stderr")
	fs.StringVar(&o.HeldOut, "heldout", o.HeldOut, "comma-separated seeds: also draw every synthetic shape with each (held-out traces); empty: none")
	fs.StringVar(&o.Traces, "traces", o.Traces, "comma-separated trace names to run (e.g. step,ramp); empty: all")
	fs.StringVar(&o.Policies, "policies", o.Policies, "comma-separated policy names to run (e.g. inflight,knative-kpa); empty: all")
}

// seeds parses the held-out seeds.
func (o Options) seeds() ([]uint64, error) {
	var out []uint64
	for _, f := range strings.Split(o.HeldOut, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("-heldout=%s: want comma-separated seeds (unsigned integers)", o.HeldOut)
		}
		if v == o.Seed {
			return nil, fmt.Errorf("-heldout=%s: seed %d is the -seed of the named traces", o.HeldOut, v)
		}
		out = append(out, v)
	}
	return out, nil
}

func names(list string) map[string]bool {
	m := map[string]bool{}
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f != "" {
			m[f] = true
		}
	}
	return m
}

// Validate names the flag, the value and the allowed range of every bad option.
func (o Options) Validate() error {
	var errs []error
	bad := func(flag string, v any, allowed string) {
		errs = append(errs, fmt.Errorf("-%s=%v: want %s", flag, v, allowed))
	}
	if o.Trace == "" && !o.Synthetic {
		bad("trace", `""`, "a CSV file when -synthetic=false")
	}
	if o.Out == "" {
		bad("out", `""`, "a directory")
	}
	if o.Batch < 1 || o.Batch > 1024 {
		bad("batch", o.Batch, "an integer between 1 and 1024")
	}
	if !(o.PrefillTPS >= 1 && o.PrefillTPS <= 1e7) {
		bad("prefill-tps", o.PrefillTPS, "a number between 1 and 1e7")
	}
	if !(o.MsPerToken >= 0 && o.MsPerToken <= 10000) {
		bad("ms-per-token", o.MsPerToken, "a number between 0 and 10000")
	}
	if o.ColdStart < 0 || o.ColdStart > time.Hour {
		bad("cold-start", o.ColdStart, "a duration between 0s and 1h")
	}
	if o.MaxReplicas < 1 || o.MaxReplicas > 10000 {
		bad("max-replicas", o.MaxReplicas, "an integer between 1 and 10000")
	}
	if o.Parallel < 1 || o.Parallel > 256 {
		bad("parallel", o.Parallel, "an integer between 1 and 256")
	}
	if _, err := o.seeds(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "inflight-sim:", err)
		os.Exit(1)
	}
}

func run(args []string, stderr io.Writer) error {
	o := DefaultOptions()
	fs := flag.NewFlagSet("inflight-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.Flags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	model := sim.Model{Batch: o.Batch, PrefillTPS: o.PrefillTPS, SecPerToken: o.MsPerToken / 1000, ColdStart: o.ColdStart.Seconds()}
	var runs []sim.Trace
	var pool []sim.Request
	if o.Trace != "" {
		tr, err := traces.Load(o.Trace)
		if err != nil {
			return err
		}
		runs, pool = append(runs, tr), tr.Requests
	}
	if o.Synthetic {
		for _, s := range sim.Shapes() {
			runs = append(runs, sim.Synthesize(s, pool, o.Seed))
		}
		seeds, _ := o.seeds()
		for _, seed := range seeds {
			for _, s := range sim.Shapes() {
				tr := sim.Synthesize(s, pool, seed)
				tr.Name, tr.HeldOut = fmt.Sprintf("%s@s%d", s.Name, seed), true
				runs = append(runs, tr)
			}
		}
	}
	if want := names(o.Traces); len(want) > 0 {
		var kept []sim.Trace
		for _, tr := range runs {
			if base, _, _ := strings.Cut(tr.Name, "@"); want[base] || want[tr.Name] {
				kept = append(kept, tr)
			}
		}
		if len(kept) == 0 {
			return fmt.Errorf("-traces=%s: no trace of that name", o.Traces)
		}
		runs = kept
	}
	specs := sim.Specs()
	if want := names(o.Policies); len(want) > 0 {
		var kept []sim.Spec
		for _, s := range specs {
			if want[s.Name] {
				kept = append(kept, s)
			}
		}
		if len(kept) == 0 {
			return fmt.Errorf("-policies=%s: no policy of that name", o.Policies)
		}
		specs = kept
	}
	x := sim.Experiment{Model: model, Traces: runs, Specs: specs, MaxReplicas: o.MaxReplicas, Parallel: o.Parallel}
	if o.Ablation {
		x.Ablations = sim.AblationSpecs()
	}
	if !o.Quiet {
		x.Progress = stderr
	}
	out := x.Run()
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return err
	}
	command := "go run ./cmd/inflight-sim " + strings.Join(args, " ")
	write := func(name string, fn func(io.Writer) error) error {
		f, err := os.Create(filepath.Join(o.Out, name))
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", name, err)
		}
		return f.Close()
	}
	if err := write("results.md", func(w io.Writer) error { return out.WriteMarkdown(w, strings.TrimSpace(command)) }); err != nil {
		return err
	}
	if err := write("runs.csv", out.WriteCSV); err != nil {
		return err
	}
	if err := write("timeline.png", out.WriteTimelines); err != nil {
		return err
	}
	if err := write("frontier.png", out.WriteFrontier); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "inflight-sim: %d traces, results in %s (%.1f s)\n", len(runs), o.Out, out.Elapsed.Seconds())
	return nil
}

package sim

import (
	"fmt"
	"io"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/inflight-dev/inflight/scaling"
)

// Summary is the measured outcome of one (policy, knob, trace) run.
type Summary struct {
	Policy, Trace string
	Knob          float64
	Default       bool // the knob is the policy's default
	GPUHours      float64
	P50, P95, P99 float64 // queue wait, s
	Over2s        float64 // share of requests waiting > 2 s
	ScaleEvents   int
	Reversals     int
	StepReaction  float64 // first step → first scale-up (s); NaN if none or no step
	// Waits over bounds: requests waiting longer than 10 s, 60 s and
	// DefaultHoldTimeout.
	Over10s, Over60s, OverHold int
	Requests                   int
	Timeline                   *Timeline // per second, default knob only
}

// Timeline is a run's per-second state over the measured trace.
type Timeline struct {
	Requested, Ready, InFlight, Queued []int
}

// Summarize reduces a Result.
func Summarize(r Result) Summary {
	w := append([]float64(nil), r.Waits...)
	sort.Float64s(w)
	s := Summary{Policy: r.Policy, Trace: r.Trace, Knob: r.Knob, GPUHours: r.GPUHours,
		ScaleEvents: r.ScaleEvents, Reversals: r.Reversals, StepReaction: math.NaN()}
	s.P50, s.P95, s.P99 = Quantile(w, 0.5), Quantile(w, 0.95), Quantile(w, 0.99)
	over := sort.SearchFloat64s(w, 2+1e-12)
	if len(w) > 0 {
		s.Over2s = float64(len(w)-over) / float64(len(w))
	}
	if len(r.StepReaction) > 0 {
		s.StepReaction = r.StepReaction[0]
	}
	s.Requests = len(w)
	hold := scaling.DefaultHoldTimeout.Seconds()
	s.Over10s = len(w) - sort.SearchFloat64s(w, 10+1e-12)
	s.Over60s = len(w) - sort.SearchFloat64s(w, 60+1e-12)
	s.OverHold = len(w) - sort.SearchFloat64s(w, hold+1e-12)
	return s
}

// Quantile is the q-quantile (0 ≤ q ≤ 1) of xs sorted ascending, by
// nearest rank; NaN when xs is empty. It is the one quantile of the
// project's reports (the simulator, the demo, the load generator).
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// Experiment is the whole comparison: every spec's knob grid (plus its
// default) on every trace, each after its warm-up.
type Experiment struct {
	Model  Model
	Traces []Trace
	// Warmups[i] is replayed before Traces[i], unmeasured (see RunWarm);
	// nil or a zero Trace: none.
	Warmups     []Trace
	Specs       []Spec
	Ablations   []Spec
	Grid        []float64 // knob multipliers; nil: DefaultGrid
	MaxReplicas int
	Parallel    int
	Progress    io.Writer // a progress line per finished run; nil: silent
}

// Outcome holds every summary, grouped for the report.
type Outcome struct {
	Model     Model
	Traces    []Trace
	Envs      []Env
	Specs     []Spec
	Ablations []Spec
	// Runs[trace][spec name] lists the runs of the knob grid, sorted by knob.
	Runs    []map[string][]Summary
	Elapsed time.Duration
	// Variants are the same comparison under other replica models (a
	// queue per replica, slowdown as the batch fills), for the ranking.
	Variants []Variant
}

// Variant is an experiment's outcome under a named model variant.
type Variant struct {
	Name    string
	Outcome Outcome
}

type job struct {
	trace int
	spec  Spec
	knob  float64
	def   bool
}

// Run executes the experiment. Runs are independent and deterministic; the
// workers only change the order in which they finish, not the results.
func (x Experiment) Run() Outcome {
	start := time.Now()
	out := Outcome{Model: x.Model, Traces: x.Traces, Specs: x.Specs, Ablations: x.Ablations}
	grid := x.Grid
	if len(grid) == 0 {
		grid = DefaultGrid
	}
	var jobs []job
	for ti, tr := range x.Traces {
		env := NewEnv(x.Model, tr, x.MaxReplicas)
		if ti < len(x.Warmups) {
			env = env.WithWarmup(x.Warmups[ti])
		}
		out.Envs = append(out.Envs, env)
		out.Runs = append(out.Runs, map[string][]Summary{})
		specs := append([]Spec(nil), x.Specs...)
		if !tr.HeldOut {
			specs = append(specs, x.Ablations...)
		}
		for _, s := range specs {
			def := s.Default(env)
			seen := map[float64]bool{def: true}
			jobs = append(jobs, job{ti, s, def, true})
			for _, k := range s.Knobs(env, grid) {
				if !seen[k] {
					seen[k] = true
					jobs = append(jobs, job{ti, s, k, false})
				}
			}
		}
	}
	results := make([]Summary, len(jobs))
	var mu sync.Mutex
	done := 0
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < max(1, x.Parallel); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				j := jobs[i]
				env := out.Envs[j.trace]
				p, initial := j.spec.New(env, j.knob)
				r := env.run(p, initial)
				r.Policy, r.Knob = j.spec.Name, j.knob
				s := Summarize(r)
				s.Default = j.def
				if j.def {
					s.Timeline = &Timeline{Requested: r.Requested, Ready: r.Ready, InFlight: r.InFlight, Queued: r.Queued}
				}
				results[i] = s
				mu.Lock()
				done++
				if x.Progress != nil && (done%20 == 0 || done == len(jobs)) {
					fmt.Fprintf(x.Progress, "\rinflight-sim: %d/%d runs, %s on %s (knob %.3g)        ",
						done, len(jobs), j.spec.Name, env.Trace.Name, j.knob)
				}
				mu.Unlock()
			}
		}()
	}
	for i := range jobs {
		work <- i
	}
	close(work)
	wg.Wait()
	if x.Progress != nil {
		fmt.Fprintln(x.Progress)
	}
	for i, j := range jobs {
		m := out.Runs[j.trace]
		m[j.spec.Name] = append(m[j.spec.Name], results[i])
	}
	for _, m := range out.Runs {
		for _, rs := range m {
			sort.Slice(rs, func(a, b int) bool { return rs[a].Knob < rs[b].Knob })
		}
	}
	out.Elapsed = time.Since(start)
	return out
}

// AblationSpecs is inflight with each ingredient switched off in turn,
// then with DESIGN.md's 5-minute scale-down delay.
func AblationSpecs() []Spec {
	var out []Spec
	for _, ing := range scaling.Ingredients() {
		if ing == scaling.IdlePeriod {
			// Only min-replicas 0 has an idle period: compare with inflight-zero.
			out = append(out, InflightSpec("inflight-zero −"+ing.String(), scaling.Features{}.Without(ing), 0))
			continue
		}
		out = append(out, InflightSpec("inflight −"+ing.String(), scaling.Features{}.Without(ing), 1))
	}
	// DESIGN.md's scale-down delay of 5 minutes against the default of one
	// cold start.
	return append(out, InflightSpecWith("inflight, scale-down-delay 5m", scaling.Features{}, 1,
		func(c *scaling.Config) { c.ScaleDownDelay = 5 * time.Minute }))
}

// DefaultRun returns the run of spec at its default knob on trace ti.
func (o Outcome) DefaultRun(ti int, spec string) (Summary, bool) {
	for _, s := range o.Runs[ti][spec] {
		if s.Default {
			return s, true
		}
	}
	return Summary{}, false
}

// Cheapest returns the lowest GPU-hours among spec's runs on trace ti whose
// p99 wait is at most limit, and that run; ok is false if none qualifies.
func (o Outcome) Cheapest(ti int, spec string, limit float64) (Summary, bool) {
	best, ok := Summary{}, false
	for _, s := range o.Runs[ti][spec] {
		if s.P99 <= limit && (!ok || s.GPUHours < best.GPUHours) {
			best, ok = s, true
		}
	}
	return best, ok
}

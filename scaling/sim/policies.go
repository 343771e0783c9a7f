package sim

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/inflight-dev/inflight/scaling"
)

// Env is what a policy constructor may know about a run.
type Env struct {
	Model       Model
	Trace       Trace
	MaxReplicas int
	// Offered is, per second of the trace, the mean and the maximum number
	// of requests that would be in service if every request started at once
	// (the demand, in requests; divide by Batch for replicas).
	OfferedMean, OfferedMax []float64
}

// NewEnv computes the offered load of tr under m.
func NewEnv(m Model, tr Trace, maxReplicas int) Env {
	n := int(math.Ceil(tr.Duration)) + 1
	mean := make([]float64, n)
	peak := make([]float64, n)
	type edge struct {
		t float64
		d int
	}
	edges := make([]edge, 0, 2*len(tr.Requests))
	for _, r := range tr.Requests {
		edges = append(edges, edge{r.Arrival, 1}, edge{r.Arrival + m.Service(r), -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].t != edges[j].t {
			return edges[i].t < edges[j].t
		}
		return edges[i].d < edges[j].d
	})
	level, last := 0, 0.0
	for _, e := range edges {
		// Spread level over [last, e.t) into the per-second buckets.
		for t := last; t < e.t; {
			s := int(t)
			if s >= n {
				break
			}
			end := math.Min(e.t, float64(s+1))
			mean[s] += float64(level) * (end - t)
			peak[s] = math.Max(peak[s], float64(level))
			t = end
		}
		last = e.t
		level += e.d
		if s := int(e.t); s < n {
			peak[s] = math.Max(peak[s], float64(level))
		}
	}
	return Env{Model: m, Trace: tr, MaxReplicas: maxReplicas, OfferedMean: mean, OfferedMax: peak}
}

// Initial is the number of replicas every autoscaler starts with: enough
// for the first five minutes' mean demand at the batch limit (a warm start,
// the same for every policy).
func (e Env) Initial() int {
	sum := 0.0
	k := min(300, len(e.OfferedMean))
	for _, v := range e.OfferedMean[:k] {
		sum += v
	}
	return max(1, int(math.Ceil(sum/float64(max(1, k))/float64(e.Model.Batch))))
}

// Spec describes one policy for the experiments: its name, its main knob
// (what the frontier sweeps), and a constructor.
type Spec struct {
	Name     string
	KnobName string
	// Default is the knob's default for this env; Grid the values swept.
	Default func(Env) float64
	Grid    func(Env) []float64
	New     func(env Env, knob float64) (Policy, int) // the policy and its initial replicas
}

func scaleGrid(def float64) []float64 {
	mult := []float64{0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.15, 1.3, 1.5, 1.75, 2}
	out := make([]float64, len(mult))
	for i, m := range mult {
		out[i] = def * m
	}
	return out
}

// Specs returns the policies compared: inflight (the real scaling package),
// the three anchors' algorithms with their defaults, static peak
// provisioning and the clairvoyant reference.
func Specs() []Spec {
	batch := func(e Env) float64 { return float64(e.Model.Batch) }
	batchGrid := func(e Env) []float64 { return scaleGrid(float64(e.Model.Batch)) }
	return []Spec{
		InflightSpec("inflight", scaling.Features{}),
		{Name: "hpa-cpu", KnobName: "target utilization", Default: func(Env) float64 { return 0.7 },
			Grid: func(Env) []float64 {
				return []float64{0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95}
			},
			New: func(e Env, k float64) (Policy, int) { return &hpa{target: k, max: e.MaxReplicas}, e.Initial() }},
		{Name: "cortex", KnobName: "target_in_flight", Default: batch, Grid: batchGrid,
			New: func(e Env, k float64) (Policy, int) { return newCortex(k, e.MaxReplicas), e.Initial() }},
		{Name: "knative-kpa", KnobName: "target (×0.7 utilization)", Default: batch, Grid: batchGrid,
			New: func(e Env, k float64) (Policy, int) { return &kpa{target: k, max: e.MaxReplicas}, e.Initial() }},
		{Name: "static-peak", KnobName: "replicas", Default: staticPeak,
			Grid: func(e Env) []float64 {
				p := staticPeak(e)
				var g []float64
				for _, m := range []float64{0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.2} {
					g = append(g, math.Max(1, math.Round(p*m)))
				}
				return g
			},
			New: func(e Env, k float64) (Policy, int) { return static(int(k)), int(k) }},
		{Name: "clairvoyant", KnobName: "in-flight per replica", Default: batch, Grid: batchGrid,
			New: func(e Env, k float64) (Policy, int) {
				c := newClairvoyant(e, k)
				return c, c.need(0)
			}},
	}
}

// InflightSpec is the inflight policy with the given ingredients, for the
// comparison and the ablation.
func InflightSpec(name string, f scaling.Features) Spec {
	return Spec{Name: name, KnobName: "inflight.dev/target",
		Default: func(e Env) float64 { return float64(e.Model.Batch) },
		Grid:    func(e Env) []float64 { return scaleGrid(float64(e.Model.Batch)) },
		New: func(e Env, k float64) (Policy, int) {
			return newInflight(name, k, f, e.MaxReplicas), e.Initial()
		}}
}

// staticPeak is enough replicas for the highest one-minute mean demand.
func staticPeak(e Env) float64 {
	best, sum := 0.0, 0.0
	for i, v := range e.OfferedMean {
		sum += v
		if i >= 60 {
			sum -= e.OfferedMean[i-60]
		}
		best = math.Max(best, sum/60)
	}
	return math.Max(1, math.Ceil(best/float64(e.Model.Batch)))
}

// ---- inflight: the real policy -------------------------------------------

type inflight struct {
	name     string
	a        *scaling.Autoscaler
	epoch    time.Time
	durRing  [60]float64
	compRing [60]int
	k        int
}

func newInflight(name string, target float64, f scaling.Features, maxReplicas int) *inflight {
	cfg := scaling.DefaultConfig(target)
	cfg.MaxReplicas = int32(maxReplicas)
	epoch := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	return &inflight{name: name, a: scaling.NewAutoscaler(cfg, f, epoch), epoch: epoch}
}

func (p *inflight) Name() string    { return p.name }
func (p *inflight) Period() float64 { return 1 }
func (p *inflight) at(t float64) time.Time {
	return p.epoch.Add(time.Duration(t * float64(time.Second)))
}

// Observe turns the tick into what the extproc and the pod informer would
// report: mean concurrency from the busy-seconds delta, in-flight now,
// arrivals and completions, the mean duration of the last minute's
// completions, and the learned cold start.
func (p *inflight) Observe(m Metrics) {
	p.durRing[p.k%60], p.compRing[p.k%60] = m.DurationSum, m.Completions
	p.k++
	var ds float64
	var n int
	for i := range p.durRing {
		ds += p.durRing[i]
		n += p.compRing[i]
	}
	var mean time.Duration
	if n > 0 {
		mean = time.Duration(ds / float64(n) * float64(time.Second))
	}
	p.a.Observe(scaling.Observation{
		Time: p.at(m.Time), Concurrency: m.BusySeconds / m.Dt, InFlight: float64(m.InFlight),
		Arrivals: float64(m.Arrivals), Completions: float64(m.Completions), MeanDuration: mean,
		Ready: int32(m.Ready), Starting: int32(m.Starting), Requested: int32(m.Requested),
		ColdStart: time.Duration(m.ColdStart * float64(time.Second)),
	})
}

func (p *inflight) Decide(now float64, _ Metrics) int {
	return int(p.a.Decide(p.at(now)).Desired)
}

// ---- HPA v2 on a CPU-like utilization -------------------------------------

// hpa follows the HPA v2 replica calculator for a Resource (CPU) metric
// with the default behavior: 15 s sync, tolerance 0.1, unready pods ignored
// and counted as 0 when scaling up, scale-up limited to max(2×, +4) per
// period, scale-down stabilized over the max recommendation of 5 minutes.
// The utilization of a pod is the share of its batch slots in use averaged
// over the last 15 s (a CPU-like busy signal that saturates at 100 % and
// cannot see the queue).
type hpa struct {
	target float64
	max    int
	run    [15]float64
	k      int
	recs   []timedRec
}

type timedRec struct {
	t float64
	n int
}

func (p *hpa) Name() string    { return "hpa-cpu" }
func (p *hpa) Period() float64 { return 15 }
func (p *hpa) Observe(m Metrics) {
	p.run[p.k%15] = m.RunSeconds
	p.k++
}

func (p *hpa) Decide(now float64, m Metrics) int {
	cur := m.Requested
	if m.Ready == 0 {
		return max(cur, 1) // no metrics at all: no change
	}
	var busy float64
	for _, v := range p.run {
		busy += v
	}
	window := math.Min(15, float64(p.k))
	util := busy / window / float64(m.Ready*m.Batch)
	util = math.Min(util, 1)
	ratio := util / p.target
	const tol = 0.1
	rec := cur
	pods := m.Ready
	if ratio > 1 && m.Starting > 0 {
		newRatio := util * float64(m.Ready) / (p.target * float64(m.Ready+m.Starting))
		pods = m.Ready + m.Starting
		ratio = newRatio
		if newRatio < 1 {
			ratio = 1 // direction reversed: no change
		}
	}
	if math.Abs(1-ratio) > tol {
		rec = int(math.Ceil(ratio * float64(pods)))
	}
	rec = min(max(rec, 1), p.max)
	// Behavior: scale-down stabilization 300 s (max of recommendations).
	p.recs = append(p.recs, timedRec{now, rec})
	for len(p.recs) > 0 && now-p.recs[0].t > 300 {
		p.recs = p.recs[1:]
	}
	want := rec
	if want < cur {
		hi := 0
		for _, r := range p.recs {
			hi = max(hi, r.n)
		}
		want = min(cur, max(want, hi))
	}
	if up := max(2*cur, cur+4); want > up {
		want = up
	}
	return min(max(want, 1), p.max)
}

// ---- Cortex -----------------------------------------------------------------

// cortex follows pkg/autoscaler of cortexlabs/cortex with its defaults: the
// proxy samples in-flight every 1 s and reports the 10 s mean, Prometheus
// scrapes every 10 s (modelled as a 10 s lag), and every 10 s the scaler
// averages the reports over the 60 s window and applies the tolerance
// dead-band, the ×1.5/×0.75 factor caps and the 1 m / 5 m stabilization
// over its history of clamped recommendations.
type cortex struct {
	target   float64
	max      int
	samples  []float64 // 1 s in-flight samples
	reports  []timedVal
	history  []timedRec
	started  float64
	hasStart bool
}

type timedVal struct{ t, v float64 }

func newCortex(target float64, maxReplicas int) *cortex {
	return &cortex{target: target, max: maxReplicas}
}

func (p *cortex) Name() string    { return "cortex" }
func (p *cortex) Period() float64 { return 10 }
func (p *cortex) Observe(m Metrics) {
	p.samples = append(p.samples, float64(m.InFlight))
	if len(p.samples) == 10 {
		s := 0.0
		for _, v := range p.samples {
			s += v
		}
		p.reports = append(p.reports, timedVal{m.Time, s / 10})
		p.samples = p.samples[:0]
	}
}

func (p *cortex) Decide(now float64, m Metrics) int {
	if !p.hasStart {
		p.started, p.hasStart = now, true
	}
	cur := m.Requested
	const lag, window = 10.0, 60.0
	var sum float64
	var n int
	for i := len(p.reports) - 1; i >= 0; i-- {
		r := p.reports[i]
		if r.t > now-lag {
			continue
		}
		if r.t <= now-lag-window {
			break
		}
		sum += r.v
		n++
	}
	if n == 0 {
		return cur // "metrics not available yet": skip the tick
	}
	raw := sum / float64(n) / p.target
	rec := int(math.Ceil(raw))
	fc := float64(cur)
	if fc*(1-0.05) < raw && raw < fc {
		rec = cur
	}
	if fc < raw && raw < fc*(1+0.05) {
		rec = cur
	}
	rec = max(rec, min(cur-1, int(math.Ceil(fc*0.75))))
	rec = min(rec, max(cur+1, int(math.Ceil(fc*1.5))))
	rec = min(max(rec, 1), p.max)
	p.history = append(p.history, timedRec{now, rec})
	for len(p.history) > 0 && now-p.history[0].t > 300 {
		p.history = p.history[1:]
	}
	req := rec
	if req < cur {
		if now-p.started < 300 {
			req = cur
		} else {
			hi := math.MinInt
			for _, h := range p.history {
				hi = max(hi, h.n)
			}
			req = max(req, min(cur, hi))
		}
	}
	if req > cur {
		if now-p.started < 60 {
			req = cur
		} else {
			lo := math.MaxInt
			for _, h := range p.history {
				if now-h.t <= 60 {
					lo = min(lo, h.n)
				}
			}
			req = min(req, max(cur, lo))
		}
	}
	return req
}

// ---- Knative KPA ------------------------------------------------------------

// kpa follows pkg/autoscaler/scaling/autoscaler.go of knative/serving with
// its defaults: 1 s buckets of time-weighted concurrency, 60 s stable and
// 6 s panic windows (linear mean), a 2 s tick, 70 % target utilization,
// panic at 200 %, max scale-up rate 1000 and scale-down rate 2 (relative to
// ready pods), scale-down-delay 0, never down while panicking.
type kpa struct {
	target    float64
	max       int
	buckets   []float64
	panicking bool
	panicTime float64
	maxPanic  int
}

func (p *kpa) Name() string    { return "knative-kpa" }
func (p *kpa) Period() float64 { return 2 }
func (p *kpa) Observe(m Metrics) {
	p.buckets = append(p.buckets, m.BusySeconds/m.Dt)
	if len(p.buckets) > 120 {
		p.buckets = append(p.buckets[:0], p.buckets[len(p.buckets)-60:]...)
	}
}

func (p *kpa) Decide(now float64, m Metrics) int {
	avg := func(n int) float64 {
		n = min(n, len(p.buckets))
		if n == 0 {
			return 0
		}
		s := 0.0
		for _, v := range p.buckets[len(p.buckets)-n:] {
			s += v
		}
		return s / float64(n)
	}
	ready := float64(max(1, m.Ready))
	target := math.Max(0.01, p.target*0.7)
	dspc := math.Ceil(avg(60) / target)
	dppc := math.Ceil(avg(6) / target)
	upCap := math.Ceil(1000 * ready)
	downFloor := math.Floor(ready / 2)
	clamp := func(x float64) int { return int(math.Min(math.Max(x, downFloor), upCap)) }
	ds, dp := clamp(dspc), clamp(dppc)
	over := dppc/ready >= 2.0
	switch {
	case over:
		if !p.panicking {
			p.panicking = true
		}
		p.panicTime = now
	case p.panicking && now > p.panicTime+60:
		p.panicking, p.maxPanic = false, 0
	}
	want := ds
	if p.panicking {
		want = max(ds, dp)
		p.maxPanic = max(p.maxPanic, want)
		want = p.maxPanic
	}
	return min(max(want, 1), p.max)
}

// ---- static and clairvoyant ---------------------------------------------------

type static int

func (s static) Name() string                { return "static-peak" }
func (s static) Period() float64             { return 60 }
func (s static) Observe(Metrics)             {}
func (s static) Decide(float64, Metrics) int { return int(s) }

// clairvoyant knows the whole trace: at t it requests what the peak demand
// of [t, t + cold start] needs, so each replica is ready one cold start
// after it is asked for exactly when demand arrives, and releases it as
// soon as no demand within one cold start needs it. It is a near-lower
// bound, not an optimum (it still rounds up to whole replicas per second).
type clairvoyant struct {
	needs []int
	ahead int
}

func newClairvoyant(e Env, perReplica float64) *clairvoyant {
	needs := make([]int, len(e.OfferedMax))
	for i, v := range e.OfferedMax {
		needs[i] = max(1, int(math.Ceil(v/perReplica-1e-9)))
	}
	return &clairvoyant{needs: needs, ahead: int(math.Ceil(e.Model.ColdStart)) + 1}
}

func (c *clairvoyant) need(t int) int {
	hi := 1
	for s := max(0, t); s <= t+c.ahead && s < len(c.needs); s++ {
		hi = max(hi, c.needs[s])
	}
	return hi
}

func (c *clairvoyant) Name() string    { return "clairvoyant" }
func (c *clairvoyant) Period() float64 { return 1 }
func (c *clairvoyant) Observe(Metrics) {}
func (c *clairvoyant) Decide(now float64, _ Metrics) int {
	return c.need(int(now))
}

// String describes a spec for logs.
func (s Spec) String() string { return fmt.Sprintf("%s(%s)", s.Name, s.KnobName) }

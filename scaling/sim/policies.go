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
	Warmup      Trace // replayed before Trace, unmeasured
	MaxReplicas int
	// Offered is, per second of the trace, the mean and the maximum number
	// of requests that would be in service if every request started at once
	// (the demand, in requests; divide by Batch for replicas).
	OfferedMean, OfferedMax []float64
	warmMean                []float64
	warmNeed                []int // per second of Warmup (see warmNeeds)
}

// NewEnv computes the offered load of tr under m.
func NewEnv(m Model, tr Trace, maxReplicas int) Env {
	mean, peak := offered(m, tr)
	return Env{Model: m, Trace: tr, MaxReplicas: maxReplicas, OfferedMean: mean, OfferedMax: peak}
}

// WithWarmup returns e with the warm-up trace set.
func (e Env) WithWarmup(w Trace) Env {
	e.Warmup = w
	var peak []float64
	e.warmMean, peak = offered(e.Model, w)
	e.warmNeed = warmNeeds(e.Model, peak)
	return e
}

func offered(m Model, tr Trace) (mean, peak []float64) {
	n := int(math.Ceil(tr.Duration)) + 1
	mean = make([]float64, n)
	peak = make([]float64, n)
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
	return mean, peak
}

// replicas is how many replicas load (requests in service) needs at the
// batch limit, rounded as the policy rounds (scaling.CeilReplicas).
func (m Model) replicas(load float64) int {
	return int(scaling.CeilReplicas(load / float64(m.Batch)))
}

// Initial is the number of replicas every autoscaler starts with: enough,
// at the batch limit, for the busiest minute of the last five of the
// warm-up and the first five of the trace (a warm start, the same for every
// autoscaler).
func (e Env) Initial() int {
	best := 0.0
	minute := func(xs []float64, from int) {
		if from < 0 || from >= len(xs) {
			return
		}
		sum := 0.0
		to := min(len(xs), from+60)
		for _, v := range xs[from:to] {
			sum += v
		}
		best = math.Max(best, sum/60)
	}
	for m := 0; m < 5; m++ {
		minute(e.OfferedMean, 60*m)
		minute(e.warmMean, len(e.warmMean)-1-60*(m+1))
	}
	return max(1, e.Model.replicas(best))
}

// PeakNeed is the replicas the busiest second of the trace needs at the
// batch limit.
func (e Env) PeakNeed() int {
	hi := 0.0
	for _, v := range e.OfferedMax {
		hi = math.Max(hi, v)
	}
	return max(1, e.Model.replicas(hi))
}

// Spec describes one policy for the experiments: its name, its main knob
// (what the frontier sweeps), and a constructor.
type Spec struct {
	Name     string
	KnobName string
	// Default is the knob's default for this env; Grid the values swept
	// (nil: the default times the experiment's grid multipliers).
	Default func(Env) float64
	Grid    func(Env) []float64
	// Clamp bounds a knob of the multiplied grid (nil: none).
	Clamp func(float64) float64
	New   func(env Env, knob float64) (Policy, int) // the policy and its initial replicas
	// Reference marks static provisioning and the clairvoyants: they are
	// not autoscalers a user can run, only yardsticks.
	Reference bool
}

// DefaultGrid is the knob multipliers every policy is swept over.
var DefaultGrid = []float64{0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 1.15, 1.3, 1.5, 1.75, 2}

// Knobs returns the knobs to run for spec on env with the grid multipliers.
func (s Spec) Knobs(env Env, grid []float64) []float64 {
	if s.Grid != nil {
		return s.Grid(env)
	}
	def := s.Default(env)
	out := make([]float64, 0, len(grid))
	for _, m := range grid {
		k := def * m
		if s.Clamp != nil {
			k = s.Clamp(k)
		}
		out = append(out, k)
	}
	return out
}

// Specs returns the policies compared: inflight (the real scaling package,
// with scale to zero allowed and not), the anchors' algorithms with their
// defaults (HPA on CPU and on idealised occupancy, Cortex, Knative KPA,
// Ray Serve), static provisioning at every count, and the two
// clairvoyants.
func Specs() []Spec {
	batch := func(e Env) float64 { return float64(e.Model.Batch) }
	util := func(k float64) float64 { return math.Min(1, math.Max(0.05, k)) }
	return []Spec{
		InflightSpec("inflight", scaling.Features{}, 1),
		InflightSpec("inflight-zero", scaling.Features{}, 0),
		{Name: "hpa-cpu", KnobName: "CPU target utilization", Default: func(Env) float64 { return 0.7 }, Clamp: util,
			New: func(e Env, k float64) (Policy, int) { return newHPA("hpa-cpu", k, e.MaxReplicas, hpaCPU), e.Initial() }},
		{Name: "hpa-occupancy", KnobName: "occupancy target", Default: func(Env) float64 { return 0.7 }, Clamp: util,
			New: func(e Env, k float64) (Policy, int) {
				return newHPA("hpa-occupancy", k, e.MaxReplicas, hpaOccupancy), e.Initial()
			}},
		{Name: "cortex", KnobName: "target_in_flight", Default: batch,
			New: func(e Env, k float64) (Policy, int) { return newCortex(k, e.MaxReplicas), e.Initial() }},
		{Name: "knative-kpa", KnobName: "container-concurrency (target ×0.7)", Default: batch,
			New: func(e Env, k float64) (Policy, int) { return newKPA(k*0.7, e.MaxReplicas), e.Initial() }},
		{Name: "ray-serve", KnobName: "target_ongoing_requests", Default: func(Env) float64 { return 2 },
			New: func(e Env, k float64) (Policy, int) { return newRay(k, 1, e.MaxReplicas), e.Initial() }},
		{Name: "static", KnobName: "replicas", Reference: true, Default: staticPeak,
			Grid: func(e Env) []float64 {
				var g []float64
				lo := 0.0
				for _, v := range e.OfferedMean {
					lo += v
				}
				lo = math.Max(1, math.Floor(lo/float64(len(e.OfferedMean))/float64(e.Model.Batch)))
				// A batch that slows as it fills needs up to 1+Slowdown more.
				hi := math.Ceil(float64(e.PeakNeed()) * (1 + e.Model.Slowdown))
				for k := lo; k <= hi; k++ {
					g = append(g, k)
				}
				return g
			},
			New: func(e Env, k float64) (Policy, int) { return static(int(k)), int(k) }},
		{Name: "clairvoyant", KnobName: "in-flight per replica", Default: batch, Reference: true,
			New: func(e Env, k float64) (Policy, int) {
				c := newClairvoyant(e, k)
				return c, c.need(0)
			}},
		{Name: "clairvoyant-zero", KnobName: "—", Default: batch, Reference: true,
			Grid: func(e Env) []float64 { return []float64{float64(e.Model.Batch)} },
			New: func(e Env, k float64) (Policy, int) {
				c := newZeroWait(e)
				return c, c.at(0)
			}},
	}
}

// InflightSpec is the inflight policy with the given ingredients and
// min-replicas, for the comparison and the ablation. Its knob is slo-wait
// (s); the annotations are what an operator knows: concurrency = the
// batch, forecast-period = the trace's season (a synthetic family's day;
// a replayed file has none, so the default 24 h never has the history).
func InflightSpec(name string, f scaling.Features, minReplicas int32) Spec {
	return InflightSpecWith(name, f, minReplicas, nil)
}

// InflightSpecWith is InflightSpec with the configuration changed by
// mutate (nil: none).
func InflightSpecWith(name string, f scaling.Features, minReplicas int32, mutate func(*scaling.Config)) Spec {
	return Spec{Name: name, KnobName: "inflight.dev/slo-wait (s)",
		Default: func(e Env) float64 { return 10 },
		New: func(e Env, k float64) (Policy, int) {
			p := newInflight(name, k, f, minReplicas, e)
			if mutate != nil {
				mutate(&p.cfg)
			}
			return p, e.Initial()
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
	cfg      scaling.Config
	f        scaling.Features
	epoch    time.Time
	durRing  [60]float64
	compRing [60]int
	k        int
}

func newInflight(name string, sloWait float64, f scaling.Features, minReplicas int32, e Env) *inflight {
	cfg := scaling.DefaultConfig(0)
	cfg.SLOWait = time.Duration(sloWait * float64(time.Second))
	cfg.Concurrency = int32(e.Model.Batch)
	cfg.MinReplicas, cfg.MaxReplicas = minReplicas, int32(e.MaxReplicas)
	if e.Trace.Period > 0 {
		cfg.ForecastPeriod = time.Duration(e.Trace.Period * float64(time.Second))
	}
	if err := cfg.Validate(); err != nil {
		panic(fmt.Sprintf("inflight spec %s: %v", name, err)) // a bug of the simulator, not an input
	}
	epoch := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	return &inflight{name: name, cfg: cfg, f: f, epoch: epoch}
}

func (p *inflight) Name() string    { return p.name }
func (p *inflight) Period() float64 { return 1 }
func (p *inflight) at(t float64) time.Time {
	return p.epoch.Add(time.Duration(t * float64(time.Second)))
}

// Observe turns the tick into what the extproc and the pod informer would
// report: mean concurrency from the busy-seconds delta, in-flight now,
// arrivals and completions, the mean duration of the last minute's
// completions, and the learned cold start. The autoscaler starts at the
// first observation (the start of the warm-up).
func (p *inflight) Observe(m Metrics) {
	if p.a == nil {
		p.a = scaling.NewAutoscaler(p.cfg, p.f, p.at(m.Time-m.Dt))
	}
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

// ---- HPA v2 -----------------------------------------------------------------

// hpaSignal selects what HPA's Resource metric measures.
type hpaSignal int

const (
	// hpaCPU: CPU utilization of the model's CPU (see Model): what a user
	// gets from `kubectl autoscale --cpu-percent`. On a GPU server it
	// follows the arrivals and the tokens, not the queue.
	hpaCPU hpaSignal = iota
	// hpaOccupancy: the share of batch slots in use, an idealised metric
	// no cluster exports by default (it saturates at 100 % and cannot see
	// the queue either).
	hpaOccupancy
)

// hpa follows the HPA v2 replica calculator for a Resource metric with the
// default behavior: 15 s sync, utilization averaged over 15 s, tolerance
// 0.1, unready pods ignored and counted as 0 when scaling up, scale-up
// limited to max(2×, +4) per period, scale-down stabilized over the max
// recommendation of 5 minutes.
type hpa struct {
	name   string
	target float64
	max    int
	signal hpaSignal
	win    [15]float64
	k      int
	recs   []timedRec
}

type timedRec struct {
	t float64
	n int
}

func newHPA(name string, target float64, maxReplicas int, s hpaSignal) *hpa {
	return &hpa{name: name, target: target, max: maxReplicas, signal: s}
}

func (p *hpa) Name() string    { return p.name }
func (p *hpa) Period() float64 { return 15 }
func (p *hpa) Observe(m Metrics) {
	v := m.RunSeconds / float64(max(1, m.Batch)) // slot-seconds → replica-seconds of occupancy
	if p.signal == hpaCPU {
		v = m.CPUSeconds / CPURequest
	}
	p.win[p.k%15] = v
	p.k++
}

func (p *hpa) Decide(now float64, m Metrics) int {
	if m.Ready == 0 {
		return max(m.Requested, 1) // no metrics at all: no change
	}
	var sum float64
	for _, v := range p.win {
		sum += v
	}
	util := sum / math.Min(15, float64(p.k)) / float64(m.Ready)
	return p.recommend(now, util, m.Ready, m.Starting, m.Requested)
}

// recommend is the replica calculator and the behavior for one sync: util
// is the mean utilization of the ready pods.
func (p *hpa) recommend(now, util float64, ready, starting, cur int) int {
	const tolerance = 0.1
	ratio := util / p.target
	rec, pods := cur, ready
	if ratio > 1 && starting > 0 {
		// Scaling up: unready pods count with 0 utilization.
		pods = ready + starting
		ratio = util * float64(ready) / (p.target * float64(pods))
		if ratio < 1 {
			ratio = 1 // the direction would reverse: no change
		}
	}
	if math.Abs(1-ratio) > tolerance {
		rec = int(math.Ceil(ratio * float64(pods)))
	}
	rec = min(max(rec, 1), p.max)
	// Scale-down stabilization: the highest recommendation of 5 minutes.
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
	cortexSpec
	max      int
	samples  []float64 // 1 s in-flight samples
	reports  []timedVal
	history  []timedRec
	started  float64
	hasStart bool
}

// cortexSpec is the part of Cortex's autoscaling spec the algorithm reads.
type cortexSpec struct {
	target                     float64
	window                     float64 // s
	downStab, upStab           float64 // s
	maxDownFactor, maxUpFactor float64
	downTol, upTol             float64
}

type timedVal struct{ t, v float64 }

func newCortex(target float64, maxReplicas int) *cortex {
	return &cortex{cortexSpec: cortexSpec{target: target, window: 60, downStab: 300, upStab: 60,
		maxDownFactor: 0.75, maxUpFactor: 1.5, downTol: 0.05, upTol: 0.05}, max: maxReplicas}
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
	const lag = 10.0
	var sum float64
	var n int
	for i := len(p.reports) - 1; i >= 0; i-- {
		r := p.reports[i]
		if r.t > now-lag {
			continue
		}
		if r.t <= now-lag-p.window {
			break
		}
		sum += r.v
		n++
	}
	if !p.hasStart {
		p.started, p.hasStart = now, true
	}
	if n == 0 {
		return m.Requested // "metrics not available yet": skip the tick
	}
	return p.autoscale(now, sum/float64(n), m.Requested)
}

// autoscale is Cortex's autoscaleFn for one tick: inFlight is the window's
// mean in-flight, cur the requested replicas.
func (p *cortex) autoscale(now, inFlight float64, cur int) int {
	raw := inFlight / p.target
	rec := int(math.Ceil(raw))
	fc := float64(cur)
	if fc*(1-p.downTol) < raw && raw < fc {
		rec = cur
	}
	if fc < raw && raw < fc*(1+p.upTol) {
		rec = cur
	}
	rec = max(rec, min(cur-1, int(math.Ceil(fc*p.maxDownFactor))))
	rec = min(rec, max(cur+1, int(math.Ceil(fc*p.maxUpFactor))))
	rec = min(max(rec, 1), p.max)
	p.history = append(p.history, timedRec{now, rec})
	for len(p.history) > 0 && now-p.history[0].t > math.Max(p.downStab, p.upStab) {
		p.history = p.history[1:]
	}
	req := rec
	if req < cur {
		if now-p.started < p.downStab {
			req = cur
		} else {
			hi := math.MinInt
			for _, h := range p.history {
				if now-h.t <= p.downStab {
					hi = max(hi, h.n)
				}
			}
			req = max(req, min(cur, hi))
		}
	}
	if req > cur {
		if now-p.started < p.upStab {
			req = cur
		} else {
			lo := math.MaxInt
			for _, h := range p.history {
				if now-h.t <= p.upStab {
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
// 6 s panic windows (linear mean), a 2 s tick, the target at 70 %
// utilization of the container concurrency, panic at 200 %, max scale-up
// rate 1000 and scale-down rate 2 (relative to ready pods), scale-down
// delay 0, never down while panicking, and a new autoscaler that starts in
// panic mode pinned to the ready pods when there are more than one.
type kpa struct {
	kpaSpec
	max       int
	buckets   []float64
	created   bool
	panicTime float64 // NaN: not panicking
	maxPanic  int
}

// kpaSpec is the part of Knative's DeciderSpec the algorithm reads.
type kpaSpec struct {
	target                   float64 // per pod, after the utilization factor
	panicThreshold           float64 // × ready pods
	maxScaleUp, maxScaleDown float64
	stableWindow             float64 // s
}

func newKPA(target float64, maxReplicas int) *kpa {
	return &kpa{kpaSpec: kpaSpec{target: math.Max(0.01, target), panicThreshold: 2, maxScaleUp: 1000,
		maxScaleDown: 2, stableWindow: 60}, max: maxReplicas, panicTime: math.NaN()}
}

func (p *kpa) Name() string    { return "knative-kpa" }
func (p *kpa) Period() float64 { return 2 }
func (p *kpa) Observe(m Metrics) {
	p.buckets = append(p.buckets, m.BusySeconds/m.Dt)
	if len(p.buckets) > 120 {
		p.buckets = append(p.buckets[:0], p.buckets[len(p.buckets)-60:]...)
	}
}

// start is newAutoscaler: with more than one ready pod, start in panic
// mode pinned to them.
func (p *kpa) start(now float64, ready int) {
	p.created = true
	if ready > 1 {
		p.panicTime, p.maxPanic = now, ready
	}
}

func (p *kpa) Decide(now float64, m Metrics) int {
	if !p.created {
		p.start(now, m.Ready)
	}
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
	return min(max(p.scale(now, avg(int(p.stableWindow)), avg(6), m.Ready), 1), p.max)
}

// scale is Knative's Scale for one tick from the stable and panic window
// concurrency and the ready pods.
func (p *kpa) scale(now, stable, panic float64, readyPods int) int {
	ready := math.Max(1, float64(readyPods))
	upCap := math.Ceil(p.maxScaleUp * ready)
	downFloor := math.Floor(ready / p.maxScaleDown)
	dspc := math.Ceil(stable / p.target)
	dppc := math.Ceil(panic / p.target)
	clamp := func(x float64) int { return int(math.Min(math.Max(x, downFloor), upCap)) }
	ds, dp := clamp(dspc), clamp(dppc)
	over := dppc/ready >= p.panicThreshold
	switch {
	case over:
		p.panicTime = now
	case !math.IsNaN(p.panicTime) && now > p.panicTime+p.stableWindow:
		p.panicTime, p.maxPanic = math.NaN(), 0
	}
	want := ds
	if !math.IsNaN(p.panicTime) {
		want = max(ds, dp)
		if want > p.maxPanic {
			p.maxPanic = want
		} else {
			want = p.maxPanic
		}
	}
	return want
}

// ---- Ray Serve --------------------------------------------------------------

// ray follows Ray Serve's default autoscaling policy
// (replica_queue_length_autoscaling_policy, Ray ≥ 2.32 defaults): replicas
// record their ongoing requests (running + queued, i.e. in flight) and push
// them every metrics_interval_s = 10 s; the controller averages the
// look_back_period_s = 30 s of them; desired = total / target_ongoing_requests
// (smoothing 1), applied once the decision has held for upscale_delay_s =
// 30 s (up) or downscale_delay_s = 600 s (down) of consecutive control
// loops (modelled at our 1 s tick); from zero running replicas with
// requests waiting it scales to max(1, target) at once.
type ray struct {
	target      float64
	min, max    int
	upDelay     float64 // periods (s)
	downDelay   float64
	pending     []timedVal // samples not pushed yet
	pushed      []timedVal // samples the controller has
	counter     int
	lastPush    float64
	havePush    bool
	pushEvery   float64
	lookBack    float64
	controlStep float64
}

func newRay(target float64, minReplicas, maxReplicas int) *ray {
	return &ray{target: target, min: minReplicas, max: maxReplicas, upDelay: 30, downDelay: 600,
		pushEvery: 10, lookBack: 30, controlStep: 1}
}

func (p *ray) Name() string    { return "ray-serve" }
func (p *ray) Period() float64 { return p.controlStep }
func (p *ray) Observe(m Metrics) {
	p.pending = append(p.pending, timedVal{m.Time, float64(m.InFlight)})
	if !p.havePush || m.Time-p.lastPush >= p.pushEvery {
		p.pushed = append(p.pushed, p.pending...)
		p.pending = p.pending[:0]
		p.lastPush, p.havePush = m.Time, true
		for len(p.pushed) > 0 && p.pushed[0].t <= m.Time-p.lookBack {
			p.pushed = p.pushed[1:]
		}
	}
}

func (p *ray) Decide(now float64, m Metrics) int {
	var sum float64
	for _, v := range p.pushed {
		sum += v.v
	}
	total := 0.0
	if len(p.pushed) > 0 {
		total = sum / float64(len(p.pushed))
	}
	if m.Ready == 0 {
		// Cold start fast path: no running replica; with requests waiting,
		// at least one at once.
		if m.InFlight > 0 {
			return max(1, m.Requested)
		}
		return m.Requested
	}
	return p.decide(total, m.Ready, m.Requested)
}

// decide is the default policy with its delay logic for one control loop:
// total is the averaged ongoing requests, running the running replicas,
// cur the current target.
func (p *ray) decide(total float64, running, cur int) int {
	desired := float64(running) * (total / (p.target * float64(running)))
	want := int(math.Ceil(desired)) // smoothing/scaling factor 1
	want = min(max(want, p.min), p.max)
	switch {
	case want > cur:
		if p.counter < 0 {
			p.counter = 0
		}
		p.counter++
		if float64(p.counter) > p.upDelay/p.controlStep {
			p.counter = 0
			return want
		}
	case want < cur:
		if p.counter > 0 {
			p.counter = 0
		}
		p.counter--
		if cur != 1 {
			want = max(1, want) // only 1 → 0 may reach zero
		}
		if float64(-p.counter) > p.downDelay/p.controlStep {
			p.counter = 0
			return want
		}
	default:
		p.counter = 0
	}
	return cur
}

// ---- static and clairvoyant ---------------------------------------------------

type static int

func (s static) Name() string                { return "static" }
func (s static) Period() float64             { return 60 }
func (s static) Observe(Metrics)             {}
func (s static) Decide(float64, Metrics) int { return int(s) }

// clairvoyant knows the whole trace: at t it requests what the peak demand
// of [t, t + cold start] needs at perReplica requests per replica, never
// fewer than 1. It is a reference, not a bound: at perReplica above the
// batch it lets requests wait.
type clairvoyant struct {
	needs []int
	ahead int
}

func newClairvoyant(e Env, perReplica float64) *clairvoyant {
	needs := make([]int, len(e.OfferedMax))
	for i, v := range e.OfferedMax {
		needs[i] = max(1, int(scaling.CeilReplicas(v/perReplica)))
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

// zeroWait is the cheapest schedule under which no request waits (floor
// 0), knowing the whole trace: replica k is needed while the batch limit
// needs ≥ k replicas; it is kept through a gap shorter than one cold start
// (keeping it costs less than starting another) and requested one cold
// start before it is needed. Replicas are interchangeable, so this
// level-by-level choice is optimal: a lower bound for any autoscaler that
// keeps every wait at 0, in this model without slowdown.
type zeroWait struct {
	want []int
}

func newZeroWait(e Env) *zeroWait {
	L := int(math.Ceil(e.Model.ColdStart))
	n := len(e.OfferedMax)
	need := make([]int, n)
	top := 0
	for i, v := range e.OfferedMax {
		need[i] = e.Model.replicas(v)
		top = max(top, need[i])
	}
	want := make([]int, n)
	for k := 1; k <= top; k++ {
		// The intervals where level k is needed, merged over gaps ≤ L.
		var spans [][2]int
		for t := 0; t < n; t++ {
			if need[t] < k {
				continue
			}
			if len(spans) > 0 && t-spans[len(spans)-1][1] <= L {
				spans[len(spans)-1][1] = t + 1
			} else {
				spans = append(spans, [2]int{t, t + 1})
			}
		}
		for _, s := range spans {
			for t := max(0, s[0]-L); t < s[1]; t++ {
				want[t] = max(want[t], k)
			}
		}
	}
	return &zeroWait{want: want}
}

func (z *zeroWait) at(t int) int {
	if len(z.want) == 0 {
		return 0
	}
	return z.want[min(max(t, 0), len(z.want)-1)]
}

func (z *zeroWait) Name() string                      { return "clairvoyant-zero" }
func (z *zeroWait) Period() float64                   { return 1 }
func (z *zeroWait) Observe(Metrics)                   {}
func (z *zeroWait) Decide(now float64, _ Metrics) int { return z.at(int(now)) }

// String describes a spec for logs.
func (s Spec) String() string { return fmt.Sprintf("%s(%s)", s.Name, s.KnobName) }

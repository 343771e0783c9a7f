// Package scaling owns the inflight scaling policy: the pure function that
// turns per-tick observations of a workload's requests in flight into a
// desired replica count, and the parsing and validation of the per-workload
// configuration (the inflight.dev/ annotations of a Deployment).
//
// It imports no Kubernetes client, never sleeps and never reads the clock:
// time is always a parameter. The Kubernetes side (scaling/kube), the
// snapshot collector (scaling/collect) and the trace simulator (scaling/sim)
// all drive the same code.
//
// Use, once per workload:
//
//	cfg, err := scaling.ParseAnnotations(deployment.Annotations) // *ConfigError on error
//	a := scaling.NewAutoscaler(cfg, scaling.Features{}, now)   // zero Features: every ingredient on
//
// then every tick (1 s):
//
//	a.Observe(scaling.Observation{Time: now, Concurrency: …, InFlight: …, …})
//	d := a.Decide(now) // d.Direction != Hold: write d.Desired to /scale
//
// d.Cause says what determined the count: d.Cause.String() is the metric
// label (lower_snake, a bounded set listed by Causes), d.Cause.Message()
// a sentence for the Event, and d.Reason the numbers behind it.
//
// and a.SetConfig(cfg) whenever the annotations change to a valid
// configuration. Decide records its own decision (panic state, the
// scale-down history), so call it once per tick.
//
// The six ingredients of DESIGN.md § The policy, each switchable through
// Features: the stable-window demand, the trend, burst (panic) mode,
// cold-start awareness, asymmetric stabilization with ratio caps, and the
// fail-safe. See Decide for the exact order in which they apply.
//
// Concurrency: an Autoscaler is not safe for concurrent use; the owner (one
// goroutine per tick) calls Observe, Decide and SetConfig in turn. Config,
// Observation, Features and Decision are plain values. There is no global
// state.
package scaling

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Ingredient names one switchable part of the policy.
type Ingredient int

// The ingredients, in the order of DESIGN.md § The policy.
const (
	StableWindow   Ingredient = iota // time-averaged in-flight over the stable window
	Trend                            // where in-flight is going: proven arrival rate × service time; falling suppresses
	Burst                            // panic mode on the short window
	ColdStartAware                   // starting replicas count as capacity on the way
	Stabilization                    // up fast, down after scale-down-delay; ratio caps
	FailSafe                         // partial or missing data: never scale down
	numIngredients
)

// Ingredients lists every ingredient, for ablations.
func Ingredients() []Ingredient {
	out := make([]Ingredient, numIngredients)
	for i := range out {
		out[i] = Ingredient(i)
	}
	return out
}

func (i Ingredient) String() string {
	switch i {
	case StableWindow:
		return "stable-window"
	case Trend:
		return "trend"
	case Burst:
		return "burst"
	case ColdStartAware:
		return "cold-start"
	case Stabilization:
		return "stabilization"
	case FailSafe:
		return "fail-safe"
	}
	return fmt.Sprintf("ingredient(%d)", int(i))
}

// Features switches ingredients off. The zero value has every ingredient
// on, which is what the controller uses; the simulator turns them off one
// at a time to measure what each buys.
type Features struct {
	off [numIngredients]bool
}

// Without returns f with ingredient i switched off.
func (f Features) Without(i Ingredient) Features {
	if i >= 0 && i < numIngredients {
		f.off[i] = true
	}
	return f
}

// On reports whether ingredient i is switched on.
func (f Features) On(i Ingredient) bool { return i >= 0 && i < numIngredients && !f.off[i] }

// Observation is what the collector measured for one workload over one
// tick, ending at Time. Counts are summed over every extproc replica.
type Observation struct {
	Time time.Time
	// Concurrency is the mean number of requests in flight over the interval
	// since the previous observation (busy-seconds delta / elapsed time).
	Concurrency float64
	// InFlight is the number of requests in flight (queued + running) at Time.
	InFlight float64
	// Held is the number of requests held at the edge at Time because the
	// workload has no ready replica (scale from zero); they are not in
	// InFlight. Any of them at zero replicas asks for a replica on this
	// very tick (CauseWake).
	Held float64
	// Arrivals and Completions are the requests started and completed in the interval.
	Arrivals, Completions float64
	// MeanDuration is the mean duration of the requests completed recently (0: unknown).
	MeanDuration time.Duration
	// Ready, Starting and Requested are the workload's ready pods, pods that
	// exist but are not ready yet, and spec.replicas.
	Ready, Starting, Requested int32
	// Partial is set when some extproc replica did not answer: the counts
	// are then a lower bound.
	Partial bool
	// ColdStart is the learned time from scale-up to ready (0: unknown).
	ColdStart time.Duration
}

// Direction of a decision. Hold means: leave spec.replicas as it is.
type Direction int8

// Directions.
const (
	Down Direction = -1
	Hold Direction = 0
	Up   Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Down:
		return "down"
	case Up:
		return "up"
	}
	return "hold"
}

// Decision is the outcome of one Decide call, with the internals worth plotting.
type Decision struct {
	Time      time.Time
	Desired   int32 // replicas to write (equals Current when Direction is Hold)
	Current   int32 // spec.replicas as last observed
	Direction Direction
	// Cause is what determined Desired (the last step of Decide that bound
	// it): a bounded set whose String is the metric label and whose
	// Message is the Event's sentence.
	Cause Cause
	// Reason is one human line, e.g. "in-flight 18.2 (panic window) over
	// target 4 × 3 replicas, rising 1.3/s: 3 → 5".
	Reason string
	// StableDemand and PanicDemand are the time-averaged in-flight over the
	// stable and the panic window; Trend the least-squares slope of in-flight
	// over the panic window (requests/s); PredictedDemand the demand the
	// decision sized for (after the trend: proven arrivals × service time).
	StableDemand, PanicDemand, Trend, PredictedDemand float64
	Panicking                                         bool
}

// Hysteresis is the relative band around the current count within which
// the demand does not change it (part of the Stabilization ingredient): a
// scale-up must still be needed with the demand 5 % lower, a scale-down
// with it 5 % higher. A steady demand at an exact multiple of the target,
// read with ±1 % noise, then keeps one count.
const Hysteresis = 0.05

// StaleAfter is how old the newest observation may be before the data
// counts as missing (three missed 1 s ticks).
const StaleAfter = 3 * time.Second

// sample is one stored observation.
type sample struct {
	t        time.Time
	dt       float64 // seconds covered by conc
	conc     float64
	inFlight float64
	arr      float64
	comp     float64
	ready    float64
	partial  bool
}

// rec is one entry of the scale-down history (a monotonic max-queue).
type rec struct {
	t time.Time
	d int32
}

// Autoscaler holds the per-workload state of the policy: the observation
// windows, the panic state and the scale-down history. Create it with
// NewAutoscaler; see the package doc for the concurrency rules.
type Autoscaler struct {
	cfg   Config
	feat  Features
	start time.Time

	ring       []sample
	head, n    int
	last       Observation
	haveLast   bool
	panicking  bool
	panicLast  time.Time
	panicMax   int32
	history    []rec
	historyOff int
	// serviceTime is the mean request duration learned while there was no
	// queue (so it is the service time); perReplica the throughput of a
	// saturated replica, learned from windows of saturation. Both survive
	// the windows, so the next burst starts with them (0: unknown).
	serviceTime float64
	perReplica  float64
	// downDelay is the scale-down delay in force (ScaleDownDelay resolved
	// against the cold-start lead).
	downDelay time.Duration
}

// NewAutoscaler starts the state of one workload at now. A new autoscaler
// (a new leader, a restart) never scales down before it has a full stable
// window of its own data.
func NewAutoscaler(cfg Config, f Features, now time.Time) *Autoscaler {
	return &Autoscaler{cfg: cfg, feat: f, start: now, ring: make([]sample, 128)}
}

// SetConfig replaces the configuration; the observation history is kept.
func (a *Autoscaler) SetConfig(cfg Config) {
	if cfg.Window != a.cfg.Window || cfg.PanicWindow != a.cfg.PanicWindow {
		a.panicking, a.panicMax = false, 0
	}
	a.cfg = cfg
}

// Config returns the configuration in force.
func (a *Autoscaler) Config() Config { return a.cfg }

// Observe records one tick's observation. Observations must come in time
// order; one that is not later than the previous is ignored.
func (a *Autoscaler) Observe(o Observation) {
	dt := 1.0
	if a.haveLast {
		dt = o.Time.Sub(a.last.Time).Seconds()
		if dt <= 0 {
			return
		}
	}
	s := sample{t: o.Time, dt: dt, conc: o.Concurrency, inFlight: o.InFlight,
		arr: o.Arrivals, comp: o.Completions, ready: float64(max(0, o.Ready)), partial: o.Partial}
	if bad(s.conc) {
		s.conc, s.partial = math.Max(0, o.InFlight), true
	}
	if bad(s.inFlight) {
		s.inFlight, s.partial = s.conc, true
	}
	if bad(s.arr) || bad(s.comp) {
		s.arr, s.comp, s.partial = 0, 0, true
	}
	a.last, a.haveLast = o, true
	if !s.partial && o.MeanDuration > 0 && o.Completions > 0 && o.InFlight <= float64(o.Ready)*a.cfg.Target {
		d := o.MeanDuration.Seconds()
		if a.serviceTime == 0 {
			a.serviceTime = d
		}
		a.serviceTime += 0.05 * (d - a.serviceTime)
	}
	if a.n == len(a.ring) {
		grown := make([]sample, 2*len(a.ring))
		for i := 0; i < a.n; i++ {
			grown[i] = a.ring[(a.head+i)%len(a.ring)]
		}
		a.ring, a.head = grown, 0
	}
	a.ring[(a.head+a.n)%len(a.ring)] = s
	a.n++
	keep := max(a.cfg.Window, a.cfg.PanicWindow) + 2*time.Second
	for a.n > 0 && o.Time.Sub(a.ring[a.head].t) > keep {
		a.head = (a.head + 1) % len(a.ring)
		a.n--
	}
}

func bad(x float64) bool { return math.IsNaN(x) || math.IsInf(x, 0) || x < 0 }

// at returns the k-th newest sample (k = 0 is the newest).
func (a *Autoscaler) at(k int) *sample { return &a.ring[(a.head+a.n-1-k)%len(a.ring)] }

// regression accumulates a least-squares fit of y against x.
type regression struct{ n, sx, sy, sxx, sxy, syy float64 }

func (r *regression) add(x, y float64) {
	r.n++
	r.sx += x
	r.sy += y
	r.sxx += x * x
	r.sxy += x * y
	r.syy += y * y
}

// slope returns the slope and its standard error (0, +Inf with < 3 points).
func (r *regression) slope() (b, se float64) {
	if r.n < 3 {
		return 0, math.Inf(1)
	}
	sxx := r.sxx - r.sx*r.sx/r.n
	if sxx <= 0 {
		return 0, math.Inf(1)
	}
	sxy := r.sxy - r.sx*r.sy/r.n
	syy := r.syy - r.sy*r.sy/r.n
	b = sxy / sxx
	rss := math.Max(0, syy-b*sxy)
	return b, math.Sqrt(rss / (r.n - 2) / sxx)
}

// arrivalsZ is the confidence (in standard deviations of a Poisson count)
// at which the arrivals ingredient believes a rate: at 3, a steady stream
// proves a rate above its own about once an hour per suffix length.
const arrivalsZ = 3.0

// windowStats is one pass over the stored samples.
type windowStats struct {
	stable, panic           float64 // time-averaged concurrency
	shortSlope              float64 // over the panic window
	longSlope, longSE       float64 // over the stable window
	arrRate                 float64 // per second, over the panic window
	leadRate                float64 // highest lower confidence bound of the arrival rate over a suffix of the panic window
	perReplica              float64 // completions per ready replica-second while saturated (0: unknown)
	partial                 bool    // a partial sample in the stable window
	covered                 float64 // seconds of data in the stable window
	meanDT                  float64
	stableW, panicW         float64
	haveStable, havePanicAv bool
}

func (a *Autoscaler) stats(now time.Time) windowStats {
	var ws windowStats
	W, P := a.cfg.Window.Seconds(), a.cfg.PanicWindow.Seconds()
	var sw, sc, pw, pc, pa, satComp, satReady, sufN, sufT float64
	var short, long regression
	for k := 0; k < a.n; k++ {
		s := a.at(k)
		age := now.Sub(s.t).Seconds() // end of the sample's interval, seconds ago
		if age < 0 {
			continue // a sample from the future of now: ignore
		}
		if age >= W {
			break
		}
		x := -(age + s.dt/2) // midpoint, seconds relative to now
		over := math.Min(s.dt, W-age)
		sw += over
		sc += over * s.conc
		long.add(x, s.conc)
		ws.partial = ws.partial || s.partial
		if s.ready > 0 && s.conc > s.ready*a.cfg.Target {
			// Saturated: the ready replicas had all the work they could
			// take, so their completions measure their throughput.
			satComp += s.comp
			satReady += s.ready * s.dt
		}
		if age < P {
			o := math.Min(s.dt, P-age)
			pw += o
			pc += o * s.conc
			pa += s.arr * o / s.dt
			short.add(x, s.conc)
			// The arrivals of the last k samples, k = 1, 2, …: a Poisson
			// count n over t seconds has sqrt(n) within 1/2 of sqrt(λt)
			// (one sigma), so λ ≥ (sqrt(n) − z/2)²/t with confidence z.
			// The highest such bound over the suffixes is the rate the
			// arrivals prove right now. A partial sample's count is a
			// lower bound, so the bound stays one.
			sufN += s.arr
			sufT += s.dt
			if r := math.Sqrt(sufN) - arrivalsZ/2; r > 0 {
				ws.leadRate = math.Max(ws.leadRate, r*r/sufT)
			}
		}
	}
	if sw > 0 {
		ws.stable, ws.haveStable = sc/sw, true
		ws.meanDT = sw / long.n
	}
	if pw > 0 {
		ws.panic, ws.havePanicAv = pc/pw, true
		ws.arrRate = pa / pw
	}
	if satReady >= 30 && satComp > 0 {
		ws.perReplica = satComp / satReady
	}
	ws.covered = sw
	ws.shortSlope, _ = short.slope()
	ws.longSlope, ws.longSE = long.slope()
	ws.stableW, ws.panicW = W, P
	return ws
}

// Decide computes the desired replicas at now from the observations so far
// and records the decision in the autoscaler's state. In order:
//
//  1. stable-window demand: the time-averaged in-flight over Window (with
//     the ingredient off: the last interval's mean);
//  2. trend: where in-flight is going. The highest arrival rate the last
//     seconds of the panic window prove (a lower confidence bound of the
//     Poisson count at arrivalsZ sigma) times the service time (Little's
//     law) raises the demand; a step in arrivals therefore scales up on
//     the first tick whose count proves it. In-flight falling over both
//     windows, with the arrivals not proving more, suppresses a scale-up
//     the backlog alone would ask for;
//  3. burst: the panic-window mean also sizes scale-ups; when it (or the
//     in-flight now) reaches PanicThreshold × ready capacity the policy
//     panics: in-flight now counts too, and it never scales down until a
//     full stable window passes without the threshold being reached;
//  4. cold-start awareness: while replicas are starting, a scale-up is
//     capped at what the observed arrival rate and the per-replica
//     throughput of the ready replicas need (plus draining the backlog over
//     one cold start), never below the replicas already requested;
//  5. stabilization: the count moves only when the demand is more than
//     Hysteresis away from it; a scale-down goes no lower than the highest
//     recommendation of the last ScaleDownDelay (by default one cold-start
//     lead, see ScaleDownDelayColdStart); replicas requested stay within
//     MaxScaleUpRate × the ready ones (a cap in time: starting replicas
//     count), and one decision moves at most ÷MaxScaleDownRate down;
//  6. fail-safe: with a partial or stale observation in the window, or
//     less than a full window of data since the autoscaler started, it does
//     not scale down.
//
// The result is clamped to [MinReplicas, MaxReplicas].
func (a *Autoscaler) Decide(now time.Time) Decision {
	cfg, f := a.cfg, a.feat
	d := Decision{Time: now}
	if !a.haveLast {
		d.Cause, d.Reason = CauseNoData, "no observation yet"
		return d
	}
	o := a.last
	cur := o.Requested
	d.Current = cur
	ws := a.stats(now)
	target := cfg.Target
	var why []string
	note := func(format string, args ...any) { why = append(why, fmt.Sprintf(format, args...)) }

	// 1. Stable demand.
	stable := ws.stable
	if !f.On(StableWindow) || !ws.haveStable {
		stable = a.at(0).conc
	}
	d.StableDemand, d.PanicDemand, d.Trend = stable, ws.panic, ws.shortSlope
	lead := cfg.ColdStart
	if lead == 0 {
		lead = o.ColdStart
	}
	if lead <= 0 {
		lead = DefaultColdStartLead
	}
	a.downDelay = cfg.ScaleDownDelay
	if a.downDelay == ScaleDownDelayColdStart {
		a.downDelay = lead
	}

	// 2. Trend: where in-flight is going. dL/dt = arrivals − completions,
	// and L settles at λ·W (Little's law) about one service time W after
	// the arrival rate λ changes; λ jumps at once on a step. So the
	// arrival rate the last seconds prove (a lower confidence bound of a
	// Poisson count, so noise does not buy replicas) times the service time
	// is the level in-flight is rising to. A falling in-flight (negative
	// slope over both windows) that the arrivals do not contradict
	// suppresses a scale-up the backlog alone would ask for.
	predicted := stable
	cause := CauseDemand
	falling := false
	if f.On(Trend) && ws.haveStable {
		w := a.serviceTime
		if w == 0 {
			w = o.MeanDuration.Seconds()
		}
		if l := ws.leadRate * w; l > predicted {
			predicted = l
			cause = CauseTrend
			note("arrivals ≥ %.2f/s × %.1fs service", ws.leadRate, w)
		} else {
			falling = ws.shortSlope < 0 && ws.longSlope < 0
		}
	}
	demand := predicted

	// 3. Burst.
	if f.On(Burst) && ws.havePanicAv {
		if ws.panic > demand {
			demand, cause = ws.panic, CauseBurst
		}
		readyCap := float64(max(1, o.Ready)) * target
		over := math.Max(ws.panic, o.InFlight) >= cfg.PanicThreshold*readyCap
		switch {
		case over:
			a.panicking, a.panicLast = true, now
		case a.panicking && now.Sub(a.panicLast) > cfg.Window:
			a.panicking, a.panicMax = false, 0
		}
		if a.panicking && o.InFlight > demand {
			demand, cause = o.InFlight, CauseBurst
		}
	} else {
		a.panicking, a.panicMax = false, 0
	}
	d.Panicking = a.panicking
	d.PredictedDemand = demand
	want := ceilReplicas(demand / target)
	note("in-flight %.1f, target %g per replica", demand, target)
	if f.On(Stabilization) {
		// Hysteresis: a scale-up must hold with the demand Hysteresis
		// lower, a scale-down with it Hysteresis higher, so a demand that
		// sits at an exact multiple of the target does not flap.
		switch {
		case want > cur && ceilReplicas(demand/(1+Hysteresis)/target) <= cur:
			want, cause = cur, CauseHysteresis
			note("within %.0f %% of %d replicas: hold", 100*Hysteresis, cur)
		case want < cur:
			if w := ceilReplicas(demand * (1 + Hysteresis) / target); w >= cur {
				want, cause = cur, CauseHysteresis
				note("within %.0f %% of %d replicas: hold", 100*Hysteresis, cur)
			} else {
				want = w
			}
		}
	}

	if falling && want > cur && !a.panicking {
		want, cause = cur, CauseFalling
		note("falling %.2f/s: no scale-up", ws.shortSlope)
	}
	if a.panicking {
		want, cause = max(want, cur, a.panicMax), CauseBurst
		note("panic")
	}

	// 4. Cold-start awareness. A replica asked for now is ready one cold
	// start L later. Forecast the queue at now+L: it grows by the arrivals
	// beyond what the ready replicas serve, less what the replicas already
	// starting serve once ready (on average half-way through L). Size for
	// the arrival flow plus draining that forecast backlog over one more L,
	// at the measured per-replica throughput, and never ask for more than
	// that: the queue that builds during a cold start is not demand.
	queued := o.InFlight > float64(o.Ready)*target
	if f.On(ColdStartAware) && want > cur && (o.Starting > 0 || o.Requested > o.Ready || queued) {
		if ws.perReplica > 0 {
			a.perReplica = ws.perReplica
		}
		perReplica := a.perReplica
		if perReplica == 0 && a.serviceTime > 0 {
			perReplica = target / a.serviceTime // a replica at target serves target/S req/s
		}
		if perReplica > 0 {
			L := lead.Seconds()
			ready := float64(o.Ready)
			starting := math.Max(0, float64(max(cur, o.Ready+o.Starting))-ready)
			backlog := math.Max(0, o.InFlight-ready*target)
			atL := math.Max(0, backlog+(ws.arrRate-ready*perReplica)*L-starting*perReplica*L/2)
			need := ceilReplicas((ws.arrRate*1.1 + atL/L) / perReplica)
			if want > max(cur, need) {
				want, cause = max(cur, need), CauseColdStartCap
				note("%.0f starting, %.1f req/s at %.2f req/s per replica, %.0f queued in %v: capped at %d",
					starting, ws.arrRate, perReplica, atL, lead, want)
			}
		}
	}
	if a.panicking {
		a.panicMax = want
	}

	// 5. Stabilization and ratio caps.
	if f.On(Stabilization) {
		a.record(now, want)
		if want < cur {
			hi := a.historyMax()
			if now.Sub(a.start) < a.downDelay {
				hi = cur
			}
			if hi > want {
				want, cause = min(cur, hi), CauseScaleDownDelay
				note("holding for scale-down-delay %v", a.downDelay)
			}
		}
		// The up cap is relative to the ready replicas: those still
		// starting count against it, so the count grows at most ×rate per
		// cold start, not ×rate per tick.
		upCap := max(cur, ceilReplicas(cfg.MaxScaleUpRate*float64(max(1, o.Ready))))
		downFloor := int32(math.Floor(float64(cur) / cfg.MaxScaleDownRate))
		if want > upCap {
			want, cause = upCap, CauseRateCap
			note("capped by max-scale-up-rate %g × %d ready", cfg.MaxScaleUpRate, max(1, o.Ready))
		}
		if want < downFloor {
			want, cause = downFloor, CauseRateCap
			note("capped by max-scale-down-rate %g", cfg.MaxScaleDownRate)
		}
	}

	// 6. Fail-safe.
	if f.On(FailSafe) && want < cur {
		switch {
		case now.Sub(o.Time) > StaleAfter:
			want, cause = cur, CauseStale
			note("data stale since %v: no scale-down", o.Time.Format(time.RFC3339))
		case ws.partial:
			want, cause = cur, CausePartial
			note("partial data: no scale-down")
		case now.Sub(a.start) < cfg.Window:
			want, cause = cur, CauseWarmingUp
			note("less than one window of data: no scale-down")
		}
	}

	switch {
	case want < cfg.MinReplicas:
		want, cause = cfg.MinReplicas, CauseMinReplicas
		note("min-replicas %d", cfg.MinReplicas)
	case want > cfg.MaxReplicas:
		want, cause = cfg.MaxReplicas, CauseMaxReplicas
		note("max-replicas %d", cfg.MaxReplicas)
	}
	// Wake: at zero replicas any demand (held, in flight, arriving) asks
	// for a replica on this tick, whatever the windows say.
	if waiting := math.Max(0, o.InFlight) + math.Max(0, o.Held); cur == 0 && want < 1 && cfg.MaxReplicas > 0 &&
		(waiting > 0 || o.Arrivals > 0) {
		want, cause = 1, CauseWake
		note("%.0f waiting at zero replicas: wake", math.Max(waiting, o.Arrivals))
	}
	d.Desired, d.Cause = want, cause
	switch {
	case want > cur:
		d.Direction = Up
	case want < cur:
		d.Direction = Down
	}
	d.Reason = fmt.Sprintf("%s: %d → %d", strings.Join(why, ", "), cur, want)
	return d
}

// ceilReplicas is ceil(x) as replicas, tolerant of float noise just above
// an integer and saturating instead of overflowing.
func ceilReplicas(x float64) int32 {
	if !(x > 0) {
		return 0
	}
	if x >= math.MaxInt32 {
		return math.MaxInt32
	}
	return int32(math.Ceil(x - 1e-9))
}

// record appends a recommendation to the scale-down history, keeping it a
// monotonic (decreasing) queue over the last ScaleDownDelay.
func (a *Autoscaler) record(now time.Time, d int32) {
	h := a.history[a.historyOff:]
	for len(h) > 0 && h[len(h)-1].d <= d {
		h = h[:len(h)-1]
	}
	a.history = append(a.history[:a.historyOff+len(h)], rec{now, d})
	for a.historyOff < len(a.history) && now.Sub(a.history[a.historyOff].t) > a.downDelay {
		a.historyOff++
	}
	if a.historyOff > 64 && a.historyOff*2 > len(a.history) {
		a.history = append(a.history[:0], a.history[a.historyOff:]...)
		a.historyOff = 0
	}
}

// historyMax is the highest recommendation of the last ScaleDownDelay.
func (a *Autoscaler) historyMax() int32 {
	if a.historyOff >= len(a.history) {
		return 0
	}
	return a.history[a.historyOff].d
}

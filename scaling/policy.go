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
// The ingredients of DESIGN.md § The policy, each switchable through
// Features: the stable-window demand, the trend, burst (panic) mode,
// cold-start awareness, asymmetric stabilization with hysteresis and rate
// caps, the fail-safe, and the parts that reason about waiting: the
// queueing model of slo-wait, the headroom learned from the workload's own
// bursts, the seasonal forecast, and scale to zero after a learned idle
// period. See Decide for the order in which they apply.
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
	StableWindow   Ingredient = iota // time-averaged in-flight (arrivals) over the stable window
	Trend                            // where in-flight is going: proven arrival rate × service time; falling suppresses
	Burst                            // panic mode on the short window
	ColdStartAware                   // starting replicas count as capacity on the way
	Stabilization                    // hysteresis; up fast, down after scale-down-delay; rate caps
	FailSafe                         // partial or missing data: never scale down
	QueueModel                       // slo-wait: the M/M/c model (off: slo-wait sizes like target = concurrency)
	Headroom                         // the learned burst headroom of the queueing model
	Forecast                         // the seasonal forecast
	IdlePeriod                       // min-replicas 0: zero only after the learned idle period (off: as soon as the count allows)
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
	case QueueModel:
		return "queue-model"
	case Headroom:
		return "headroom"
	case Forecast:
		return "forecast"
	case IdlePeriod:
		return "idle-period"
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
	// InFlight. The policy counts them as queued demand, and any of them
	// at zero replicas asks for a replica on this very tick.
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
	// Reason is one human line, e.g. "in-flight 18.2, target 4 per
	// replica, panic: 3 → 5".
	Reason string
	// StableDemand and PanicDemand are the time-averaged in-flight over the
	// stable and the panic window; Trend the least-squares slope of in-flight
	// over the panic window (requests/s); PredictedDemand the in-flight the
	// decision sized for (after the trend: proven arrivals × service time;
	// with slo-wait, the sizing arrival rate × service time).
	StableDemand, PanicDemand, Trend, PredictedDemand float64
	Panicking                                         bool
	// ArrivalRate is the arrival rate the count was sized for (slo-wait),
	// Forecast the forecast's rate (0: none), Headroom the learned burst
	// factor, ServiceTime and Batch the learned service time (s) and the
	// batch capacity in use.
	ArrivalRate, Forecast, Headroom, ServiceTime float64
	Batch                                        int32
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

// serviceMemory is how long the learned service time remembers.
const serviceMemory = 600.0 // s

// serviceProof is how many completions the learned service time must be
// the mean of before the cold-start cap sizes with it: with durations as
// varied as LLM answers (a coefficient of variation near 1) the mean of 30
// is within ±18 % (one sigma). A handful of short answers after an idle
// start once made the cap think one replica serves ten times what it does.
const serviceProof = 30

// alignEvery is how often the forecast's alignment is estimated again.
const alignEvery = 30 * time.Second

// sloQuantile is the quantile of the queue wait slo-wait bounds.
const sloQuantile = 0.99

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
// windows, the panic state, the scale-down history and what it learned.
// Create it with NewAutoscaler; see the package doc for the concurrency
// rules.
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
	// saturated replica, learned from windows of saturation; batchSeen the
	// most requests a replica was seen to serve at once without queueing.
	// They survive the windows, so the next burst starts with them (0:
	// unknown).
	serviceTime float64
	perReplica  float64
	batchSeen   float64
	// serviceWeight is the decayed time serviceTime is the mean over;
	// serviceCount counts the completions it saw.
	serviceWeight, serviceCount float64
	// downDelay is the scale-down delay in force (ScaleDownDelay resolved
	// against the cold-start lead).
	downDelay time.Duration
	// season is the forecast's history (nil: forecast-period off).
	season *season
	// head is the learned burst headroom of slo-wait.
	headroom headroom
	// lastArrival is when requests last arrived; gaps the histogram of the
	// quiet gaps between arrivals (log2 buckets of seconds, forgotten over
	// a day), for the idle period.
	lastArrival time.Time
	gaps        [gapBuckets]float64
	// lastBusy is when there were last arrivals or requests in flight;
	// lastQueued when in-flight last exceeded the ready batch slots.
	lastBusy, lastQueued time.Time
	// late is how late this forecast period runs against the last one,
	// when aligned says the two line up (estimated every alignEvery, at
	// alignedAt).
	late      time.Duration
	aligned   alignment
	alignedAt time.Time
}

// NewAutoscaler starts the state of one workload at now. A new autoscaler
// (a new leader, a restart) never scales down before it has a full stable
// window of its own data, and forecasts nothing before it has a full
// forecast period.
func NewAutoscaler(cfg Config, f Features, now time.Time) *Autoscaler {
	a := &Autoscaler{cfg: cfg, feat: f, start: now, ring: make([]sample, 128), lastArrival: now, lastBusy: now}
	if cfg.ForecastPeriod > 0 {
		a.season = newSeason(cfg.ForecastPeriod, now)
	}
	return a
}

// SetConfig replaces the configuration; the observation history is kept
// (the forecast's only while its period is unchanged).
func (a *Autoscaler) SetConfig(cfg Config) {
	if cfg.Window != a.cfg.Window || cfg.PanicWindow != a.cfg.PanicWindow {
		a.panicking, a.panicMax = false, 0
	}
	if cfg.ForecastPeriod != a.cfg.ForecastPeriod {
		a.season = nil
		if cfg.ForecastPeriod > 0 {
			a.season = newSeason(cfg.ForecastPeriod, a.last.Time)
		}
	}
	if cfg.SLOWait != a.cfg.SLOWait || cfg.Concurrency != a.cfg.Concurrency {
		a.headroom = headroom{}
	}
	a.cfg = cfg
}

// Config returns the configuration in force.
func (a *Autoscaler) Config() Config { return a.cfg }

// batch returns the batch capacity the queueing model uses: the
// annotation, else the target, else what was seen (at least 1).
func (a *Autoscaler) batch() int32 {
	switch {
	case a.cfg.Concurrency > 0:
		return a.cfg.Concurrency
	case a.cfg.Target > 0:
		return max(1, int32(math.Floor(a.cfg.Target)))
	}
	return max(1, int32(a.batchSeen))
}

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
	if bad(o.Held) {
		o.Held = 0
	}
	a.last, a.haveLast = o, true
	b := a.batch()
	queued := o.InFlight > float64(o.Ready)*float64(b)
	if queued {
		a.lastQueued = o.Time
	}
	// The completions of this interval started about MeanDuration ago:
	// they measure the service time only if nothing queued since then (a
	// burst's last requests complete once the queue is gone, but waited in
	// it).
	if !s.partial && o.MeanDuration > 0 && o.Completions > 0 && o.Ready > 0 && !queued && o.Time.Sub(a.lastQueued) >= o.MeanDuration {
		d := o.MeanDuration.Seconds()
		// A mean of ten minutes of such intervals: the mean duration of
		// the last minute's completions swings by a quarter with the token
		// mix of a few hundred requests. An exponential mean over the
		// intervals, corrected for its start (each weighs its length over
		// the decayed length so far), so that the first interval, a single
		// short answer after an idle start, does not stand for the service
		// time for ten minutes.
		a.serviceWeight = a.serviceWeight*math.Exp(-dt/serviceMemory) + dt
		a.serviceCount += o.Completions
		a.serviceTime += dt / a.serviceWeight * (d - a.serviceTime)
		if d <= 1.15*a.serviceTime {
			// No queueing: a replica served this many at once.
			a.batchSeen = math.Max(a.batchSeen, math.Floor(s.conc/float64(o.Ready)))
		}
	}
	if s.arr > 0 || s.inFlight > 0 || o.Held > 0 {
		a.lastBusy = o.Time
	}
	if s.arr > 0 {
		if gap := o.Time.Sub(a.lastArrival).Seconds() - dt; gap >= 1 {
			a.addGap(gap)
		}
		a.lastArrival = o.Time
	}
	if a.season != nil {
		a.season.add(o.Time, s.arr, dt)
	}
	if a.cfg.SLOWait > 0 && a.serviceTime > 0 {
		a.headroom.add(s.arr, dt, a.serviceTime, b, a.cfg.SLOWait.Seconds())
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

// gapBuckets: log2 buckets of quiet gaps from 1 s to 2^20 s.
const gapBuckets = 21

func (a *Autoscaler) addGap(g float64) {
	for i := range a.gaps {
		a.gaps[i] *= math.Exp(-g / 86400)
	}
	a.gaps[min(gapBuckets-1, int(math.Log2(g)))]++
}

// idlePeriod is how long a workload with min-replicas 0 must be without
// arrivals and requests before it goes to zero: the shortest quiet time T,
// at least the scale-down delay, after which the quiet gaps seen so far
// (forgotten over a day) went on for two more cold starts on average —
// zero then saves more GPU time than the next start costs. With no such
// gaps (a workload that is never quiet for long) it is an hour.
func (a *Autoscaler) idlePeriod(lead time.Duration) time.Duration {
	for i := range a.gaps {
		t := math.Exp2(float64(i)) // the bucket's lower edge
		if t < a.downDelay.Seconds()/2 {
			continue
		}
		var n, sum float64
		for j := i; j < gapBuckets; j++ {
			n += a.gaps[j]
			sum += a.gaps[j] * math.Exp2(float64(j)) * math.Sqrt2 // the bucket's geometric middle
		}
		if n > 0 && sum/n-t >= 2*lead.Seconds() {
			return max(a.downDelay, time.Duration(t*float64(time.Second)))
		}
	}
	return time.Hour
}

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
	stableRate              float64 // per second, over the stable window
	stableRun               float64 // time-averaged in-flight up to the ready batch slots (the running part) over the stable window
	leadRate                float64 // highest lower confidence bound of the arrival rate over a suffix of the panic window
	riseRate                float64 // the same over suffixes of the stable window of at least a quarter of it
	perReplica              float64 // completions per ready replica-second while saturated (0: unknown)
	partial                 bool    // a partial sample in the stable window
	covered                 float64 // seconds of data in the stable window
	stableW, panicW         float64
	haveStable, havePanicAv bool
}

func (a *Autoscaler) stats(now time.Time) windowStats {
	var ws windowStats
	W, P := a.cfg.Window.Seconds(), a.cfg.PanicWindow.Seconds()
	var sw, sc, sa, sr, pw, pc, pa, satComp, satReady, sufN, sufT float64
	capacity := float64(a.batch())
	if a.cfg.Target > 0 {
		capacity = a.cfg.Target
	}

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
		sa += s.arr * over / s.dt
		sr += over * math.Min(s.conc, s.ready*float64(a.batch()))
		long.add(x, s.conc)
		ws.partial = ws.partial || s.partial
		if s.ready > 0 && s.conc > s.ready*capacity {
			// Saturated: the ready replicas had all the work they could
			// take, so their completions measure their throughput.
			satComp += s.comp
			satReady += s.ready * s.dt
		}
		// The arrivals of the last k samples, k = 1, 2, …: a Poisson count
		// n over t seconds has sqrt(n) within 1/2 of sqrt(λt) (one sigma),
		// so λ ≥ (sqrt(n) − z/2)²/t with confidence z. The highest such
		// bound over the suffixes is the rate the arrivals prove right now.
		// A partial sample's count is a lower bound, so the bound stays one.
		sufN += s.arr
		sufT += s.dt
		r := math.Sqrt(sufN) - arrivalsZ/2
		if r > 0 && sufT >= W/4 {
			ws.riseRate = math.Max(ws.riseRate, r*r/sufT)
		}
		if age < P {
			o := math.Min(s.dt, P-age)
			pw += o
			pc += o * s.conc
			pa += s.arr * o / s.dt
			short.add(x, s.conc)
			if r > 0 {
				ws.leadRate = math.Max(ws.leadRate, r*r/sufT)
			}
		}
	}
	if sw > 0 {
		ws.stable, ws.stableRate, ws.stableRun, ws.haveStable = sc/sw, sa/sw, sr/sw, true
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
//  1. stable-window demand: the time-averaged in-flight and the arrival
//     rate over Window (with the ingredient off: the last interval's);
//  2. trend: where in-flight is going. The highest arrival rate the last
//     seconds of the panic window prove (a lower confidence bound of the
//     Poisson count at arrivalsZ sigma) raises the demand (times the
//     service time, Little's law, for target); a step in arrivals is
//     therefore sized for on the first tick whose count proves it.
//     In-flight falling over both windows, with the arrivals not proving
//     more, suppresses a scale-up the backlog alone would ask for;
//  3. the count: with target, ceil(in-flight / target); with slo-wait, the
//     fewest replicas for which the M/M/c model of queue.go keeps the p99
//     wait within slo-wait at the arrival rate × the learned headroom
//     (headroom.go), with the learned service time and the batch
//     capacity (concurrency); both set: the larger;
//  4. burst: the short window sizes the count only in burst mode. Burst
//     mode starts when the short-window in-flight (or the in-flight now)
//     reaches PanicThreshold × the ready capacity (target), or — with
//     slo-wait — when the backlog beyond the ready batch slots would make a
//     request arriving now wait longer than slo-wait, or the proven arrival
//     rate reaches PanicThreshold × what the ready replicas serve. A spike
//     the ready replicas drain within the bound adds nothing. In burst
//     mode in-flight now and the short-window rate count too, and the count
//     never goes down until a full stable window passes without the
//     threshold being reached;
//  5. hysteresis (part of stabilization): the count moves only when the
//     demand is more than Hysteresis away from it;
//  6. cold-start awareness: while replicas are starting, a scale-up is
//     capped at what the observed arrival rate and the per-replica
//     throughput need (plus draining the backlog over one cold start),
//     never below the replicas already requested. The throughput is
//     measured (saturated replicas' completions), or the batch over a
//     service time learned from at least serviceProof completions; with
//     neither there is no cap;
//  7. forecast: with a full ForecastPeriod of history, the arrivals of one
//     period ago over the next two cold starts are sized for like the
//     arrivals now (the forecast is not capped by 6: it asks ahead of a
//     rise on purpose). A forecast above twice what arrives for two cold
//     starts is dropped until it agrees with the arrivals again, so a
//     misprediction costs at most a few cold starts of capacity; it never
//     lowers the reactive count;
//  8. with MinReplicas 0, the count goes below 1 only after the learned
//     idle period without arrivals or requests (see idlePeriod);
//  9. stabilization: a scale-down goes no lower than the highest
//     recommendation of the last ScaleDownDelay (by default one cold-start
//     lead, see ScaleDownDelayColdStart), unless a forecast that was
//     within 25 % of the arrivals lately needs no more for two cold starts
//     (then holding costs more than starting again); replicas requested stay within
//     MaxScaleUpRate × the ready ones (a cap in time: starting replicas
//     count), and one decision moves at most ÷MaxScaleDownRate down;
//  10. fail-safe: with a partial or stale observation in the window, or
//     less than a full window of data since the autoscaler started, it does
//     not scale down;
//  11. the bounds [MinReplicas, MaxReplicas]; then wake: at zero replicas,
//     any demand (in flight, held, arriving) asks for at least one replica
//     on this tick, whatever the windows say.
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
	inFlight := o.InFlight + o.Held
	ws := a.stats(now)
	var why []string
	note := func(format string, args ...any) { why = append(why, fmt.Sprintf(format, args...)) }

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
	svc := a.serviceTime
	if svc == 0 {
		svc = o.MeanDuration.Seconds()
	}
	b := a.batch()
	useSLO := cfg.SLOWait > 0 && f.On(QueueModel) && svc > 0
	slo := cfg.SLOWait.Seconds()
	h := 1.0
	if useSLO && f.On(Headroom) {
		h = a.headroom.factor()
	}
	target := cfg.Target
	if target == 0 {
		target = float64(b) // slo-wait alone: the parts that think in in-flight per replica use the batch
	}
	useTarget := cfg.Target > 0 || !useSLO
	d.Headroom, d.ServiceTime, d.Batch = h, svc, b

	// 1. Stable demand.
	stable, lambda, running := ws.stable, ws.stableRate, ws.stableRun
	if !f.On(StableWindow) || !ws.haveStable {
		s := a.at(0)
		stable, lambda, running = s.conc, s.arr/s.dt, math.Min(s.conc, s.ready*float64(b))
	}
	d.StableDemand, d.PanicDemand, d.Trend = stable, ws.panic, ws.shortSlope

	// 2. Trend.
	predicted := stable
	steadyCause := CauseDemand
	if useSLO {
		steadyCause = CauseSLO
	}
	falling := false
	if f.On(Trend) && ws.haveStable {
		if l := ws.leadRate * svc; l > predicted && useTarget {
			predicted, steadyCause = l, CauseTrend
			note("arrivals ≥ %.2f/s × %.1fs service", ws.leadRate, svc)
		} else {
			falling = ws.shortSlope < 0 && ws.longSlope < 0
		}
		// With slo-wait the short window sizes only in burst mode (4.):
		// outside it, only a rise the last quarter of the stable window or
		// more proves counts.
		if useSLO && ws.riseRate > lambda {
			lambda, steadyCause = ws.riseRate, CauseTrend
			note("arrivals ≥ %.2f/s", ws.riseRate)
		}
	}

	// 3. The count for the steady demand, scaled by s (for the hysteresis).
	// The queueing model's load in erlangs is the arrival rate × the
	// service time, or the running in-flight (Little's law, no lag behind
	// a change of the token mix), whichever is higher.
	// The learned headroom applies to the arrival rate of the last two
	// minutes (as it was learned): it holds capacity for the bursts around
	// a level, which come and go faster than a replica starts.
	load := math.Max(running, lambda*svc)
	base := a.headroom.rate()
	steadyFor := func(s float64) int32 {
		var r int32
		if useTarget {
			r = CeilReplicas(predicted * s / target)
		}
		if useSLO {
			r = max(r, ReplicasForWait(load*s/svc, svc, b, slo, sloQuantile, cfg.MaxReplicas))
			if h > 1 {
				r = max(r, ReplicasForWait(h*base*s, svc, b, slo, sloQuantile, cfg.MaxReplicas))
			}
		}
		return r
	}
	steady := steadyFor(1)
	d.ArrivalRate, d.PredictedDemand = lambda, predicted
	if useSLO {
		d.PredictedDemand = math.Max(predicted, math.Max(load, h*base*svc))
		note("load %.1f (arrivals %.2f/s, %.1fs service), 2 min %.2f/s × headroom %.2f, batch %d: p99 wait ≤ %v", load, lambda, svc, base, h, b, cfg.SLOWait)
	}
	if useTarget {
		note("in-flight %.1f, target %g per replica", predicted, target)
	}
	reactive, cause := steady, steadyCause

	// 4. Burst.
	var burst int32
	if f.On(Burst) && ws.havePanicAv {
		over := math.Max(ws.panic, inFlight) >= cfg.PanicThreshold*float64(max(1, o.Ready))*target
		if useSLO {
			mu := float64(o.Ready) * float64(b) / svc // requests per second the ready replicas serve
			backlog := math.Max(0, inFlight-float64(o.Ready)*float64(b))
			over = (backlog > 0 && (mu == 0 || backlog/mu > slo)) || (ws.leadRate > 0 && ws.leadRate >= cfg.PanicThreshold*mu)
		}
		switch {
		case over:
			a.panicking, a.panicLast = true, now
		case a.panicking && now.Sub(a.panicLast) > cfg.Window:
			a.panicking, a.panicMax = false, 0
		}
		if a.panicking {
			burst = CeilReplicas(math.Max(ws.panic, inFlight) / target)
			if useSLO {
				burst = max(CeilReplicas(inFlight/float64(b)),
					ReplicasForWait(h*math.Max(lambda, math.Max(ws.arrRate, ws.leadRate)), svc, b, slo, sloQuantile, cfg.MaxReplicas))
			}
			if burst > reactive {
				reactive, cause = burst, CauseBurst
			}
		}
	} else {
		a.panicking, a.panicMax = false, 0
	}
	d.Panicking = a.panicking

	// 5. Hysteresis.
	if f.On(Stabilization) {
		switch {
		case reactive > cur && cause != CauseBurst && max(steadyFor(1/(1+Hysteresis)), burst) <= cur:
			reactive, cause = cur, CauseHysteresis
			note("within %.0f %% of %d replicas: hold", 100*Hysteresis, cur)
		case reactive < cur:
			if w := max(steadyFor(1+Hysteresis), burst); w >= cur {
				reactive, cause = cur, CauseHysteresis
				note("within %.0f %% of %d replicas: hold", 100*Hysteresis, cur)
			} else {
				reactive = w
			}
		}
	}
	if falling && useTarget && reactive > cur && !a.panicking {
		reactive, cause = cur, CauseFalling
		note("falling %.2f/s: no scale-up", ws.shortSlope)
	}
	if a.panicking {
		reactive, cause = max(reactive, cur, a.panicMax), CauseBurst
		note("panic")
	}

	// 6. Cold-start awareness. A replica asked for now is ready one cold
	// start L later. Forecast the queue at now+L: it grows by the arrivals
	// beyond what the ready replicas serve, less what the replicas already
	// starting serve once ready (on average half-way through L). Size for
	// the arrival flow plus draining that forecast backlog over one more L,
	// at the measured per-replica throughput, and never ask for more than
	// that: the queue that builds during a cold start is not demand.
	capacity := target
	if useSLO {
		capacity = float64(b)
	}
	queued := inFlight > float64(o.Ready)*capacity
	if f.On(ColdStartAware) && reactive > cur && (o.Starting > 0 || o.Requested > o.Ready || queued) {
		if ws.perReplica > 0 {
			a.perReplica = ws.perReplica
		}
		perReplica := a.perReplica
		if perReplica == 0 && a.serviceCount >= serviceProof {
			perReplica = capacity / a.serviceTime // a replica at capacity serves capacity/S req/s
		}
		if perReplica > 0 {
			L := lead.Seconds()
			ready := float64(o.Ready)
			starting := math.Max(0, float64(max(cur, o.Ready+o.Starting))-ready)
			backlog := math.Max(0, inFlight-ready*capacity)
			atL := math.Max(0, backlog+(ws.arrRate-ready*perReplica)*L-starting*perReplica*L/2)
			need := CeilReplicas((ws.arrRate*1.1 + atL/L) / perReplica)
			if useSLO {
				need = max(need, ReplicasForWait(h*ws.arrRate, svc, b, slo, sloQuantile, cfg.MaxReplicas)+CeilReplicas(atL/L/perReplica))
			}
			if reactive > max(cur, need) {
				reactive, cause = max(cur, need), CauseColdStartCap
				note("%.0f starting, %.1f req/s at %.2f req/s per replica, %.0f queued in %v: capped at %d",
					starting, ws.arrRate, perReplica, atL, lead, reactive)
			}
		}
	}
	if a.panicking {
		a.panicMax = reactive
	}
	want := reactive

	// 7. Forecast.
	release := false // the forecast says no more is needed for two cold starts
	if f.On(Forecast) && a.season != nil && a.season.ready(now) && svc > 0 {
		// Ask one cold start ahead, plus a margin for the timing: one more
		// cold start, or two buckets (the alignment's resolution; the
		// smoothing of the rates already leads a rise by half its window)
		// while this period's arrivals line up with the last one's, shifted
		// by how late this period runs.
		margin, late := lead, time.Duration(0)
		if now.Sub(a.alignedAt) >= alignEvery {
			a.late, a.aligned = a.season.align(now, lead)
			a.alignedAt = now
		}
		if a.aligned == alignOK {
			margin, late = 2*a.season.width, a.late
		}
		peak := a.season.ahead(now, late, lead+margin)
		a.season.check(now, a.season.trailing(now, cfg.Window), ws.stableRate, 2*lead)
		if !a.season.refuted {
			var fc int32
			if useTarget {
				fc = CeilReplicas(peak * svc / target)
			}
			if useSLO {
				fc = max(fc, ReplicasForWait(h*peak, svc, b, slo, sloQuantile, cfg.MaxReplicas))
			}
			d.Forecast = peak
			release = fc <= want && a.season.trusted()
			if fc > want {
				want, cause = fc, CauseForecast
				note("one period ago %.2f/s within %v (running %v late): %d", peak, lead+margin, late, fc)
			}
		}
	}

	// 8. Scale to zero only after the idle period.
	if want == 0 && cur > 0 && cfg.MinReplicas == 0 && f.On(IdlePeriod) {
		if idle, need := now.Sub(a.lastBusy), a.idlePeriod(lead); idle < need {
			want = 1
			note("idle %v of %v: keep 1", idle.Round(time.Second), need)
		} else {
			cause = CauseIdle
			note("idle %v ≥ %v", idle.Round(time.Second), need)
		}
	}

	// 9. Stabilization and rate caps.
	if f.On(Stabilization) {
		a.record(now, want)
		if want < cur {
			hi := a.historyMax()
			if now.Sub(a.start) < a.downDelay {
				hi = cur
			}
			if release {
				// Ski rental with foresight: a forecast that has been right
				// and needs no more for two cold starts releases now;
				// holding would cost more than starting again.
				hi = want
				note("forecast: no more needed within %v", 2*lead)
			}
			if hi > want {
				want, cause = min(cur, hi), CauseScaleDownDelay
				note("holding for scale-down-delay %v", a.downDelay)
			}
		}
		// The up cap is relative to the ready replicas: those still
		// starting count against it, so the count grows at most ×rate per
		// cold start, not ×rate per tick.
		upCap := max(cur, CeilReplicas(cfg.MaxScaleUpRate*float64(max(1, o.Ready))))
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

	// 10. Fail-safe.
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

	// 11. Bounds, then wake.
	switch {
	case want < cfg.MinReplicas:
		want, cause = cfg.MinReplicas, CauseMinReplicas
		note("min-replicas %d", cfg.MinReplicas)
	case want > cfg.MaxReplicas:
		want, cause = cfg.MaxReplicas, CauseMaxReplicas
		note("max-replicas %d", cfg.MaxReplicas)
	}
	if cur == 0 && (inFlight > 0 || o.Arrivals > 0) && cfg.MaxReplicas > 0 {
		want, cause = max(want, 1), CauseWake
		note("%.0f waiting at zero replicas: wake", math.Max(inFlight, o.Arrivals))
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

// CeilReplicas is ceil(x) as replicas, tolerant of float noise just above
// an integer (up to 1e-9), 0 for x ≤ 0 or NaN, and saturating instead of
// overflowing. The simulator's baselines round with it too.
func CeilReplicas(x float64) int32 {
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

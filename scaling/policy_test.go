package scaling

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// load is what a test workload looks like in one second.
type load struct {
	conc, inFlight     float64 // mean over the second, and at its end
	arr, comp          float64
	ready, starting    int32
	requested          int32
	partial            bool
	meanDur, coldStart time.Duration
	skipObserve        bool
}

// drive observes secs seconds of load (fn gives the load of second i) and
// decides after each; it returns the last decision and the time after it.
func drive(a *Autoscaler, from time.Time, secs int, fn func(i int) load) (Decision, time.Time) {
	var d Decision
	now := from
	for i := 0; i < secs; i++ {
		now = now.Add(time.Second)
		l := fn(i)
		if !l.skipObserve {
			in := l.inFlight
			if in == 0 {
				in = l.conc
			}
			a.Observe(Observation{Time: now, Concurrency: l.conc, InFlight: in, Arrivals: l.arr,
				Completions: l.comp, Ready: l.ready, Starting: l.starting, Requested: l.requested,
				Partial: l.partial, MeanDuration: l.meanDur, ColdStart: l.coldStart})
		}
		d = a.Decide(now)
	}
	return d, now
}

func steady(conc float64, replicas int32) func(int) load {
	return func(int) load { return load{conc: conc, ready: replicas, requested: replicas} }
}

func cfg4() Config {
	c := DefaultConfig(4)
	c.MaxReplicas = 100
	return c
}

// warm gives an autoscaler ten minutes of steady history so that the
// new-leader guard and the scale-down delay's start are behind it.
func warm(c Config, f Features, conc float64, replicas int32) (*Autoscaler, time.Time) {
	a := NewAutoscaler(c, f, t0)
	_, now := drive(a, t0, 600, steady(conc, replicas))
	return a, now
}

func TestNoObservation(t *testing.T) {
	a := NewAutoscaler(cfg4(), Features{}, t0)
	d := a.Decide(t0)
	if d.Direction != Hold || d.Desired != 0 {
		t.Fatalf("got %+v, want hold without data", d)
	}
}

func TestStableWindow(t *testing.T) {
	spike := func(i int) load {
		if i == 59 {
			return load{conc: 40, inFlight: 5, ready: 5, requested: 5}
		}
		return load{conc: 20, ready: 5, requested: 5}
	}
	only := Features{}.Without(Trend).Without(Burst).Without(Stabilization)
	cases := []struct {
		name string
		f    Features
		fn   func(int) load
		want int32
	}{
		{"at target holds", only, steady(20, 5), 5},
		{"above target scales to ceil(demand/target)", only, steady(30, 5), 8},
		{"below target scales down", only, steady(9, 5), 3},
		{"one-second spike is averaged away", only, spike, 6}, // (59×20+40)/60 = 20.33 → 6
		{"without the window the spike decides", only.Without(StableWindow), spike, 10},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, now := warm(cfg4(), c.f, 20, 5)
			d, _ := drive(a, now, 60, c.fn)
			if d.Desired != c.want {
				t.Fatalf("desired %d, want %d (%s)", d.Desired, c.want, d.Reason)
			}
		})
	}
}

// stepLoad is a workload of 2 replicas at target 4 serving 1.5 req/s of
// 4 s requests (6 in flight, 75 % of capacity) until the step at second
// `at`, then `rate` req/s; in-flight follows the arrivals with its real lag
// (it grows by arrivals − completions each second).
func stepLoad(at int, rate float64) func(int) load {
	inFlight := 6.0
	return func(i int) load {
		arr := 1.5
		if i >= at {
			arr = rate
		}
		comp := math.Min(inFlight, 1.5) // the two replicas' throughput at 6 in flight
		before := inFlight
		inFlight += arr - comp
		return load{conc: (before + inFlight) / 2, inFlight: inFlight, arr: arr, comp: comp,
			ready: 2, requested: 2, meanDur: 4 * time.Second}
	}
}

func TestTrend(t *testing.T) {
	base := Features{}.Without(Burst).Without(Stabilization).Without(ColdStartAware)
	drain := func(i int) load { // a backlog draining: 60 → 31 in flight, nothing arriving
		c := 60 - 0.5*float64(i)
		return load{conc: c, ready: 10, requested: 10, meanDur: time.Second}
	}
	cases := []struct {
		name     string
		f        Features
		fn       func(int) load
		replicas int32
		ticks    int
		check    func(d Decision) bool
		want     string
	}{
		// 12 arrivals in one second against 1.5/s: the count proves λ ≥
		// (√12 − 1.5)² ≈ 3.9/s, × 4 s = 15.4 in flight → 4 replicas.
		{"a step scales up on its first tick", base, stepLoad(0, 12), 2, 1,
			func(d Decision) bool { return d.Desired >= 4 && strings.Contains(d.Reason, "arrivals") }, "≥ 4 replicas on arrivals"},
		{"and sizes for λ·W once the window proves it", base, stepLoad(0, 12), 2, 6,
			func(d Decision) bool { return d.Desired >= 8 && d.PredictedDemand <= 48 }, "≥ 8 replicas, predicted ≤ 48 (λ·W)"},
		{"without the trend the first tick holds", base.Without(Trend), stepLoad(0, 12), 2, 1,
			func(d Decision) bool { return d.Desired == 2 }, "2 replicas"},
		{"a step within the noise does not scale up", base, stepLoad(0, 2), 2, 6,
			func(d Decision) bool { return d.Desired == 2 }, "2 replicas"},
		{"a falling queue suppresses a scale-up", base, drain, 10, 60,
			func(d Decision) bool { return d.Desired == 10 && strings.Contains(d.Reason, "falling") }, "hold at 10"},
		{"without the trend the backlog scales up", base.Without(Trend), drain, 10, 60,
			func(d Decision) bool { return d.Desired == 12 }, "12 replicas"}, // mean 45.25
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, now := warm(cfg4(), c.f, 20, c.replicas)
			if c.replicas == 2 {
				a, now = NewAutoscaler(cfg4(), c.f, t0), t0
				_, now = drive(a, now, 600, stepLoad(600, 1.5))
			}
			d, _ := drive(a, now, c.ticks, c.fn)
			if !c.check(d) {
				t.Fatalf("got desired %d predicted %.1f trend %.2f (%s); want %s",
					d.Desired, d.PredictedDemand, d.Trend, d.Reason, c.want)
			}
		})
	}
}

// TestTrendIgnoresPoissonNoise: an hour of Poisson arrivals at 75 % of
// capacity must not buy a replica on the arrivals alone.
func TestTrendIgnoresPoissonNoise(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	poisson := func(mean float64) float64 { // Knuth, fine for small means
		l, k, p := math.Exp(-mean), 0.0, 1.0
		for {
			p *= rng.Float64()
			if p <= l {
				return k
			}
			k++
		}
	}
	for _, f := range []Features{Features{}.Without(Burst), {}} {
		ups := 0
		a2 := NewAutoscaler(cfg4(), f, t0)
		now := t0
		for i := 0; i < 3600; i++ {
			now = now.Add(time.Second)
			arr := poisson(1.5)
			a2.Observe(Observation{Time: now, Concurrency: 6, InFlight: 6, Arrivals: arr, Completions: arr,
				MeanDuration: 4 * time.Second, Ready: 2, Requested: 2})
			if d := a2.Decide(now); d.Direction == Up {
				ups++
			}
		}
		if ups > 1 {
			t.Errorf("features %+v: %d scale-ups in an hour of noise at 75 %% of capacity, want ≤ 1", f, ups)
		}
	}
}

func TestTrendIgnoresNoise(t *testing.T) {
	// Alternating ±4 around 20: no significant slope, so no projection.
	a, now := warm(cfg4(), Features{}.Without(Burst), 20, 5)
	d, _ := drive(a, now, 60, func(i int) load {
		return load{conc: 20 + float64(4*(i%2*2-1)), ready: 5, requested: 5, meanDur: 6 * time.Second}
	})
	if d.PredictedDemand > 21 || d.Desired != 5 {
		t.Fatalf("noise projected: predicted %.1f desired %d (%s)", d.PredictedDemand, d.Desired, d.Reason)
	}
}

func TestBurst(t *testing.T) {
	base := Features{}.Without(Trend).Without(Stabilization).Without(ColdStartAware)
	step := func(i int) load { return load{conc: 12, inFlight: 12, ready: 1, requested: 1} }
	cases := []struct {
		name  string
		f     Features
		ticks int
		want  int32
		panic bool
	}{
		// Baseline 3.6 in flight on 1 replica; a step to 12.
		{"a step scales up on the first tick", base, 1, 3, true},
		{"without burst mode the stable window barely moves", base.Without(Burst), 1, 1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, now := warm(cfg4(), c.f, 3.6, 1)
			d, _ := drive(a, now, c.ticks, step)
			if d.Desired != c.want || d.Panicking != c.panic || (c.want > 1 && d.Direction != Up) {
				t.Fatalf("got %d panic=%v (%s), want %d panic=%v", d.Desired, d.Panicking, d.Reason, c.want, c.panic)
			}
		})
	}
}

func TestBurstNeverScalesDownInPanic(t *testing.T) {
	f := Features{}.Without(Trend).Without(Stabilization).Without(ColdStartAware)
	for _, c := range []struct {
		name string
		f    Features
		want int32
	}{{"in panic", f, 10}, {"without burst", f.Without(Burst), 3}} {
		t.Run(c.name, func(t *testing.T) {
			a, now := warm(cfg4(), c.f, 4, 1)
			// A burst of 40 on one ready replica, then back to 4: the stable
			// window still remembers the burst at (10×40+50×4)/60 = 10.
			_, now = drive(a, now, 10, func(int) load { return load{conc: 40, ready: 1, requested: 10} })
			d, _ := drive(a, now, 50, func(int) load { return load{conc: 4, ready: 10, requested: 10} })
			if d.Desired != c.want {
				t.Fatalf("got %d (%s), want %d", d.Desired, d.Reason, c.want)
			}
		})
	}
}

func TestColdStartAwareness(t *testing.T) {
	// Two ready replicas serve 1.2 req/s each; 6 req/s arrive; 3 more are
	// starting (5 requested). The queue has grown to 200 in flight.
	queue := func(int) load {
		return load{conc: 200, inFlight: 200, arr: 6, comp: 2.4, ready: 2, starting: 3, requested: 5}
	}
	base := Features{}.Without(Trend).Without(Stabilization)
	cases := []struct {
		name string
		f    Features
		want int32
	}{
		// 1.2 req/s per saturated replica. In one cold start (120 s) the
		// queue beyond the ready slots grows from 184 by (6 − 2.4)×120 and
		// the 3 starting replicas serve 3×1.2×60 of it: 400 left. Size for
		// (6×1.1 + 400/120)/1.2 = 8.3 → 9, not 200/8 = 25.
		{"starting replicas count as capacity on the way", base, 9},
		{"without it the queue causes runaway scale-up", base.Without(ColdStartAware), 25},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := cfg4()
			cfg.Target = 8
			a, now := warm(cfg, c.f, 30, 5)
			d, _ := drive(a, now, 20, queue) // 40 saturated replica-seconds measure the throughput
			if d.Desired != c.want {
				t.Fatalf("got %d (%s), want %d", d.Desired, d.Reason, c.want)
			}
		})
	}
	t.Run("never below the replicas already requested", func(t *testing.T) {
		a, now := warm(cfg4(), base, 30, 10)
		d, _ := drive(a, now, 20, func(int) load {
			return load{conc: 100, inFlight: 100, arr: 1, comp: 1, ready: 2, starting: 8, requested: 10}
		})
		if d.Desired != 10 {
			t.Fatalf("got %d (%s), want 10", d.Desired, d.Reason)
		}
	})
}

func TestColdStartUsesLearnedServiceTime(t *testing.T) {
	// No saturation seen yet, but 6 s requests were measured while there
	// was no queue: a replica at target 8 serves 8/6 req/s. A burst of
	// 6 req/s on 1 ready replica then needs (6×1.1 + queue left)/1.33,
	// not in-flight/target.
	base := Features{}.Without(Trend).Without(Stabilization)
	a, now := warm(cfg4(), base, 2, 1)
	_, now = drive(a, now, 60, func(int) load {
		return load{conc: 3, inFlight: 3, arr: 0.5, comp: 0.5, ready: 1, requested: 1, meanDur: 6 * time.Second}
	})
	c := cfg4()
	c.Target = 8
	a.SetConfig(c)
	d, _ := drive(a, now, 6, func(int) load {
		return load{conc: 200, inFlight: 200, arr: 6, comp: 0.5, ready: 1, requested: 1, meanDur: 40 * time.Second}
	})
	// queue left after 120 s: (200−8) + (6 − 1.33)×120 = 752; (6.6 + 752/120)/1.33 = 9.7 → 10.
	if d.Desired != 10 {
		t.Fatalf("got %d (%s), want 10", d.Desired, d.Reason)
	}
}

func TestServiceTimeIsNotTheFirstInterval(t *testing.T) {
	// After an idle start the first completion is one short answer
	// (0.1 s); then 30 s of 6 s completions. The learned service time is
	// the time-weighted mean of the intervals (≈ 5.8 s), not the first
	// answer decayed over ten minutes (≈ 0.4 s).
	base := Features{}.Without(Trend).Without(Stabilization)
	a := NewAutoscaler(cfg4(), base, t0)
	d, now := drive(a, t0, 1, func(int) load {
		return load{conc: 1, inFlight: 0, arr: 1, comp: 1, ready: 1, requested: 1, meanDur: 100 * time.Millisecond}
	})
	if d.ServiceTime != 0.1 {
		t.Fatalf("after one completion: %.3f s, want 0.1", d.ServiceTime)
	}
	d, _ = drive(a, now, 30, func(int) load {
		return load{conc: 3, inFlight: 3, arr: 0.5, comp: 1, ready: 1, requested: 1, meanDur: 6 * time.Second}
	})
	if d.ServiceTime < 5.6 || d.ServiceTime > 6 {
		t.Fatalf("after 30 more of 6 s: %.3f s, want ≈ 5.8", d.ServiceTime)
	}
}

func TestServiceTimeSkipsQueueWaits(t *testing.T) {
	// 6 s answers without a queue; then a queue (12 in flight on one
	// replica of target 4) drains, and the next seconds' completions,
	// which waited in it, last 40 s on average although in-flight is
	// back under the batch: they started in the queue, so they do not
	// count, and the service time stays 6 s. 60 s later they count again.
	base := Features{}.Without(Trend).Without(Stabilization)
	a := NewAutoscaler(cfg4(), base, t0)
	_, now := drive(a, t0, 120, func(int) load {
		return load{conc: 3, inFlight: 3, arr: 0.5, comp: 0.5, ready: 1, requested: 1, meanDur: 6 * time.Second}
	})
	_, now = drive(a, now, 10, func(int) load {
		return load{conc: 12, inFlight: 12, arr: 0.5, comp: 0.5, ready: 1, requested: 1, meanDur: 6 * time.Second}
	})
	d, now := drive(a, now, 30, func(int) load {
		return load{conc: 3, inFlight: 3, arr: 0.5, comp: 0.5, ready: 1, requested: 1, meanDur: 40 * time.Second}
	})
	if math.Abs(d.ServiceTime-6) > 0.01 {
		t.Fatalf("after the queue: %.2f s, want 6 (queue waits are not service)", d.ServiceTime)
	}
	d, _ = drive(a, now, 30, func(int) load {
		return load{conc: 3, inFlight: 3, arr: 0.5, comp: 0.5, ready: 1, requested: 1, meanDur: 7 * time.Second}
	})
	if d.ServiceTime <= 6.01 {
		t.Fatalf("60 s after the queue: %.2f s, want above 6 (counting again)", d.ServiceTime)
	}
}

func TestColdStartCapNeedsAProvenServiceTime(t *testing.T) {
	// An idle start, then five short answers (0.03 s each) before a
	// burst of 120 req/s onto the one ready replica. Five completions do
	// not prove a service time: the cap, which would size for 5/0.03 =
	// 167 req/s per replica and hold at 1 replica, stays out of the
	// burst's way (100 in flight at target 5: 20 replicas). The gateway-
	// only demo was held at 2 replicas with 1,000+ in flight this way.
	base := Features{}.Without(Trend).Without(Stabilization)
	c := cfg4()
	c.Target = 5
	a := NewAutoscaler(c, base, t0)
	_, now := drive(a, t0, 5, func(int) load {
		return load{conc: 0.2, inFlight: 0, arr: 1, comp: 1, ready: 1, requested: 1, meanDur: 30 * time.Millisecond}
	})
	d, _ := drive(a, now, 1, func(int) load {
		return load{conc: 60, inFlight: 100, arr: 120, comp: 8, ready: 1, requested: 1, meanDur: 3 * time.Second}
	})
	if d.Desired != 20 {
		t.Fatalf("got %d (%s), want 20", d.Desired, d.Reason)
	}
}

func TestStabilization(t *testing.T) {
	base := Features{}.Without(Trend).Without(Burst)
	cases := []struct {
		name   string
		f      Features
		from   float64
		to     float64
		cur    int32
		after  int // seconds after the change
		want   int32
		reason string
	}{
		{"scale-down waits for scale-down-delay", base, 40, 8, 10, 120, 10, "scale-down-delay"},
		{"then the down rate halves at most", base, 40, 8, 10, 400, 5, "max-scale-down-rate"},
		{"without stabilization it drops at once", base.Without(Stabilization), 40, 8, 10, 120, 2, ""},
		{"scale-up is immediate but capped by the up rate", base, 4, 400, 1, 60, 10, "max-scale-up-rate"},
		{"without stabilization the up rate is not capped", base.Without(Stabilization), 4, 400, 1, 60, 100, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, now := warm(cfg4(), c.f, c.from, c.cur)
			d, _ := drive(a, now, c.after, steady(c.to, c.cur))
			if d.Desired != c.want || !strings.Contains(d.Reason, c.reason) {
				t.Fatalf("got %d (%s), want %d with %q", d.Desired, d.Reason, c.want, c.reason)
			}
		})
	}
}

func TestScaleDownDelayFollowsColdStart(t *testing.T) {
	base := Features{}.Without(Trend).Without(Burst)
	cases := []struct {
		name  string
		delay time.Duration // of the Config; ScaleDownDelayColdStart: follow the lead
		cold  time.Duration // learned cold start in the observations
		after int
		want  int32
	}{
		{"default: held for one learned cold start", ScaleDownDelayColdStart, 60 * time.Second, 50, 10},
		{"default: released after it", ScaleDownDelayColdStart, 60 * time.Second, 125, 5},
		{"default: a slow start holds longer", ScaleDownDelayColdStart, 300 * time.Second, 200, 10},
		{"default without a learned start: DefaultColdStartLead", ScaleDownDelayColdStart, 0, 110, 10},
		{"an explicit delay is the user's", 5 * time.Minute, 60 * time.Second, 200, 10},
		{"an explicit delay of 0 is at once", 0, 60 * time.Second, 61, 5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := cfg4()
			cfg.ScaleDownDelay = c.delay
			a := NewAutoscaler(cfg, base, t0)
			at := func(conc float64) func(int) load {
				return func(int) load { return load{conc: conc, ready: 10, requested: 10, coldStart: c.cold} }
			}
			_, now := drive(a, t0, 600, at(40))
			d, _ := drive(a, now, c.after, at(8))
			if d.Desired != c.want {
				t.Fatalf("got %d (%s), want %d", d.Desired, d.Reason, c.want)
			}
		})
	}
}

func TestPartialArrivalsStillProveAStep(t *testing.T) {
	// The collector marks the tick partial (one extproc did not answer):
	// the arrivals are a lower bound, which still proves the step.
	a := NewAutoscaler(cfg4(), Features{}.Without(Burst).Without(ColdStartAware), t0)
	_, now := drive(a, t0, 600, stepLoad(600, 1.5))
	step := stepLoad(0, 12)
	d, _ := drive(a, now, 1, func(i int) load { l := step(i); l.partial = true; return l })
	if d.Direction != Up {
		t.Fatalf("got %+v, want a scale-up on a partial tick", d)
	}
}

func TestFailSafe(t *testing.T) {
	base := Features{}.Without(Stabilization).Without(Trend).Without(Burst)
	low := func(partialAt int, skipAfter int) func(int) load {
		return func(i int) load {
			return load{conc: 4, ready: 10, requested: 10, partial: i == partialAt, skipObserve: skipAfter >= 0 && i >= skipAfter}
		}
	}
	cases := []struct {
		name   string
		f      Features
		fn     func(int) load
		want   int32
		reason string
	}{
		{"full data scales down", base, low(-1, -1), 1, ""},
		{"partial data in the window: no scale-down", base, low(50, -1), 10, "partial"},
		{"stale data: no scale-down", base, low(-1, 55), 10, "stale"},
		{"without fail-safe partial data scales down", base.Without(FailSafe), low(50, -1), 1, ""},
		{"without fail-safe stale data scales down", base.Without(FailSafe), low(-1, 55), 1, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, now := warm(cfg4(), c.f, 40, 10)
			d, _ := drive(a, now, 61, c.fn)
			if d.Desired != c.want || !strings.Contains(d.Reason, c.reason) {
				t.Fatalf("got %d (%s), want %d with %q", d.Desired, d.Reason, c.want, c.reason)
			}
		})
	}
}

func TestNewLeaderStartsConservatively(t *testing.T) {
	for _, c := range []struct {
		name string
		f    Features
		secs int
		want int32
	}{
		{"before a full window: hold", Features{}.Without(Stabilization), 59, 10},
		{"after a full window: scale down", Features{}.Without(Stabilization), 61, 1},
		{"without fail-safe: at once", Features{}.Without(Stabilization).Without(FailSafe), 2, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := NewAutoscaler(cfg4(), c.f, t0)
			d, _ := drive(a, t0, c.secs, steady(2, 10))
			if d.Desired != c.want {
				t.Fatalf("got %d (%s), want %d", d.Desired, d.Reason, c.want)
			}
		})
	}
}

func TestBoundsAndScaleToZero(t *testing.T) {
	c := cfg4()
	c.MinReplicas, c.MaxReplicas = 0, 6
	f := Features{}.Without(Stabilization).Without(IdlePeriod)
	a, now := warm(c, f, 0, 2)
	if d, _ := drive(a, now, 2, steady(0, 2)); d.Desired != 0 || d.Direction != Down {
		t.Fatalf("idle with min 0, no idle period: got %+v", d)
	}
	if d, _ := drive(a, now.Add(2*time.Second), 10, steady(400, 0)); d.Desired != 6 || d.Direction != Up {
		t.Fatalf("max bound: got %d (%s)", d.Desired, d.Reason)
	}
}

func TestSetConfig(t *testing.T) {
	a, now := warm(cfg4(), Features{}, 20, 5)
	c := cfg4()
	c.Target = 2
	a.SetConfig(c)
	if d, _ := drive(a, now, 1, steady(20, 5)); d.Desired != 10 {
		t.Fatalf("new target not used: %d (%s)", d.Desired, d.Reason)
	}
	if a.Config() != c {
		t.Fatal("Config() does not return the new config")
	}
}

func TestReasonIsReadable(t *testing.T) {
	a, now := warm(cfg4(), Features{}, 20, 5)
	d, _ := drive(a, now, 1, func(int) load { return load{conc: 60, inFlight: 60, ready: 5, requested: 5} })
	for _, frag := range []string{"in-flight", "target 4", "panic", "5 →"} {
		if !strings.Contains(d.Reason, frag) {
			t.Fatalf("reason %q lacks %q", d.Reason, frag)
		}
	}
}

func BenchmarkDecide(b *testing.B) {
	a, now := warm(cfg4(), Features{}, 20, 5)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now = now.Add(time.Second)
		c := 20 + float64(i%7)
		a.Observe(Observation{Time: now, Concurrency: c, InFlight: c, Arrivals: 3, Completions: 3,
			MeanDuration: 6 * time.Second, Ready: 5, Requested: 5})
		a.Decide(now)
	}
}

// A steady 80 in flight with target 10, read as 79.75–80.43 from tick to
// tick (issue 10), keeps one count even with no scale-down delay; without
// the band it flaps between 8 and 9.
func TestHysteresisAtAnExactMultiple(t *testing.T) {
	cfg := DefaultConfig(10)
	cfg.MaxReplicas, cfg.ScaleDownDelay = 100, 0
	rng := rand.New(rand.NewPCG(3, 5))
	reading := func(int) float64 { return 79.75 + rng.Float64()*(80.43-79.75) }
	for _, start := range []int32{8, 9} {
		a := NewAutoscaler(cfg, Features{}.Without(Trend).Without(Burst), t0)
		cur := start
		changes := 0
		now := t0
		for i := 0; i < 3600; i++ {
			now = now.Add(time.Second)
			c := reading(i)
			a.Observe(Observation{Time: now, Concurrency: c, InFlight: c, Ready: cur, Requested: cur})
			if d := a.Decide(now); d.Desired != cur {
				changes++
				cur = d.Desired
			}
		}
		if changes > 1 {
			t.Errorf("from %d replicas: %d changes in an hour at a steady 80, want ≤ 1", start, changes)
		}
	}
	// The same readings without the band, to show the test can fail: the
	// raw recommendation alone flaps.
	flaps, last := 0, int32(0)
	for i := 0; i < 600; i++ {
		w := CeilReplicas(reading(i) / 10)
		if last != 0 && w != last {
			flaps++
		}
		last = w
	}
	if flaps < 10 {
		t.Fatalf("the raw recommendation changed only %d times: the readings do not straddle 80", flaps)
	}
}

// The scale-up cap is in time (issue 10): the replicas requested stay
// within max-scale-up-rate × the ready ones, so while they start, more
// demand (forged or real) buys nothing more; once they are ready the next
// ×rate is allowed.
func TestScaleUpCapInTime(t *testing.T) {
	cfg := cfg4()
	cfg.MaxReplicas = 100000
	a, now := warm(cfg, Features{}, 4, 1)
	cur := int32(1)
	for i := 0; i < 60; i++ {
		d, n := drive(a, now, 1, func(int) load {
			return load{conc: 4000, inFlight: 4000, ready: 1, starting: cur - 1, requested: cur}
		})
		now = n
		if d.Desired > 10 {
			t.Fatalf("second %d: desired %d with 1 ready replica, want ≤ 10 (%s)", i, d.Desired, d.Reason)
		}
		cur = d.Desired
	}
	if cur != 10 {
		t.Fatalf("the cap itself is reached on the first tick: %d", cur)
	}
	d, _ := drive(a, now, 1, func(int) load { return load{conc: 4000, inFlight: 4000, ready: 10, requested: 10} })
	if d.Desired != 100 || d.Cause != CauseRateCap {
		t.Fatalf("10 ready: desired %d cause %v, want 100 rate_cap (%s)", d.Desired, d.Cause, d.Reason)
	}
}

// BenchmarkDecideSLO is the costliest configuration: slo-wait with the
// learned headroom and an hour's forecast (full history, aligned), fed
// Poisson arrivals around 30 in flight.
func BenchmarkDecideSLO(b *testing.B) {
	c := DefaultConfig(0)
	c.SLOWait, c.Concurrency, c.MaxReplicas, c.ForecastPeriod = 10*time.Second, 8, 200, time.Hour
	a := NewAutoscaler(c, Features{}, t0)
	rng := rand.New(rand.NewPCG(1, 2))
	now := t0
	tick := func(i int) {
		now = now.Add(time.Second)
		rate := 4.0
		if i%900 >= 600 {
			rate = 6
		}
		arr := poisson(rng, rate)
		a.Observe(Observation{Time: now, Concurrency: rate * 6.6, InFlight: rate * 6.6, Arrivals: arr, Completions: arr,
			MeanDuration: 6600 * time.Millisecond, Ready: 5, Requested: 5})
		a.Decide(now)
	}
	for i := 0; i < 3700; i++ {
		tick(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tick(i)
	}
}

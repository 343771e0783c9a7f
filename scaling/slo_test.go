package scaling

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// sloCfg is slo-wait 10 s on batch-8 replicas, forecast off.
func sloCfg() Config {
	c := DefaultConfig(0)
	c.SLOWait, c.Concurrency, c.MaxReplicas, c.ForecastPeriod = 10*time.Second, 8, 200, 0
	return c
}

// poissonLoad is a workload of rate req/s of svc-second requests on
// replicas, in flight by Little's law, with Poisson arrival counts.
func poissonLoad(rng *rand.Rand, rate, svc float64, replicas int32) func(int) load {
	return func(int) load {
		arr := poisson(rng, rate)
		c := rate * svc
		return load{conc: c, inFlight: c, arr: arr, comp: arr, ready: replicas, requested: replicas,
			meanDur: time.Duration(svc * float64(time.Second))}
	}
}

func poisson(rng *rand.Rand, mean float64) float64 {
	if mean > 30 {
		return math.Max(0, math.Round(mean+math.Sqrt(mean)*rng.NormFloat64()))
	}
	l, k, p := math.Exp(-mean), 0.0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

// TestSLOSizesFromTheQueueingModel: a steady 5.5 req/s of 6.6 s requests
// is sized by ReplicasForWait (5 replicas of 8), not by a per-replica
// target.
func TestSLOSizesFromTheQueueingModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	a := NewAutoscaler(sloCfg(), Features{}, t0)
	d, _ := drive(a, t0, 900, poissonLoad(rng, 5.5, 6.6, 5))
	want := ReplicasForWait(5.5*d.Headroom, 6.6, 8, 10, 0.99, 200)
	if d.Desired != want || d.Desired < 5 || d.Desired > 6 {
		t.Fatalf("got %d (%s), want %d", d.Desired, d.Reason, want)
	}
	if d.Cause != CauseSLO && d.Cause != CauseHysteresis {
		t.Fatalf("cause %v, want slo (or hysteresis)", d.Cause)
	}
	if d.ServiceTime < 6 || d.ServiceTime > 7.2 || d.Batch != 8 {
		t.Fatalf("learned service %.2f s, batch %d", d.ServiceTime, d.Batch)
	}
}

// TestSpikeThatDrainsAddsNothing: outside burst mode a spike whose queue
// the ready replicas drain within slo-wait buys no replica (it would
// arrive after the spike); a backlog they cannot drain in time is a burst.
func TestSpikeThatDrainsAddsNothing(t *testing.T) {
	base := func() (*Autoscaler, time.Time) {
		rng := rand.New(rand.NewPCG(2, 2))
		a := NewAutoscaler(sloCfg(), Features{}, t0)
		_, now := drive(a, t0, 900, poissonLoad(rng, 4, 6.6, 5))
		return a, now
	}
	// 5 ready replicas serve 40/6.6 = 6 req/s. A 3 s spike of 12 req/s
	// leaves ~10 queued: drained in under 2 s.
	a, now := base()
	spike := func(i int) load {
		l := load{conc: 26.4, inFlight: 26.4, arr: 4, comp: 4, ready: 5, requested: 5, meanDur: 6600 * time.Millisecond}
		if i < 3 {
			l.arr, l.inFlight = 12, 40+float64(3*(i+1))
		}
		return l
	}
	for i := 0; i < 30; i++ {
		d, n := drive(a, now, 1, func(int) load { return spike(i) })
		now = n
		if d.Direction == Up || d.Panicking {
			t.Fatalf("second %d: %+v: a spike that drains in 2 s scaled up", i, d)
		}
	}
	// 150 queued behind 5 replicas: 25 s of work, beyond the 10 s bound.
	a, now = base()
	d, _ := drive(a, now, 1, func(int) load {
		return load{conc: 190, inFlight: 190, arr: 5, comp: 4, ready: 5, requested: 5, meanDur: 6600 * time.Millisecond}
	})
	if !d.Panicking || d.Direction != Up || d.Cause != CauseBurst && d.Cause != CauseColdStartCap {
		t.Fatalf("a backlog of 25 s: %+v", d)
	}
}

// TestHeadroomLearnsBursts: Poisson arrivals need no headroom; arrivals in
// bursts that the Poisson model at their mean rate cannot absorb within
// the bound get a factor above 1.
func TestHeadroomLearnsBursts(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	var smooth, bursty headroom
	for i := 0; i < 3600; i++ {
		smooth.add(poisson(rng, 4), 1, 6.6, 8, 10)
		rate := 2.5
		if i%150 < 30 { // 30 s at 4× every 150 s
			rate = 10
		}
		bursty.add(poisson(rng, rate), 1, 6.6, 8, 10)
	}
	if f := smooth.factor(); f != 1 {
		t.Errorf("Poisson arrivals: headroom %.2f, want 1", f)
	}
	if f := bursty.factor(); f < 1.3 {
		t.Errorf("bursts of 4× for 30 s: headroom %.2f, want ≥ 1.3", f)
	}
	var fresh headroom
	for i := 0; i < 40; i++ {
		fresh.add(1, 1, 6.6, 8, 10)
	}
	if fresh.factor() != 1 {
		t.Error("too few requests: want 1")
	}
}

// TestWakeFromZero: at zero replicas any demand asks for a replica on the
// very tick it is seen, whatever the windows, the fail-safe or a new
// autoscaler say (issue 12 holds requests at the edge and waits for it).
func TestWakeFromZero(t *testing.T) {
	c := sloCfg()
	c.MinReplicas = 0
	at0 := func(l load) func(int) load {
		return func(int) load { l.ready, l.starting, l.requested = 0, 0, 0; return l }
	}
	cases := []struct {
		name string
		new  bool // a brand-new autoscaler (no window, no learned service time)
		l    load
	}{
		{"one request in flight", false, load{conc: 1, inFlight: 1}},
		{"one arrival", false, load{arr: 1}},
		{"new autoscaler, partial data", true, load{inFlight: 1, partial: true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, now := NewAutoscaler(c, Features{}, t0), t0
			if !tc.new {
				_, now = drive(a, now, 600, at0(load{}))
			}
			d, _ := drive(a, now, 1, at0(tc.l))
			if d.Desired < 1 || d.Cause != CauseWake {
				t.Fatalf("got %+v, want ≥ 1 replica with cause wake on the first tick", d)
			}
		})
	}
	t.Run("held requests", func(t *testing.T) {
		a := NewAutoscaler(c, Features{}, t0)
		_, now := drive(a, t0, 600, at0(load{}))
		a.Observe(Observation{Time: now.Add(time.Second), Held: 3})
		if d := a.Decide(now.Add(time.Second)); d.Desired < 1 || d.Cause != CauseWake {
			t.Fatalf("3 held at zero: %+v", d)
		}
	})
	t.Run("nothing: stays at zero", func(t *testing.T) {
		a := NewAutoscaler(c, Features{}, t0)
		if d, _ := drive(a, t0, 600, at0(load{})); d.Desired != 0 {
			t.Fatalf("%+v", d)
		}
	})
}

// TestIdlePeriod: with min-replicas 0 the count goes to zero only after the
// learned idle period: an hour for a workload never seen quiet for long;
// about the scale-down delay for one whose quiet gaps last many cold
// starts.
func TestIdlePeriod(t *testing.T) {
	c := cfg4()
	c.MinReplicas = 0
	f := Features{}.Without(Trend).Without(Burst)
	a := NewAutoscaler(c, f, t0)
	now := t0
	busy := func(int) load { return load{conc: 4, inFlight: 4, arr: 1, comp: 1, ready: 1, requested: 1} }
	quiet := func(int) load { return load{ready: 1, requested: 1} }
	_, now = drive(a, now, 600, busy)
	d, now := drive(a, now, 600, quiet)
	if d.Desired != 1 || a.idlePeriod(DefaultColdStartLead) != time.Hour {
		t.Fatalf("never quiet before: %d after 10 quiet minutes, idle period %v; want 1, 1h", d.Desired, a.idlePeriod(DefaultColdStartLead))
	}
	// Ten cycles of 5 busy and 20 quiet minutes teach it that quiet lasts.
	for i := 0; i < 10; i++ {
		_, now = drive(a, now, 300, busy)
		_, now = drive(a, now, 1200, quiet)
	}
	if p := a.idlePeriod(DefaultColdStartLead); p < DefaultColdStartLead || p > 4*time.Minute {
		t.Fatalf("idle period %v, want between one and two cold starts", p)
	}
	_, now = drive(a, now, 300, busy)
	var zeroCause Cause
	for i := 0; i < 600 && d.Desired != 0 || i == 0; i++ {
		d, now = drive(a, now, 1, quiet)
		zeroCause = d.Cause
	}
	if d.Desired != 0 || zeroCause != CauseIdle {
		t.Fatalf("after 10 quiet minutes: %+v, want 0 with cause idle", d)
	}
	without := NewAutoscaler(c, f.Without(IdlePeriod), t0)
	_, now = drive(without, t0, 600, busy)
	if d, _ := drive(without, now, 300, quiet); d.Desired != 0 {
		t.Fatalf("without the idle period: %+v, want 0 after the scale-down delay", d)
	}
}

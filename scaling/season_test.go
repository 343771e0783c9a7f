package scaling

import (
	"math/rand/v2"
	"testing"
	"time"
)

// stepDay is a one-hour "day": 2 req/s with a step to 8 req/s at `at`
// seconds for 20 minutes, 6.6 s requests on batch-8 replicas.
func stepDay(rng *rand.Rand, at int, replicas func() int32) func(int) load {
	return func(i int) load {
		rate := 2.0
		if s := i % 3600; s >= at && s < at+1200 {
			rate = 8
		}
		arr := poisson(rng, rate)
		r := replicas()
		c := rate * 6.6
		return load{conc: c, inFlight: c, arr: arr, comp: arr, ready: r, requested: r, meanDur: 6600 * time.Millisecond}
	}
}

func forecastCfg() Config {
	c := sloCfg()
	c.ForecastPeriod = time.Hour
	return c
}

// TestForecastAsksAheadOfARecurringStep: after one period with a step at
// 20 minutes, the next period asks for the step's capacity about one cold
// start before it; before a full period of history it does nothing.
func TestForecastAsksAheadOfARecurringStep(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	a := NewAutoscaler(forecastCfg(), Features{}, t0)
	cur := int32(2)
	now := t0
	var first time.Duration = -1
	for i := 0; i < 2*3600; i++ {
		d, n := drive(a, now, 1, func(int) load { return stepDay(rng, 1200, func() int32 { return cur })(i) })
		now = n
		if i < 3600 && d.Cause == CauseForecast {
			t.Fatalf("second %d: a forecast before a full period of history: %+v", i, d)
		}
		if i >= 3600 && i < 3600+1200 && d.Cause == CauseForecast && first < 0 {
			first = time.Duration(i-3600) * time.Second
		}
		cur = d.Desired
		if i == 3600+1199 && cur < 6 {
			t.Fatalf("just before the recurring step: %d replicas (%s), want the step's 6–7", cur, d.Reason)
		}
	}
	if first < 0 {
		t.Fatal("no forecast before the recurring step")
	}
	if lead := 20*time.Minute - first; lead < DefaultColdStartLead || lead > 2*DefaultColdStartLead+time.Minute {
		t.Fatalf("the forecast asked %v before the step, want between one and two cold starts (+ smoothing)", lead)
	}
}

// TestForecastRefuted: when the rise of one period ago does not come, the
// forecast is dropped after two cold starts and the count comes back down.
func TestForecastRefuted(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	a := NewAutoscaler(forecastCfg(), Features{}, t0)
	cur := int32(2)
	now := t0
	for i := 0; i < 3600; i++ {
		d, n := drive(a, now, 1, func(int) load { return stepDay(rng, 1200, func() int32 { return cur })(i) })
		now, cur = n, d.Desired
	}
	flat := func(int) load {
		arr := poisson(rng, 2)
		return load{conc: 13.2, inFlight: 13.2, arr: arr, comp: arr, ready: cur, requested: cur, meanDur: 6600 * time.Millisecond}
	}
	var peak int32
	var d Decision
	for i := 0; i < 1800; i++ {
		d, now = drive(a, now, 1, flat)
		cur = d.Desired
		peak = max(peak, cur)
	}
	if peak < 6 {
		t.Fatalf("the forecast never asked for the step (peak %d)", peak)
	}
	if cur > 3 || d.Cause == CauseForecast {
		t.Fatalf("20 minutes after a predicted step that did not come: %d replicas (%s)", cur, d.Reason)
	}
}

// TestForecastIgnoresBurstsOfOnePeriodAgo: bursts shorter than a minute
// one period ago (which recur at other times, if at all) are not
// forecast at their height.
func TestForecastIgnoresBurstsOfOnePeriodAgo(t *testing.T) {
	s := newSeason(time.Hour, t0)
	rng := rand.New(rand.NewPCG(6, 6))
	for i := 1; i <= 3600; i++ {
		rate := 2.5
		if i%150 < 45 {
			rate = 10
		}
		s.add(t0.Add(time.Duration(i)*time.Second), poisson(rng, rate), 1)
	}
	now := t0.Add(time.Hour + 10*time.Second)
	if !s.ready(now) {
		t.Fatal("a full period of history: want ready")
	}
	if peak := s.ahead(now, 0, 4*time.Minute); peak > 7 {
		t.Fatalf("forecast %.2f/s from 45 s bursts of 10/s on 2.5/s, want well under their height (< 7)", peak)
	}
}

// TestSeasonAlign: a period running 40 s late against the last one is
// recognised as such from the arrivals of the last half hour.
func TestSeasonAlign(t *testing.T) {
	s := newSeason(time.Hour, t0)
	rng := rand.New(rand.NewPCG(7, 7))
	rate := func(t int, shift int) float64 {
		if p := (t - shift + 900) % 900; p >= 600 {
			return 6
		}
		return 0.2
	}
	for i := 1; i <= 3600+2400; i++ {
		shift := 0
		if i > 3600 {
			shift = 40
		}
		s.add(t0.Add(time.Duration(i)*time.Second), poisson(rng, rate(i, shift)), 1)
	}
	late, st := s.align(t0.Add((3600+2400)*time.Second), 2*time.Minute)
	if st != alignOK || late < 30*time.Second || late > 50*time.Second {
		t.Fatalf("align: %v %v, want about 40 s late", late, st)
	}
	flat := newSeason(time.Hour, t0)
	for i := 1; i <= 3600+2400; i++ {
		flat.add(t0.Add(time.Duration(i)*time.Second), poisson(rng, 3), 1)
	}
	if _, st := flat.align(t0.Add((3600+2400)*time.Second), 2*time.Minute); st != alignFlat {
		t.Fatalf("a flat rate: %v, want alignFlat", st)
	}
	// Bursts at other times than one period ago: a mismatch.
	odd := newSeason(time.Hour, t0)
	for i := 1; i <= 3600+2400; i++ {
		rate := 2.5
		if i <= 3600 && i%150 < 30 || i > 3600 && (i+75)%150 < 30 {
			rate = 10
		}
		odd.add(t0.Add(time.Duration(i)*time.Second), poisson(rng, rate), 1)
	}
	if _, st := odd.align(t0.Add((3600+2400)*time.Second), 20*time.Second); st != alignMismatch {
		t.Fatalf("bursts at other times: %v, want alignMismatch", st)
	}
}

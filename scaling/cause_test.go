package scaling

import (
	"regexp"
	"testing"
	"time"
)

func TestCauseLabelsAreStableAndDistinct(t *testing.T) {
	snake := regexp.MustCompile(`^[a-z]+(_[a-z]+)*$`)
	seen := map[string]Cause{}
	for _, c := range Causes() {
		l := c.String()
		if !snake.MatchString(l) {
			t.Errorf("cause %d: label %q is not lower_snake", c, l)
		}
		if prev, dup := seen[l]; dup {
			t.Errorf("causes %d and %d share the label %q", prev, c, l)
		}
		seen[l] = c
		if c.Message() == "" || c.Message() == l {
			t.Errorf("cause %q has no message", l)
		}
	}
	if got := Cause(250).String(); got != "cause_250" {
		t.Errorf("unknown cause label %q", got)
	}
}

// TestCauses drives the real policy into each state and checks the cause
// it reports, so that Events and metric labels never depend on wording.
func TestCauses(t *testing.T) {
	noTrend := Features{}.Without(Trend)
	cases := []struct {
		name  string
		cfg   func(*Config)
		f     Features
		warm  float64 // steady in-flight of the warm-up
		cur   int32
		ticks int
		fn    func(int) load
		want  Cause
	}{
		{"demand", nil, noTrend.Without(Burst), 20, 5, 60, steady(30, 5), CauseDemand},
		{"trend", nil, Features{}.Without(Burst).Without(ColdStartAware), -1, 2, 1, stepLoad(0, 12), CauseTrend},
		{"burst", nil, noTrend, 3.6, 1, 1, func(int) load { return load{conc: 12, inFlight: 12, ready: 1, requested: 1} }, CauseBurst},
		{"falling", nil, Features{}.Without(Burst).Without(Stabilization), 20, 10, 60, func(i int) load {
			return load{conc: 60 - 0.5*float64(i), ready: 10, requested: 10, meanDur: time.Second}
		}, CauseFalling},
		{"cold-start cap", func(c *Config) { c.Target = 8 }, noTrend.Without(Stabilization), 30, 5, 20, func(int) load {
			return load{conc: 200, inFlight: 200, arr: 6, comp: 2.4, ready: 2, starting: 3, requested: 5}
		}, CauseColdStartCap},
		{"scale-down delay", nil, noTrend.Without(Burst), 40, 10, 60, steady(8, 10), CauseScaleDownDelay},
		{"rate cap", nil, noTrend.Without(Burst), 4, 1, 60, steady(400, 1), CauseRateCap},
		{"partial", nil, noTrend.Without(Burst).Without(Stabilization), 40, 10, 61, func(i int) load {
			return load{conc: 4, ready: 10, requested: 10, partial: i == 50}
		}, CausePartial},
		{"stale", nil, noTrend.Without(Burst).Without(Stabilization), 40, 10, 61, func(i int) load {
			return load{conc: 4, ready: 10, requested: 10, skipObserve: i >= 55}
		}, CauseStale},
		{"min-replicas", func(c *Config) { c.MinReplicas = 3 }, noTrend.Without(Burst).Without(Stabilization), 4, 3, 60, steady(1, 3), CauseMinReplicas},
		{"hysteresis", func(c *Config) { c.Target = 10; c.ScaleDownDelay = 0 }, noTrend.Without(Burst), 90, 9, 120, steady(79.8, 9), CauseHysteresis},
		{"max-replicas", func(c *Config) { c.MaxReplicas = 6 }, noTrend.Without(Burst).Without(Stabilization), 4, 1, 10, steady(400, 1), CauseMaxReplicas},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := cfg4()
			if c.cfg != nil {
				c.cfg(&cfg)
			}
			var a *Autoscaler
			now := t0
			if c.warm < 0 {
				a = NewAutoscaler(cfg, c.f, t0)
				_, now = drive(a, now, 600, stepLoad(600, 1.5))
			} else {
				a, now = warm(cfg, c.f, c.warm, c.cur)
			}
			d, _ := drive(a, now, c.ticks, c.fn)
			if d.Cause != c.want {
				t.Fatalf("cause %v, want %v (desired %d: %s)", d.Cause, c.want, d.Desired, d.Reason)
			}
		})
	}
	t.Run("no data", func(t *testing.T) {
		if d := NewAutoscaler(cfg4(), Features{}, t0).Decide(t0); d.Cause != CauseNoData {
			t.Fatalf("cause %v, want no_data", d.Cause)
		}
	})
	t.Run("warming up", func(t *testing.T) {
		a := NewAutoscaler(cfg4(), Features{}.Without(Stabilization), t0)
		if d, _ := drive(a, t0, 30, steady(2, 10)); d.Cause != CauseWarmingUp {
			t.Fatalf("cause %v, want warming_up (%s)", d.Cause, d.Reason)
		}
	})
}

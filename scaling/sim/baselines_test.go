package sim

import (
	"math"
	"testing"
)

// Each baseline replays cases from its original's own tests, so that a
// change of its re-implementation that departs from the original fails
// here.

// HPA: k8s.io/kubernetes pkg/controller/podautoscaler (replica calculator
// and behavior).
func TestHPAReplaysKubernetes(t *testing.T) {
	// TestReplicaCalcTolerance: 3 pods at 102 % of a 100 % target stay 3.
	p := newHPA("hpa", 1.0, 100, hpaCPU)
	if got := p.recommend(0, 1.02, 3, 0, 3); got != 3 {
		t.Errorf("tolerance: got %d, want 3", got)
	}
	// Outside the tolerance: ceil(ratio × pods).
	p = newHPA("hpa", 0.5, 100, hpaCPU)
	if got := p.recommend(0, 0.9, 4, 0, 4); got != 8 {
		t.Errorf("scale up: got %d, want ceil(1.8 × 4) = 8", got)
	}
	// Default scale-up policy: max(100 %, 4 pods) per period.
	p = newHPA("hpa", 0.1, 100, hpaCPU)
	if got := p.recommend(0, 1, 3, 0, 3); got != 7 {
		t.Errorf("scale-up limit: got %d, want max(2×3, 3+4) = 7", got)
	}
	// Unready pods count as 0 when scaling up: 2 ready at 100 % of a 50 %
	// target with 2 more starting is a ratio of 1: no change.
	p = newHPA("hpa", 0.5, 100, hpaCPU)
	if got := p.recommend(0, 1, 2, 2, 4); got != 4 {
		t.Errorf("unready pods: got %d, want 4", got)
	}
	// Scale-down stabilization: the highest recommendation of the last
	// 300 s holds (TestScaleDownStabilize…): 5 at t = 0, then 2.
	p = newHPA("hpa", 1.0, 100, hpaCPU)
	if got := p.recommend(0, 1, 5, 0, 5); got != 5 {
		t.Fatalf("t=0: got %d", got)
	}
	for now := 15.0; now <= 300; now += 15 {
		if got := p.recommend(now, 0.4, 5, 0, 5); got != 5 {
			t.Fatalf("t=%v: got %d, want 5 held for 300 s", now, got)
		}
	}
	if got := p.recommend(315, 0.4, 5, 0, 5); got != 2 {
		t.Errorf("t=315: got %d, want 2 once the 5 is older than 300 s", got)
	}
}

// Knative: knative.dev/serving pkg/autoscaler/scaling/autoscaler_test.go
// (target 10, max scale up and down rates 10, panic threshold 2, 60 s
// stable window, as in its newTestAutoscaler).
func TestKPAReplaysKnative(t *testing.T) {
	spec := kpaSpec{target: 10, panicThreshold: 2, maxScaleUp: 10, maxScaleDown: 10, stableWindow: 60}
	// TestAutoscalerPanicThenUnPanicScaleDown.
	a := &kpa{kpaSpec: spec, panicTime: math.NaN()}
	if got := a.scale(0, 100, 100, 1); got != 10 {
		t.Fatalf("start: got %d, want 10", got)
	}
	if got := a.scale(1, 100, 1000, 10); got != 100 {
		t.Fatalf("panic: got %d, want 100", got)
	}
	if got := a.scale(31, 1, 1, 10); got != 100 {
		t.Fatalf("traffic dropped, still in panic: got %d, want 100", got)
	}
	if got := a.scale(62, 1, 1, 10); got != 1 {
		t.Fatalf("after the stable window: got %d, want 1", got)
	}
	// TestAutoscalerRateLimitScaleUp: need 100, but ×10 of the ready pods.
	a = &kpa{kpaSpec: spec, panicTime: math.NaN()}
	if got := a.scale(0, 1000, 0, 1); got != 10 {
		t.Fatalf("rate limit: got %d, want 10", got)
	}
	if got := a.scale(1, 1000, 0, 10); got != 100 {
		t.Fatalf("rate limit: got %d, want 100", got)
	}
	// TestStartInPanicMode: created with 0 or 1 ready pod it is calm; with
	// 2 it starts in panic pinned to them.
	for ready := 0; ready < 2; ready++ {
		a = &kpa{kpaSpec: spec, panicTime: math.NaN()}
		a.start(0, ready)
		if !math.IsNaN(a.panicTime) {
			t.Errorf("created with %d ready: in panic", ready)
		}
	}
	a = &kpa{kpaSpec: spec, panicTime: math.NaN()}
	a.start(0, 2)
	if math.IsNaN(a.panicTime) || a.maxPanic != 2 {
		t.Fatalf("created with 2 ready: panic %v, max %d", a.panicTime, a.maxPanic)
	}
	// And it holds them while its windows are empty (the unfair drop the
	// simulator used to show), until a stable window passes.
	if got := a.scale(30, 0, 0, 2); got != 2 {
		t.Errorf("new autoscaler, no data yet: got %d, want 2", got)
	}
	if got := a.scale(61, 0, 0, 2); got != 0 {
		t.Errorf("after the stable window: got %d, want 0 (Decide then applies min 1)", got)
	}
}

// Ray Serve: python/ray/serve/tests/unit/test_autoscaling_policy.py
// (_run_upscale_downscale_flow), with our 1 s control loop.
func TestRayReplaysServeDelayFlow(t *testing.T) {
	p := newRay(1, 0, 100)
	const overload, up = 100.0, 100
	// Upscale only after upscale_delay_s of consecutive decisions.
	for i := 0; i < 30; i++ {
		if got := p.decide(overload, 1, 1); got != 1 {
			t.Fatalf("up, period %d: got %d, want 1", i, got)
		}
	}
	if got := p.decide(overload, 1, 1); got != up {
		t.Fatalf("after the upscale delay: got %d, want %d", got, up)
	}
	// Downscale after downscale_delay_s, first to 1 (not 0) …
	for i := 0; i < 600; i++ {
		if got := p.decide(0, up, up); got != up {
			t.Fatalf("down, period %d: got %d, want %d", i, got, up)
		}
	}
	if got := p.decide(0, up, up); got != 1 {
		t.Fatalf("after the downscale delay: got %d, want 1", got)
	}
	// … then 1 → 0 after downscale_to_zero_delay_s (= the downscale delay).
	for i := 0; i < 600; i++ {
		if got := p.decide(0, 1, 1); got != 1 {
			t.Fatalf("to zero, period %d: got %d", i, got)
		}
	}
	if got := p.decide(0, 1, 1); got != 0 {
		t.Fatalf("after the delay: got %d, want 0", got)
	}
	// A decision in the other direction resets the counter.
	for i := 0; i < 15; i++ {
		p.decide(overload, 1, 1)
	}
	p.decide(0, 1, 1)
	for i := 0; i < 30; i++ {
		if got := p.decide(overload, 1, 1); got != 1 {
			t.Fatalf("after the reset, period %d: got %d", i, got)
		}
	}
	if got := p.decide(overload, 1, 1); got != up {
		t.Fatalf("after the reset and the delay: got %d, want %d", got, up)
	}
	// The cold start path: no running replica and requests waiting → at
	// least one at once, no delay.
	p = newRay(2, 0, 100)
	if got := p.Decide(0, Metrics{Ready: 0, Requested: 0, InFlight: 3}); got != 1 {
		t.Fatalf("cold start: got %d, want 1", got)
	}
}

// Cortex: pkg/autoscaler/autoscaler_test.go (TestAutoscaler_AutoscaleFn).
func TestCortexReplaysCortex(t *testing.T) {
	spec := func(stab float64, maxDown float64) cortexSpec {
		return cortexSpec{target: 1, window: 1, downStab: stab, upStab: stab, maxDownFactor: maxDown, maxUpFactor: 1.5,
			downTol: 0.05, upTol: 0.05}
	}
	// "downscale no stabilization": 2 in flight, 5 requested → 3.
	c := &cortex{cortexSpec: spec(0, 0.5), max: 5, hasStart: true}
	if got := c.autoscale(10, 2, 5); got != 3 {
		t.Errorf("downscale: got %d, want 3", got)
	}
	// "upscale no stabilization": 3 in flight, 1 requested → 2 (×1.5 cap).
	c = &cortex{cortexSpec: spec(0, 0.5), max: 5, hasStart: true}
	if got := c.autoscale(10, 3, 1); got != 2 {
		t.Errorf("upscale: got %d, want 2", got)
	}
	// "upscale with stabilization": within the upscale stabilization period
	// after start, no change.
	c = &cortex{cortexSpec: spec(1, 0.5), max: 5, started: 10, hasStart: true}
	if got := c.autoscale(10.25, 5, 2); got != 2 {
		t.Errorf("upscale within the stabilization period: got %d, want 2", got)
	}
}

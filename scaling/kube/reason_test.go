package kube

import (
	"testing"
	"time"

	"github.com/inflight-dev/inflight/scaling"
)

// The reason labels come from the policy's reason text: drive the real
// policy into each state the fail-safe reports, so that a change of its
// wording shows up here instead of silently becoming "demand".
func TestReasonLabelsFromTheRealPolicy(t *testing.T) {
	cfg := scaling.DefaultConfig(1)
	cfg.ScaleDownDelay = 0
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	idle := func(now time.Time, partial bool) scaling.Observation {
		return scaling.Observation{Time: now, Ready: 4, Requested: 4, Partial: partial}
	}

	a := scaling.NewAutoscaler(cfg, scaling.Features{}, t0)
	var d scaling.Decision
	for i := 1; i <= 5; i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		a.Observe(idle(now, false))
		d = a.Decide(now)
	}
	if got := reasonLabel(d); got != "warming-up" {
		t.Errorf("new autoscaler, idle: label %q for reason %q, want warming-up", got, d.Reason)
	}

	a = scaling.NewAutoscaler(cfg, scaling.Features{}, t0)
	for i := 1; i <= int(cfg.Window/time.Second)+5; i++ {
		now := t0.Add(time.Duration(i) * time.Second)
		a.Observe(idle(now, true))
		d = a.Decide(now)
	}
	if got := reasonLabel(d); got != "partial-data" {
		t.Errorf("partial data, idle: label %q for reason %q, want partial-data", got, d.Reason)
	}

	if d := scaling.NewAutoscaler(cfg, scaling.Features{}, t0).Decide(t0); reasonLabel(d) != "no-data" {
		t.Errorf("no observation: label %q for reason %q, want no-data", reasonLabel(d), d.Reason)
	}
}

package kube

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/collect"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestMetricsGolden pins the names, help, types and labels of every
// controller metric.
func TestMetricsGolden(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	w := collect.Workload{Namespace: "ml", Name: "llama"}
	gone := collect.Workload{Namespace: "ml", Name: "gone"}
	obs := scaling.Observation{Concurrency: 17.5, InFlight: 18, Ready: 3, Starting: 1, Requested: 4, ColdStart: 95 * time.Second}
	cfg := scaling.DefaultConfig(4)
	d := scaling.Decision{Desired: 5, Current: 4, Direction: scaling.Up, StableDemand: 16.25,
		PanicDemand: 18.5, Trend: 1.25, Panicking: true, Reason: "in-flight 18.5, target 4 per replica, panic: 4 → 5"}
	m.workload(w, cfg, obs, d)
	m.workload(gone, cfg, obs, scaling.Decision{Reason: "partial data: no scale-down: 1 → 1"})
	m.forget(gone)
	m.setInvalid(w, false)
	m.invalidConfigs.Inc()
	m.Fetched("", 3*time.Millisecond)
	m.Fetched("timeout", 500*time.Millisecond)
	m.scaleWrites.WithLabelValues("ok").Inc()
	m.scaleConflicts.Inc()
	m.tickDuration.Observe(0.02)
	m.partial.Set(1)
	m.endpoints.WithLabelValues("answered").Set(2)
	m.endpoints.WithLabelValues("failed").Set(1)
	m.leader.Set(1)

	golden := filepath.Join("testdata", "metrics.golden")
	if *update {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestMetricsGolden -update ./scaling/kube)", err)
	}
	defer f.Close()
	if err := testutil.GatherAndCompare(reg, f); err != nil {
		t.Fatal(err)
	}
}

func TestReasonLabelIsBounded(t *testing.T) {
	cases := map[string]scaling.Decision{
		"no-data":          {Reason: "no observation yet"},
		"partial-data":     {Reason: "in-flight 0.0, target 1 per replica, partial data: no scale-down: 4 → 4"},
		"warming-up":       {Reason: "in-flight 0.0, target 1 per replica, less than one window of data: no scale-down: 4 → 4"},
		"panic":            {Reason: "in-flight 9.0, target 1 per replica, panic: 1 → 9", Panicking: true},
		"cold-start":       {Reason: "in-flight 9.0, target 1 per replica, 2 starting: capped at 3: 1 → 3"},
		"scale-down-delay": {Reason: "in-flight 1.0, target 1 per replica, holding for scale-down-delay 2s: 4 → 4"},
		"rate-cap":         {Reason: "in-flight 1.0, target 1 per replica, capped by max-scale-down-rate 2: 4 → 2"},
		"demand":           {Reason: "in-flight 3.0, target 1 per replica: 1 → 3"},
	}
	for want, d := range cases {
		if got := reasonLabel(d); got != want {
			t.Errorf("reasonLabel(%q) = %q, want %q", d.Reason, got, want)
		}
	}
}

func TestTrimArrow(t *testing.T) {
	if got := trimArrow("in-flight 18.2, target 4 per replica, rising 1.30/s: 3 → 5"); got != "in-flight 18.2, target 4 per replica, rising 1.30/s" {
		t.Errorf("trimArrow = %q", got)
	}
}

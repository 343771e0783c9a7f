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
		PanicDemand: 18.5, Trend: 1.25, Panicking: true, Cause: scaling.CauseBurst, Reason: "in-flight 18.5, target 4 per replica, panic: 4 → 5"}
	m.workload(w, cfg, obs, d)
	m.workload(gone, cfg, obs, scaling.Decision{Cause: scaling.CausePartial, Reason: "partial data: no scale-down: 1 → 1"})
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
	m.endpoints.WithLabelValues("vanished").Set(1)
	m.unattributed.Set(30)
	m.scrapeErrors.WithLabelValues("invalid").Inc()
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

// The reason label is the policy's typed cause: a bounded set, never
// derived from the reason text.
func TestReasonLabelIsTheTypedCause(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	w := collect.Workload{Namespace: "ml", Name: "llama"}
	allowed := map[string]bool{}
	for _, c := range scaling.Causes() {
		allowed[c.String()] = true
		m.workload(w, scaling.DefaultConfig(1), scaling.Observation{}, scaling.Decision{Cause: c, Reason: "burst partial panic"})
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, mf := range mfs {
		if mf.GetName() != "inflight_controller_decisions_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "reason" {
					seen++
					if !allowed[l.GetValue()] {
						t.Errorf("reason label %q is not a scaling.Cause", l.GetValue())
					}
				}
			}
		}
	}
	if seen != len(scaling.Causes()) {
		t.Errorf("%d reason series, want one per cause (%d)", seen, len(scaling.Causes()))
	}
}

// The ScaledUp/ScaledDown message comes from the typed cause and the
// decision's numbers.
func TestScaledMessage(t *testing.T) {
	d := scaling.Decision{Cause: scaling.CauseDemand, PredictedDemand: 46.1, Reason: "ignored: 8 → 10"}
	got := scaledMessage(8, 10, d, 5, scaling.Observation{InFlight: 38, Ready: 8})
	want := "scaled 8 → 10: requests in flight over the target per replica; sized for 46.1 in flight at target 5 per replica; in-flight now 38.0, ready 8, starting 0"
	if got != want {
		t.Errorf("message\n got %q\nwant %q", got, want)
	}
}

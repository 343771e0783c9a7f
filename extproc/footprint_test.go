package extproc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inflight-dev/inflight/mesh"
)

// Footprint is what one target costs, measured: the README's arithmetic
// for the --max-targets cap uses these numbers.
type footprint struct {
	heap, snapshot, metrics, scrapeAlloc, gathered float64 // bytes per target
}

// measureFootprint fills a tracker with n targets named like real pods (one
// finished request each) and measures the retained heap, the snapshot and
// /metrics sizes, and the bytes one /metrics scrape allocates, per target.
func measureFootprint(t testing.TB, n int) footprint {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tr := NewTracker(TrackerOptions{MaxTargets: n + 1, MaxTargetsPerNamespace: n + 1})
	for i := range n {
		tg := mesh.Target{Namespace: fmt.Sprintf("team-%03d", i/100), Workload: "llama-3-70b-instruct",
			Service: "llama-3-70b-instruct", Pod: fmt.Sprintf("llama-3-70b-instruct-7d9f8b6c5d-%05d", i)}
		r := tr.Start(tg, mesh.ReasonNone)
		tr.End(&r)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	var f footprint
	f.heap = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)

	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg, tr); err != nil {
		t.Fatal(err)
	}
	// What a scrape holds at its peak: promhttp gathers every series into
	// memory before it writes the first byte.
	runtime.GC()
	runtime.ReadMemStats(&before)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	f.gathered = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
	runtime.KeepAlive(mfs)
	a := &Admin{Tracker: tr, Gatherer: reg}
	h := a.Handler()
	get := func(path string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d", path, rec.Code)
		}
		return rec.Body.Len()
	}
	f.snapshot = float64(get("/v1/snapshot")) / float64(n)
	runtime.GC()
	runtime.ReadMemStats(&before)
	f.metrics = float64(get("/metrics")) / float64(n)
	runtime.ReadMemStats(&after)
	f.scrapeAlloc = float64(after.TotalAlloc-before.TotalAlloc) / float64(n)
	runtime.KeepAlive(tr)

	var s Snapshot
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/snapshot", nil))
	if err := json.NewDecoder(bytes.NewReader(rec.Body.Bytes())).Decode(&s); err != nil || len(s.Targets) != n {
		t.Fatalf("snapshot of %d targets: %d, %v", n, len(s.Targets), err)
	}
	return f
}

// TestTargetFootprint pins the per-target costs the memory budget of
// cmd/extproc is computed from (README, Security → Limits): the record and
// what one scrape holds at its peak must stay within bytesPerTarget's
// share; the snapshot and /metrics sizes within what the README states.
// (What a scrape allocates in all is only logged: the garbage collector
// takes it back, and the race detector inflates it.)
func TestTargetFootprint(t *testing.T) {
	const n = 5000
	f := measureFootprint(t, n)
	t.Logf("per target: heap %.0f B, snapshot %.0f B, /metrics %.0f B, one /metrics scrape allocates %.0f B and holds %.0f B at its peak",
		f.heap, f.snapshot, f.metrics, f.scrapeAlloc, f.gathered)
	for _, c := range []struct {
		what      string
		got, want float64
	}{{"heap", f.heap, 768}, {"snapshot", f.snapshot, 320}, {"/metrics", f.metrics, 4096}, {"held by a scrape", f.gathered, 6144}} {
		if c.got > c.want {
			t.Errorf("%s: %.0f bytes per target, over the %.0f the README's arithmetic allows", c.what, c.got, c.want)
		}
	}
}

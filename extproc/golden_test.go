package extproc

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/inflight-dev/inflight/mesh"
	inflighttest "github.com/inflight-dev/inflight/test/testutil"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenTracker is a tracker in a known state on a fake clock: one target
// with a finished request (2 s), one running (1.5 s so far) and one that
// arrived over the open-stream cap (untracked), an unknown request, and an
// edge target (a Service) with four held requests — one released and
// running, one timed out, one abandoned, one still held — and one shed; all
// read 3 s after the tracker started.
func goldenTracker(t *testing.T) (*Tracker, *fakeClock) {
	c := newFakeClock()
	tr := NewTracker(TrackerOptions{Now: c.Now})
	a := tr.Start(vllm, mesh.ReasonNone)
	c.Advance(1500 * time.Millisecond)
	b := tr.Start(vllm, mesh.ReasonNone)
	u := tr.Start(mesh.Target{}, mesh.ReasonNoNamespace)
	edge := mesh.Target{Namespace: "models", Service: "llama"}
	h := make([]Request, 4)
	for i := range h {
		h[i] = tr.StartHeld(edge, mesh.ReasonNone)
	}
	tr.Shed(edge, mesh.ReasonNone)
	c.Advance(500 * time.Millisecond)
	tr.End(&a)
	tr.End(&u)
	tr.Untracked(vllm, mesh.ReasonNone)
	tr.Released(&h[0])
	tr.HoldTimedOut(&h[1])
	tr.End(&h[1])
	tr.End(&h[2])
	c.Advance(time.Second)
	_ = b
	return tr, c
}

// TestSnapshotGolden pins the /v1/snapshot contract shared with the
// controller: field names, units and order.
func TestSnapshotGolden(t *testing.T) {
	tr, c := goldenTracker(t)
	a := &Admin{Tracker: tr, Replica: "extproc-0", BootID: "0123456789abcdef", Gatherer: prometheus.NewRegistry(), Wall: c.Now}
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/snapshot", nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, rec.Body.Bytes(), "", "  "); err != nil {
		t.Fatal(err)
	}
	inflighttest.Golden(t, "snapshot.golden.json", pretty.Bytes(), *update)

	var s Snapshot
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if s.Version != SnapshotVersion || len(s.Targets) != 3 || s.UptimeSeconds != 3 {
		t.Fatalf("decoded %+v", s)
	}
}

func TestMetricsGolden(t *testing.T) {
	tr, _ := goldenTracker(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, tr)
	if err != nil {
		t.Fatal(err)
	}
	m.now = func() time.Time { return m.epoch.Add(7 * time.Second) } // gates_age_seconds: none received, 7 s after start
	m.ends[endBodyEOS].Inc()
	m.ends[endCanceled].Inc()
	m.streamErrors.WithLabelValues("Unavailable").Inc()
	f, err := os.Open(filepath.Join("testdata", "metrics.golden.txt"))
	if *update {
		var buf bytes.Buffer
		a := &Admin{Tracker: tr, Gatherer: reg}
		rec := httptest.NewRecorder()
		a.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		buf.Write(rec.Body.Bytes())
		inflighttest.Golden(t, "metrics.golden.txt", buf.Bytes(), *update)
		f, err = os.Open(filepath.Join("testdata", "metrics.golden.txt"))
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := testutil.GatherAndCompare(reg, f); err != nil {
		t.Fatal(err)
	}
}

func TestAdminEndpoints(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	ready := new(readyFlag)
	a := &Admin{Tracker: tr, Gatherer: prometheus.NewRegistry(), Ready: &ready.b}
	h := a.Handler()
	get := func(path string) int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	if get("/readyz") != http.StatusServiceUnavailable {
		t.Fatal("not ready until the binary says so")
	}
	ready.b.Store(true)
	if get("/readyz") != http.StatusOK || get("/healthz") != http.StatusOK {
		t.Fatal("ready and healthy")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/snapshot", strings.NewReader("{}")))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST /v1/snapshot = %d, want 405", rec.Code)
	}
	if get("/nope") != http.StatusNotFound {
		t.Fatal("unknown path")
	}
}

type readyFlag struct{ b atomic.Bool }

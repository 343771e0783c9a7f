package extproc

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/inflight-dev/inflight/mesh"
)

// gatesDoc is a valid document with the given entries (share 1, 5 s).
func gatesDoc(gates ...Gate) *GatesDocument {
	return &GatesDocument{Version: GatesVersion, Controller: "inflight-controller-0", ExpiresInSeconds: 5, Share: 1, Gates: gates}
}

// holdGate is the gate of a Service at zero (or with ready endpoints) that
// holds its edge requests.
func holdGate(svc string, ready int) Gate {
	return Gate{Namespace: "models", Service: svc, Workload: svc, ReadyEndpoints: ready, Hold: true,
		HoldTimeoutSeconds: 300, ReleasePerEndpoint: 8}
}

func TestGatesDocumentValidate(t *testing.T) {
	if err := gatesDoc(holdGate("llama", 0), Gate{Namespace: "models", Workload: "embed", MaxInFlight: 40}).Validate(); err != nil {
		t.Fatalf("valid document refused: %v", err)
	}
	if err := gatesDoc().Validate(); err != nil {
		t.Fatalf("an empty table is valid (nothing held or shed): %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(d *GatesDocument)
		want []string // fragments of the error, each naming a field
	}{
		{"version", func(d *GatesDocument) { d.Version = "inflight.dev/gates/v2" }, []string{`version="inflight.dev/gates/v2"`}},
		{"controller", func(d *GatesDocument) { d.Controller = "" }, []string{`controller=""`}},
		{"expiry", func(d *GatesDocument) { d.ExpiresInSeconds = 0 }, []string{"expires_in_seconds=0: want 1 to 300"}},
		{"expiry too long", func(d *GatesDocument) { d.ExpiresInSeconds = 1e9 }, []string{"expires_in_seconds=1e+09"}},
		{"share 0", func(d *GatesDocument) { d.Share = 0 }, []string{"share=0"}},
		{"share over 1", func(d *GatesDocument) { d.Share = 1.5 }, []string{"share=1.5"}},
		{"bad names", func(d *GatesDocument) {
			d.Gates[0].Namespace, d.Gates[0].Service, d.Gates[0].Workload = "Models", "llama_3", "-x"
		}, []string{`gates[0].namespace="Models"`, `gates[0].service="llama_3"`, `gates[0].workload="-x"`}},
		{"no target", func(d *GatesDocument) { d.Gates[0].Service, d.Gates[0].Workload, d.Gates[0].Hold = "", "", false },
			[]string{"gates[0].service and gates[0].workload are both empty"}},
		{"duplicate Service", func(d *GatesDocument) { d.Gates = append(d.Gates, holdGate("llama", 1)) },
			[]string{`gates[1].service="llama": gates[0] already names`}},
		{"absurd numbers", func(d *GatesDocument) {
			g := &d.Gates[0]
			g.ReadyEndpoints, g.HoldTimeoutSeconds, g.ReleasePerEndpoint, g.MaxInFlight, g.MaxHeld = -1, 1e12, 0, -3, 1e300
		}, []string{"gates[0].ready_endpoints=-1", "gates[0].hold_timeout_seconds=1e+12", "gates[0].release_per_endpoint=0",
			"gates[0].max_in_flight=-3", "gates[0].max_held=1e+300"}},
		{"hold without a Service", func(d *GatesDocument) { d.Gates[0].Service = "" }, []string{"gates[0].hold=true without gates[0].service"}},
		{"too many", func(d *GatesDocument) {
			d.Gates = make(GateList, MaxGates+1)
		}, []string{"gates: 10001 entries, want at most 10000"}},
		{"long value cut in the message", func(d *GatesDocument) { d.Controller = strings.Repeat("x", 10000) },
			[]string{`controller="` + strings.Repeat("x", 64) + `"…`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := gatesDoc(holdGate("llama", 0))
			tc.edit(d)
			err := d.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if len(err.Error()) > 4096 {
				t.Errorf("error of %d bytes: messages must stay small", len(err.Error()))
			}
		})
	}
	// Many bad entries: the answer lists at most maxGateErrors problems.
	d := gatesDoc()
	for i := range 1000 {
		d.Gates = append(d.Gates, Gate{Namespace: fmt.Sprintf("BAD%d", i), Service: "s"})
	}
	if err := d.Validate(); err == nil || strings.Count(err.Error(), "\n")+1 != maxGateErrors {
		t.Fatalf("want %d problems listed, got %v", maxGateErrors, err)
	}
}

func TestPutGates(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr := NewTracker(TrackerOptions{})
	m, err := NewMetrics(reg, tr)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGates(GatesOptions{Metrics: m})
	defer g.Close()
	srv := httptest.NewServer((&Admin{Tracker: tr, Gatherer: reg, Gates: g}).Handler())
	defer srv.Close()
	put := func(body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v1/gates", strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = fmt.Fprint(&b, readAll(t, resp))
		return resp.StatusCode, b.String()
	}
	ctx := context.Background()

	// The Go client and the document of ISSUE12.md.
	if err := PutGates(ctx, srv.Client(), srv.URL, gatesDoc(holdGate("llama", 0))); err != nil {
		t.Fatal(err)
	}
	const issueDoc = `{"version": "inflight.dev/gates/v1", "controller": "inflight-controller-7c9-abcde",
	  "expires_in_seconds": 5, "share": 0.5, "future_field": {"ignored": true},
	  "gates": [{"namespace": "models", "service": "llama", "workload": "llama-chat",
	     "ready_endpoints": 0, "hold": true, "hold_timeout_seconds": 300,
	     "release_per_endpoint": 8, "max_in_flight": 40, "max_held": 40}]}`
	if code, body := put(issueDoc); code != http.StatusNoContent {
		t.Fatalf("the contract's example: %d %s", code, body)
	}
	var st GatesStatus
	resp, err := http.Get(srv.URL + "/v1/gates")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !st.InForce || st.Document.Controller != "inflight-controller-7c9-abcde" || len(st.Document.Gates) != 1 || st.Document.Share != 0.5 {
		t.Fatalf("GET /v1/gates: %+v", st)
	}
	if c := g.table.Load().states[gateKey{gateEdge, "models", "llama"}].cfg.Load(); c.inFlightLimit != 20 || c.heldLimit != 20 || c.releaseLimit != 0 {
		t.Fatalf("per-replica limits at share 0.5: %+v", c)
	}

	for _, tc := range []struct {
		name, body string
		code       int
		want       string
	}{
		{"semantic", strings.Replace(issueDoc, `"share": 0.5`, `"share": 2`, 1), 400, "share=2"},
		{"type, naming the entry", strings.Replace(issueDoc, `"ready_endpoints": 0`, `"ready_endpoints": 1.5`, 1), 400,
			"gates[0].ready_endpoints: want a JSON int, got number 1.5"},
		{"type, top level", strings.Replace(issueDoc, `"share": 0.5`, `"share": "half"`, 1), 400, "share: want a JSON float64, got string"},
		{"huge number", strings.Replace(issueDoc, `"ready_endpoints": 0`, `"ready_endpoints": 1e400`, 1), 400, "gates[0].ready_endpoints"},
		{"not an array", strings.Replace(issueDoc, `"gates": [`, `"gates": {"x": [`, 1) + "}", 400, "gates: want an array"},
		{"trailing data", issueDoc + `{}`, 400, "data after the JSON document"},
		{"syntax", `{"version": `, 400, "invalid JSON"},
		{"too many entries", `{"gates": [` + strings.Repeat(`{},`, MaxGates) + `{}]}`, 400, "gates: more than 10000 entries"},
		{"too large", `{"controller": "` + strings.Repeat("x", MaxGatesBytes) + `"}`, 413, "body larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := put(tc.body)
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Fatalf("%d %q; want %d and %q", code, body, tc.code, tc.want)
			}
		})
	}
	// A refused document leaves the one in force.
	if c := g.table.Load().states[gateKey{gateEdge, "models", "llama"}].cfg.Load(); c == nil || c.inFlightLimit != 20 {
		t.Fatal("a refused document changed the table in force")
	}
	if got := testutil.ToFloat64(m.gatesRejected); got != 1 { // semantic refusals only; decoding errors are not documents
		t.Fatalf("gates_rejected_total %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.gatesGauge); got != 1 {
		t.Fatalf("inflight_extproc_gates %v, want 1", got)
	}
	// Only PUT and GET.
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/gates", strings.NewReader(issueDoc))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %v %v", resp.StatusCode, err)
	}
	// After Close (shutdown) documents are refused with 503.
	g.Close()
	if code, _ := put(issueDoc); code != http.StatusServiceUnavailable {
		t.Fatalf("PUT after Close: %d, want 503", code)
	}
}

// GET /v1/gates and gates_age_seconds tell the age of the table in force
// from the one time it was accepted.
func TestGatesAge(t *testing.T) {
	m := newMetrics()
	g := NewGates(GatesOptions{Metrics: m})
	defer g.Close()
	m.now = func() time.Time { return m.epoch.Add(7 * time.Second) }
	if s := g.Status(); s.InForce || s.AgeSeconds != 0 {
		t.Fatalf("before any table: %+v", s)
	}
	if got := testutil.ToFloat64(m.gatesAge); got != 7 {
		t.Fatalf("gates_age_seconds before any table %v, want 7 (since start)", got)
	}
	if err := g.Apply(gatesDoc(holdGate("llama", 0))); err != nil {
		t.Fatal(err)
	}
	at := *m.gatesAt.Load()
	m.now = func() time.Time { return at.Add(3 * time.Second) }
	if s := g.Status(); !s.InForce || s.AgeSeconds != 3 {
		t.Errorf("3 s after the table: %+v, want in force, age 3", s)
	}
	if got := testutil.ToFloat64(m.gatesAge); got != 3 {
		t.Errorf("gates_age_seconds 3 s after the table %v, want 3", got)
	}
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

func TestPerReplica(t *testing.T) {
	for _, tc := range []struct {
		whole, share float64
		want         int64
	}{{0, 1, 0}, {40, 0.5, 20}, {30, 1.0 / 3, 10}, {40, 1.0 / 3, 14}, {1, 0.1, 1}, {7.5, 1, 8}} {
		if got := perReplica(tc.whole, tc.share); got != tc.want {
			t.Errorf("perReplica(%v, %v) = %d, want %d", tc.whole, tc.share, got, tc.want)
		}
	}
}

func TestGatesInboundLimitFromSeveralEntries(t *testing.T) {
	g := NewGates(GatesOptions{})
	defer g.Close()
	apply := func(gs ...Gate) *gateConfig {
		t.Helper()
		if err := g.Apply(gatesDoc(gs...)); err != nil {
			t.Fatal(err)
		}
		return g.table.Load().states[gateKey{gateInbound, "models", "llama"}].cfg.Load()
	}
	a := Gate{Namespace: "models", Service: "llama", Workload: "llama", MaxInFlight: 10}
	b := Gate{Namespace: "models", Service: "llama-headless", Workload: "llama", MaxInFlight: 30}
	if c := apply(a, b); c.inFlightLimit != 30 {
		t.Fatalf("two entries for one workload: limit %d, want the larger, 30", c.inFlightLimit)
	}
	b.MaxInFlight = 0
	if c := apply(a, b); c.inFlightLimit != 0 {
		t.Fatalf("one entry without a limit: %d, want none", c.inFlightLimit)
	}
}

// The tracker side of holding: every held request leaves the hold once.
func TestTrackerHeldCounts(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	edge := mesh.Target{Namespace: "models", Service: "llama"}
	r := make([]Request, 3)
	for i := range r {
		r[i] = tr.StartHeld(edge, mesh.ReasonNone)
	}
	tr.Released(&r[0])
	tr.Released(&r[0]) // once
	tr.HoldTimedOut(&r[0])
	tr.HoldTimedOut(&r[1])
	for i := range r {
		tr.End(&r[i])
		tr.End(&r[i])
	}
	rec := recordOf(t, tr, edge, mesh.ReasonNone)
	if rec.Held != 0 || rec.HeldTotal != 3 || rec.Released != 1 || rec.HoldTimeouts != 1 || rec.HoldAbandoned != 1 ||
		rec.InFlight != 0 || rec.Started != 3 || rec.Completed != 3 || rec.Source != "edge" {
		t.Fatalf("%+v", rec.TargetRecord)
	}
}

// GET /v1/gates/wake answers a waiting controller as soon as a gate with no
// ready endpoint holds its first request (issue 12: the wake need not wait
// for a tick); later requests held in the same queue, and requests held
// behind ready endpoints, are no new wake.
func TestWakeWait(t *testing.T) {
	g := NewGates(GatesOptions{})
	t.Cleanup(g.Close)
	if err := g.Apply(gatesDoc(holdGate("llama", 0))); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer((&Admin{Tracker: NewTracker(TrackerOptions{}), Gates: g}).Handler())
	t.Cleanup(srv.Close)
	get := func(query string) (int, WakeStatus) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/v1/gates/wake" + query)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		var s WakeStatus
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal([]byte(body), &s); err != nil {
				t.Fatalf("%s: %v", body, err)
			}
		}
		return resp.StatusCode, s
	}
	if code, s := get(""); code != http.StatusOK || s.Wakes != 0 {
		t.Fatalf("without after: %d %+v, want 200 and 0 wakes at once", code, s)
	}
	hold := func(svc string) admission {
		a, v := g.admit(mesh.Target{Namespace: "models", Service: svc}, mesh.ReasonNone)
		if v != admitHold {
			t.Fatalf("%s: verdict %d, want hold", svc, v)
		}
		return a
	}
	done := make(chan WakeStatus)
	go func() {
		_, s := get("?after=0&wait=20s")
		done <- s
	}()
	a1 := hold("llama")
	defer a1.leave()
	if s := <-done; s.Wakes != 1 {
		t.Fatalf("after the first held request: %+v, want 1 wake", s)
	}
	a2 := hold("llama")
	defer a2.leave()
	if err := g.Apply(gatesDoc(holdGate("llama", 1))); err != nil {
		t.Fatal(err)
	}
	a3 := hold("llama") // held for the release delay (1 s), behind a ready endpoint
	defer a3.leave()
	if _, s := get("?after=1&wait=50ms"); s.Wakes != 1 {
		t.Fatalf("a second held request in the queue, or one behind a ready endpoint: %+v, want still 1", s)
	}
	for _, q := range []string{"?after=-1", "?after=x", "?wait=1h", "?wait=-1s", "?wait=soon"} {
		if code, _ := get(q); code != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", q, code)
		}
	}
}

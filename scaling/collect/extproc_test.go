package collect_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/mesh"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// realExtproc serves a real tracker on clk through the extproc's admin
// handler (/v1/snapshot on a loopback socket, closed when the test ends);
// it returns the tracker and the endpoint list.
func realExtproc(t *testing.T, clk *testingclock.FakeClock) (*extproc.Tracker, []collect.Endpoint) {
	t.Helper()
	tr := extproc.NewTracker(extproc.TrackerOptions{Now: clk.Now})
	adm := &extproc.Admin{Tracker: tr, Replica: "extproc-0", BootID: extproc.NewBootID(), Wall: clk.Now}
	srv := httptest.NewServer(adm.Handler())
	t.Cleanup(srv.Close)
	return tr, []collect.Endpoint{{Key: "extproc-0", URL: srv.URL + "/v1/snapshot"}}
}

// The collector reads the real extproc admin handler (tracker and /v1/snapshot
// over a loopback socket), not only the fake: the contract is exercised end
// to end, with one clock driving both sides so the numbers are exact.
func TestReadsTheRealExtprocSnapshot(t *testing.T) {
	clk, c := rig(collect.Options{})
	tr, ep := realExtproc(t, clk)
	ctx := context.Background()

	tg := mesh.Target{Namespace: "ml", Workload: "llama", Service: "llama", Pod: "llama-0"}
	var reqs []extproc.Request
	for range 4 {
		reqs = append(reqs, tr.Start(tg, mesh.ReasonNone))
	}
	unknown := tr.Start(mesh.Target{}, mesh.ReasonNoAttributes)
	defer tr.End(&unknown)
	if r := c.Tick(ctx, ep, nil, nil); r.Partial || r.Answered != 1 {
		t.Fatalf("first tick: %+v", r)
	}
	clk.Step(time.Second)
	for i := range 2 {
		tr.End(&reqs[i]) // two end after 1s
	}
	clk.Step(time.Second)
	r := c.Tick(ctx, ep, nil, nil)
	if r.Partial || len(r.Workloads) != 1 {
		t.Fatalf("second tick: %+v", r)
	}
	s := r.Workloads[w]
	near(t, "concurrency", s.Concurrency, 3) // 4 for 1s, 2 for 1s
	near(t, "in-flight", s.InFlight, 2)
	near(t, "completions", s.Completions, 2)
	if s.MeanDuration != time.Second {
		t.Errorf("mean duration = %v, want 1s", s.MeanDuration)
	}
}

// Issue 12 against the real tracker and /v1/snapshot: an edge target's
// held requests reach the workload its Service maps to as held demand at
// once; once released they are plain in-flight; with the workload's own
// inbound record present, only the held ones count.
func TestReadsHeldEdgeRequestsFromTheRealExtproc(t *testing.T) {
	clk, c := rig(collect.Options{})
	tr, ep := realExtproc(t, clk)
	ctx := context.Background()

	edge := mesh.Target{Namespace: "ml", Service: "llama"}
	var held []extproc.Request
	for range 3 {
		held = append(held, tr.StartHeld(edge, mesh.ReasonNone))
	}
	r := c.Tick(ctx, ep, nil, llamaSvc)
	if s := r.Workloads[w]; r.Partial || s.Held != 3 || s.InFlight != 3 || s.Source != collect.SourceEdge {
		t.Fatalf("held at zero: %+v partial %v, want 3 held of 3 in flight, source edge", s, r.Partial)
	}
	clk.Step(time.Second)
	tr.Released(&held[0])
	inb := tr.Start(mesh.Target{Namespace: "ml", Workload: "llama", Service: "llama", Pod: "llama-0"}, mesh.ReasonNone)
	r = c.Tick(ctx, ep, nil, llamaSvc)
	// The released one reached the pod: counted there; the 2 held at the edge.
	if s := r.Workloads[w]; s.Held != 2 || s.InFlight != 3 || s.Source != collect.SourceBoth {
		t.Errorf("one released to the pod: %+v, want 2 held, 1 + 2 in flight, source both", s)
	}
	tr.End(&inb)
	for i := range held {
		if i > 0 {
			tr.HoldTimedOut(&held[i])
		}
		tr.End(&held[i])
	}
}

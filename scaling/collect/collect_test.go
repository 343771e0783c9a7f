package collect_test

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling/collect"
	"github.com/inflight-dev/inflight/scaling/collect/collecttest"
)

// rig is a fake clock and a collector with o on it.
func rig(o collect.Options) (*testingclock.FakeClock, *collect.Collector) {
	clk := testingclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	o.Clock = clk
	return clk, collect.New(o)
}

// replica is a fake extproc replica on clk, closed when the test ends.
func replica(t *testing.T, name string, clk *testingclock.FakeClock) *collecttest.Replica {
	t.Helper()
	r := collecttest.NewReplica(name, clk)
	t.Cleanup(r.Close)
	return r
}

// serveRecord serves replica a's snapshot with *rec as it is at each read,
// its uptime 1000 s at clk's time now; it returns the endpoint list.
func serveRecord(t *testing.T, clk *testingclock.FakeClock, rec *extproc.TargetRecord) []collect.Endpoint {
	t.Helper()
	t0 := clk.Now()
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		now := clk.Now()
		_ = json.NewEncoder(rw).Encode(extproc.Snapshot{Version: extproc.SnapshotVersion, Replica: "a", BootID: "b",
			Time: now, UptimeSeconds: 1000 + now.Sub(t0).Seconds(), Targets: []extproc.TargetRecord{*rec}})
	}))
	t.Cleanup(srv.Close)
	return []collect.Endpoint{{Key: "a", URL: srv.URL}}
}

var w = collect.Workload{Namespace: "ml", Name: "llama"}

func near(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9 {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func eps(rs ...*collecttest.Replica) []collect.Endpoint {
	out := make([]collect.Endpoint, len(rs))
	for i, r := range rs {
		out[i] = collect.Endpoint{Key: r.Name, URL: r.URL()}
	}
	return out
}

func TestSumsExactMeanConcurrencyAcrossReplicas(t *testing.T) {
	clk, c := rig(collect.Options{})
	a, b := replica(t, "a", clk), replica(t, "b", clk)
	ctx := context.Background()

	a.Start("ml", "llama", "p1", 2)
	b.Start("ml", "llama", "p2", 1)
	a.Start("other", "x", "q", 7)
	r0 := c.Tick(ctx, eps(a, b), nil, nil)
	if r0.Partial || r0.Answered != 2 {
		t.Fatalf("first tick: partial=%v answered=%d errors=%v", r0.Partial, r0.Answered, r0.Errors)
	}
	// No baseline yet: point values.
	near(t, "first concurrency", r0.Workloads[w].Concurrency, 3)

	clk.Step(500 * time.Millisecond)
	a.Start("ml", "llama", "p1", 2) // 4 on a for the second half
	clk.Step(500 * time.Millisecond)
	b.Complete("ml", "llama", "p2", 1, time.Second) // b: 1 for the full second
	r1 := c.Tick(ctx, eps(a, b), nil, nil)
	got := r1.Workloads[w]
	near(t, "concurrency", got.Concurrency, 3+1) // a: (2·0.5+4·0.5)/1 = 3; b: 1
	near(t, "in-flight", got.InFlight, 4)
	near(t, "arrivals", got.Arrivals, 2)
	near(t, "completions", got.Completions, 1)
	if got.MeanDuration != time.Second {
		t.Errorf("mean duration = %v, want 1s", got.MeanDuration)
	}
	near(t, "other workload", r1.Workloads[collect.Workload{Namespace: "other", Name: "x"}].Concurrency, 7)

	// Nothing completes next second: the last known mean duration stays.
	clk.Step(time.Second)
	r2 := c.Tick(ctx, eps(a, b), nil, nil)
	if r2.Workloads[w].MeanDuration != time.Second {
		t.Errorf("mean duration kept = %v, want 1s", r2.Workloads[w].MeanDuration)
	}
	near(t, "steady concurrency", r2.Workloads[w].Concurrency, 4)
}

func TestCounterResetIsNotADelta(t *testing.T) {
	clk, c := rig(collect.Options{})
	a := replica(t, "a", clk)
	ctx := context.Background()
	a.Start("ml", "llama", "p", 50)
	clk.Step(10 * time.Second)
	c.Tick(ctx, eps(a), nil, nil)
	clk.Step(time.Second)
	a.Restart() // busy 0, started 0: a naive delta would be hugely negative
	a.Start("ml", "llama", "p", 2)
	clk.Step(time.Second)
	r := c.Tick(ctx, eps(a), nil, nil)
	if r.Resets != 1 {
		t.Errorf("resets = %d, want 1", r.Resets)
	}
	s := r.Workloads[w]
	near(t, "concurrency after reset", s.Concurrency, 2)
	near(t, "arrivals after reset", s.Arrivals, 0)
	near(t, "completions after reset", s.Completions, 0)
	// The next tick has a baseline of the new boot again.
	clk.Step(time.Second)
	r = c.Tick(ctx, eps(a), nil, nil)
	near(t, "concurrency next tick", r.Workloads[w].Concurrency, 2)
	if r.Resets != 0 {
		t.Errorf("resets next tick = %d, want 0", r.Resets)
	}
}

func TestSilentReplicaMakesPartialThenExpires(t *testing.T) {
	clk, c := rig(collect.Options{Expire: 5 * time.Second})
	a, b := replica(t, "a", clk), replica(t, "b", clk)
	ctx := context.Background()
	a.Start("ml", "llama", "p", 1)
	b.Start("ml", "llama", "p", 3)
	c.Tick(ctx, eps(a, b), nil, nil)
	clk.Step(time.Second)
	c.Tick(ctx, eps(a, b), nil, nil)

	b.Close() // stopped mid-run: connection refused
	clk.Step(time.Second)
	r := c.Tick(ctx, eps(a, b), nil, nil)
	if !r.Partial || r.Answered != 1 || len(r.Errors) != 1 || r.Errors[0].Kind != "connect" {
		t.Fatalf("after stop: partial=%v answered=%d errors=%v", r.Partial, r.Answered, r.Errors)
	}
	near(t, "in-flight with b's last values", r.Workloads[w].InFlight, 4)
	near(t, "concurrency with b's last values", r.Workloads[w].Concurrency, 4)

	clk.Step(5*time.Second + time.Millisecond)
	r = c.Tick(ctx, eps(a, b), nil, nil)
	if !r.Partial {
		t.Error("a listed replica that does not answer must keep the tick partial")
	}
	near(t, "in-flight after expiry (b's last values forgotten)", r.Workloads[w].InFlight, 1)

	// Unlisted (scaled down): not partial, forgotten.
	clk.Step(time.Second)
	r = c.Tick(ctx, eps(a), nil, nil)
	if r.Partial {
		t.Errorf("tick with every listed replica answering is partial: %v", r.Errors)
	}
}

func TestNoEndpointsIsPartial(t *testing.T) {
	c := collect.New(collect.Options{})
	if r := c.Tick(context.Background(), nil, nil, nil); !r.Partial {
		t.Error("no endpoint at all must be partial data")
	}
}

func TestRejectsOtherVersionAndBadStatus(t *testing.T) {
	clk, c := rig(collect.Options{})
	a, b := replica(t, "a", clk), replica(t, "b", clk)
	a.SetVersion("inflight.dev/snapshot/v2")
	b.SetStatus(http.StatusServiceUnavailable)
	a.Start("ml", "llama", "p", 9)
	r := c.Tick(context.Background(), eps(a, b), nil, nil)
	if !r.Partial || r.Answered != 0 || len(r.Errors) != 2 {
		t.Fatalf("partial=%v answered=%d errors=%v", r.Partial, r.Answered, r.Errors)
	}
	if r.Errors[0].Kind != "version" || r.Errors[1].Kind != "http-status" {
		t.Errorf("kinds = %q, %q; want version, http-status", r.Errors[0].Kind, r.Errors[1].Kind)
	}
	if _, ok := r.Workloads[w]; ok {
		t.Error("a rejected document must not be counted")
	}
}

type kinds struct {
	mu sync.Mutex
	m  map[string]int
}

func (k *kinds) Fetched(kind string, _ time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.m[kind]++
}

func TestTimeoutBoundsAFetch(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer hang.Close()
	defer close(release)
	obs := &kinds{m: map[string]int{}}
	c := collect.New(collect.Options{Timeout: 50 * time.Millisecond, Observer: obs})
	r := c.Tick(context.Background(), []collect.Endpoint{{Key: "h", URL: hang.URL + "/v1/snapshot"}}, nil, nil)
	if !r.Partial || len(r.Errors) != 1 || r.Errors[0].Kind != "timeout" {
		t.Fatalf("partial=%v errors=%v", r.Partial, r.Errors)
	}
	if obs.m["timeout"] != 1 {
		t.Errorf("observer saw %v, want one timeout", obs.m)
	}
}

// Records with a reason belong to no workload; a target the attribution
// gives to nobody is counted as unattributed, not as demand.
func TestSkipsUnattributedTargets(t *testing.T) {
	snap := extproc.Snapshot{Version: extproc.SnapshotVersion, Replica: "s", BootID: "b", UptimeSeconds: 3600,
		Targets: []extproc.TargetRecord{
			{Namespace: "ml", Workload: "llama", Pod: "p", InFlight: 2, Started: 2},
			{Namespace: "ml", Workload: "llama", Pod: "forged", InFlight: 30, Started: 30},
			{Namespace: "ml", Workload: "llama", Reason: "unauthorized", InFlight: 50, Started: 50},
			{Namespace: "ml", Workload: "llama", Reason: "no_workload", InFlight: 5, Started: 5},
		}}
	st, err := collecttest.NewStatic(snap)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	livePod := func(tg collect.Target) (collect.Workload, bool) {
		w, ok := collect.ByName(tg)
		return w, ok && tg.Pod == "p"
	}
	r := collect.New(collect.Options{}).Tick(context.Background(), []collect.Endpoint{{Key: "s", URL: st.URL()}}, livePod, nil)
	if len(r.Workloads) != 1 || r.Partial {
		t.Fatalf("workloads = %v partial %v errors %v, want only ml/llama, complete", r.Workloads, r.Partial, r.Errors)
	}
	near(t, "in-flight", r.Workloads[w].InFlight, 2)
	near(t, "unattributed in-flight", r.Unattributed, 30)
	if r.UnattributedTargets != 1 {
		t.Errorf("unattributed targets = %d, want 1", r.UnattributedTargets)
	}
}

// An overflow target hides demand: with requests in flight or started in
// the interval, the global one makes every workload partial, a namespace
// one its namespace; idle, neither does.
func TestOverflowMakesPartialForWhatItMayHide(t *testing.T) {
	clk, c := rig(collect.Options{})
	a := replica(t, "a", clk)
	ctx := context.Background()
	a.Start("ml", "llama", "p", 1)
	var overflow []extproc.TargetRecord
	a.Mutate(func(s *extproc.Snapshot) { s.Targets = append(s.Targets, overflow...) })
	c.Tick(ctx, eps(a), nil, nil)

	clk.Step(time.Second)
	overflow = []extproc.TargetRecord{{Namespace: "ml", Reason: "namespace_overflow", InFlight: 3, Started: 3}}
	r := c.Tick(ctx, eps(a), nil, nil)
	other := collect.Workload{Namespace: "other", Name: "x"}
	if r.Partial || !r.PartialFor(w) || r.PartialFor(other) {
		t.Errorf("namespace overflow in ml: partial %v, ml %v, other %v; want ml only", r.Partial, r.PartialFor(w), r.PartialFor(other))
	}

	clk.Step(time.Second)
	overflow = []extproc.TargetRecord{{Namespace: "ml", Reason: "namespace_overflow", Started: 3, Completed: 3, BusySeconds: 1}}
	if r := c.Tick(ctx, eps(a), nil, nil); r.PartialFor(w) {
		t.Error("an idle namespace overflow (nothing in flight, nothing started) must not make the tick partial")
	}

	clk.Step(time.Second)
	overflow = append(overflow, extproc.TargetRecord{Reason: "overflow", InFlight: 1, Started: 1})
	r = c.Tick(ctx, eps(a), nil, nil)
	if !r.Partial || !r.Overflow || !r.PartialFor(other) {
		t.Errorf("global overflow: partial %v overflow %v; want every workload partial", r.Partial, r.Overflow)
	}
}

// A replica that leaves the endpoint list (a rolling restart of the
// extprocs) keeps its last values and the tick partial for Expire: its
// requests do not vanish from the demand at once.
func TestVanishedReplicaStaysPartialForExpire(t *testing.T) {
	clk, c := rig(collect.Options{Expire: 5 * time.Second})
	a, b := replica(t, "a", clk), replica(t, "b", clk)
	ctx := context.Background()
	a.Start("ml", "llama", "p", 8)
	b.Start("ml", "llama", "q", 9)
	c.Tick(ctx, eps(a, b), nil, nil)
	clk.Step(time.Second)
	c.Tick(ctx, eps(a, b), nil, nil)

	clk.Step(time.Second)
	r := c.Tick(ctx, eps(a), nil, nil) // b left the EndpointSlice
	if !r.Partial || r.Vanished != 1 {
		t.Fatalf("right after b vanished: partial %v vanished %d; want partial, 1", r.Partial, r.Vanished)
	}
	near(t, "in-flight with b's last values", r.Workloads[w].InFlight, 17)
	clk.Step(4 * time.Second)
	if r := c.Tick(ctx, eps(a), nil, nil); !r.Partial {
		t.Error("5s after b's last snapshot (Expire 5s): still partial")
	}
	clk.Step(1500 * time.Millisecond)
	r = c.Tick(ctx, eps(a), nil, nil)
	if r.Partial || r.Vanished != 0 {
		t.Errorf("after Expire: partial %v vanished %d; want complete", r.Partial, r.Vanished)
	}
	near(t, "in-flight after b expired", r.Workloads[w].InFlight, 8)
}

// Snapshots with impossible numbers are rejected: the tick is partial, the
// replica's last accepted values count, and the next honest snapshot is
// accepted again.
func TestRejectsImpossibleSnapshots(t *testing.T) {
	type forge func(s *extproc.Snapshot, n int)
	each := func(f func(r *extproc.TargetRecord)) forge {
		return func(s *extproc.Snapshot, _ int) {
			for i := range s.Targets {
				f(&s.Targets[i])
			}
		}
	}
	cases := []struct {
		name  string
		forge forge
		want  string
	}{
		{"negative in-flight", each(func(r *extproc.TargetRecord) { r.InFlight = -3 }), "in_flight -3"},
		{"completed beyond started", each(func(r *extproc.TargetRecord) { r.Completed = r.Started + 1 }), "completed ≤ started"},
		{"in-flight beyond started", each(func(r *extproc.TargetRecord) { r.InFlight = int64(r.Started) + 5 }), "in_flight ≤ started − completed"},
		{"busy-seconds jump with nothing in flight", each(func(r *extproc.TargetRecord) { r.BusySeconds += 1e6 }), "busy_seconds_total grew"},
		{"duration sum jump", each(func(r *extproc.TargetRecord) { r.DurationSecondsSum += 1e6 }), "duration_seconds_sum grew"},
		{"counter going down", each(func(r *extproc.TargetRecord) { r.Completed = 0; r.InFlight = int64(r.Started) }), "went down"},
		{"uptime advancing 1ms per tick", func(s *extproc.Snapshot, n int) { s.UptimeSeconds = 100 + float64(n)/1000 }, "uptime_seconds advanced"},
		{"wall clock out of line", func(s *extproc.Snapshot, n int) { s.Time = s.Time.Add(time.Duration(n) * time.Second) }, "wall clock is out of line"},
		{"non-finite uptime", func(s *extproc.Snapshot, _ int) { s.UptimeSeconds = -1 }, "uptime_seconds -1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk, c := rig(collect.Options{})
			a := replica(t, "a", clk)
			ctx := context.Background()
			a.Start("ml", "llama", "p", 4)
			a.Complete("ml", "llama", "p", 1, time.Second)
			clk.Step(10 * time.Second)
			c.Tick(ctx, eps(a), nil, nil)
			clk.Step(time.Second)
			if r := c.Tick(ctx, eps(a), nil, nil); r.Partial {
				t.Fatalf("honest tick partial: %v", r.Errors)
			}
			n := 0
			a.Mutate(func(s *extproc.Snapshot) { n++; tc.forge(s, n) })
			clk.Step(time.Second)
			r := c.Tick(ctx, eps(a), nil, nil)
			if !r.Partial || r.Answered != 0 || len(r.Errors) != 1 || r.Errors[0].Kind != collect.KindInvalid {
				t.Fatalf("forged: partial %v answered %d errors %v; want one %q error", r.Partial, r.Answered, r.Errors, collect.KindInvalid)
			}
			if !strings.Contains(r.Errors[0].Err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", r.Errors[0].Err, tc.want)
			}
			// The last accepted values count meanwhile: 3 in flight.
			near(t, "in-flight from the last accepted snapshot", r.Workloads[w].InFlight, 3)
			a.Mutate(nil)
			honest := false
			for range 3 {
				clk.Step(time.Second)
				if r := c.Tick(ctx, eps(a), nil, nil); !r.Partial {
					honest = true
					near(t, "concurrency once honest", r.Workloads[w].Concurrency, 3)
					break
				}
			}
			if !honest {
				t.Error("honest snapshots still rejected 3 ticks after the forgery stopped")
			}
		})
	}
}

// dt is the replica's own uptime delta, not this collector's clock nor
// the snapshot's wall-clock time: a wall clock that steps within the
// tolerance does not change the concurrency.
func TestIntervalIsTheReplicasUptime(t *testing.T) {
	clk, c := rig(collect.Options{})
	a := replica(t, "a", clk)
	ctx := context.Background()
	a.Start("ml", "llama", "p", 6)
	c.Tick(ctx, eps(a), nil, nil)
	a.Mutate(func(s *extproc.Snapshot) { s.Time = s.Time.Add(40 * time.Millisecond) }) // an NTP adjustment
	clk.Step(time.Second)
	r := c.Tick(ctx, eps(a), nil, nil)
	if r.Partial {
		t.Fatalf("a 40ms wall-clock adjustment was rejected: %v", r.Errors)
	}
	near(t, "concurrency over the uptime interval", r.Workloads[w].Concurrency, 6)
}

// A target the extproc evicted while idle and re-created (its counters
// start again from zero) is new, not a counter going down.
func TestEvictedAndRecreatedTargetIsNew(t *testing.T) {
	clk, c := rig(collect.Options{})
	ctx := context.Background()
	rec := extproc.TargetRecord{Namespace: "ml", Workload: "llama", Pod: "p", Started: 40, Completed: 40, BusySeconds: 80, DurationSecondsSum: 80}
	ep := serveRecord(t, clk, &rec)
	c.Tick(ctx, ep, nil, nil)
	clk.Step(time.Second)
	rec = extproc.TargetRecord{Namespace: "ml", Workload: "llama", Pod: "p", InFlight: 2, Started: 2, BusySeconds: 1}
	r := c.Tick(ctx, ep, nil, nil)
	if r.Partial {
		t.Fatalf("re-created target rejected: %v", r.Errors)
	}
	near(t, "arrivals of the re-created target", r.Workloads[w].Arrivals, 2)
	near(t, "concurrency of the re-created target", r.Workloads[w].Concurrency, 1)
}

// A record with another created_uptime_seconds is a new record (the
// extproc evicted the idle one and made it again), even when its started
// is not lower; a creation after the uptime is impossible.
func TestCreationTimeMarksARecreatedTarget(t *testing.T) {
	clk, c := rig(collect.Options{})
	ctx := context.Background()
	rec := extproc.TargetRecord{Namespace: "ml", Workload: "llama", Pod: "p", Started: 2, Completed: 2, BusySeconds: 30, DurationSecondsSum: 30, CreatedUptimeSeconds: 100}
	ep := serveRecord(t, clk, &rec)
	c.Tick(ctx, ep, nil, nil)
	clk.Step(time.Second)
	// Re-created 0.5 s ago with 5 started, 1 in flight since then: as a
	// delta from the old record its busy-seconds would have gone down.
	rec = extproc.TargetRecord{Namespace: "ml", Workload: "llama", Pod: "p", InFlight: 1, Started: 5, Completed: 4,
		BusySeconds: 0.5, DurationSecondsSum: 1, CreatedUptimeSeconds: 1000.5}
	r := c.Tick(ctx, ep, nil, nil)
	if r.Partial {
		t.Fatalf("re-created target rejected: %v", r.Errors)
	}
	near(t, "arrivals of the re-created target", r.Workloads[w].Arrivals, 5)
	near(t, "concurrency of the re-created target", r.Workloads[w].Concurrency, 0.5)

	clk.Step(time.Second)
	rec.CreatedUptimeSeconds = 5000
	if r := c.Tick(ctx, ep, nil, nil); len(r.Errors) != 1 || !strings.Contains(r.Errors[0].Error(), "created_uptime_seconds") {
		t.Errorf("a creation after the uptime: errors %v, want one naming created_uptime_seconds", r.Errors)
	}
}

// Requests the extproc answered without tracking them (its open-stream
// cap) make their workload's counts a lower bound.
func TestUntrackedRequestsMakeTheirWorkloadPartial(t *testing.T) {
	clk, c := rig(collect.Options{})
	a := replica(t, "a", clk)
	ctx := context.Background()
	a.Start("ml", "llama", "p", 1)
	a.Start("other", "x", "q", 1)
	c.Tick(ctx, eps(a), nil, nil)
	untracked := uint64(0)
	a.Mutate(func(s *extproc.Snapshot) {
		for i := range s.Targets {
			if s.Targets[i].Workload == "llama" {
				s.Targets[i].Untracked = untracked
			}
		}
	})
	clk.Step(time.Second)
	if r := c.Tick(ctx, eps(a), nil, nil); r.PartialFor(w) {
		t.Fatal("partial with nothing untracked")
	}
	untracked = 7
	clk.Step(time.Second)
	r := c.Tick(ctx, eps(a), nil, nil)
	if !r.PartialFor(w) || r.PartialFor(collect.Workload{Namespace: "other", Name: "x"}) || r.Partial {
		t.Errorf("7 untracked for ml/llama: partial for it %v, for other/x %v, for all %v; want it only",
			r.PartialFor(w), r.PartialFor(collect.Workload{Namespace: "other", Name: "x"}), r.Partial)
	}
	clk.Step(time.Second)
	if r := c.Tick(ctx, eps(a), nil, nil); r.PartialFor(w) {
		t.Error("still partial once no more requests go untracked")
	}
}

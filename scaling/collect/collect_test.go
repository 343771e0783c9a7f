package collect_test

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling/collect"
	"github.com/inflight-dev/inflight/scaling/collect/collecttest"
)

func newClock() *testingclock.FakeClock {
	return testingclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
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
	clk := newClock()
	a := collecttest.NewReplica("a", clk)
	defer a.Close()
	b := collecttest.NewReplica("b", clk)
	defer b.Close()
	c := collect.New(collect.Options{Clock: clk})
	ctx := context.Background()

	a.Start("ml", "llama", "p1", 2)
	b.Start("ml", "llama", "p2", 1)
	a.Start("other", "x", "q", 7)
	r0 := c.Tick(ctx, eps(a, b))
	if r0.Partial || r0.Answered != 2 {
		t.Fatalf("first tick: partial=%v answered=%d errors=%v", r0.Partial, r0.Answered, r0.Errors)
	}
	// No baseline yet: point values.
	near(t, "first concurrency", r0.Workloads[w].Concurrency, 3)

	clk.Step(500 * time.Millisecond)
	a.Start("ml", "llama", "p1", 2) // 4 on a for the second half
	clk.Step(500 * time.Millisecond)
	b.Complete("ml", "llama", "p2", 1, 3*time.Second) // b: 1 for the full second
	r1 := c.Tick(ctx, eps(a, b))
	got := r1.Workloads[w]
	near(t, "concurrency", got.Concurrency, 3+1) // a: (2·0.5+4·0.5)/1 = 3; b: 1
	near(t, "in-flight", got.InFlight, 4)
	near(t, "arrivals", got.Arrivals, 2)
	near(t, "completions", got.Completions, 1)
	if got.MeanDuration != 3*time.Second {
		t.Errorf("mean duration = %v, want 3s", got.MeanDuration)
	}
	near(t, "other workload", r1.Workloads[collect.Workload{Namespace: "other", Name: "x"}].Concurrency, 7)

	// Nothing completes next second: the last known mean duration stays.
	clk.Step(time.Second)
	r2 := c.Tick(ctx, eps(a, b))
	if r2.Workloads[w].MeanDuration != 3*time.Second {
		t.Errorf("mean duration kept = %v, want 3s", r2.Workloads[w].MeanDuration)
	}
	near(t, "steady concurrency", r2.Workloads[w].Concurrency, 4)
}

func TestCounterResetIsNotADelta(t *testing.T) {
	clk := newClock()
	a := collecttest.NewReplica("a", clk)
	defer a.Close()
	c := collect.New(collect.Options{Clock: clk})
	ctx := context.Background()
	a.Start("ml", "llama", "p", 50)
	clk.Step(10 * time.Second)
	c.Tick(ctx, eps(a))
	clk.Step(time.Second)
	a.Restart() // busy 0, started 0: a naive delta would be hugely negative
	a.Start("ml", "llama", "p", 2)
	clk.Step(time.Second)
	r := c.Tick(ctx, eps(a))
	if r.Resets != 1 {
		t.Errorf("resets = %d, want 1", r.Resets)
	}
	s := r.Workloads[w]
	near(t, "concurrency after reset", s.Concurrency, 2)
	near(t, "arrivals after reset", s.Arrivals, 0)
	near(t, "completions after reset", s.Completions, 0)
	// The next tick has a baseline of the new boot again.
	clk.Step(time.Second)
	r = c.Tick(ctx, eps(a))
	near(t, "concurrency next tick", r.Workloads[w].Concurrency, 2)
	if r.Resets != 0 {
		t.Errorf("resets next tick = %d, want 0", r.Resets)
	}
}

func TestSilentReplicaMakesPartialThenExpires(t *testing.T) {
	clk := newClock()
	a := collecttest.NewReplica("a", clk)
	defer a.Close()
	b := collecttest.NewReplica("b", clk)
	c := collect.New(collect.Options{Clock: clk, Expire: 5 * time.Second})
	ctx := context.Background()
	a.Start("ml", "llama", "p", 1)
	b.Start("ml", "llama", "p", 3)
	c.Tick(ctx, eps(a, b))
	clk.Step(time.Second)
	c.Tick(ctx, eps(a, b))

	b.Close() // stopped mid-run: connection refused
	clk.Step(time.Second)
	r := c.Tick(ctx, eps(a, b))
	if !r.Partial || r.Answered != 1 || len(r.Errors) != 1 || r.Errors[0].Kind != "connect" {
		t.Fatalf("after stop: partial=%v answered=%d errors=%v", r.Partial, r.Answered, r.Errors)
	}
	near(t, "in-flight with b's last values", r.Workloads[w].InFlight, 4)
	near(t, "concurrency with b's last values", r.Workloads[w].Concurrency, 4)

	clk.Step(5*time.Second + time.Millisecond)
	r = c.Tick(ctx, eps(a, b))
	if !r.Partial {
		t.Error("a listed replica that does not answer must keep the tick partial")
	}
	near(t, "in-flight after expiry (b's last values forgotten)", r.Workloads[w].InFlight, 1)

	// Unlisted (scaled down): not partial, forgotten.
	clk.Step(time.Second)
	r = c.Tick(ctx, eps(a))
	if r.Partial {
		t.Errorf("tick with every listed replica answering is partial: %v", r.Errors)
	}
}

func TestNoEndpointsIsPartial(t *testing.T) {
	c := collect.New(collect.Options{})
	if r := c.Tick(context.Background(), nil); !r.Partial {
		t.Error("no endpoint at all must be partial data")
	}
}

func TestRejectsOtherVersionAndBadStatus(t *testing.T) {
	clk := newClock()
	a := collecttest.NewReplica("a", clk)
	defer a.Close()
	b := collecttest.NewReplica("b", clk)
	defer b.Close()
	a.SetVersion("inflight.dev/snapshot/v2")
	b.SetStatus(http.StatusServiceUnavailable)
	a.Start("ml", "llama", "p", 9)
	c := collect.New(collect.Options{Clock: clk})
	r := c.Tick(context.Background(), eps(a, b))
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
	r := c.Tick(context.Background(), []collect.Endpoint{{Key: "h", URL: hang.URL + "/v1/snapshot"}})
	if !r.Partial || len(r.Errors) != 1 || r.Errors[0].Kind != "timeout" {
		t.Fatalf("partial=%v errors=%v", r.Partial, r.Errors)
	}
	if obs.m["timeout"] != 1 {
		t.Errorf("observer saw %v, want one timeout", obs.m)
	}
}

func TestSkipsUnattributedTargets(t *testing.T) {
	snap := extproc.Snapshot{Version: extproc.SnapshotVersion, Replica: "s", BootID: "b", Time: time.Now(),
		Targets: []extproc.TargetRecord{
			{Namespace: "ml", Workload: "llama", Pod: "p", InFlight: 2},
			{Reason: "overflow", InFlight: 100},
			{Namespace: "ml", Workload: "llama", Reason: "unknown:no-pod", InFlight: 50},
		}}
	st, err := collecttest.NewStatic(snap)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := collect.New(collect.Options{}).Tick(context.Background(), []collect.Endpoint{{Key: "s", URL: st.URL()}})
	if len(r.Workloads) != 1 {
		t.Fatalf("workloads = %v, want only ml/llama", r.Workloads)
	}
	near(t, "in-flight", r.Workloads[w].InFlight, 2)
}

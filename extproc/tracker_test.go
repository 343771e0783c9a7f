package extproc

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/mesh"
)

// fakeClock is a manual clock for tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var vllm = mesh.Target{Namespace: "models", Workload: "vllm", Service: "vllm", Pod: "vllm-0"}

func recordOf(t *testing.T, tr *Tracker, k mesh.Target, reason mesh.Reason) Record {
	t.Helper()
	for _, r := range tr.Records() {
		if r.Namespace == k.Namespace && r.Workload == k.Workload && r.Service == k.Service && r.Pod == k.Pod && r.Reason == string(reason) {
			return r
		}
	}
	t.Fatalf("no record for %+v %q", k, reason)
	return Record{}
}

func TestTrackerBusySecondsIsTheIntegral(t *testing.T) {
	c := newFakeClock()
	tr := NewTracker(TrackerOptions{Now: c.Now})
	// in-flight: 0 for 1s, 1 for 2s, 2 for 3s, 1 for 4s, 0 after.
	c.Advance(time.Second)
	a := tr.Start(vllm, mesh.ReasonNone)
	c.Advance(2 * time.Second)
	b := tr.Start(vllm, mesh.ReasonNone)
	c.Advance(3 * time.Second)
	if d := tr.End(&a); d != 5*time.Second {
		t.Fatalf("duration of a = %v, want 5s", d)
	}
	c.Advance(4 * time.Second)
	r := recordOf(t, tr, vllm, mesh.ReasonNone)
	if r.InFlight != 1 || r.Started != 2 || r.Completed != 1 {
		t.Fatalf("mid-way record %+v", r.TargetRecord)
	}
	if want := 2.0 + 6 + 4; r.BusySeconds != want {
		t.Fatalf("busy = %v, want %v (integral read while b is still running)", r.BusySeconds, want)
	}
	tr.End(&b)
	tr.End(&b) // idempotent
	tr.End(&a)
	c.Advance(time.Hour)
	r = recordOf(t, tr, vllm, mesh.ReasonNone)
	if r.InFlight != 0 || r.Started != 2 || r.Completed != 2 {
		t.Fatalf("final record %+v", r.TargetRecord)
	}
	if r.BusySeconds != 12 || r.DurationSecondsSum != 12 {
		t.Fatalf("busy %v, duration sum %v; want 12 and 12", r.BusySeconds, r.DurationSecondsSum)
	}
	// 5s falls in the le=5 bucket, 7s in le=10.
	idx := map[float64]int{}
	for i, b := range tr.Buckets() {
		idx[b] = i
	}
	if r.BucketCounts[idx[5]] != 1 || r.BucketCounts[idx[10]] != 1 {
		t.Fatalf("bucket counts %v", r.BucketCounts)
	}
}

func TestTrackerZeroRequestEndIsNoop(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	var r Request
	if r.Started() || tr.End(&r) != 0 || len(tr.Records()) != 0 {
		t.Fatal("ending a request that never started must change nothing")
	}
}

func TestTrackerUnknownAndOverflow(t *testing.T) {
	tr := NewTracker(TrackerOptions{MaxTargets: 2})
	var reqs []Request
	for i, pod := range []string{"a", "b", "c", "d"} {
		tg := mesh.Target{Namespace: "ns", Workload: "w", Pod: pod}
		reqs = append(reqs, tr.Start(tg, mesh.ReasonNone))
		_ = i
	}
	// The reason wins over any target fields.
	reqs = append(reqs, tr.Start(vllm, mesh.ReasonNoNamespace))
	recs := tr.Records()
	if len(recs) != 4 {
		t.Fatalf("want a, b, overflow and unknown: got %d records %+v", len(recs), recs)
	}
	if r := recordOf(t, tr, mesh.Target{}, mesh.ReasonOverflow); r.InFlight != 2 {
		t.Fatalf("overflow in-flight %d, want 2", r.InFlight)
	}
	if r := recordOf(t, tr, mesh.Target{}, mesh.ReasonNoNamespace); r.InFlight != 1 {
		t.Fatalf("unknown in-flight %d, want 1", r.InFlight)
	}
	for i := range reqs {
		tr.End(&reqs[i])
	}
	for _, r := range tr.Records() {
		if r.InFlight != 0 || r.Started != r.Completed {
			t.Fatalf("leak in %+v", r.TargetRecord)
		}
	}
}

// TestTrackerConcurrentExact runs random starts and ends from many
// goroutines with the real clock: afterwards nothing is in flight, every
// start is completed, and busy-seconds equals the sum of durations to the
// nanosecond, per target.
func TestTrackerConcurrentExact(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	tr := NewTracker(TrackerOptions{})
	targets := []mesh.Target{vllm, {Namespace: "models", Workload: "llama"}, {Namespace: "b", Workload: "c"}}
	const workers, perWorker = 8, 5000
	var wg sync.WaitGroup
	sums := make([]map[mesh.Target]time.Duration, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			sums[w] = map[mesh.Target]time.Duration{}
			open := map[int]Request{}
			which := map[int]mesh.Target{}
			for i := range perWorker {
				tg := targets[rng.IntN(len(targets))]
				open[i] = tr.Start(tg, mesh.ReasonNone)
				which[i] = tg
				for k, r := range open {
					if rng.IntN(3) == 0 {
						sums[w][which[k]] += tr.End(&r)
						delete(open, k)
					}
				}
			}
			for k, r := range open {
				sums[w][which[k]] += tr.End(&r)
			}
		}()
	}
	wg.Wait()
	for _, tg := range targets {
		var want time.Duration
		for _, s := range sums {
			want += s[tg]
		}
		r := recordOf(t, tr, tg, mesh.ReasonNone)
		if r.InFlight != 0 || r.Started != r.Completed {
			t.Fatalf("seed %d: leak %+v", seed, r.TargetRecord)
		}
		if got := time.Duration(r.BusySeconds*1e9 + 0.5); absDur(got-want) > time.Microsecond {
			t.Fatalf("seed %d: busy %v != sum of durations %v", seed, got, want)
		}
	}
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func TestSecondsDoesNotOverflow(t *testing.T) {
	var s seconds
	// 10,000 requests in flight for 400 days: beyond int64 nanoseconds.
	for range 400 {
		s.add(int64(24*time.Hour), 10000)
	}
	if got, want := s.float(), 400*86400*10000.0; got != want {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func BenchmarkTrackerStartEnd(b *testing.B) {
	tr := NewTracker(TrackerOptions{})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := tr.Start(vllm, mesh.ReasonNone)
			tr.End(&r)
		}
	})
}

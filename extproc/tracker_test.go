package extproc

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
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

func recordOf(t testing.TB, tr *Tracker, k mesh.Target, reason mesh.Reason) Record {
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

func TestTrackerEvictsIdleTargets(t *testing.T) {
	c := newFakeClock()
	tr := NewTracker(TrackerOptions{Now: c.Now, IdleTTL: time.Minute})
	old := mesh.Target{Namespace: "models", Workload: "vllm", Pod: "vllm-old"}
	busy := mesh.Target{Namespace: "models", Workload: "vllm", Pod: "vllm-busy"}
	r := tr.Start(old, mesh.ReasonNone)
	tr.End(&r)
	long := tr.Start(busy, mesh.ReasonNone) // in flight for the whole test
	c.Advance(59 * time.Second)
	if n := tr.Sweep(); n != 0 {
		t.Fatalf("evicted %d before the TTL", n)
	}
	c.Advance(time.Second)
	if n := tr.Sweep(); n != 1 {
		t.Fatalf("evicted %d at the TTL, want the idle one", n)
	}
	if recs, bounded := tr.size(); recs != 1 || bounded != 1 {
		t.Fatalf("after eviction: %d records, %d bounded; want the busy one only", recs, bounded)
	}
	c.Advance(time.Hour)
	if n := tr.Sweep(); n != 0 {
		t.Fatal("a target with a request in flight must never be evicted")
	}
	// A new request for the evicted key starts a new record: counters from
	// 0 and a later created_uptime_seconds.
	r = tr.Start(old, mesh.ReasonNone)
	tr.End(&r)
	rec := recordOf(t, tr, old, mesh.ReasonNone)
	if rec.Started != 1 || rec.CreatedUptimeSeconds != (time.Hour+time.Minute).Seconds() {
		t.Fatalf("re-created record %+v", rec.TargetRecord)
	}
	tr.End(&long)
	if recordOf(t, tr, busy, mesh.ReasonNone).Completed != 1 {
		t.Fatal("the long request must end on its record")
	}
}

func TestTrackerBoundsPerNamespaceAndGlobal(t *testing.T) {
	tr := NewTracker(TrackerOptions{MaxTargets: 10, MaxTargetsPerNamespace: 4})
	pod := func(ns string, i int) mesh.Target {
		return mesh.Target{Namespace: ns, Workload: "w", Pod: fmt.Sprintf("w-%d", i)}
	}
	var reqs []Request
	// One tenant floods: it fills its own quota and then its own
	// namespace_overflow record, never the others' room.
	for i := range 100 {
		reqs = append(reqs, tr.Start(pod("noisy", i), mesh.ReasonNone))
	}
	if r := recordOf(t, tr, mesh.Target{Namespace: "noisy"}, mesh.ReasonNamespaceOverflow); r.InFlight != 96 {
		t.Fatalf("noisy's overflow holds %d, want 96", r.InFlight)
	}
	for i := range 4 {
		reqs = append(reqs, tr.Start(pod("quiet", i), mesh.ReasonNone))
		if r := recordOf(t, tr, pod("quiet", i), mesh.ReasonNone); r.InFlight != 1 {
			t.Fatalf("quiet's target %d was pushed out by another tenant: %+v", i, r.TargetRecord)
		}
	}
	// The global bound still holds when many tenants fill it: records of
	// noisy (4 + its overflow record) + quiet (4) = 9; one more fits, then
	// overflow.
	reqs = append(reqs, tr.Start(pod("third", 0), mesh.ReasonNone))
	reqs = append(reqs, tr.Start(pod("third", 1), mesh.ReasonNone))
	reqs = append(reqs, tr.Start(pod("fourth", 0), mesh.ReasonNone))
	if r := recordOf(t, tr, mesh.Target{}, mesh.ReasonOverflow); r.InFlight != 2 {
		t.Fatalf("global overflow holds %d, want 2", r.InFlight)
	}
	if _, bounded := tr.size(); bounded != 10 {
		t.Fatalf("%d bounded records, want exactly MaxTargets", bounded)
	}
	for i := range reqs {
		tr.End(&reqs[i])
	}
	checkDrained(t, tr)
}

// TestTrackerWeekOfRollouts: a week of simulated pod churn (time is a
// parameter) never reaches overflow when idle targets are evicted: every
// rollout replaces all pods of every workload, and requests only go to live
// pods.
func TestTrackerWeekOfRollouts(t *testing.T) {
	c := newFakeClock()
	const (
		workloads  = 20
		replicas   = 10
		maxTargets = 1000
		step       = 30 * time.Second
	)
	tr := NewTracker(TrackerOptions{Now: c.Now, MaxTargets: maxTargets, MaxTargetsPerNamespace: maxTargets, IdleTTL: 5 * time.Minute})
	rng := rand.New(rand.NewPCG(1, 2))
	gen := make([]int, workloads) // rollout generation per workload
	var open []Request
	var created, peak int
	seen := map[mesh.Target]bool{}
	for now := time.Duration(0); now < 7*24*time.Hour; now += step {
		// Each workload rolls out every 2 hours on average (84 per week).
		for w := range gen {
			if rng.IntN(int(2*time.Hour/step)) == 0 {
				gen[w]++
			}
		}
		// Requests to live pods; about a third of the open ones end.
		for range 30 {
			w := rng.IntN(workloads)
			tg := mesh.Target{Namespace: "ns", Workload: fmt.Sprintf("w%d", w), Pod: fmt.Sprintf("w%d-g%d-%d", w, gen[w], rng.IntN(replicas))}
			if !seen[tg] {
				seen[tg] = true
				created++
			}
			open = append(open, tr.Start(tg, mesh.ReasonNone))
		}
		for i := 0; i < len(open); {
			if rng.IntN(3) == 0 {
				tr.End(&open[i])
				open[i] = open[len(open)-1]
				open = open[:len(open)-1]
				continue
			}
			i++
		}
		c.Advance(step)
		if now%time.Minute == 0 {
			tr.Sweep()
		}
		recs, _ := tr.size()
		peak = max(peak, recs)
	}
	for i := range open {
		tr.End(&open[i])
	}
	for _, r := range tr.Records() {
		if r.Reason != "" {
			t.Fatalf("a week of rollouts reached %q: %+v", r.Reason, r.TargetRecord)
		}
	}
	if created <= maxTargets {
		t.Fatalf("the simulation created only %d pod targets: it must exceed --max-targets (%d) to prove eviction", created, maxTargets)
	}
	t.Logf("%d pod targets over the week, at most %d records at once (bound %d)", created, peak, maxTargets)
}

// TestTrackerEvictionRaces runs starts, ends and sweeps concurrently on a
// tiny TTL: no request is lost or counted on an evicted record, and every
// counter returns to zero.
func TestTrackerEvictionRaces(t *testing.T) {
	c := newFakeClock()
	tr := NewTracker(TrackerOptions{Now: c.Now, IdleTTL: time.Nanosecond, MaxTargets: 50, MaxTargetsPerNamespace: 50})
	var started, ended atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var swept atomic.Int64
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				c.Advance(time.Millisecond)
				swept.Add(int64(tr.Sweep()))
			}
		}
	})
	var workers sync.WaitGroup
	for w := range 8 {
		workers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range 20000 {
				tg := mesh.Target{Namespace: "ns", Workload: "w", Pod: fmt.Sprintf("p%d", rng.IntN(20))}
				r := tr.Start(tg, mesh.ReasonNone)
				started.Add(1)
				tr.End(&r)
				ended.Add(1)
			}
		})
	}
	workers.Wait()
	close(stop)
	wg.Wait()
	if swept.Load() == 0 {
		t.Fatal("no eviction happened: the test did not race anything")
	}
	for _, r := range tr.Records() {
		if r.InFlight != 0 || r.Started != r.Completed {
			t.Fatalf("leak after evictions: %+v", r.TargetRecord)
		}
	}
	if started.Load() != ended.Load() {
		t.Fatal("unbalanced")
	}
}

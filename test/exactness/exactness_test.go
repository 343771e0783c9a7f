package exactness

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/envoy/envoytest"
	"github.com/inflight-dev/inflight/test/testutil"
)

var (
	seedFlag = flag.Uint64("exactness.seed", 0, "seed (0: from $INFLIGHT_EXACTNESS_SEED, else the clock)")
	nFlag    = flag.Int("exactness.n", 0, "requests (0: 100,000 with INFLIGHT_LONG=1, else 10,000)")
	concFlag = flag.Int("exactness.concurrency", 32, "concurrent HTTP requests")
)

// group is one client configuration; its requests go to their own
// namespace, so that each group's busy-seconds can be compared with the
// harness's bounds for exactly those requests.
type group struct {
	cfg    envoy.Config
	client *envoy.Client
	ns     string
}

func seed() uint64 {
	if *seedFlag != 0 {
		return *seedFlag
	}
	if s, err := strconv.ParseUint(os.Getenv("INFLIGHT_EXACTNESS_SEED"), 10, 64); err == nil && s != 0 {
		return s
	}
	return uint64(time.Now().UnixNano())
}

// randomRequest draws one request: target, body, response plan, failure.
func randomRequest(r *rand.Rand, ns string) *envoy.Request {
	pod := fmt.Sprintf("model-%d", r.IntN(3))
	req := &envoy.Request{}
	switch x := r.IntN(20); {
	case x == 0: // no attributes at all: the unknown target
	case x <= 2: // through a gateway
		req.Attributes = envoy.GatewayAttributes(ns, "model-svc", 8000)
	default:
		req.Attributes = envoy.InboundAttributes(ns, "model", "model-svc", pod, "10.0.0.7", 8000)
	}
	req.ResponseAttributes = envoy.ResponseAttributesFor("10.0.0.7", 8000, 200)
	if r.IntN(4) == 0 {
		req.Body = [][]byte{[]byte(`{"prompt":"hi"}`)}
	}
	chunks := r.IntN(7)
	req.Response.Body = make([][]byte, chunks)
	for i := range req.Response.Body {
		req.Response.Body[i] = []byte("data: {\"token\":\"x\"}\n\n")
	}
	if r.IntN(10) == 0 {
		req.Response.Trailers = []envoy.Header{{Name: "grpc-status", Value: "0"}}
	}
	if r.IntN(5) == 0 {
		req.Response.HeadersDelay = time.Duration(r.IntN(1000)) * time.Microsecond
	}
	if r.IntN(10) == 0 {
		req.Response.ChunkDelay = time.Duration(r.IntN(300)) * time.Microsecond
	}
	if r.IntN(2) == 0 {
		ph := envoy.Phase(1 + r.IntN(5))
		req.Failure = envoy.Failure{Phase: ph, AfterChunks: r.IntN(chunks + 1)}
		if r.IntN(3) == 0 {
			req.Failure.Delay = time.Duration(r.IntN(500)) * time.Microsecond
		}
	}
	return req
}

// bounds are the harness's bounds on the server-side durations of the
// requests of one group, in seconds.
type bounds struct {
	requests, opened, uncertain int
	lower                       float64 // Σ max(0, EndWrite − FirstReply): rigorous lower bound
	upper                       float64 // Σ (EndAck − FirstWrite) where known
	upperKnown                  bool    // every opened request had an EndAck and a FirstWrite
	wire                        float64 // Σ (EndWrite − FirstWrite): the harness's estimate
}

func TestExactness(t *testing.T) {
	sd := seed()
	t.Logf("seed %d (rerun with -exactness.seed=%d)", sd, sd)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FAILED with seed %d: go test ./test/exactness -run TestExactness -exactness.seed=%d", sd, sd)
		}
	})
	n := *nFlag
	if n == 0 {
		n = 10_000 // the inner loop; full size in the long tier
		if testutil.Long() && !testing.Short() {
			n = 100_000
		}
	}
	reps := envoytest.Start(t, 3)
	addrs := envoytest.Addrs(reps)

	var groups []*group
	for _, v := range []envoy.Version{envoy.Envoy136, envoy.Envoy137} {
		for _, p := range []envoy.Profile{envoy.Observe, envoy.Control} {
			for _, cs := range []envoy.CloseStyle{envoy.CloseReset, envoy.CloseGraceful, envoy.CloseResetOnly} {
				cfg := envoy.Config{Version: v, Profile: p, CloseStyle: cs, Balancing: envoy.Random,
					Seed: int64(sd) + int64(len(groups)), DeferredCloseTimeout: 25 * time.Millisecond, UncertainWindow: 20 * time.Millisecond,
					ConnsPerReplica: 2}
				c, err := envoy.NewClient(cfg, addrs...)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = c.Close() })
				groups = append(groups, &group{cfg: cfg, client: c, ns: fmt.Sprintf("g%02d", len(groups))})
				t.Logf("group g%02d: %v %v close=%v", len(groups)-1, v, p, cs)
			}
		}
	}

	results := make([]*envoy.Result, n)
	groupOf := make([]int, n)
	jobs := make(chan int)
	rng := rand.New(rand.NewPCG(sd, 1))
	reqs := make([]*envoy.Request, n)
	for i := range reqs {
		groupOf[i] = rng.IntN(len(groups))
		reqs[i] = randomRequest(rng, groups[groupOf[i]].ns)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range *concFlag {
		wg.Go(func() {
			for i := range jobs {
				results[i] = groups[groupOf[i]].client.Do(context.Background(), reqs[i])
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	for _, g := range groups {
		g.client.Wait()
	}
	t.Logf("%d requests in %v", n, time.Since(start).Round(time.Millisecond))
	outcomes := map[string]int{}
	for _, r := range results {
		k := r.Outcome.String()
		if r.FailOpen {
			k += "+fail-open"
		}
		if r.ProcessorErr != nil {
			k += "+err:" + r.ProcessorErr.Error()
		}
		outcomes[k]++
	}
	t.Logf("outcomes: %v", outcomes)

	// 1. Every target on every replica drains: in_flight = 0, started = completed.
	envoytest.Drained(t, reps, 30*time.Second)

	// 2. Starts: every opened stream was counted once, on its replica, except
	// possibly an uncertain start (reset within a few ms of its first
	// message, no reply: ENVOY.md §2).
	opened := make([]uint64, len(reps))
	uncertain := make([]uint64, len(reps))
	// Bounds per counting bucket: the group's namespace, or "" for the
	// requests without attributes (the unknown target, shared by groups).
	b := make(map[string]*bounds)
	for i, r := range results {
		key := groups[groupOf[i]].ns
		if reqs[i].Attributes == nil {
			key = ""
		}
		gb := b[key]
		if gb == nil {
			gb = &bounds{upperKnown: true}
			b[key] = gb
		}
		gb.requests++
		if r.Stream.WireErr != nil {
			t.Fatalf("request %d: %v", i, r.Stream.WireErr)
		}
		if !r.Stream.Opened || r.Stream.FirstWrite.IsZero() {
			continue
		}
		s := &r.Stream
		opened[s.Replica]++
		gb.opened++
		if s.Uncertain {
			uncertain[s.Replica]++
			gb.uncertain++
		}
		gb.wire += s.EndWrite.Sub(s.FirstWrite).Seconds()
		if !s.FirstReply.IsZero() {
			gb.lower += math.Max(0, s.EndWrite.Sub(s.FirstReply).Seconds())
		}
		if !s.EndAck.IsZero() {
			gb.upper += s.EndAck.Sub(s.FirstWrite).Seconds()
		} else {
			gb.upperKnown = false
		}
	}
	var totalOpened, totalUncertain, totalStarted uint64
	for i := range reps {
		st := envoytest.Sum(reps[i : i+1]).Started
		totalStarted += st
		totalOpened += opened[i]
		totalUncertain += uncertain[i]
		if st > opened[i] || st+uncertain[i] < opened[i] {
			t.Errorf("replica %d: started %d, harness opened %d streams there (%d uncertain)", i, st, opened[i], uncertain[i])
		}
	}
	missed := totalOpened - totalStarted
	t.Logf("opened %d streams, server started %d: %d missed, %d uncertain (%.2f%%)",
		totalOpened, totalStarted, missed, totalUncertain, 100*float64(totalUncertain)/float64(totalOpened))
	if totalUncertain*20 > totalOpened {
		t.Errorf("%d of %d starts are uncertain: the check would be vacuous", totalUncertain, totalOpened)
	}

	// 3. Busy time. (a) Per target, busy_seconds equals the sum of the
	// durations to the nanosecond clock's granularity (float rounding of
	// sec+ns/1e9 included). (b) Per group, the sum over replicas lies within
	// the harness's rigorous bounds: a server start lies between the first
	// message's write and its first reply; a server end lies after the
	// write of the first possible end signal and before the end's ack.
	busy := make(map[string]float64)
	for _, rep := range reps {
		for _, rec := range rep.Tracker.Records() {
			tol := 1e-9*float64(rec.Completed) + 1e-12*rec.BusySeconds
			if d := math.Abs(rec.BusySeconds - rec.DurationSecondsSum); d > tol {
				t.Errorf("target %+v: busy %.9f vs duration sum %.9f (|Δ| %.3g > %.3g)", rec, rec.BusySeconds, rec.DurationSecondsSum, d, tol)
			}
			busy[rec.Namespace] += rec.BusySeconds
		}
	}
	var proved int
	for key, gb := range b {
		got := busy[key]
		if gb.uncertain > 0 {
			// An uncounted uncertain start removes at most its own
			// duration, which is below the uncertain window.
			gb.lower -= float64(gb.uncertain) * groups[0].client.Config().UncertainWindow.Seconds()
		}
		if got < gb.lower-1e-6 {
			t.Errorf("bucket %q: busy %.6f s below the rigorous lower bound %.6f s", key, got, gb.lower)
		}
		if gb.upperKnown && gb.uncertain == 0 {
			proved++
			if got > gb.upper+1e-6 {
				t.Errorf("bucket %q: busy %.6f s above the rigorous upper bound %.6f s", key, got, gb.upper)
			}
		}
		skew := 0.0
		if gb.opened > 0 {
			skew = (got - gb.wire) / float64(gb.opened)
		}
		t.Logf("bucket %-32q requests %6d opened %6d uncertain %4d  busy %9.4f s  wire %9.4f s  (mean skew %+7.1f µs/request)  lower %9.4f  upper %s",
			key, gb.requests, gb.opened, gb.uncertain, got, gb.wire, skew*1e6, gb.lower, upper(gb))
	}
	if proved == 0 {
		t.Error("no bucket had a rigorous upper bound: the busy check proves nothing from above")
	}
}

func upper(b *bounds) string {
	if !b.upperKnown {
		return "n/a (reset-closed streams have no end ack)"
	}
	return fmt.Sprintf("%9.4f", b.upper)
}

package exactness

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/envoy/envoytest"
	"github.com/inflight-dev/inflight/test/testutil"
)

var (
	seedFlag = flag.Uint64("exactness.seed", 0, "seed (0: from $INFLIGHT_EXACTNESS_SEED, else the clock)")
	nFlag    = flag.Int("exactness.n", 0, "requests (0: 100,000 with INFLIGHT_LONG=1, else 10,000)")
	concFlag = flag.Int("exactness.concurrency", 32, "concurrent HTTP requests")
)

// group is one client configuration: a proxy generation, a profile (the
// install's rendered filter for both, nothing else), a close style and a
// local-reply behaviour. Its requests go to their own namespace, so that
// each group's busy-seconds can be compared with the harness's bounds for
// exactly those requests.
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

// configs are the groups' configurations: every generation × profile on the
// shipped filter, with Envoy's three close orders, plus each generation's
// other local-reply behaviour.
func configs(sd uint64) []envoy.Config {
	var out []envoy.Config
	for _, v := range []envoy.Version{envoy.Envoy136, envoy.Envoy137} {
		other := envoy.LocalRepliesSent
		if v == envoy.Envoy137 {
			other = envoy.LocalRepliesSkipped
		}
		for _, p := range []envoy.Profile{envoy.Observe, envoy.Control} {
			for _, x := range []struct {
				cs envoy.CloseStyle
				lr envoy.LocalReplies
			}{{envoy.CloseReset, 0}, {envoy.CloseGraceful, 0}, {envoy.CloseResetOnly, 0}, {envoy.CloseReset, other}} {
				out = append(out, envoy.Config{Version: v, Profile: p, CloseStyle: x.cs, LocalReplies: x.lr,
					Balancing: envoy.Random, Seed: int64(sd) + int64(len(out)), UncertainWindow: 20 * time.Millisecond,
					ConnsPerReplica: 2,
					// Envoy's runtime remote_close_timeout_milliseconds, raised
					// from 1 s so that a loaded machine's slow server still
					// ends graceful streams itself (their ack is the upper
					// bound's evidence).
					GracefulCloseTimeout: 10 * time.Second})
			}
		}
	}
	return out
}

// randomRequest draws one request: target, body, response shape (bodiless,
// SSE of up to 200 chunks, a small body complete before the header reply,
// gRPC-style trailers), timing and failure at any phase.
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
	if r.IntN(20) == 0 {
		chunks = 50 + r.IntN(151) // a long SSE answer
	}
	req.Response.Body = make([][]byte, chunks)
	for i := range req.Response.Body {
		req.Response.Body[i] = []byte("data: {\"token\":\"x\"}\n\n")
	}
	switch x := r.IntN(10); {
	case x == 0: // gRPC over HTTP/2: ends at its trailers
		req.Response.Trailers = []envoy.Header{{Name: "grpc-status", Value: "0"}}
	case x <= 3 && chunks > 0 && chunks < 50:
		req.Response.BodyBeforeHeaderReply = true
	}
	if r.IntN(5) == 0 {
		req.Response.HeadersDelay = time.Duration(r.IntN(1000)) * time.Microsecond
	}
	switch x := r.IntN(40); {
	case x == 0 && chunks < 50: // a slow token stream: its body lasts 10–60 ms
		req.Response.Body = req.Response.Body[:0]
		for range 20 {
			req.Response.Body = append(req.Response.Body, []byte("data: {\"token\":\"y\"}\n\n"))
		}
		req.Response.ChunkDelay = time.Duration(500+r.IntN(2500)) * time.Microsecond
		req.Response.BodyBeforeHeaderReply = false
		chunks = 20
	case x <= 4 && chunks < 50:
		req.Response.ChunkDelay = time.Duration(r.IntN(300)) * time.Microsecond
	}
	if r.IntN(2) == 0 {
		phases := envoy.Phases()[1:]
		req.Failure = envoy.Failure{Phase: phases[r.IntN(len(phases))], AfterChunks: r.IntN(chunks + 1)}
		switch {
		case req.Failure.Phase == envoy.AbortAwaitingReply:
			// About half leave before the reply, half after.
			req.Failure.Delay = time.Duration(r.IntN(2000)) * time.Microsecond
		case r.IntN(3) == 0:
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

// spec is one exactness run.
type spec struct {
	n, concurrency int
	seed           uint64
	// bug, if set, sits between gRPC and the real server: the mutation
	// tests put a deliberate counting bug there.
	bug   grpc.StreamServerInterceptor
	drain time.Duration
}

// outcome is what a run found: its violations (empty when exact) and what
// it covered.
type outcome struct {
	violations []string
	log        []string
	requests   int
	elapsed    time.Duration
}

func (o *outcome) errorf(format string, args ...any) {
	o.violations = append(o.violations, fmt.Sprintf(format, args...))
}

func (o *outcome) logf(format string, args ...any) {
	o.log = append(o.log, fmt.Sprintf(format, args...))
}

// run drives s.n seeded requests through three real extproc replicas and
// checks every invariant: every target drains (in_flight 0, started =
// completed); each replica started every stream it was sent, except
// uncertain starts; per target busy-seconds = the sum of durations; per
// group busy-seconds within the harness's rigorous bounds.
func run(t *testing.T, s spec) outcome {
	var o outcome
	var opts []grpc.ServerOption
	if s.bug != nil {
		opts = append(opts, grpc.ChainStreamInterceptor(s.bug))
	}
	reps := envoytest.StartGated(t, 3, extproc.GatesOptions{ReleaseDelay: -1, MaxHeld: 50}, opts...)
	addrs := envoytest.Addrs(reps)
	var groups []*group
	for i, cfg := range configs(s.seed) {
		c, err := envoy.NewClient(cfg, addrs...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		groups = append(groups, &group{cfg: cfg, client: c, ns: fmt.Sprintf("g%02d", i)})
		o.logf("group g%02d: %v %v close=%v %v (deferred close %v, message timeout %v)", i, cfg.Version, cfg.Profile,
			cfg.CloseStyle, cfg.LocalReplies, c.DeferredCloseTimeout(), c.MessageTimeout())
	}

	results := make([]*envoy.Result, s.n)
	groupOf := make([]int, s.n)
	rng := rand.New(rand.NewPCG(s.seed, 1))
	reqs := make([]*envoy.Request, s.n)
	for i := range reqs {
		groupOf[i] = rng.IntN(len(groups))
		reqs[i] = randomRequest(rng, groups[groupOf[i]].ns)
	}
	start := time.Now()
	stopGates := driveGates(t, reps, configs(s.seed), s.seed)
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range s.concurrency {
		wg.Go(func() {
			for i := range jobs {
				results[i] = groups[groupOf[i]].client.Do(context.Background(), reqs[i])
			}
		})
	}
	for i := range s.n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	stopGates()
	for _, g := range groups {
		g.client.Wait()
	}
	o.requests, o.elapsed = s.n, time.Since(start)
	outcomes := map[string]int{}
	msgs := map[int]int{}
	for _, r := range results {
		k := r.Outcome.String()
		if r.FailOpen {
			k += "+fail-open"
		}
		if r.ProcessorErr != nil {
			k += "+err:" + r.ProcessorErr.Error()
		}
		if r.ImmediateResponse {
			k += "+immediate:" + strconv.Itoa(r.Status)
		}
		if r.TimeoutOverrides > 0 {
			k += "+held"
		}
		outcomes[k]++
		msgs[len(r.Sent)]++
	}
	o.logf("%d requests in %v; outcomes %v; messages per request %v", s.n, o.elapsed.Round(time.Millisecond), outcomes, msgs)
	// What the harness saw of holding and shedding, to compare with the
	// servers' counters below. A held request gets exactly one override
	// (Envoy ignores a second one, and the hold then ends at the original
	// 200 ms timer).
	var sawHeld, saw429, saw503 uint64
	for i, r := range results {
		if r.TimeoutOverrides > 0 {
			sawHeld++
		}
		if r.IgnoredOverrides > 0 {
			o.errorf("request %d: Envoy ignored %d override_message_timeout replies: a held request must get exactly one", i, r.IgnoredOverrides)
		}
		if r.ImmediateResponse {
			switch r.Status {
			case 429:
				saw429++
			case 503:
				saw503++
			default:
				o.errorf("request %d: immediate_response %d, want 429 (shed) or 503 (hold timeout)", i, r.Status)
			}
			if r.LocalHeader("retry-after") == "" {
				o.errorf("request %d: immediate_response %d without Retry-After", i, r.Status)
			}
		}
	}
	for n := range msgs {
		if n > 3 {
			o.errorf("a request sent %d messages: the shipped modes send at most 3", n)
		}
	}

	// 1. Every target on every replica drains: in_flight = 0, started = completed.
	if bad := drained(reps, s.drain); bad != "" {
		o.errorf("not drained after %v: %s", s.drain, bad)
	}

	// 2. Starts: every opened stream was counted once, on its replica, except
	// possibly an uncertain start (reset within a few ms of its first
	// message, no reply at all: ENVOY.md §2). Checked per replica and
	// counting bucket: the group's namespace, or "" for the requests without
	// attributes (the unknown target, shared by groups).
	type cell struct {
		replica int
		bucket  string
	}
	opened := map[cell]uint64{}
	uncertain := map[cell]uint64{}
	undelivered := map[cell]uint64{} // certain starts grpc-go never handed to the server
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
			o.errorf("request %d: %v", i, r.Stream.WireErr)
		}
		if !r.Stream.Opened || r.Stream.FirstWrite.IsZero() {
			continue
		}
		st := &r.Stream
		c := cell{st.Replica, key}
		opened[c]++
		if r.ImmediateResponse && r.Status == 429 {
			continue // shed: counted as shed only, with no time in flight
		}
		gb.opened++
		switch {
		case st.Uncertain:
			uncertain[c]++
			gb.uncertain++
		case reps[st.Replica].Undelivered(st.Tag):
			undelivered[c]++
			gb.uncertain++ // its start may be missing: no bound from it
		}
		if st.EndedByServer {
			o.errorf("request %d (%s): the server ended the RPC before any end signal was written: it ended the request early (%v status %d held %v sent %v replies %v err %v)",
				i, key, r.Outcome, r.Status, r.TimeoutOverrides > 0, r.Sent, r.Replies, r.ProcessorErr)
		}
		if st.EndWrite.IsZero() {
			gb.upperKnown = false // nothing known of this end
			continue
		}
		gb.wire += st.EndWrite.Sub(st.FirstWrite).Seconds()
		if !st.FirstReply.IsZero() {
			gb.lower += math.Max(0, st.EndWrite.Sub(st.FirstReply).Seconds())
		}
		if !st.EndAck.IsZero() {
			gb.upper += st.EndAck.Sub(st.FirstWrite).Seconds()
		} else {
			gb.upperKnown = false
		}
	}
	// A shed stream started no request; it is counted as shed instead.
	started := map[cell]uint64{}
	var held, released, timeouts, abandoned, shed uint64
	for i, rep := range reps {
		for _, rec := range rep.Tracker.Records() {
			started[cell{i, rec.Namespace}] += rec.Started + rec.Shed
			held, released, timeouts, abandoned, shed = held+rec.HeldTotal, released+rec.Released, timeouts+rec.HoldTimeouts,
				abandoned+rec.HoldAbandoned, shed+rec.Shed
		}
	}
	o.logf("held %d (released %d, hold timeouts %d, client gone %d), shed %d; the harness saw %d held, %d shed (429), %d hold timeouts (503)",
		held, released, timeouts, abandoned, shed, sawHeld, saw429, saw503)
	// Every answer the harness saw was counted by a server (a server may
	// have counted more: replies that reached Envoy after its client left).
	if sawHeld > held || saw429 > shed || saw503 > timeouts {
		o.errorf("the harness saw %d held, %d shed, %d hold timeouts; the servers counted %d, %d, %d", sawHeld, saw429, saw503, held, shed, timeouts)
	}
	if held == 0 || shed == 0 {
		o.errorf("held %d, shed %d: the gates must hold and shed some requests, or the check says nothing of them", held, shed)
	}
	var totalOpened, totalUncertain, totalStarted, totalUndelivered uint64
	for c, st := range started {
		if _, ok := opened[c]; !ok && st > 0 {
			o.errorf("replica %d bucket %q: started %d, harness opened no stream there", c.replica, c.bucket, st)
		}
	}
	for c, op := range opened {
		st, un, ud := started[c], uncertain[c], undelivered[c]
		totalStarted += st
		totalOpened += op
		totalUncertain += un
		totalUndelivered += ud
		if st > op || st+un+ud < op {
			o.errorf("replica %d bucket %q: started %d, harness opened %d streams there (%d uncertain, %d never delivered by grpc-go)", c.replica, c.bucket, st, op, un, ud)
		}
	}
	// Every stream a replica was sent either started a request or is in its
	// count of streams without request_headers: no miss is silent.
	for i, rep := range reps {
		var op, st uint64
		for c, n := range opened {
			if c.replica == i {
				op += n
				st += started[c]
			}
		}
		if without := uint64(rep.CounterSum(t, "inflight_extproc_streams_without_request_headers_total")); op-st != without {
			o.errorf("replica %d: %d streams opened to it did not start a request, but it counted %d streams without request_headers", i, op-st, without)
		}
	}
	o.logf("opened %d streams, server started (or shed) %d: %d missed; %d uncertain (%.2f%%), %d more whose messages grpc-go never delivered (a server stall longer than the request)",
		totalOpened, totalStarted, int64(totalOpened)-int64(totalStarted), totalUncertain, 100*float64(totalUncertain)/float64(max(totalOpened, 1)), totalUndelivered)
	if (totalUncertain+totalUndelivered)*20 > totalOpened {
		o.errorf("%d of %d starts are uncertain or undelivered: the check would be vacuous", totalUncertain+totalUndelivered, totalOpened)
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
				o.errorf("target %+v: busy %.9f vs duration sum %.9f (|Δ| %.3g > %.3g)", rec, rec.BusySeconds, rec.DurationSecondsSum, d, tol)
			}
			busy[rec.Namespace] += rec.BusySeconds
		}
	}
	var proved int
	for key, gb := range b {
		got := busy[key]
		// An uncertain start had no reply, so it adds nothing to the lower
		// bound: whether the server counted it or not, the bound holds.
		if got < gb.lower-1e-6 {
			o.errorf("bucket %q: busy %.6f s below the rigorous lower bound %.6f s", key, got, gb.lower)
		}
		if gb.upperKnown && gb.uncertain == 0 {
			proved++
			if got > gb.upper+1e-6 {
				o.errorf("bucket %q: busy %.6f s above the rigorous upper bound %.6f s", key, got, gb.upper)
			}
		}
		skew := 0.0
		if gb.opened > 0 {
			skew = (got - gb.wire) / float64(gb.opened)
		}
		o.logf("bucket %-5q requests %6d opened %6d uncertain %4d  busy %9.4f s  wire %9.4f s  (mean skew %+7.1f µs/request)  lower %9.4f  upper %s",
			key, gb.requests, gb.opened, gb.uncertain, got, gb.wire, skew*1e6, gb.lower, upper(gb))
	}
	if proved == 0 {
		o.errorf("no bucket had a rigorous upper bound: the busy check proves nothing from above")
	}
	return o
}

// driveGates plays the leading controller for the run: every 20 ms a new
// gate table for each group's Service (edge requests) and workload
// (inbound), with a random ready count (0: edge requests of control groups
// are held), hold limits and in-flight limits small enough to shed some
// requests; now and then it sends nothing for 1.2 s, so that the table
// expires (every held request released, nothing shed). The returned func
// stops it; any request still held is then released by the expiry.
//
// The graceful-close groups get no gate: a held request whose client goes
// away, or a shed one, ends in a reset, and a reset stream has no end ack,
// so gating them would leave no bucket with a rigorous upper bound on busy
// time (the check below requires one).
func driveGates(t *testing.T, reps []*envoytest.Replica, cfgs []envoy.Config, sd uint64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		r := rand.New(rand.NewPCG(sd, 2))
		for {
			d := &extproc.GatesDocument{Version: extproc.GatesVersion, Controller: "exactness", ExpiresInSeconds: 1,
				Share: 1.0 / float64(len(reps))}
			for i, cfg := range cfgs {
				if cfg.CloseStyle == envoy.CloseGraceful {
					continue
				}
				d.Gates = append(d.Gates, extproc.Gate{Namespace: fmt.Sprintf("g%02d", i), Service: "model-svc", Workload: "model",
					ReadyEndpoints: r.IntN(2), Hold: true, HoldTimeoutSeconds: 1, ReleasePerEndpoint: 2,
					MaxHeld: float64(3 * r.IntN(3)), MaxInFlight: float64(6 * r.IntN(2))})
			}
			for _, rep := range reps {
				if err := rep.Gates.Apply(d); err != nil {
					t.Error(err)
					return
				}
			}
			pause := 20 * time.Millisecond
			if r.IntN(100) == 0 {
				pause = 1200 * time.Millisecond
			}
			select {
			case <-done:
				return
			case <-time.After(pause):
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// drained polls (bounded by timeout) until every target on every replica has
// in_flight = 0 and started = completed, and returns the violations left
// ("" when drained).
func drained(reps []*envoytest.Replica, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		bad := envoytest.Violations(reps)
		if bad == "" || time.Now().After(deadline) {
			return bad
		}
		<-tick.C
	}
}

func upper(b *bounds) string {
	if !b.upperKnown {
		return "n/a (reset-closed streams have no end ack)"
	}
	return fmt.Sprintf("%9.4f", b.upper)
}

// TestExactness runs 10,000 seeded requests (100,000 in the long tier,
// INFLIGHT_LONG=1, unless -short) on the
// shipped modes of every profile × proxy generation, through three real
// extproc replicas, and requires no violation.
func TestExactness(t *testing.T) {
	sd := seed()
	t.Logf("seed %d (rerun with -exactness.seed=%d)", sd, sd)
	n := *nFlag
	if n == 0 {
		n = 10_000 // the inner loop; full size in the long tier
		if testutil.Long() && !testing.Short() {
			n = 100_000
		}
	}
	o := run(t, spec{n: n, concurrency: *concFlag, seed: sd, drain: 30 * time.Second})
	for _, l := range o.log {
		t.Log(l)
	}
	for _, v := range o.violations {
		t.Error(v)
	}
	if t.Failed() {
		t.Logf("FAILED with seed %d: go test ./test/exactness -run TestExactness -exactness.seed=%d", sd, sd)
	}
}

// TestExactnessCatchesBugs is the mutation check: the same run, with a
// deliberate counting bug put between gRPC and the real extproc, must
// report violations. Each bug is one the checks above exist for.
func TestExactnessCatchesBugs(t *testing.T) {
	sd := seed()
	for _, m := range []struct {
		name  string
		bug   func(n int, release <-chan struct{}) grpc.StreamServerInterceptor
		every int    // one stream in every is hit
		want  string // a violation must contain it
	}{
		{"one start in 50 dropped", dropStart, 50, "started"},
		{"one end in 50 never seen (leak)", loseEnd, 50, "not drained"},
		{"one response in 50 ended at its headers (as Envoy 1.37 with trailers SKIP would)", endAtResponseHeaders, 50, "before any end signal"},
		{"one hold in 5 sends its override twice", doubleOverride, 5, "exactly one"},
	} {
		t.Run(m.name, func(t *testing.T) {
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			o := run(t, spec{n: 3000, concurrency: 16, seed: sd, drain: 2 * time.Second, bug: m.bug(m.every, release)})
			for _, v := range o.violations {
				if strings.Contains(v, m.want) {
					t.Logf("caught (seed %d): %s", sd, v)
					return
				}
			}
			for _, l := range o.log {
				t.Log(l)
			}
			t.Errorf("the bug went unnoticed (seed %d); violations: %q", sd, o.violations)
		})
	}
}

// The deliberate bugs: interceptors that change what the real server sees
// on one stream in every n, chosen by a per-server counter; release is
// closed when the mutation test ends.
// mutatingStream filters what the server's handler receives.
type mutatingStream struct {
	grpc.ServerStream
	recv func(m any, err error) error
}

func (s *mutatingStream) RecvMsg(m any) error {
	return s.recv(m, s.ServerStream.RecvMsg(m))
}

func every(n int) func() bool {
	var c atomic.Uint64
	return func() bool { return c.Add(1)%uint64(n) == 0 }
}

// mutateMessages applies f to every message the server's handler reads on
// one stream in every n.
func mutateMessages(n int, f func(*extprocv3.ProcessingRequest)) grpc.StreamServerInterceptor {
	pick := every(n)
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		chosen := pick()
		return h(srv, &mutatingStream{ServerStream: ss, recv: func(m any, err error) error {
			if r, ok := m.(*extprocv3.ProcessingRequest); err == nil && chosen && ok {
				f(r)
			}
			return err
		}})
	}
}

// dropStart hides request_headers (the start) from the server on one
// stream in every n: it then sees a stream without a start and counts
// nothing.
func dropStart(n int, _ <-chan struct{}) grpc.StreamServerInterceptor {
	return mutateMessages(n, func(r *extprocv3.ProcessingRequest) {
		if r.GetRequestHeaders() != nil {
			r.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{}}
		}
	})
}

// loseEnd withholds the stream's end (EOF or cancellation) from the server
// on one stream in every, until the test is over: the request stays in
// flight.
func loseEnd(n int, release <-chan struct{}) grpc.StreamServerInterceptor {
	pick := every(n)
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		chosen := pick()
		return h(srv, &mutatingStream{ServerStream: ss, recv: func(_ any, err error) error {
			if chosen && (errors.Is(err, io.EOF) || ss.Context().Err() != nil) && err != nil {
				<-release
			}
			return err
		}})
	}
}

// doubleOverride sends every override_message_timeout of one stream in
// every n twice: Envoy ignores the second.
func doubleOverride(n int, _ <-chan struct{}) grpc.StreamServerInterceptor {
	pick := every(n)
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		chosen := pick()
		return h(srv, &doubleSender{ServerStream: ss, chosen: chosen})
	}
}

type doubleSender struct {
	grpc.ServerStream
	chosen bool
}

func (s *doubleSender) SendMsg(m any) error {
	if r, ok := m.(*extprocv3.ProcessingResponse); ok && s.chosen && r.GetOverrideMessageTimeout() != nil {
		if err := s.ServerStream.SendMsg(m); err != nil {
			return err
		}
	}
	return s.ServerStream.SendMsg(m)
}

// endAtResponseHeaders marks response_headers as end_of_stream on one
// stream in every n: the server ends the request while its body still
// flows — what a body-NONE filter without trailers SEND does on Envoy
// ≥ 1.37, where the stream closes right after the response headers reply.
func endAtResponseHeaders(n int, _ <-chan struct{}) grpc.StreamServerInterceptor {
	return mutateMessages(n, func(r *extprocv3.ProcessingRequest) {
		if h := r.GetResponseHeaders(); h != nil {
			h.EndOfStream = true
		}
	})
}

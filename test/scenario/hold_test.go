package scenario

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/envoy/envoytest"
)

// Scale from zero and shedding (ISSUE12.md) through the Envoy-faithful
// harness: the shipped control filter at the edge (a gateway's attributes),
// real extproc servers with gates, and an EDS model (Request.NoHealthyUpstream)
// saying whether the gateway has an endpoint for the Service.

const gw = "llama"

// edgeRequest is a gateway request for Service llama whose router finds a
// host only while eds says the gateway has an endpoint.
func edgeRequest(eds *atomic.Bool) *envoy.Request {
	r := request(2)
	r.Attributes = envoy.GatewayAttributes("models", gw, 8000)
	r.NoHealthyUpstream = func() bool { return !eds.Load() }
	return r
}

// gates is a one-entry gate table: Service llama, ready endpoints, hold.
func gates(ready int, hold bool, holdTimeout float64, mod func(*extproc.Gate)) *extproc.GatesDocument {
	g := extproc.Gate{Namespace: "models", Service: gw, Workload: gw, ReadyEndpoints: ready, Hold: hold,
		HoldTimeoutSeconds: holdTimeout, ReleasePerEndpoint: 4}
	if mod != nil {
		mod(&g)
	}
	return &extproc.GatesDocument{Version: extproc.GatesVersion, Controller: "scenario", ExpiresInSeconds: 60, Share: 1,
		Gates: []extproc.Gate{g}}
}

func apply(t *testing.T, reps []*envoytest.Replica, d *extproc.GatesDocument) {
	t.Helper()
	for _, r := range reps {
		if err := r.Gates.Apply(d); err != nil {
			t.Fatal(err)
		}
	}
}

// waitHeld polls (bounded) until the replicas hold n requests.
func waitHeld(t *testing.T, reps []*envoytest.Replica, n int64) {
	t.Helper()
	for deadline := time.Now().Add(drainWait); ; time.Sleep(time.Millisecond) {
		var got int64
		for _, r := range reps {
			got += r.Gates.Held()
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("held %d after %v, want %d", got, drainWait, n)
		}
	}
}

func edgeClient(t *testing.T, reps []*envoytest.Replica, mod func(*envoy.Config)) *envoy.Client {
	cfg := envoy.Config{Profile: envoy.Control, Version: envoy.Envoy137}
	if mod != nil {
		mod(&cfg)
	}
	return newClient(t, cfg, reps)
}

// goDo runs c.Do on its own goroutine; the result arrives on the channel.
func goDo(c *envoy.Client, ctx context.Context, r *envoy.Request) <-chan *envoy.Result {
	ch := make(chan *envoy.Result, 1)
	go func() {
		res := c.Do(ctx, r)
		res.Wait()
		ch <- res
	}()
	return ch
}

func await(t *testing.T, ch <-chan *envoy.Result) *envoy.Result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(drainWait):
		t.Fatalf("no result within %v", drainWait)
		return nil
	}
}

// TestHeldReleasedAnswered: a request to a workload at zero is held (one
// override applied by Envoy, counted in flight at once), the workload's
// endpoint becomes ready and reaches the gateway, the gate says so, and
// the request is released and answered; a request released before the
// endpoint reached the gateway would get 503 UH, which is what the release
// delay is for.
func TestHeldReleasedAnswered(t *testing.T) {
	reps := envoytest.StartGated(t, 1, extproc.GatesOptions{ReleaseDelay: -1})
	apply(t, reps, gates(0, true, 300, nil))
	c := edgeClient(t, reps, nil)
	var eds atomic.Bool
	held := goDo(c, context.Background(), edgeRequest(&eds))
	waitHeld(t, reps, 1)
	if tot := envoytest.Sum(reps); tot.InFlight != 1 || tot.Held != 1 {
		t.Fatalf("a held request is demand at once: %+v", tot)
	}
	eds.Store(true) // the endpoint reached the gateway
	apply(t, reps, gates(1, true, 300, nil))
	res := await(t, held)
	if res.Outcome != envoy.Completed || res.Status != 200 || res.TimeoutOverrides != 1 || res.IgnoredOverrides != 0 || res.FailOpen {
		t.Fatalf("result %+v", res)
	}
	tot := checkGated(t, reps, res)
	if tot.HeldTotal != 1 || tot.Released != 1 || tot.Completed != 1 {
		t.Fatalf("%+v", tot)
	}

	// Released too early (no release delay, EDS behind): 503 UH from the
	// router at once, no retry. The extproc's count still ends once.
	eds.Store(false)
	apply(t, reps, gates(0, true, 300, nil))
	early := goDo(c, context.Background(), edgeRequest(&eds))
	waitHeld(t, reps, 1)
	apply(t, reps, gates(1, true, 300, nil))
	res2 := await(t, early)
	if res2.Outcome != envoy.LocalReply || res2.Status != 503 || !res2.NoHealthyUpstream || res2.ImmediateResponse {
		t.Fatalf("released before EDS: %+v", res2)
	}
	checkGated(t, reps, res, res2)
}

// TestHoldTimeoutAnswers503: no replica within the hold timeout: the
// extproc answers 503 with Retry-After before Envoy's (overridden) timer
// fires. Without max_message_timeout the override is ignored and Envoy's
// 200 ms timer fails open to the router: 503 UH at zero, and the extproc
// sees the stream end while the request is held.
func TestHoldTimeoutAnswers503(t *testing.T) {
	reps := envoytest.StartGated(t, 1, extproc.GatesOptions{ReleaseDelay: -1})
	apply(t, reps, gates(0, true, 1, nil))
	var eds atomic.Bool
	res := edgeClient(t, reps, nil).Do(context.Background(), edgeRequest(&eds))
	res.Wait()
	if res.Outcome != envoy.LocalReply || res.Status != 503 || !res.ImmediateResponse || res.LocalHeader("retry-after") != "1" ||
		res.LocalDetails != "inflight_hold_timeout" || res.TimeoutOverrides != 1 || res.ProcessorErr != nil {
		t.Fatalf("result %+v", res)
	}
	tot := checkGated(t, reps, res)
	if tot.HoldTimeouts != 1 || tot.Released != 0 {
		t.Fatalf("%+v", tot)
	}

	noMax := edgeClient(t, reps, func(c *envoy.Config) {
		ep, err := envoy.Shipped(envoy.Control, envoy.Envoy137)
		if err != nil {
			t.Fatal(err)
		}
		ep.MaxMessageTimeout = nil
		c.Filter = ep
	})
	apply(t, reps, gates(0, true, 300, nil))
	res2 := noMax.Do(context.Background(), edgeRequest(&eds))
	res2.Wait()
	if res2.IgnoredOverrides != 1 || !res2.FailOpen || res2.Status != 503 || !res2.NoHealthyUpstream {
		t.Fatalf("without max_message_timeout: %+v", res2)
	}
	if tot := checkGated(t, reps, res, res2); tot.HoldAbandoned != 1 {
		t.Fatalf("%+v", tot)
	}
}

// TestClientGoneWhileHeld: the client resets while its request is held;
// Envoy resets the side stream and the extproc releases the count once and
// drops the hold.
func TestClientGoneWhileHeld(t *testing.T) {
	reps := envoytest.StartGated(t, 2, extproc.GatesOptions{ReleaseDelay: -1})
	apply(t, reps, gates(0, true, 300, nil))
	c := edgeClient(t, reps, nil)
	var eds atomic.Bool
	var results []*envoy.Result
	for range 4 {
		r := edgeRequest(&eds)
		r.Failure = envoy.Failure{Phase: envoy.AbortAwaitingReply, Delay: 300 * time.Millisecond}
		res := c.Do(context.Background(), r)
		res.Wait()
		if res.Outcome != envoy.DownstreamReset || len(res.Replies) != 0 {
			t.Fatalf("result %+v", res)
		}
		results = append(results, res)
	}
	tot := checkGated(t, reps, results...)
	if tot.HoldAbandoned != tot.HeldTotal || tot.Released != 0 || tot.HeldTotal != tot.Started || tot.HeldTotal == 0 {
		t.Fatalf("%+v", tot)
	}
}

// TestGatesExpireWhileHeld: the controller stops sending gates: the table
// expires, every held request is released (fail-open) and, the workload
// still at zero, the gateway answers 503 UH itself — as without inflight.
func TestGatesExpireWhileHeld(t *testing.T) {
	reps := envoytest.StartGated(t, 1, extproc.GatesOptions{ReleaseDelay: -1})
	d := gates(0, true, 300, func(g *extproc.Gate) { g.MaxHeld = 1 })
	d.ExpiresInSeconds = 1
	apply(t, reps, d)
	c := edgeClient(t, reps, nil)
	var eds atomic.Bool
	held := goDo(c, context.Background(), edgeRequest(&eds))
	waitHeld(t, reps, 1)
	res := await(t, held)
	if res.Outcome != envoy.LocalReply || res.Status != 503 || !res.NoHealthyUpstream || res.ImmediateResponse || res.FailOpen {
		t.Fatalf("result %+v", res)
	}
	// Nothing is held or shed any more (max_held was 1).
	var results []*envoy.Result
	for range 3 {
		results = append(results, goDoWait(c, edgeRequest(&eds)))
	}
	for _, r := range results {
		if r.TimeoutOverrides != 0 || r.ImmediateResponse || r.Status != 503 || !r.NoHealthyUpstream {
			t.Fatalf("after expiry: %+v", r)
		}
	}
	tot := checkGated(t, reps, append(results, res)...)
	if tot.Released != 1 || tot.Shed != 0 || tot.HeldTotal != 1 || reps[0].CounterSum(t, "inflight_extproc_gates_expired_total") != 1 {
		t.Fatalf("%+v", tot)
	}
}

// checkGated is checkCounted for gated replicas: a shed request opened a
// stream that the server counted only as shed. results must be every
// request the test sent.
func checkGated(t *testing.T, reps []*envoytest.Replica, results ...*envoy.Result) envoytest.Totals {
	t.Helper()
	tot := envoytest.Drained(t, reps, drainWait)
	var opened, excused uint64
	for _, r := range results {
		if !r.Stream.Opened || r.Stream.Lost {
			continue
		}
		opened++
		if r.Stream.Uncertain || reps[r.Stream.Replica].Undelivered(r.Stream.Tag) {
			excused++
		}
	}
	if n := tot.Started + tot.Shed; n > opened || n+excused < opened {
		t.Fatalf("server started %d and shed %d, harness opened %d streams (%d uncertain or undelivered)", tot.Started, tot.Shed, opened, excused)
	}
	if tot.UnattributedStarted != 0 {
		t.Fatalf("%d requests counted under an unknown target", tot.UnattributedStarted)
	}
	return tot
}

func goDoWait(c *envoy.Client, r *envoy.Request) *envoy.Result {
	res := c.Do(context.Background(), r)
	res.Wait()
	return res
}

// TestShedAtMaxQueue: beyond max_held (the workload at zero) and beyond
// max_in_flight (serving), requests get an immediate 429 with Retry-After
// and are counted only as shed.
func TestShedAtMaxQueue(t *testing.T) {
	reps := envoytest.StartGated(t, 1, extproc.GatesOptions{ReleaseDelay: -1})
	apply(t, reps, gates(0, true, 300, func(g *extproc.Gate) { g.MaxHeld, g.MaxInFlight = 2, 3 }))
	c := edgeClient(t, reps, nil)
	var eds atomic.Bool
	// The held ones, once released, run until the test cancels them.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var held []<-chan *envoy.Result
	for range 2 {
		r := edgeRequest(&eds)
		r.Response.HeadersDelay = time.Hour
		held = append(held, goDo(c, ctx, r))
	}
	waitHeld(t, reps, 2)
	shed := goDoWait(c, edgeRequest(&eds))
	if shed.Outcome != envoy.LocalReply || shed.Status != 429 || !shed.ImmediateResponse || shed.LocalHeader("retry-after") != "1" ||
		shed.LocalDetails != "inflight_shed" || shed.TimeoutOverrides != 0 {
		t.Fatalf("shed at max_held: %+v", shed)
	}
	// Serving: the held two are released and run (slowly); one more fits
	// under max_in_flight 3, the next is shed.
	eds.Store(true)
	apply(t, reps, gates(1, true, 300, func(g *extproc.Gate) { g.MaxHeld, g.MaxInFlight = 2, 3 }))
	envoytest.WaitInFlight(t, reps, 2, drainWait)
	slow := edgeRequest(&eds)
	slow.Response.HeadersDelay = time.Hour
	running := goDo(c, ctx, slow)
	envoytest.WaitInFlight(t, reps, 3, drainWait)
	shed2 := goDoWait(c, edgeRequest(&eds))
	if shed2.Status != 429 || !shed2.ImmediateResponse {
		t.Fatalf("shed at max_in_flight: %+v", shed2)
	}
	cancel()
	results := []*envoy.Result{shed, shed2, await(t, running)}
	for _, h := range held {
		results = append(results, await(t, h))
	}
	tot := checkGated(t, reps, results...)
	if tot.Shed != 2 || tot.Started != 3 || tot.Released != 2 {
		t.Fatalf("%+v", tot)
	}
}

// TestShedAcrossReplicas measures the accuracy of max_in_flight across
// extproc replicas: each enforces ceil(max × share) of what it sees, so
// together they admit at most Σ ceil(max × share) (overshoot ≤ replicas − 1
// from rounding), and, with streams spread at random, fewer while one
// replica is full and another is not (undershoot).
func TestShedAcrossReplicas(t *testing.T) {
	const replicas, limit, offered = 3, 10, 30
	reps := envoytest.StartGated(t, replicas, extproc.GatesOptions{ReleaseDelay: -1})
	d := gates(2, false, 0, func(g *extproc.Gate) { g.MaxInFlight = limit })
	d.Share = 1.0 / replicas
	apply(t, reps, d)
	c := edgeClient(t, reps, func(c *envoy.Config) { c.Balancing, c.Seed = envoy.Random, 7 })
	var eds atomic.Bool
	eds.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	results := make([]*envoy.Result, offered)
	for i := range results {
		r := edgeRequest(&eds)
		r.Response.HeadersDelay = time.Hour // all in flight at once, until cancelled
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.Do(ctx, r)
			results[i].Wait()
		}()
	}
	// Every request is either in flight or shed.
	for deadline := time.Now().Add(drainWait); ; time.Sleep(time.Millisecond) {
		tot := envoytest.Sum(reps)
		if tot.InFlight+int64(tot.Shed) == offered {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%+v", tot)
		}
	}
	admitted := envoytest.Sum(reps).InFlight
	cancel()
	wg.Wait()
	checkGated(t, reps, results...)
	perReplica := (limit + replicas - 1) / replicas
	if admitted > int64(replicas*perReplica) {
		t.Fatalf("admitted %d, more than %d × %d", admitted, replicas, perReplica)
	}
	t.Logf("max_in_flight %d over %d replicas (each ceil(%d/%d) = %d), %d offered at once, random balancing: admitted %d (%+.0f%% of max)",
		limit, replicas, limit, replicas, perReplica, offered, admitted, 100*float64(admitted-limit)/limit)
}

package scenario

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/envoy/envoytest"
)

const drainWait = 10 * time.Second

func request(chunks int) *envoy.Request {
	body := make([][]byte, chunks)
	for i := range body {
		body[i] = fmt.Appendf(nil, "data: {\"token\":%d}\n\n", i)
	}
	return &envoy.Request{
		Attributes: envoy.InboundAttributes("models", "llama", "llama-svc", "llama-0", "10.0.0.7", 8000),
		Response:   envoy.Response{Headers: []envoy.Header{{Name: "content-type", Value: "text/event-stream"}}, Body: body},
	}
}

// grpcRequest is a trailer-terminated response (gRPC over an HTTP/2
// upstream): it ends at its trailers.
func grpcRequest(messages int) *envoy.Request {
	r := request(messages)
	r.Response.Headers = []envoy.Header{{Name: "content-type", Value: "application/grpc"}}
	r.Response.Trailers = []envoy.Header{{Name: "grpc-status", Value: "0"}}
	return r
}

type scenario struct {
	name    string
	req     func() *envoy.Request
	close   envoy.CloseStyle
	outcome envoy.Outcome
	status  int
}

func scenarios() []scenario {
	with := func(mk func(int) *envoy.Request, chunks int, f envoy.Failure) func() *envoy.Request {
		return func() *envoy.Request { r := mk(chunks); r.Failure = f; return r }
	}
	fast := func() *envoy.Request { r := request(3); r.Response.BodyBeforeHeaderReply = true; return r }
	return []scenario{
		{"bodiless", with(request, 0, envoy.Failure{}), envoy.CloseReset, envoy.Completed, 200},
		{"sse-8", with(request, 8, envoy.Failure{}), envoy.CloseReset, envoy.Completed, 200},
		{"sse-200", with(request, 200, envoy.Failure{}), envoy.CloseReset, envoy.Completed, 200},
		{"small-fast-body", fast, envoy.CloseReset, envoy.Completed, 200},
		{"grpc-trailers", with(grpcRequest, 3, envoy.Failure{}), envoy.CloseReset, envoy.Completed, 200},
		{"grpc-trailers-only-body", with(grpcRequest, 0, envoy.Failure{}), envoy.CloseReset, envoy.Completed, 200},
		{"abort-before-request-headers", with(request, 4, envoy.Failure{Phase: envoy.AbortBeforeRequestHeaders}), envoy.CloseReset, envoy.NeverStarted, 0},
		{"abort-awaiting-reply", with(request, 4, envoy.Failure{Phase: envoy.AbortAwaitingReply}), envoy.CloseReset, envoy.DownstreamReset, 0},
		{"abort-after-request-headers", with(request, 4, envoy.Failure{Phase: envoy.AbortAfterRequestHeaders}), envoy.CloseReset, envoy.DownstreamReset, 0},
		{"abort-after-response-headers", with(request, 4, envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 0}), envoy.CloseReset, envoy.DownstreamReset, 200},
		{"abort-mid-response-body", with(request, 8, envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 3}), envoy.CloseReset, envoy.DownstreamReset, 200},
		{"abort-before-trailers", with(grpcRequest, 2, envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 2}), envoy.CloseReset, envoy.DownstreamReset, 200},
		{"upstream-reset-before-headers", with(request, 4, envoy.Failure{Phase: envoy.UpstreamResetBeforeHeaders}), envoy.CloseReset, envoy.LocalReply, 503},
		{"upstream-reset-mid-sse", with(request, 8, envoy.Failure{Phase: envoy.UpstreamResetMidBody, AfterChunks: 5}), envoy.CloseReset, envoy.DownstreamReset, 200},
		{"eof-first", with(request, 4, envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 2}), envoy.CloseGraceful, envoy.DownstreamReset, 200},
		{"cancelled-first", with(request, 4, envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 2}), envoy.CloseResetOnly, envoy.DownstreamReset, 200},
	}
}

type profile struct {
	version envoy.Version
	profile envoy.Profile
}

// profiles are the shipped modes of every profile × proxy generation.
func profiles() []profile {
	return []profile{
		{envoy.Envoy136, envoy.Observe}, {envoy.Envoy136, envoy.Control},
		{envoy.Envoy137, envoy.Observe}, {envoy.Envoy137, envoy.Control},
	}
}

func newClient(t *testing.T, cfg envoy.Config, reps []*envoytest.Replica) *envoy.Client {
	t.Helper()
	c, err := envoy.NewClient(cfg, envoytest.Addrs(reps)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// checkCounted: the server counted the request iff the harness opened a
// stream (an uncertain start, or one grpc-go never delivered to the
// handler, may be missed: ENVOY.md §2), under the identified target, and
// everything drained. reps must be the client's endpoints, in order.
func checkCounted(t *testing.T, reps []*envoytest.Replica, results ...*envoy.Result) envoytest.Totals {
	t.Helper()
	tot := envoytest.Drained(t, reps, drainWait)
	var opened, uncertain, undelivered uint64
	for _, r := range results {
		if !r.Stream.Opened || r.Stream.Lost {
			continue
		}
		opened++
		switch {
		case r.Stream.Uncertain:
			uncertain++
		case reps[r.Stream.Replica].Undelivered(r.Stream.Tag):
			undelivered++
			t.Logf("stream %d: grpc-go delivered nothing to the server (a stall longer than the request)", r.Stream.Tag)
		}
	}
	if tot.Started > opened || tot.Started+uncertain+undelivered < opened {
		t.Fatalf("server started %d, harness opened %d streams (%d uncertain, %d undelivered)", tot.Started, opened, uncertain, undelivered)
	}
	if tot.UnattributedStarted != 0 {
		t.Fatalf("%d requests counted under an unknown target", tot.UnattributedStarted)
	}
	return tot
}

// endCauses sums the replicas' request ends by cause.
func endCauses(t *testing.T, reps []*envoytest.Replica) map[string]float64 {
	out := map[string]float64{}
	for _, r := range reps {
		for _, c := range []string{"response_body_eos", "response_headers_eos", "response_trailers", "stream_eof", "stream_canceled", "stream_error"} {
			out[c] += r.EndCount(t, c)
		}
	}
	return out
}

// TestScenarios runs every scenario on the shipped modes of every profile
// and generation, on one real extproc, and checks the outcome, that the
// count drained, and which signal ended it: a bodiless response at its
// headers, a gRPC response at its trailers, everything else at the
// stream's end (no body is sent: one message per request direction).
func TestScenarios(t *testing.T) {
	for _, p := range profiles() {
		for _, sc := range scenarios() {
			t.Run(fmt.Sprintf("%v/%v/%s", p.version, p.profile, sc.name), func(t *testing.T) {
				reps := envoytest.Start(t, 1)
				c := newClient(t, envoy.Config{Version: p.version, Profile: p.profile, CloseStyle: sc.close}, reps)
				req := sc.req()
				res := c.Do(context.Background(), req)
				res.Wait()
				if res.Outcome != sc.outcome || res.Status != sc.status || res.FailOpen || res.ProcessorErr != nil {
					t.Fatalf("outcome %v status %d failOpen %v err %v; want %v %d", res.Outcome, res.Status, res.FailOpen, res.ProcessorErr, sc.outcome, sc.status)
				}
				for _, k := range res.Sent {
					if k == envoy.ResponseBody || k == envoy.RequestBody {
						t.Fatalf("sent %v: the shipped modes send no body", res.Sent)
					}
				}
				tot := checkCounted(t, reps, res)
				if !res.Stream.Opened || res.Stream.Uncertain || tot.Started == 0 {
					return
				}
				ends := endCauses(t, reps)
				want := "stream"
				switch {
				case sc.outcome == envoy.Completed && len(req.Response.Body) == 0 && len(req.Response.Trailers) == 0:
					want = "response_headers_eos"
				case sc.outcome == envoy.Completed && len(req.Response.Trailers) > 0:
					want = "response_trailers"
				}
				got := ends[want]
				if want == "stream" {
					got = ends["stream_eof"] + ends["stream_canceled"]
				}
				if got != 1 {
					t.Fatalf("request ended by %v, want by %s", ends, want)
				}
				// Where the end is the stream's close, the close order
				// decides what the server saw: graceful → EOF, reset without
				// half-close → CANCELLED.
				if c := map[envoy.CloseStyle]string{envoy.CloseGraceful: "stream_eof", envoy.CloseResetOnly: "stream_canceled"}[sc.close]; c != "" && ends[c] != 1 {
					t.Fatalf("server ends by %s = %v, want 1", c, ends[c])
				}
			})
		}
	}
}

// TestEndBias states, per profile, when the server sees the end relative to
// the end of the HTTP request (Do returning), for the requests whose end is
// the stream's close (a bodied response, an abort, a local reply). Only
// causal order is asserted (timers never fire early), no durations:
//   - control: Envoy closes the stream in onDestroy, before the HTTP stream
//     is gone: the harness wrote the end before Do returned (exact);
//   - observe: the close is deferred by deferred_close_timeout after the
//     HTTP stream is gone (the shipped 100 ms): the end is written at least
//     that long after Do returned, so the server cannot end it earlier.
func TestEndBias(t *testing.T) {
	shapes := map[string]func() *envoy.Request{
		"sse": func() *envoy.Request { return request(5) },
		"abort-mid-body": func() *envoy.Request {
			r := request(5)
			r.Failure = envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 2}
			return r
		},
		"upstream-reset-before-headers": func() *envoy.Request {
			r := request(5)
			r.Failure = envoy.Failure{Phase: envoy.UpstreamResetBeforeHeaders}
			return r
		},
	}
	for _, p := range profiles() {
		for name, mk := range shapes {
			t.Run(fmt.Sprintf("%v/%v/%s", p.version, p.profile, name), func(t *testing.T) {
				reps := envoytest.Start(t, 1)
				c := newClient(t, envoy.Config{Version: p.version, Profile: p.profile}, reps)
				res := c.Do(context.Background(), mk())
				httpEnd := time.Now()
				res.Wait()
				tot := checkCounted(t, reps, res)
				s := res.Stream
				if s.EndWrite.IsZero() || tot.Started != 1 {
					t.Fatalf("stream %+v, started %d", s, tot.Started)
				}
				d := c.DeferredCloseTimeout()
				switch p.profile {
				case envoy.Control:
					if !s.EndWrite.Before(httpEnd) {
						t.Fatalf("control: end written %v after the HTTP request ended", s.EndWrite.Sub(httpEnd))
					}
				case envoy.Observe:
					if late := s.EndWrite.Sub(httpEnd); late < d {
						t.Fatalf("observe: end written %v after the HTTP request, want ≥ deferred_close_timeout %v", late, d)
					}
				}
			})
		}
	}
}

// TestLocalReplies: the router's 503 after an upstream reset before
// response headers, in both of Envoy's local-reply behaviours, on the
// shipped modes. Skipped (1.34–1.36): the server sees only request_headers,
// then the stream's end. Sent (≥ 1.37, envoy#41769): it also sees the 503's
// response_headers, answers it in control, and the request still ends once,
// at the stream's end (trailers SEND keeps the stream open past the header
// reply; on 1.37 the reply's complete body lets Envoy close right there,
// envoy#42507).
func TestLocalReplies(t *testing.T) {
	for _, p := range profiles() {
		for _, lr := range []envoy.LocalReplies{envoy.LocalRepliesSkipped, envoy.LocalRepliesSent} {
			t.Run(fmt.Sprintf("%v/%v/%v", p.version, p.profile, lr), func(t *testing.T) {
				reps := envoytest.Start(t, 1)
				c := newClient(t, envoy.Config{Version: p.version, Profile: p.profile, LocalReplies: lr}, reps)
				req := request(4)
				req.Failure.Phase = envoy.UpstreamResetBeforeHeaders
				res := c.Do(context.Background(), req)
				res.Wait()
				if res.Outcome != envoy.LocalReply || res.Status != 503 || res.FailOpen {
					t.Fatalf("result %+v", res)
				}
				want := []envoy.Kind{envoy.RequestHeaders}
				if lr == envoy.LocalRepliesSent {
					want = append(want, envoy.ResponseHeaders)
				}
				if fmt.Sprint(res.Sent) != fmt.Sprint(want) {
					t.Fatalf("sent %v, want %v", res.Sent, want)
				}
				if p.profile == envoy.Control && len(res.Replies) != len(want) {
					t.Fatalf("replies %v, want one per message", res.Replies)
				}
				tot := checkCounted(t, reps, res)
				if tot.Started != 1 {
					t.Fatalf("started %d", tot.Started)
				}
				if e := endCauses(t, reps); e["stream_eof"]+e["stream_canceled"] != 1 {
					t.Fatalf("ends %v, want one by the stream's end", e)
				}
			})
		}
	}
}

// slowServer delays every reply: a deliberately slow processor.
func slowServer(d time.Duration) grpc.ServerOption {
	return grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, &slowStream{ServerStream: ss, d: d})
	})
}

type slowStream struct {
	grpc.ServerStream
	d time.Duration
}

func (s *slowStream) SendMsg(m any) error {
	t := time.NewTimer(s.d) // the deliberately slow server
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.Context().Done():
	}
	return s.ServerStream.SendMsg(m)
}

func TestMessageTimeout(t *testing.T) {
	for _, v := range []envoy.Version{envoy.Envoy136, envoy.Envoy137} {
		for _, failClosed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/fail-closed=%v", v, failClosed), func(t *testing.T) {
				reps := envoytest.Start(t, 1, slowServer(time.Second))
				c := newClient(t, envoy.Config{Version: v, Profile: envoy.Control, FailClosed: failClosed,
					MessageTimeout: 5 * time.Millisecond}, reps)
				res := c.Do(context.Background(), request(4))
				res.Wait()
				wantStatus, wantOutcome := 200, envoy.Completed
				if failClosed {
					wantStatus, wantOutcome = 504, envoy.LocalReply
				}
				if res.Status != wantStatus || res.Outcome != wantOutcome || res.FailOpen == failClosed {
					t.Fatalf("status %d outcome %v failOpen %v", res.Status, res.Outcome, res.FailOpen)
				}
				checkCounted(t, reps, res)
			})
		}
	}
}

// TestServerShutdownMidStream: requests are mid-response when the server
// is stopped gracefully with a drain deadline; after it the streams are cut,
// the harness carries on (fail-open), and nothing stays counted.
func TestServerShutdownMidStream(t *testing.T) {
	for _, p := range profiles() {
		t.Run(fmt.Sprintf("%v/%v", p.version, p.profile), func(t *testing.T) {
			reps := envoytest.Start(t, 1)
			c := newClient(t, envoy.Config{Version: p.version, Profile: p.profile}, reps)
			const n = 8
			reached := make(chan struct{}, n)
			release := make(chan struct{})
			results := make([]*envoy.Result, n)
			var wg sync.WaitGroup
			for i := range n {
				req := request(4)
				req.OnResponseChunk = func(chunk int, _ *envoy.Result) {
					if chunk == 2 {
						reached <- struct{}{}
						<-release
					}
				}
				wg.Go(func() { results[i] = c.Do(context.Background(), req) })
			}
			var once sync.Once
			releaseAll := func() { once.Do(func() { close(release) }) }
			defer releaseAll() // a failing check must not strand the requests
			for range n {
				<-reached
			}
			envoytest.WaitInFlight(t, reps, n, drainWait)
			stopped := make(chan struct{})
			go func() { reps[0].Server.GracefulStop(); close(stopped) }()
			drain := time.NewTimer(50 * time.Millisecond) // the drain deadline
			select {
			case <-stopped:
				t.Fatal("GracefulStop returned with streams open")
			case <-drain.C:
				reps[0].Server.Stop()
			}
			<-stopped
			releaseAll()
			wg.Wait()
			for _, r := range results {
				r.Wait()
			}
			checkCounted(t, reps, results...)
		})
	}
}

// TestLoadBalancing: streams spread round-robin over three replicas; each
// replica counts only its share, and the sum is the total.
func TestLoadBalancing(t *testing.T) {
	reps := envoytest.Start(t, 3)
	c := newClient(t, envoy.Config{Version: envoy.Envoy137, Profile: envoy.Control}, reps)
	const n = 30
	results := make([]*envoy.Result, n)
	for i := range results {
		results[i] = c.Do(context.Background(), request(2))
	}
	for _, r := range results {
		r.Wait()
	}
	tot := checkCounted(t, reps, results...)
	if tot.Started != n {
		t.Fatalf("started %d, want %d", tot.Started, n)
	}
	for i, r := range reps {
		if s := envoytest.Sum(reps[i : i+1]).Started; s != n/3 {
			t.Fatalf("replica %d (%s) counted %d, want %d", i, r.Addr, s, n/3)
		}
	}
}

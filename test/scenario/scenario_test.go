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
		Attributes:         envoy.InboundAttributes("models", "llama", "llama-svc", "llama-0", "10.0.0.7", 8000),
		ResponseAttributes: envoy.ResponseAttributesFor("10.0.0.7", 8000, 200),
		Response:           envoy.Response{Headers: []envoy.Header{{Name: "content-type", Value: "text/event-stream"}}, Body: body},
	}
}

type scenario struct {
	name    string
	req     func() *envoy.Request
	close   envoy.CloseStyle
	outcome envoy.Outcome
	status  int
}

func scenarios() []scenario {
	with := func(chunks int, f envoy.Failure) func() *envoy.Request {
		return func() *envoy.Request { r := request(chunks); r.Failure = f; return r }
	}
	return []scenario{
		{"plain", with(0, envoy.Failure{}), envoy.CloseReset, envoy.Completed, 200},
		{"sse", with(8, envoy.Failure{}), envoy.CloseReset, envoy.Completed, 200},
		{"abort-before-request-headers", with(4, envoy.Failure{Phase: envoy.AbortBeforeRequestHeaders}), envoy.CloseReset, envoy.NeverStarted, 0},
		{"abort-after-request-headers", with(4, envoy.Failure{Phase: envoy.AbortAfterRequestHeaders}), envoy.CloseReset, envoy.DownstreamReset, 0},
		{"abort-mid-response-body", with(8, envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 3}), envoy.CloseReset, envoy.DownstreamReset, 200},
		{"upstream-reset-before-headers", with(4, envoy.Failure{Phase: envoy.UpstreamResetBeforeHeaders}), envoy.CloseReset, envoy.LocalReply, 503},
		{"upstream-reset-mid-sse", with(8, envoy.Failure{Phase: envoy.UpstreamResetMidBody, AfterChunks: 5}), envoy.CloseReset, envoy.DownstreamReset, 200},
		{"eof-first", with(4, envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 2}), envoy.CloseGraceful, envoy.DownstreamReset, 200},
		{"cancelled-first", with(4, envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 2}), envoy.CloseResetOnly, envoy.DownstreamReset, 200},
	}
}

type profile struct {
	version envoy.Version
	profile envoy.Profile
}

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
// stream (an uncertain start may be missed, ENVOY.md §2), under the
// identified target, and everything drained.
func checkCounted(t *testing.T, reps []*envoytest.Replica, results ...*envoy.Result) envoytest.Totals {
	t.Helper()
	tot := envoytest.Drained(t, reps, drainWait)
	var opened, uncertain uint64
	for _, r := range results {
		if r.Stream.Opened {
			opened++
		}
		if r.Stream.Uncertain {
			uncertain++
		}
	}
	if tot.Started > opened || tot.Started+uncertain < opened {
		t.Fatalf("server started %d, harness opened %d streams (%d uncertain)", tot.Started, opened, uncertain)
	}
	if tot.UnattributedStarted != 0 {
		t.Fatalf("%d requests counted under an unknown target", tot.UnattributedStarted)
	}
	return tot
}

func TestScenarios(t *testing.T) {
	for _, p := range profiles() {
		for _, sc := range scenarios() {
			t.Run(fmt.Sprintf("%v/%v/%s", p.version, p.profile, sc.name), func(t *testing.T) {
				reps := envoytest.Start(t, 1)
				c := newClient(t, envoy.Config{Version: p.version, Profile: p.profile, CloseStyle: sc.close,
					DeferredCloseTimeout: 20 * time.Millisecond}, reps)
				res := c.Do(context.Background(), sc.req())
				res.Wait()
				if res.Outcome != sc.outcome || res.Status != sc.status || res.FailOpen || res.ProcessorErr != nil {
					t.Fatalf("outcome %v status %d failOpen %v err %v; want %v %d", res.Outcome, res.Status, res.FailOpen, res.ProcessorErr, sc.outcome, sc.status)
				}
				checkCounted(t, reps, res)
				// Where the end can only come from the stream's close (the
				// body is aborted), the close order decides what the server
				// saw: graceful → EOF, reset without half-close → CANCELLED.
				want := map[envoy.CloseStyle]string{envoy.CloseGraceful: "stream_eof", envoy.CloseResetOnly: "stream_canceled"}[sc.close]
				if want != "" {
					if got := reps[0].EndCount(t, want); got != 1 {
						t.Fatalf("server ends by %s = %v, want 1", want, got)
					}
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
			c := newClient(t, envoy.Config{Version: p.version, Profile: p.profile, DeferredCloseTimeout: 20 * time.Millisecond}, reps)
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

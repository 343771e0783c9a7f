package envoy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/inflight-dev/inflight/mesh"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// recorder is a test ext_proc server that records every stream's messages
// and how it ended, and answers CONTINUE unless in observability mode.
type recorder struct {
	extprocv3.UnimplementedExternalProcessorServer
	mu      sync.Mutex
	streams map[uint64]*recStream
	count   int
}

type recStream struct {
	msgs  []*extprocv3.ProcessingRequest
	end   string // "eof", "canceled" or another error
	ended chan struct{}
}

func (r *recorder) stream(tag uint64) *recStream {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.streams == nil {
		r.streams = make(map[uint64]*recStream)
	}
	s := r.streams[tag]
	if s == nil {
		s = &recStream{ended: make(chan struct{})}
		r.streams[tag] = s
	}
	return s
}

func (r *recorder) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	md, _ := metadata.FromIncomingContext(srv.Context())
	var tag uint64
	if v := md.Get(StreamTagHeader); len(v) == 1 {
		tag, _ = strconv.ParseUint(v[0], 10, 64)
	}
	s := r.stream(tag)
	r.mu.Lock()
	r.count++
	r.mu.Unlock()
	for {
		m, err := srv.Recv()
		if err != nil {
			r.mu.Lock()
			switch {
			case errors.Is(err, io.EOF):
				s.end = "eof"
			case status.Code(err) == codes.Canceled:
				s.end = "canceled"
			default:
				s.end = err.Error()
			}
			r.mu.Unlock()
			close(s.ended)
			return nil
		}
		r.mu.Lock()
		s.msgs = append(s.msgs, m)
		r.mu.Unlock()
		if !m.GetObservabilityMode() {
			if err := srv.Send(ContinueReply(m)); err != nil {
				return err
			}
		}
	}
}

// waitEnd waits (bounded) until the server saw stream tag end.
func (r *recorder) waitEnd(t *testing.T, tag uint64) *recStream {
	t.Helper()
	s := r.stream(tag)
	select {
	case <-s.ended:
	case <-time.After(10 * time.Second):
		t.Fatalf("server never saw stream %d end", tag)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return &recStream{msgs: append([]*extprocv3.ProcessingRequest(nil), s.msgs...), end: s.end, ended: s.ended}
}

// waitMsgs waits (bounded) until the server has read n messages of tag.
func (r *recorder) waitMsgs(t *testing.T, tag uint64, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := r.stream(tag)
		r.mu.Lock()
		got := len(s.msgs)
		r.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server read %d of %d messages of stream %d", got, n, tag)
		}
		select {
		case <-s.ended:
			t.Fatalf("stream %d ended after %d of %d messages", tag, got, n)
		case <-time.After(time.Millisecond):
		}
	}
}

func (r *recorder) streamCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count
}

// serve starts srv on a loopback port and returns its address.
func serve(t testing.TB, srv extprocv3.ExternalProcessorServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func newClient(t testing.TB, cfg Config, addrs ...string) *Client {
	t.Helper()
	c, err := NewClient(cfg, addrs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func sseRequest(chunks int) *Request {
	body := make([][]byte, chunks)
	for i := range body {
		body[i] = fmt.Appendf(nil, "data: {\"token\":%d}\n\n", i)
	}
	return &Request{
		Headers:            []Header{{"Content-Type", "application/json"}, {"X-Mixed-Case", "V"}},
		Attributes:         InboundAttributes("models", "llama", "llama-svc", "llama-0", "10.0.0.7", 8000),
		ResponseAttributes: ResponseAttributesFor("10.0.0.7", 8000, 200),
		Response:           Response{Headers: []Header{{"Content-Type", "text/event-stream"}}, Body: body},
	}
}

func kinds(msgs []*extprocv3.ProcessingRequest) []string {
	var out []string
	for _, m := range msgs {
		var k string
		switch x := m.GetRequest().(type) {
		case *extprocv3.ProcessingRequest_RequestHeaders:
			k = fmt.Sprintf("request_headers(eos=%v)", x.RequestHeaders.EndOfStream)
		case *extprocv3.ProcessingRequest_ResponseHeaders:
			k = fmt.Sprintf("response_headers(eos=%v)", x.ResponseHeaders.EndOfStream)
		case *extprocv3.ProcessingRequest_RequestBody:
			k = fmt.Sprintf("request_body(eos=%v)", x.RequestBody.EndOfStream)
		case *extprocv3.ProcessingRequest_ResponseBody:
			k = fmt.Sprintf("response_body(eos=%v)", x.ResponseBody.EndOfStream)
		case *extprocv3.ProcessingRequest_RequestTrailers:
			k = "request_trailers"
		case *extprocv3.ProcessingRequest_ResponseTrailers:
			k = "response_trailers"
		}
		out = append(out, k)
	}
	return out
}

func TestControlEnvoy136Messages(t *testing.T) {
	rec := &recorder{}
	c := newClient(t, Config{Profile: Control, Version: Envoy136}, serve(t, rec))
	res := c.Do(context.Background(), sseRequest(3))
	res.Wait()
	if res.Outcome != Completed || res.Status != 200 || res.FailOpen {
		t.Fatalf("result %+v", res)
	}
	if len(res.Replies) != 2 {
		t.Fatalf("replies %v, want request_headers and response_headers", res.Replies)
	}
	s := rec.waitEnd(t, res.Stream.Tag)
	got := fmt.Sprint(kinds(s.msgs))
	// Control on ≤1.36: response body NONE, so no body messages.
	if want := "[request_headers(eos=true) response_headers(eos=false)]"; got != want {
		t.Fatalf("messages %s, want %s", got, want)
	}
	first, second := s.msgs[0], s.msgs[1]
	if first.GetObservabilityMode() || second.GetObservabilityMode() {
		t.Error("observability_mode set in control profile")
	}
	pc := first.GetProtocolConfig()
	if pc == nil || pc.GetResponseBodyMode() != filterv3.ProcessingMode_NONE {
		t.Errorf("protocol_config on first message = %v", pc)
	}
	if second.GetProtocolConfig() != nil {
		t.Error("protocol_config repeated on a later message")
	}
	hs := map[string]string{}
	for _, h := range first.GetRequestHeaders().GetHeaders().GetHeaders() {
		if h.GetValue() != "" {
			t.Errorf("header %s uses value, want raw_value", h.GetKey())
		}
		hs[h.GetKey()] = string(h.GetRawValue())
	}
	for _, k := range []string{":method", ":path", ":authority", ":scheme", "content-type", "x-mixed-case", "x-request-id"} {
		if _, ok := hs[k]; !ok {
			t.Errorf("request header %q missing; got %v", k, hs)
		}
	}
	attrs := first.GetAttributes()[mesh.AttributesKey].GetFields()
	if attrs[mesh.AttrNamespace].GetStringValue() != "models" || attrs[mesh.AttrCluster].GetStringValue() != "inbound|8000||" {
		t.Errorf("request attributes %v", attrs)
	}
	rattrs := second.GetAttributes()[mesh.AttributesKey].GetFields()
	if rattrs["response.code"].GetNumberValue() != 200 || rattrs["upstream.address"].GetStringValue() != "10.0.0.7:8000" {
		t.Errorf("response attributes %v", rattrs)
	}
	if _, ok := rattrs[mesh.AttrNamespace]; ok {
		t.Error("request attributes repeated on the response direction")
	}
}

func TestObserveMessages(t *testing.T) {
	rec := &recorder{}
	c := newClient(t, Config{Profile: Observe, DeferredCloseTimeout: time.Millisecond, LegacyHeaderValue: true}, serve(t, rec))
	res := c.Do(context.Background(), sseRequest(3))
	res.Wait()
	if len(res.Replies) != 0 {
		t.Fatalf("observe mode awaited replies: %v", res.Replies)
	}
	s := rec.waitEnd(t, res.Stream.Tag)
	got := fmt.Sprint(kinds(s.msgs))
	want := "[request_headers(eos=true) response_headers(eos=false) response_body(eos=false) response_body(eos=false) response_body(eos=true)]"
	if got != want {
		t.Fatalf("messages %s, want %s", got, want)
	}
	for i, m := range s.msgs {
		if !m.GetObservabilityMode() || m.GetProtocolConfig() != nil {
			t.Errorf("message %d: observability_mode=%v protocol_config=%v", i, m.GetObservabilityMode(), m.GetProtocolConfig())
		}
		if i > 1 && len(m.GetAttributes()) != 0 {
			t.Errorf("message %d carries attributes again", i)
		}
	}
	for _, h := range s.msgs[0].GetRequestHeaders().GetHeaders().GetHeaders() {
		if len(h.GetRawValue()) != 0 || h.GetValue() == "" {
			t.Errorf("legacy mode: header %s = %q / raw %q", h.GetKey(), h.GetValue(), h.GetRawValue())
		}
	}
}

func TestLazyOpenAndUpstreamReset(t *testing.T) {
	rec := &recorder{}
	c := newClient(t, Config{Profile: Control, Version: Envoy137}, serve(t, rec))
	req := sseRequest(2)
	req.Failure.Phase = AbortBeforeRequestHeaders
	if res := c.Do(context.Background(), req); res.Stream.Opened || res.Outcome != NeverStarted {
		t.Fatalf("abort before headers opened a stream: %+v", res)
	}
	req = sseRequest(2)
	req.Failure.Phase = UpstreamResetBeforeHeaders
	res := c.Do(context.Background(), req)
	res.Wait()
	if res.Outcome != LocalReply || res.Status != 503 {
		t.Fatalf("upstream reset: %+v", res)
	}
	s := rec.waitEnd(t, res.Stream.Tag)
	if got := fmt.Sprint(kinds(s.msgs)); got != "[request_headers(eos=true)]" {
		t.Fatalf("upstream reset: messages %s, want only request_headers", got)
	}
	if n := rec.streamCount(); n != 1 {
		t.Fatalf("server saw %d streams for one opened request", n)
	}
}

func TestMessageTimeoutAndSpurious(t *testing.T) {
	// A deliberately slow server: replies 2 s after each message; the
	// harness's timer is 10 ms.
	slow := serve(t, &NullProcessor{Delay: 2 * time.Second})
	spurious := serve(t, &NullProcessor{Spurious: true})
	for _, tc := range []struct {
		name       string
		addr       string
		failClosed bool
		outcome    Outcome
		status     int
		failOpen   bool
	}{
		{"timeout/fail-open", slow, false, Completed, 200, true},
		{"timeout/fail-closed", slow, true, LocalReply, 504, false},
		{"spurious/fail-open", spurious, false, Completed, 200, true},
		{"spurious/fail-closed", spurious, true, LocalReply, 500, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, Config{Profile: Control, FailClosed: tc.failClosed, MessageTimeout: 10 * time.Millisecond}, tc.addr)
			res := c.Do(context.Background(), sseRequest(1))
			res.Wait()
			if res.Outcome != tc.outcome || res.Status != tc.status || res.FailOpen != tc.failOpen || res.ProcessorErr == nil {
				t.Fatalf("got outcome=%v status=%d failOpen=%v err=%v", res.Outcome, res.Status, res.FailOpen, res.ProcessorErr)
			}
			if tc.addr == slow && !errors.Is(res.ProcessorErr, ErrMessageTimeout) {
				t.Fatalf("err %v, want the message timeout", res.ProcessorErr)
			}
			if len(res.Sent) != 1 {
				t.Fatalf("after giving up on the processor, sent %v", res.Sent)
			}
		})
	}
}

func TestCloseOrders(t *testing.T) {
	rec := &recorder{}
	addr := serve(t, rec)
	for _, tc := range []struct {
		style CloseStyle
		want  string // "" = either
	}{
		{CloseGraceful, "eof"},
		{CloseResetOnly, "canceled"},
		{CloseReset, ""},
	} {
		t.Run(tc.style.String(), func(t *testing.T) {
			c := newClient(t, Config{Profile: Control, CloseStyle: tc.style}, addr)
			res := c.Do(context.Background(), sseRequest(2))
			res.Wait()
			s := rec.waitEnd(t, res.Stream.Tag)
			if len(s.msgs) != len(res.Sent) {
				t.Fatalf("server saw %d messages, harness sent %d", len(s.msgs), len(res.Sent))
			}
			if tc.want != "" && s.end != tc.want {
				t.Fatalf("server saw %q first, want %q", s.end, tc.want)
			}
			if tc.want == "" && s.end != "eof" && s.end != "canceled" {
				t.Fatalf("server saw %q", s.end)
			}
			if tc.style == CloseGraceful && (res.Stream.Reset || res.Stream.EndAck.IsZero()) {
				t.Fatalf("graceful close reset=%v endAck=%v", res.Stream.Reset, res.Stream.EndAck)
			}
			if tc.style != CloseGraceful && !res.Stream.Reset {
				t.Fatal("no RST_STREAM written")
			}
		})
	}
}

func TestDeferredClose(t *testing.T) {
	rec := &recorder{}
	fire := make(chan time.Time)
	var asked time.Duration
	cfg := Config{Profile: Observe, deferredClock: func(d time.Duration) <-chan time.Time { asked = d; return fire }}
	c := newClient(t, cfg, serve(t, rec))
	res := c.Do(context.Background(), sseRequest(1))
	if res.Outcome != Completed {
		t.Fatalf("outcome %v", res.Outcome)
	}
	// Let the server read the messages first: a grpc-go handler that has
	// not read them yet when the RST arrives may see only the cancellation.
	rec.waitMsgs(t, res.Stream.Tag, 3)
	select {
	case <-res.Closed():
		t.Fatal("observability-mode stream closed before deferred_close_timeout")
	default:
	}
	fire <- time.Now()
	res.Wait()
	if asked != 5*time.Second {
		t.Errorf("deferred close timeout %v, want the 5 s default", asked)
	}
	if s := rec.waitEnd(t, res.Stream.Tag); len(s.msgs) != 3 {
		t.Fatalf("server saw %d messages, want 3; end %q; stream %+v", len(s.msgs), s.end, res.Stream)
	}
}

// TestStreamLifetimeByVersion: with response body NONE, Envoy ≥ 1.37 closes
// the stream right after the response_headers reply; ≤ 1.36 keeps it open
// until the HTTP stream ends. Likewise at response headers when the
// response path is unprocessed (≥ 1.37 only).
func TestStreamLifetimeByVersion(t *testing.T) {
	rec := &recorder{}
	addr := serve(t, rec)
	bodyNone := &filterv3.ProcessingMode{ResponseBodyMode: filterv3.ProcessingMode_NONE}
	respSkip := &filterv3.ProcessingMode{ResponseHeaderMode: filterv3.ProcessingMode_SKIP}
	for _, tc := range []struct {
		name        string
		version     Version
		mode        *filterv3.ProcessingMode
		closedEarly bool
		msgs        int
	}{
		{"1.36/body-none", Envoy136, bodyNone, false, 2},
		{"1.37/body-none", Envoy137, bodyNone, true, 2},
		{"1.36/response-unprocessed", Envoy136, respSkip, false, 1},
		{"1.37/response-unprocessed", Envoy137, respSkip, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, Config{Profile: Control, Version: tc.version, Mode: tc.mode}, addr)
			req := sseRequest(2)
			var closedAtChunk0 bool
			var endSeen string
			req.OnResponseChunk = func(i int, r *Result) {
				if i != 0 {
					return
				}
				closedAtChunk0 = isClosed(r.Closed())
				if closedAtChunk0 {
					endSeen = rec.waitEnd(t, r.Stream.Tag).end
				}
			}
			res := c.Do(context.Background(), req)
			res.Wait()
			if closedAtChunk0 != tc.closedEarly {
				t.Fatalf("stream closed before the body: %v, want %v", closedAtChunk0, tc.closedEarly)
			}
			if tc.closedEarly && endSeen == "" {
				t.Fatal("server did not see the early close")
			}
			if res.Outcome != Completed || len(res.Sent) != tc.msgs {
				t.Fatalf("outcome %v sent %v", res.Outcome, res.Sent)
			}
			if s := rec.waitEnd(t, res.Stream.Tag); len(s.msgs) != tc.msgs {
				t.Fatalf("server saw %v", kinds(s.msgs))
			}
		})
	}
}

// resetLosses runs n requests at the given concurrency through a server
// whose socket reads are parsed, and counts the streams whose queued bytes
// did not all reach the server before their RST_STREAM.
func resetLosses(t *testing.T, naive bool, n, concurrency int) (lost int, results []*Result) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := NewWireListener(lis)
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, &NullProcessor{})
	go func() { _ = gs.Serve(wl) }()
	defer gs.Stop()
	c := newClient(t, Config{Profile: Observe, DeferredCloseTimeout: time.Microsecond, naiveReset: naive}, lis.Addr().String())
	results = make([]*Result, n)
	var wg sync.WaitGroup
	work := make(chan int)
	for range concurrency {
		wg.Go(func() {
			for i := range work {
				results[i] = c.Do(context.Background(), sseRequest(4))
				results[i].Wait()
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	c.Wait()
	// The server's reads lag the client's writes: wait (bounded) until each
	// stream's RST_STREAM has been read, then compare.
	// A stream ends at the server with its RST_STREAM, or with END_STREAM
	// alone if the server finished the RPC before the client's reset.
	deadline := time.Now().Add(10 * time.Second)
	for _, r := range results {
		for {
			total, before, eos, rst := wl.Received(r.Stream.Tag)
			if rst || (eos && !r.Stream.Reset) || time.Now().After(deadline) {
				if before != r.Stream.Bytes || (!rst && !eos) {
					lost++
				} else if total != before {
					t.Errorf("stream %d: bytes after its RST", r.Stream.Tag)
				}
				break
			}
			time.Sleep(time.Millisecond) // polling the test's own wire counters
		}
	}
	return lost, results
}

// TestResetDoesNotOvertakeMessages: at high concurrency every stream's
// messages and END_STREAM reach the server's socket before its RST_STREAM,
// as behind Envoy; the same check catches grpc-go's naive cancel.
func TestResetDoesNotOvertakeMessages(t *testing.T) {
	n, conc := 4096, 256
	if testing.Short() {
		n = 1024
	}
	lost, results := resetLosses(t, false, n, conc)
	if lost != 0 {
		t.Fatalf("%d of %d streams lost bytes before their reset", lost, n)
	}
	for _, r := range results {
		if !r.Stream.HalfClosed || r.Stream.WireErr != nil {
			t.Fatalf("stream %+v: want half-close then reset", r.Stream)
		}
	}
	naiveLost, _ := resetLosses(t, true, n, conc)
	if naiveLost == 0 {
		t.Errorf("the wire check saw no loss from a naive cancel either: it may not be checking anything")
	}
	t.Logf("faithful reset: 0 of %d streams lost bytes; naive cancel: %d lost", n, naiveLost)
}

package envoy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/inflight-dev/inflight/istio"
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

// shippedWith returns the shipped filter of p on v with the processing mode
// changed by edit: a configuration other than the shipped one, to test the
// harness's Envoy model.
func shippedWith(t testing.TB, p Profile, v Version, edit func(*filterv3.ExternalProcessor)) *filterv3.ExternalProcessor {
	t.Helper()
	ep, err := Shipped(p, v)
	if err != nil {
		t.Fatal(err)
	}
	edit(ep)
	return ep
}

// TestShippedIsRendered: the harness's default filter is exactly what the
// install renders for that profile and generation.
func TestShippedIsRendered(t *testing.T) {
	for _, v := range []Version{Envoy136, Envoy137} {
		g, err := v.Generation()
		if err != nil {
			t.Fatal(err)
		}
		if g.EarlyStreamClose != (v == Envoy137) {
			t.Fatalf("%v maps to %s", v, g.Name)
		}
		for _, p := range []Profile{Observe, Control} {
			ep, err := Shipped(p, v)
			if err != nil {
				t.Fatal(err)
			}
			want := istio.ExternalProcessor(istio.Options{Profile: p.install()}, g)
			if !proto.Equal(ep, want) {
				t.Errorf("%v/%v: Shipped differs from istio.ExternalProcessor", v, p)
			}
			if err := istio.CheckProcessor(ep, g); err != nil {
				t.Errorf("%v/%v: %v", v, p, err)
			}
			if (p == Observe) != ep.GetObservabilityMode() {
				t.Errorf("%v/%v: observability_mode %v", v, p, ep.GetObservabilityMode())
			}
		}
	}
	if err := (&Config{Version: Version(7)}).Validate(); err == nil {
		t.Error("Validate accepted an unknown Version")
	}
	bad := shippedWith(t, Control, Envoy137, func(ep *filterv3.ExternalProcessor) {
		ep.ProcessingMode.ResponseBodyMode = filterv3.ProcessingMode_BUFFERED
		ep.AllowModeOverride = true
	})
	err := (&Config{Filter: bad}).Validate()
	if err == nil || !strings.Contains(err.Error(), "BUFFERED") || !strings.Contains(err.Error(), "allow_mode_override") {
		t.Errorf("Validate = %v, want both unsupported settings named", err)
	}
}

func TestControlMessages(t *testing.T) {
	for _, v := range []Version{Envoy136, Envoy137} {
		t.Run(v.String(), func(t *testing.T) {
			rec := &recorder{}
			c := newClient(t, Config{Profile: Control, Version: v}, serve(t, rec))
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
			// The shipped control profile: bodies NONE, so no body messages
			// however many chunks; the stream stays open until the HTTP
			// stream ends, on both generations (trailers SEND).
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
			// forward_rules let only x-request-id through, pseudo-headers
			// included.
			var keys []string
			for _, h := range first.GetRequestHeaders().GetHeaders().GetHeaders() {
				if h.GetValue() != "" || len(h.GetRawValue()) == 0 {
					t.Errorf("header %s: value %q raw %q, want raw_value", h.GetKey(), h.GetValue(), h.GetRawValue())
				}
				keys = append(keys, h.GetKey())
			}
			if fmt.Sprint(keys) != "[x-request-id]" {
				t.Errorf("request headers sent %v, want only x-request-id (forward_rules)", keys)
			}
			if n := len(second.GetResponseHeaders().GetHeaders().GetHeaders()); n != 0 {
				t.Errorf("%d response headers sent, want none (forward_rules)", n)
			}
			attrs := first.GetAttributes()[mesh.AttributesKey].GetFields()
			if attrs[mesh.AttrNamespace].GetStringValue() != "models" || attrs[mesh.AttrCluster].GetStringValue() != "inbound|8000||" {
				t.Errorf("request attributes %v", attrs)
			}
			if len(attrs) != len(mesh.RequestAttributes()) {
				t.Errorf("%d request attributes, want the %d configured", len(attrs), len(mesh.RequestAttributes()))
			}
			if second.GetAttributes() != nil {
				t.Errorf("response attributes %v sent; the shipped filter configures none", second.GetAttributes())
			}
		})
	}
}

// TestForwardRulesAndAttributes: without forward_rules every header goes,
// lower-cased; response attributes go once, on the first response message,
// and only the configured ones.
func TestForwardRulesAndAttributes(t *testing.T) {
	rec := &recorder{}
	ep := shippedWith(t, Control, Envoy136, func(ep *filterv3.ExternalProcessor) {
		ep.ForwardRules = &filterv3.HeaderForwardingRules{DisallowedHeaders: &matcherv3.ListStringMatcher{Patterns: []*matcherv3.StringMatcher{
			{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "X-MIXED"}, IgnoreCase: true},
		}}}
		ep.ResponseAttributes = []string{"response.code"}
		ep.ProcessingMode.ResponseBodyMode = filterv3.ProcessingMode_STREAMED
	})
	c := newClient(t, Config{Filter: ep}, serve(t, rec))
	res := c.Do(context.Background(), sseRequest(2))
	res.Wait()
	s := rec.waitEnd(t, res.Stream.Tag)
	var keys []string
	for _, h := range s.msgs[0].GetRequestHeaders().GetHeaders().GetHeaders() {
		keys = append(keys, h.GetKey())
	}
	if want := "[:method :path :authority :scheme x-request-id content-type]"; fmt.Sprint(keys) != want {
		t.Errorf("request headers %v, want %s", keys, want)
	}
	rattrs := s.msgs[1].GetAttributes()[mesh.AttributesKey].GetFields()
	if len(rattrs) != 1 || rattrs["response.code"].GetNumberValue() != 200 {
		t.Errorf("response attributes %v, want only response.code", rattrs)
	}
	for i, m := range s.msgs[2:] {
		if m.GetAttributes() != nil {
			t.Errorf("message %d repeats attributes", i+2)
		}
	}
}

func TestObserveMessages(t *testing.T) {
	for _, v := range []Version{Envoy136, Envoy137} {
		t.Run(v.String(), func(t *testing.T) {
			rec := &recorder{}
			fire := make(chan time.Time, 1)
			c := newClient(t, Config{Profile: Observe, Version: v, LegacyHeaderValue: true,
				deferredClock: func(time.Duration) <-chan time.Time { return fire }}, serve(t, rec))
			res := c.Do(context.Background(), sseRequest(50))
			// The deferred close fires once the server has read both
			// messages (a grpc-go handler may drop what it has not read
			// when the reset arrives: ENVOY.md §2).
			rec.waitMsgs(t, res.Stream.Tag, 2)
			fire <- time.Now()
			res.Wait()
			if len(res.Replies) != 0 {
				t.Fatalf("observe mode awaited replies: %v", res.Replies)
			}
			s := rec.waitEnd(t, res.Stream.Tag)
			got := fmt.Sprint(kinds(s.msgs))
			if want := "[request_headers(eos=true) response_headers(eos=false)]"; got != want {
				t.Fatalf("messages %s, want %s (50 chunks, body NONE)", got, want)
			}
			for i, m := range s.msgs {
				if !m.GetObservabilityMode() || m.GetProtocolConfig() != nil {
					t.Errorf("message %d: observability_mode=%v protocol_config=%v", i, m.GetObservabilityMode(), m.GetProtocolConfig())
				}
			}
			for _, h := range s.msgs[0].GetRequestHeaders().GetHeaders().GetHeaders() {
				if len(h.GetRawValue()) != 0 || h.GetValue() == "" {
					t.Errorf("legacy mode: header %s = %q / raw %q", h.GetKey(), h.GetValue(), h.GetRawValue())
				}
			}
		})
	}
}

// TestResponseShapes: a bodiless response ends at its headers; a gRPC-style
// response (HTTP/2 upstream) ends at its trailers, which both shipped
// profiles send; with trailers SKIP and a STREAMED body nothing at all marks
// the end (Envoy's onTrailers sends nothing), and no empty chunk is
// invented.
func TestResponseShapes(t *testing.T) {
	rec := &recorder{}
	addr := serve(t, rec)
	grpcResp := func() *Request {
		r := sseRequest(2)
		r.Response.Headers = []Header{{"content-type", "application/grpc"}}
		r.Response.Trailers = []Header{{"grpc-status", "0"}}
		return r
	}
	streamedSkip := shippedWith(t, Control, Envoy136, func(ep *filterv3.ExternalProcessor) {
		ep.ProcessingMode.ResponseBodyMode = filterv3.ProcessingMode_STREAMED
		ep.ProcessingMode.ResponseTrailerMode = filterv3.ProcessingMode_SKIP
	})
	for _, tc := range []struct {
		name string
		cfg  Config
		req  *Request
		want string
	}{
		{"bodiless/control", Config{Profile: Control, Version: Envoy137}, sseRequest(0),
			"[request_headers(eos=true) response_headers(eos=true)]"},
		{"bodiless/observe", Config{Profile: Observe, Version: Envoy137}, sseRequest(0),
			"[request_headers(eos=true) response_headers(eos=true)]"},
		{"trailers/control/1.36", Config{Profile: Control, Version: Envoy136}, grpcResp(),
			"[request_headers(eos=true) response_headers(eos=false) response_trailers]"},
		{"trailers/control/1.37", Config{Profile: Control, Version: Envoy137}, grpcResp(),
			"[request_headers(eos=true) response_headers(eos=false) response_trailers]"},
		{"trailers/observe", Config{Profile: Observe, Version: Envoy137}, grpcResp(),
			"[request_headers(eos=true) response_headers(eos=false) response_trailers]"},
		{"streamed+trailers-skip", Config{Filter: streamedSkip}, grpcResp(),
			"[request_headers(eos=true) response_headers(eos=false) response_body(eos=false) response_body(eos=false)]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, tc.cfg, addr)
			res := c.Do(context.Background(), tc.req)
			res.Wait()
			if res.Outcome != Completed || res.FailOpen {
				t.Fatalf("result %+v", res)
			}
			s := rec.waitEnd(t, res.Stream.Tag)
			if got := fmt.Sprint(kinds(s.msgs)); got != tc.want {
				t.Fatalf("messages %s, want %s", got, tc.want)
			}
		})
	}
}

func TestLazyOpenAndUpstreamReset(t *testing.T) {
	rec := &recorder{}
	c := newClient(t, Config{Profile: Control, Version: Envoy136}, serve(t, rec))
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
			// A reset follows the half-close unless the server ended the RPC
			// first (it returns on EOF): then there is nothing to reset.
			if tc.style == CloseResetOnly && !res.Stream.Reset || tc.style == CloseReset && !res.Stream.Reset && res.Stream.EndAck.IsZero() {
				t.Fatalf("no RST_STREAM written, and no server status: %+v", res.Stream)
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
	rec.waitMsgs(t, res.Stream.Tag, 2)
	select {
	case <-res.Closed():
		t.Fatal("observability-mode stream closed before deferred_close_timeout")
	default:
	}
	fire <- time.Now()
	res.Wait()
	if asked != istio.DefaultDeferredCloseTimeout {
		t.Errorf("deferred close timeout %v, want the install's %v", asked, istio.DefaultDeferredCloseTimeout)
	}
	if s := rec.waitEnd(t, res.Stream.Tag); len(s.msgs) != 2 {
		t.Fatalf("server saw %d messages, want 2; end %q; stream %+v", len(s.msgs), s.end, res.Stream)
	}
}

// TestStreamLifetimeByVersion: when Envoy closes the stream, per version,
// profile and mode (istio/doc.go). "Early" means before the first response
// body chunk is passed on, i.e. before the HTTP stream ends.
func TestStreamLifetimeByVersion(t *testing.T) {
	rec := &recorder{}
	addr := serve(t, rec)
	edit := func(p Profile, v Version, f func(m *filterv3.ProcessingMode)) *filterv3.ExternalProcessor {
		return shippedWith(t, p, v, func(ep *filterv3.ExternalProcessor) { f(ep.ProcessingMode) })
	}
	trailersSkip := func(m *filterv3.ProcessingMode) { m.ResponseTrailerMode = filterv3.ProcessingMode_SKIP }
	respUnprocessed := func(m *filterv3.ProcessingMode) {
		m.ResponseHeaderMode = filterv3.ProcessingMode_SKIP
		m.ResponseTrailerMode = filterv3.ProcessingMode_SKIP
	}
	for _, tc := range []struct {
		name        string
		cfg         Config
		fast        bool // BodyBeforeHeaderReply
		closedEarly bool
		msgs        int
	}{
		{"1.36/shipped control", Config{Profile: Control, Version: Envoy136}, false, false, 2},
		{"1.37/shipped control: trailers SEND keeps it open", Config{Profile: Control, Version: Envoy137}, false, false, 2},
		{"1.37/shipped control, body already complete (envoy#42507)", Config{Profile: Control, Version: Envoy137}, true, true, 2},
		{"1.36/shipped control, body already complete", Config{Profile: Control, Version: Envoy136}, true, false, 2},
		{"1.37/shipped observe: never early", Config{Profile: Observe, Version: Envoy137}, true, false, 2},
		{"1.36/body NONE trailers SKIP", Config{Version: Envoy136, Filter: edit(Control, Envoy136, trailersSkip)}, false, false, 2},
		{"1.37/body NONE trailers SKIP", Config{Version: Envoy137, Filter: edit(Control, Envoy137, trailersSkip)}, false, true, 2},
		{"1.36/response unprocessed", Config{Version: Envoy136, Filter: edit(Control, Envoy136, respUnprocessed)}, false, false, 1},
		{"1.37/response unprocessed", Config{Version: Envoy137, Filter: edit(Control, Envoy137, respUnprocessed)}, false, true, 1},
		{"1.37/observe, response unprocessed", Config{Version: Envoy137, Filter: edit(Observe, Envoy137, respUnprocessed)}, false, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, tc.cfg, addr)
			req := sseRequest(2)
			req.Response.BodyBeforeHeaderReply = tc.fast
			// The upstream thinks: the server reads request_headers before
			// an early close can reset the stream (ENVOY.md §2).
			req.Response.HeadersDelay = 5 * time.Millisecond
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

// TestLocalReplies: the router's 503 after an upstream reset reaches the
// processor as response_headers only where Envoy sends local replies to
// ext_proc (≥ 1.37, envoy#41769; 1.32/1.33 before CVE-2025-30157's fix).
func TestLocalReplies(t *testing.T) {
	rec := &recorder{}
	addr := serve(t, rec)
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Profile: Control, Version: Envoy136}, "[request_headers(eos=true)]"},
		{Config{Profile: Control, Version: Envoy137}, "[request_headers(eos=true) response_headers(eos=false)]"},
		{Config{Profile: Control, Version: Envoy136, LocalReplies: LocalRepliesSent}, "[request_headers(eos=true) response_headers(eos=false)]"},
		{Config{Profile: Control, Version: Envoy137, LocalReplies: LocalRepliesSkipped}, "[request_headers(eos=true)]"},
		{Config{Profile: Observe, Version: Envoy137}, "[request_headers(eos=true) response_headers(eos=false)]"},
	} {
		t.Run(fmt.Sprintf("%v/%v/%v", tc.cfg.Version, tc.cfg.Profile, tc.cfg.LocalReplies), func(t *testing.T) {
			c := newClient(t, tc.cfg, addr)
			req := sseRequest(3)
			req.Failure.Phase = UpstreamResetBeforeHeaders
			res := c.Do(context.Background(), req)
			res.Wait()
			if res.Outcome != LocalReply || res.Status != 503 || res.FailOpen {
				t.Fatalf("result %+v", res)
			}
			s := rec.waitEnd(t, res.Stream.Tag)
			if got := fmt.Sprint(kinds(s.msgs)); got != tc.want {
				t.Fatalf("messages %s, want %s", got, tc.want)
			}
			if strings.Contains(tc.want, "response_headers") {
				for _, h := range s.msgs[1].GetResponseHeaders().GetHeaders().GetHeaders() {
					t.Errorf("response header %s forwarded", h.GetKey())
				}
			}
		})
	}
}

// TestOverrideMessageTimeout: one override_message_timeout within
// max_message_timeout restarts the timer; a second one, or any without
// max_message_timeout, is ignored.
func TestOverrideMessageTimeout(t *testing.T) {
	// The server holds request_headers 1.5 s, past the 500 ms timer, after
	// sending two overrides of 5 s.
	holder := &holdServer{hold: 1500 * time.Millisecond, override: 5 * time.Second, overrides: 2}
	addr := serve(t, holder)
	for _, tc := range []struct {
		name        string
		max         time.Duration
		applied     int
		ignored     int
		wantReplied bool
	}{
		{"max unset: ignored, times out", 0, 0, 2, false},
		{"max 10s: first applied, second ignored", 10 * time.Second, 1, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := shippedWith(t, Control, Envoy137, func(ep *filterv3.ExternalProcessor) {
				ep.MaxMessageTimeout = nil
				if tc.max > 0 {
					ep.MaxMessageTimeout = durationpb.New(tc.max)
				}
			})
			c := newClient(t, Config{Filter: ep, MessageTimeout: 500 * time.Millisecond}, addr)
			res := c.Do(context.Background(), sseRequest(1))
			res.Wait()
			if res.TimeoutOverrides != tc.applied || res.IgnoredOverrides != tc.ignored {
				t.Fatalf("overrides applied %d ignored %d, want %d %d", res.TimeoutOverrides, res.IgnoredOverrides, tc.applied, tc.ignored)
			}
			replied := len(res.Replies) > 0 && res.Replies[0].Kind == RequestHeaders
			if replied != tc.wantReplied || (!tc.wantReplied && !errors.Is(res.ProcessorErr, ErrMessageTimeout)) {
				t.Fatalf("replies %v err %v", res.Replies, res.ProcessorErr)
			}
		})
	}
}

// holdServer answers request_headers only after hold, first sending
// overrides override_message_timeout messages; everything else at once.
type holdServer struct {
	extprocv3.UnimplementedExternalProcessorServer
	hold, override time.Duration
	overrides      int
}

func (h *holdServer) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		m, err := srv.Recv()
		if err != nil {
			return nil
		}
		if _, ok := m.GetRequest().(*extprocv3.ProcessingRequest_RequestHeaders); ok {
			for range h.overrides {
				if err := srv.Send(&extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(h.override)}); err != nil {
					return nil
				}
			}
			t := time.NewTimer(h.hold)
			select {
			case <-t.C:
			case <-srv.Context().Done():
				t.Stop()
				return nil
			}
		}
		if err := srv.Send(ContinueReply(m)); err != nil {
			return nil
		}
	}
}

// TestAbortAwaitingReply: the client leaves while Envoy waits for the
// request_headers reply; the request ends as a reset, the stream closes,
// and the late reply is ignored.
func TestAbortAwaitingReply(t *testing.T) {
	rec := &recorder{}
	slow := serve(t, &NullProcessor{Delay: time.Second})
	c := newClient(t, Config{Profile: Control, Version: Envoy137}, slow)
	req := sseRequest(2)
	req.Failure = Failure{Phase: AbortAwaitingReply, Delay: 20 * time.Millisecond}
	res := c.Do(context.Background(), req)
	res.Wait()
	if res.Outcome != DownstreamReset || res.Status != 0 || res.FailOpen || len(res.Replies) != 0 || len(res.Sent) != 1 {
		t.Fatalf("result %+v", res)
	}
	// With a fast server the reply comes first and the reset follows.
	c2 := newClient(t, Config{Profile: Control, Version: Envoy137}, serve(t, rec))
	res = c2.Do(context.Background(), req)
	res.Wait()
	if res.Outcome != DownstreamReset || len(res.Replies) != 1 {
		t.Fatalf("fast server: result %+v", res)
	}
	if s := rec.waitEnd(t, res.Stream.Tag); len(s.msgs) != 1 {
		t.Fatalf("server saw %v", kinds(s.msgs))
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

// localServer holds request_headers with one override, then answers it
// with immediate_response status (sendImmediateResponse: below 200 → 200)
// and a Retry-After header, and ends the RPC.
type localServer struct {
	extprocv3.UnimplementedExternalProcessorServer
	status typev3.StatusCode
}

func (s *localServer) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	if _, err := srv.Recv(); err != nil {
		return nil
	}
	if err := srv.Send(&extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(5 * time.Second)}); err != nil {
		return nil
	}
	time.Sleep(1100 * time.Millisecond) // past the 1 s timer: only the override keeps the request
	return srv.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: s.status}, Details: "held_then_local",
			Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
				{Header: &corev3.HeaderValue{Key: "Retry-After", RawValue: []byte("7")}}}}}}})
}

// TestImmediateResponseWhileHeld: a held request (one override honoured)
// answered locally: the client gets the status and headers, nothing goes
// upstream, and a status below 200 becomes 200.
func TestImmediateResponseWhileHeld(t *testing.T) {
	for _, tc := range []struct {
		code typev3.StatusCode
		want int
	}{{typev3.StatusCode_ServiceUnavailable, 503}, {typev3.StatusCode_Continue, 200}} {
		c := newClient(t, Config{Profile: Control, Version: Envoy137, MessageTimeout: time.Second}, serve(t, &localServer{status: tc.code}))
		res := c.Do(context.Background(), sseRequest(2))
		res.Wait()
		if res.Outcome != LocalReply || res.Status != tc.want || !res.ImmediateResponse || res.TimeoutOverrides != 1 ||
			res.LocalHeader("retry-after") != "7" || res.LocalDetails != "held_then_local" || len(res.Sent) != 1 || res.Stream.EndedByServer {
			t.Fatalf("status %v: %+v", tc.code, res)
		}
	}
}

// TestNoHealthyUpstream: the router finds no host after the filter let the
// request through: 503 at once; the local reply reaches the processor only
// where this generation sends local replies to ext_proc.
func TestNoHealthyUpstream(t *testing.T) {
	rec := &recorder{}
	addr := serve(t, rec)
	for _, v := range []Version{Envoy136, Envoy137} {
		c := newClient(t, Config{Profile: Control, Version: v}, addr)
		r := sseRequest(3)
		r.NoHealthyUpstream = func() bool { return true }
		res := c.Do(context.Background(), r)
		res.Wait()
		// ≤ 1.36 (1.34+): local replies skip ext_proc; 1.37 sends them.
		sentReply := slices.Contains(res.Sent, ResponseHeaders)
		if res.Outcome != LocalReply || res.Status != 503 || !res.NoHealthyUpstream || res.Sent[0] != RequestHeaders || sentReply != (v == Envoy137) {
			t.Fatalf("%v: %+v (sent %v)", v, res, res.Sent)
		}
	}
}

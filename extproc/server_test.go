package extproc

import (
	"context"
	"errors"
	"io"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/inflight-dev/inflight/mesh"
)

// scriptStream is an in-memory ExternalProcessor_ProcessServer that hands
// the handler a fixed sequence of messages and then a final error. It
// replaces the transport only; the handler under test is the real one (the
// socket-level behaviour is covered by the harness in test/).
type scriptStream struct {
	grpc.ServerStream
	ctx     context.Context // nil: context.Background()
	msgs    []*extprocv3.ProcessingRequest
	final   error
	sendErr error
	sent    []*extprocv3.ProcessingResponse
}

func (s *scriptStream) Context() context.Context {
	if s.ctx != nil {
		return s.ctx
	}
	return context.Background()
}
func (s *scriptStream) Recv() (*extprocv3.ProcessingRequest, error) {
	if len(s.msgs) == 0 {
		return nil, s.final
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}
func (s *scriptStream) Send(r *extprocv3.ProcessingResponse) error {
	if s.sendErr != nil {
		return s.sendErr
	}
	s.sent = append(s.sent, r)
	return nil
}
func (s *scriptStream) SetHeader(metadata.MD) error  { return nil }
func (s *scriptStream) SendHeader(metadata.MD) error { return nil }
func (s *scriptStream) SetTrailer(metadata.MD)       {}

func sidecarAttrs() map[string]*structpb.Struct {
	s, _ := structpb.NewStruct(map[string]any{
		mesh.AttrPod: "vllm-0", mesh.AttrNamespace: "models", mesh.AttrWorkload: "vllm",
		mesh.AttrCluster: "inbound|8000||", mesh.AttrServiceHost: "vllm.models.svc.cluster.local",
	})
	return map[string]*structpb.Struct{mesh.AttributesKey: s}
}

func reqHeaders(obs bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":path", RawValue: []byte("/v1/completions")}}},
		}},
		Attributes:        sidecarAttrs(),
		ObservabilityMode: obs,
	}
}

func respHeaders(eos, obs bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{EndOfStream: eos}}, ObservabilityMode: obs}
}

func respBody(eos, obs bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte("data: tok\n\n"), EndOfStream: eos}}, ObservabilityMode: obs}
}

func respTrailers(obs bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{
		ResponseTrailers: &extprocv3.HttpTrailers{}}, ObservabilityMode: obs}
}

func reqBody(obs bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
		RequestBody: &extprocv3.HttpBody{EndOfStream: true}}, ObservabilityMode: obs}
}

func reqTrailers(obs bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{
		RequestTrailers: &extprocv3.HttpTrailers{}}, ObservabilityMode: obs}
}

// replyMatches reports whether resp is the reply type Envoy expects for req.
func replyMatches(req *extprocv3.ProcessingRequest, resp *extprocv3.ProcessingResponse) bool {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return resp.GetRequestHeaders() != nil
	case *extprocv3.ProcessingRequest_RequestBody:
		return resp.GetRequestBody() != nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return resp.GetRequestTrailers() != nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return resp.GetResponseHeaders() != nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		return resp.GetResponseBody() != nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return resp.GetResponseTrailers() != nil
	}
	return false
}

// checkDrained fails unless every target is back to zero with every start
// completed, and returns the total started.
func checkDrained(t testing.TB, tr *Tracker) uint64 {
	t.Helper()
	var n uint64
	for _, r := range tr.Records() {
		if r.InFlight != 0 || r.Started != r.Completed {
			t.Fatalf("leaked: %+v", r.TargetRecord)
		}
		n += r.Started
	}
	return n
}

func TestProcessScenarios(t *testing.T) {
	canceled := status.Error(codes.Canceled, "context canceled")
	tests := []struct {
		name      string
		obs       bool
		msgs      func(obs bool) []*extprocv3.ProcessingRequest
		final     error
		wantStart uint64
		wantCause endCause
		wantErr   bool
	}{
		{"SSE ends on body end_of_stream", false, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o), respHeaders(false, o), respBody(false, o), respBody(true, o)}
		}, io.EOF, 1, endBodyEOS, false},
		{"observe: same, no replies", true, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o), respHeaders(false, o), respBody(false, o), respBody(true, o)}
		}, io.EOF, 1, endBodyEOS, false},
		{"bodiless response ends on headers end_of_stream", false, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o), reqBody(o), reqTrailers(o), respHeaders(true, o)}
		}, io.EOF, 1, endHeadersEOS, false},
		{"trailers end the response", false, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o), respHeaders(false, o), respBody(false, o), respTrailers(o)}
		}, io.EOF, 1, endTrailers, false},
		{"Envoy ≤1.36 body NONE: the stream's EOF ends it", false, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o), respHeaders(false, o)}
		}, io.EOF, 1, endStreamEOF, false},
		{"upstream reset before response headers (RST)", false, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o)}
		}, canceled, 1, endCanceled, false},
		{"client abort mid-body, observe", true, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o), respHeaders(false, o), respBody(false, o)}
		}, canceled, 1, endCanceled, false},
		{"transport error", false, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o), respHeaders(false, o)}
		}, status.Error(codes.Unavailable, "conn reset"), 1, endStreamErr, true},
		{"duplicate request headers count once", false, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o), reqHeaders(o), respHeaders(true, o)}
		}, io.EOF, 1, endHeadersEOS, false},
		{"no request headers: nothing counted", false, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{respHeaders(false, o), respBody(true, o)}
		}, io.EOF, 0, 0, false},
		{"stream closed before any message", false, func(o bool) []*extprocv3.ProcessingRequest { return nil },
			canceled, 0, 0, false},
		{"invalid empty message", false, func(o bool) []*extprocv3.ProcessingRequest {
			return []*extprocv3.ProcessingRequest{reqHeaders(o), {}}
		}, io.EOF, 1, endStreamErr, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := NewTracker(TrackerOptions{})
			m := newMetrics()
			srv := NewServer(tr, ServerOptions{Metrics: m})
			msgs := tc.msgs(tc.obs)
			st := &scriptStream{msgs: msgs, final: tc.final}
			err := srv.Process(st)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Process error = %v, want error %v", err, tc.wantErr)
			}
			if got := checkDrained(t, tr); got != tc.wantStart {
				t.Fatalf("started %d, want %d", got, tc.wantStart)
			}
			if tc.wantStart == 1 {
				if got := testutil.ToFloat64(m.ends[tc.wantCause]); got != 1 {
					t.Fatalf("end cause %s counted %v times, want 1", endCauseNames[tc.wantCause], got)
				}
			}
			// 9.5's counters: a started request that saw no response
			// message, and a stream that never started one.
			sawResponse := false
			for _, msg := range msgs {
				if msg.GetResponseHeaders() != nil || msg.GetResponseBody() != nil || msg.GetResponseTrailers() != nil {
					sawResponse = true
				}
			}
			var noResp, noStart float64
			for c := range numEndCauses {
				noResp += testutil.ToFloat64(m.noResponse[c])
				noStart += testutil.ToFloat64(m.noStart[c])
			}
			if wantNoResp := float64(tc.wantStart) * b2f(!sawResponse); noResp != wantNoResp {
				t.Fatalf("requests without response counted %v, want %v", noResp, wantNoResp)
			}
			if wantNoStart := b2f(tc.wantStart == 0); noStart != wantNoStart {
				t.Fatalf("streams without request_headers counted %v, want %v", noStart, wantNoStart)
			}
			consumed := len(msgs) - len(st.msgs)
			if tc.obs {
				if len(st.sent) != 0 {
					t.Fatalf("observability mode: sent %d replies, want none", len(st.sent))
				}
				return
			}
			// Every consumed valid message got exactly one reply, in order, of
			// the matching type.
			var valid []*extprocv3.ProcessingRequest
			for _, m := range msgs[:consumed] {
				if m.GetRequest() != nil {
					valid = append(valid, m)
				}
			}
			if len(st.sent) != len(valid) {
				t.Fatalf("sent %d replies for %d messages", len(st.sent), len(valid))
			}
			for i := range valid {
				if !replyMatches(valid[i], st.sent[i]) {
					t.Fatalf("reply %d has the wrong type for %T", i, valid[i].GetRequest())
				}
			}
		})
	}
}

func TestProcessSendFailureReleases(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	srv := NewServer(tr, ServerOptions{})
	st := &scriptStream{msgs: []*extprocv3.ProcessingRequest{reqHeaders(false)}, final: io.EOF,
		sendErr: status.Error(codes.Unavailable, "gone")}
	if err := srv.Process(st); err == nil {
		t.Fatal("want the send error back")
	}
	if checkDrained(t, tr) != 1 {
		t.Fatal("the request must have started and ended")
	}
}

func TestProcessResolvesTarget(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	srv := NewServer(tr, ServerOptions{})
	st := &scriptStream{msgs: []*extprocv3.ProcessingRequest{reqHeaders(false)}, final: errors.New("x")}
	_ = srv.Process(st)
	recs := tr.Records()
	want := TargetRecord{Namespace: "models", Workload: "vllm", Service: "vllm", Pod: "vllm-0", Source: "inbound", Started: 1, Completed: 1}
	if len(recs) != 1 {
		t.Fatalf("records %+v", recs)
	}
	got := recs[0].TargetRecord
	got.BusySeconds, got.DurationSecondsSum, got.CreatedUptimeSeconds = 0, 0, 0
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

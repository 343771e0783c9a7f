package envoy

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/inflight-dev/inflight/mesh"
	"google.golang.org/protobuf/types/known/structpb"
)

// Header is one HTTP header. Names are lower-cased when sent, as Envoy does.
type Header struct{ Name, Value string }

// Request is one downstream HTTP request as the ext_proc filter sees it: its
// headers and body, the upstream's response plan, and optionally a failure.
type Request struct {
	// Method, Path, Authority, Scheme fill the pseudo-headers (defaults POST,
	// /v1/completions, "model", http).
	Method, Path, Authority, Scheme string
	Headers                         []Header
	// Body is the request body, chunk by chunk. It is sent to the processor
	// only in request body mode STREAMED; it sets request_headers'
	// end_of_stream either way.
	Body [][]byte
	// Trailers are request trailers (sent only in trailer mode SEND).
	Trailers []Header

	// Attributes are the evaluated request_attributes: CEL text → value
	// (string, bool, integers and floats, time.Time, time.Duration; maps and
	// slices print as "map value"/"list value"; nil is dropped). See
	// InboundAttributes and GatewayAttributes.
	Attributes map[string]any
	// ResponseAttributes are the evaluated response_attributes, sent on the
	// first response-direction message (e.g. "upstream.address",
	// "response.code").
	//
	// Of both maps only the keys the filter configures are sent (the
	// shipped filter configures no response attributes), as Envoy
	// evaluates only its configured expressions.
	ResponseAttributes map[string]any

	Response Response
	Failure  Failure

	// NoHealthyUpstream, if set, is asked once the request has passed the
	// filter (its request_headers answered with CONTINUE, or the filter
	// failed open): true means the router finds no host — the Service's
	// cluster has no endpoint in this proxy's EDS, e.g. a workload at zero,
	// or a held request released before the new endpoint reached the proxy.
	// The router then answers 503 no_healthy_upstream (UH) at once, with no
	// retry: host selection fails before retry state exists (ENVOY.md §5);
	// the reply passes through ext_proc as the router's local replies do
	// for this version.
	NoHealthyUpstream func() bool

	// OnResponseChunk, if set, is called on Do's goroutine before response
	// chunk i is passed on (after its delay), with the Result being built:
	// tests use it to observe the side stream mid-response without sleeping.
	OnResponseChunk func(i int, r *Result)
}

// Response is the upstream's plan: after HeadersDelay its headers, then each
// body chunk ChunkDelay apart (end_of_stream on the last), then trailers.
//
// A response with neither body nor trailers ends at its headers
// (end_of_stream); one with trailers (a gRPC response from an HTTP/2
// upstream) ends at its trailers.
type Response struct {
	Status       int // default 200
	Headers      []Header
	Body         [][]byte
	Trailers     []Header
	HeadersDelay time.Duration
	ChunkDelay   time.Duration
	// BodyBeforeHeaderReply: the whole body (ending with end_stream, no
	// trailers) reaches Envoy while it still waits for the processor's
	// reply to response_headers — a small, fast response. Envoy holds it
	// meanwhile; with body NONE and trailers SEND, Envoy ≥ 1.37 then knows
	// there are no trailers and closes the stream at that reply
	// (envoy#42507). It changes nothing else the harness sends.
	BodyBeforeHeaderReply bool
}

// Phase is where a request fails.
type Phase int

const (
	// NoFailure: the request completes.
	NoFailure Phase = iota
	// AbortBeforeRequestHeaders: the client is gone before the request
	// reaches the filter; no side stream is ever opened.
	AbortBeforeRequestHeaders
	// AbortAfterRequestHeaders: the client resets after the request
	// headers (and body) went out, before any response.
	AbortAfterRequestHeaders
	// AbortMidResponseBody: the client resets after Failure.AfterChunks
	// response body chunks.
	AbortMidResponseBody
	// UpstreamResetBeforeHeaders: the upstream resets before its headers and
	// the router sends a local reply (503). Whether that reply's
	// response_headers reach the processor depends on Config.LocalReplies.
	UpstreamResetBeforeHeaders
	// UpstreamResetMidBody: the upstream resets after Failure.AfterChunks
	// chunks (a broken SSE stream); the downstream is reset.
	UpstreamResetMidBody
	// AbortAwaitingReply: the client resets Failure.Delay after the
	// request_headers message was sent, whether or not the processor's
	// reply came back by then (control: Envoy may still be waiting for it;
	// a late reply is ignored). Without request headers SEND it is
	// AbortAfterRequestHeaders.
	AbortAwaitingReply
)

var phaseNames = [...]string{"none", "abort-before-request-headers", "abort-after-request-headers",
	"abort-mid-response-body", "upstream-reset-before-headers", "upstream-reset-mid-body", "abort-awaiting-reply"}

// Phases lists every Phase, NoFailure first.
func Phases() []Phase {
	out := make([]Phase, len(phaseNames))
	for i := range out {
		out[i] = Phase(i)
	}
	return out
}

func (p Phase) String() string {
	if int(p) >= 0 && int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return "Phase(" + strconv.Itoa(int(p)) + ")"
}

// Failure is an optional failure of the HTTP request.
type Failure struct {
	Phase Phase
	// AfterChunks is the number of response chunks delivered before a
	// mid-body failure (len(Body) = after the last chunk, before the
	// trailers). A response that ends at its headers cannot fail mid-body:
	// it completes.
	AfterChunks int
	// Delay is how long after the phase point the failure happens.
	Delay time.Duration
}

// Outcome is how the HTTP request ended for the downstream client.
type Outcome int

const (
	// Completed: the response was delivered.
	Completed Outcome = iota
	// LocalReply: Envoy answered itself (Result.Status): 503 after an
	// upstream reset, 504 on a message timeout, StatusOnError, or an
	// immediate_response.
	LocalReply
	// DownstreamReset: the downstream stream was reset (client abort,
	// upstream reset after response headers, or an error after the
	// response started).
	DownstreamReset
	// NeverStarted: the client left before the request reached the filter.
	NeverStarted
)

func (o Outcome) String() string {
	return [...]string{"completed", "local-reply", "downstream-reset", "never-started"}[o]
}

// Kind names a ProcessingRequest message type.
type Kind int

// The message kinds, in protocol order.
const (
	RequestHeaders Kind = iota
	RequestBody
	RequestTrailers
	ResponseHeaders
	ResponseBody
	ResponseTrailers
)

func (k Kind) String() string {
	return [...]string{"request_headers", "request_body", "request_trailers",
		"response_headers", "response_body", "response_trailers"}[k]
}

// Reply is one awaited reply.
type Reply struct {
	Kind    Kind
	Latency time.Duration // from SendMsg to the reply's receipt
}

// Result is what happened to one request. The fields above Stream are final
// when Client.Do returns; Stream is final once Wait returns (the side stream
// may be closed later than the HTTP request ends: deferred or graceful close).
type Result struct {
	Outcome Outcome
	Status  int // HTTP status sent downstream; 0 if reset before it
	// FailOpen: the filter gave up on the processor (timeout, gRPC error,
	// spurious reply, stream could not open) and let the request continue.
	FailOpen bool
	// ProcessorErr is why the filter stopped using the processor early
	// (nil if it did not).
	ProcessorErr error
	// ImmediateResponse: the processor answered with immediate_response;
	// LocalHeaders and LocalDetails are its headers (e.g. Retry-After;
	// raw_value, else value) and details.
	ImmediateResponse bool
	LocalHeaders      []Header
	LocalDetails      string
	// NoHealthyUpstream: the router found no host (Request.NoHealthyUpstream)
	// and answered 503 UH.
	NoHealthyUpstream bool
	// Replies lists the awaited replies that arrived in time, in order.
	Replies []Reply
	// TimeoutOverrides counts the override_message_timeout replies Envoy
	// applied; IgnoredOverrides those it ignored (a second one for the
	// same message, out of range, or max_message_timeout unset).
	TimeoutOverrides, IgnoredOverrides int
	// Sent lists the kinds of messages sent, in order.
	Sent []Kind

	Stream StreamInfo

	done chan struct{}
}

// Wait blocks until the side stream is closed and Stream is final.
func (r *Result) Wait() { <-r.done }

// LocalHeader returns the immediate_response header name (lower case), or "".
func (r *Result) LocalHeader(name string) string {
	for _, h := range r.LocalHeaders {
		if h.Name == name {
			return h.Value
		}
	}
	return ""
}

// Uncounted reports a request the filter tried to send to the processor and
// could not (Stream.Refused or Stream.Lost): Envoy went on fail-open and no
// processor can have counted it. Final after Wait.
func (r *Result) Uncounted() bool { return r.Stream.Refused || r.Stream.Lost }

// Closed is closed when the side stream is closed and Stream is final.
func (r *Result) Closed() <-chan struct{} { return r.done }

// StreamInfo describes the request's side stream, for exactness checks. The
// times are wall-clock readings with Go's monotonic component.
type StreamInfo struct {
	Opened bool
	// Refused: the stream could not be opened (no endpoint, or the
	// endpoint refused the connection: a stopped server): the filter went
	// on fail-open and the processor never saw the request.
	Refused bool
	// Lost: the stream opened but failed before any of its bytes was
	// written (e.g. its connection got GOAWAY and the redial was refused):
	// the processor never saw the request either.
	Lost    bool
	Replica int // index of the endpoint the stream went to (Client.Endpoints)
	// Tag is the stream's id, sent as gRPC metadata StreamTagHeader.
	Tag uint64
	// Bytes is the gRPC payload (5-byte prefix + message) of every message
	// handed to the stream.
	Bytes int64
	// Close is how the stream was closed.
	Close CloseStyle
	// FirstWrite is the start of the socket write that carried the first
	// byte of the first message: the server cannot have started earlier.
	FirstWrite time.Time
	// FirstReply is when the first reply of any kind arrived (zero if
	// none): the server had read the first message by then.
	FirstReply time.Time
	// EndWrite is the start of the socket write that carried the first
	// possible end signal for the server: the response message with
	// end_of_stream (or the trailers), else END_STREAM, else RST_STREAM.
	// The server cannot have ended the request earlier.
	EndWrite time.Time
	// EndAck is a time by which the server had certainly seen the end: the
	// reply to the end message, or the RPC's status after a graceful close
	// (zero if unknown, e.g. after a reset).
	EndAck time.Time
	// HalfClosed and Reset say whether END_STREAM and RST_STREAM were written.
	HalfClosed, Reset bool
	// EndedByServer: the server finished the RPC with OK before the harness
	// wrote any possible end signal (EndWrite is then zero). A server that
	// counts correctly never does that: it ends a request only on an end
	// signal, so this marks a request it ended early.
	EndedByServer bool
	// ServerStatus is the RPC's final error as the client saw it (nil for OK,
	// io.EOF never appears).
	ServerStatus error
	// Uncertain: the stream was reset within Config.UncertainWindow of its
	// first message and got no reply at all, so a correct server may not
	// have counted its start (ENVOY.md §2).
	Uncertain bool
	// WireErr is set if the harness could not confirm the stream's bytes
	// were written before resetting it.
	WireErr error
}

// Duration is the harness-side view of the request's server-side duration:
// EndWrite − FirstWrite, or 0 if the stream carried nothing.
func (s *StreamInfo) Duration() time.Duration {
	if s.FirstWrite.IsZero() || s.EndWrite.IsZero() {
		return 0
	}
	return s.EndWrite.Sub(s.FirstWrite)
}

// InboundAttributes returns the request attributes an inbound sidecar in
// front of pod sends (DESIGN.md § Identity): node metadata, node id, the
// inbound cluster name and the Service host from the cluster metadata.
func InboundAttributes(namespace, workload, service, pod, podIP string, port int) map[string]any {
	return map[string]any{
		mesh.AttrPod:         pod,
		mesh.AttrNamespace:   namespace,
		mesh.AttrWorkload:    workload,
		mesh.AttrNodeID:      fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", podIP, pod, namespace, namespace),
		mesh.AttrCluster:     fmt.Sprintf("inbound|%d||", port),
		mesh.AttrServiceHost: fmt.Sprintf("%s.%s.svc.cluster.local", service, namespace),
	}
}

// GatewayAttributes returns the request attributes an ingress gateway sends
// for a request routed to service: node metadata names the gateway pod, the
// cluster names the Service.
func GatewayAttributes(namespace, service string, port int) map[string]any {
	return map[string]any{
		mesh.AttrPod:       "istio-ingressgateway-7d9f8b6c4-x2k9p",
		mesh.AttrNamespace: "istio-system",
		mesh.AttrWorkload:  "istio-ingressgateway",
		mesh.AttrNodeID:    "router~10.0.9.2~istio-ingressgateway-7d9f8b6c4-x2k9p.istio-system~istio-system.svc.cluster.local",
		mesh.AttrCluster:   fmt.Sprintf("outbound|%d||%s.%s.svc.cluster.local", port, service, namespace),
	}
}

// ResponseAttributesFor returns typical response attributes: the upstream
// pod's address and the response code (a number, as CEL ints are sent).
func ResponseAttributesFor(podIP string, port, code int) map[string]any {
	return map[string]any{
		"upstream.address": fmt.Sprintf("%s:%d", podIP, port),
		"response.code":    code,
	}
}

// attributesStruct renders the evaluated attributes the filter configures
// as Envoy does (ENVOY.md §1.4): bool → bool_value, numbers → number_value,
// everything else through Expr::print, absent values dropped, expressions
// the filter does not configure never evaluated.
//
// With no configured expression nothing is sent (nil); with some, a Struct
// is sent even if every value is absent.
func attributesStruct(attrs map[string]any, configured map[string]bool) *structpb.Struct {
	if len(configured) == 0 {
		return nil
	}
	s := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(attrs))}
	for k, v := range attrs {
		if !configured[k] {
			continue
		}
		var pv *structpb.Value
		switch x := v.(type) {
		case nil:
			continue
		case string:
			pv = structpb.NewStringValue(x)
		case []byte:
			pv = structpb.NewStringValue(string(x))
		case bool:
			pv = structpb.NewBoolValue(x)
		case int:
			pv = structpb.NewNumberValue(float64(x))
		case int32:
			pv = structpb.NewNumberValue(float64(x))
		case int64:
			pv = structpb.NewNumberValue(float64(x))
		case uint32:
			pv = structpb.NewNumberValue(float64(x))
		case uint64:
			pv = structpb.NewNumberValue(float64(x))
		case float64:
			pv = structpb.NewNumberValue(x)
		case time.Time:
			pv = structpb.NewStringValue(x.UTC().Format(time.RFC3339Nano))
		case time.Duration:
			pv = structpb.NewStringValue(x.String())
		case map[string]any, map[string]string:
			pv = structpb.NewStringValue("map value")
		case []any, []string:
			pv = structpb.NewStringValue("list value")
		default:
			pv = structpb.NewStringValue(fmt.Sprint(x))
		}
		s.Fields[k] = pv
	}
	return s
}

func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

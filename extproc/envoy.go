package extproc

import (
	"math"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/inflight-dev/inflight/mesh"
)

// This file is the one place that knows the shape of Envoy's ext_proc
// messages: reading attributes and header values, and building replies.

// attributes adapts the Struct Envoy sends under mesh.AttributesKey to
// mesh.Attributes. Only string values are read: every attribute inflight
// asks for is a string, and anything else is malformed input.
type attributes struct{ s *structpb.Struct }

func requestAttributes(req *extprocv3.ProcessingRequest) attributes {
	return attributes{req.GetAttributes()[mesh.AttributesKey]}
}

// Lookup implements mesh.Attributes.
func (a attributes) Lookup(k string) (string, bool) {
	v, ok := a.s.GetFields()[k]
	if !ok {
		return "", false
	}
	s, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return "", false
	}
	return s.StringValue, true
}

// The replies. Each is allocated once and reused for every stream: gRPC
// marshals a message without changing it, and these are never mutated. An
// empty HeadersResponse, BodyResponse or TrailersResponse means CONTINUE.
var (
	replyRequestHeaders   = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	replyRequestBody      = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	replyRequestTrailers  = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	replyResponseHeaders  = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	replyResponseBody     = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	replyResponseTrailers = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
)

// overrideMessageTimeout is the reply that holds a request: only
// override_message_timeout, which restarts Envoy's timer for the pending
// message with d (honoured once per message, up to max_message_timeout);
// Envoy ignores every other field of such a message (ENVOY.md §5).
func overrideMessageTimeout(d time.Duration) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{OverrideMessageTimeout: durationpb.New(d)}
}

// The local replies.
type localReply uint8

const (
	// replyShed: over a limit (max-queue). 429, not 503: proxies in front
	// that retry 5xx (Envoy retry_on 5xx or gateway-error, Istio's default
	// retriable 503 before EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY) would
	// multiply the load being shed, and 429 does not count as a server
	// error in 5xx alerts; OpenAI-style clients retry 429 and 503 alike,
	// honouring Retry-After (README, Shedding).
	replyShed localReply = iota
	// replyHoldTimeout: no ready endpoint within the hold timeout: 503, as
	// the router would answer with no endpoint, plus Retry-After.
	replyHoldTimeout
)

// immediateReply builds a local reply: status, Retry-After in whole seconds
// (rounded up), an OpenAI-style JSON error body, and response code details
// for Envoy's access log. Header values go in raw_value, as Envoy reads
// them (envoy.reloadable_features.send_header_raw_value; Envoy refuses a
// header with both value and raw_value).
func immediateReply(kind localReply, retryAfter time.Duration) *extprocv3.ProcessingResponse {
	code, details, body := typev3.StatusCode_TooManyRequests, "inflight_shed",
		`{"error":{"message":"inflight: too many requests for this model; retry later","type":"overloaded","code":"inflight_shed"}}`
	if kind == replyHoldTimeout {
		code, details, body = typev3.StatusCode_ServiceUnavailable, "inflight_hold_timeout",
			`{"error":{"message":"inflight: no replica of this model became ready in time; retry later","type":"unavailable","code":"inflight_hold_timeout"}}`
	}
	secs := strconv.FormatInt(int64(math.Ceil(retryAfter.Seconds())), 10)
	set := func(k, v string) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: code},
			Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{set("retry-after", secs), set("content-type", "application/json")}},
			Body:    []byte(body),
			Details: details,
		}}}
}

// event is what one ProcessingRequest means for request accounting.
type event uint8

const (
	evInvalid  event = iota // no oneof set: not a message Envoy sends
	evStart                 // request_headers
	evContinue              // request body/trailers, response headers/body that do not end the response
	evEnd                   // the response is complete
)

// message is what one ProcessingRequest means: for request accounting, how
// the request ends if it does, whether it travels in the response direction,
// and the CONTINUE reply of the matching type.
type message struct {
	ev       event
	cause    endCause
	response bool
	reply    *extprocv3.ProcessingResponse
}

// classify reads msg's kind.
func classify(msg *extprocv3.ProcessingRequest) message {
	switch r := msg.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return message{ev: evStart, reply: replyRequestHeaders}
	case *extprocv3.ProcessingRequest_RequestBody:
		return message{ev: evContinue, reply: replyRequestBody}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return message{ev: evContinue, reply: replyRequestTrailers}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		if r.ResponseHeaders.GetEndOfStream() {
			return message{ev: evEnd, cause: endHeadersEOS, response: true, reply: replyResponseHeaders}
		}
		return message{ev: evContinue, response: true, reply: replyResponseHeaders}
	case *extprocv3.ProcessingRequest_ResponseBody:
		if r.ResponseBody.GetEndOfStream() {
			return message{ev: evEnd, cause: endBodyEOS, response: true, reply: replyResponseBody}
		}
		return message{ev: evContinue, response: true, reply: replyResponseBody}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return message{ev: evEnd, cause: endTrailers, response: true, reply: replyResponseTrailers}
	}
	return message{ev: evInvalid}
}

package extproc

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
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

// HeaderValue returns a header's value from Envoy's HeaderMap: raw_value as
// current Envoys send it, else the legacy value field. Keys are lower-case.
func HeaderValue(h *corev3.HeaderMap, key string) (string, bool) {
	for _, hv := range h.GetHeaders() {
		if hv.GetKey() != key {
			continue
		}
		if raw := hv.GetRawValue(); len(raw) > 0 {
			return string(raw), true
		}
		return hv.GetValue(), true
	}
	return "", false
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

// event is what one ProcessingRequest means for request accounting.
type event uint8

const (
	evInvalid  event = iota // no oneof set: not a message Envoy sends
	evStart                 // request_headers
	evContinue              // request body/trailers, response headers/body that do not end the response
	evEnd                   // the response is complete
)

// classify returns what msg means, how the request ends if it does, and the
// CONTINUE reply of the matching type.
func classify(msg *extprocv3.ProcessingRequest) (event, endCause, *extprocv3.ProcessingResponse) {
	switch r := msg.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return evStart, 0, replyRequestHeaders
	case *extprocv3.ProcessingRequest_RequestBody:
		return evContinue, 0, replyRequestBody
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return evContinue, 0, replyRequestTrailers
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		if r.ResponseHeaders.GetEndOfStream() {
			return evEnd, endHeadersEOS, replyResponseHeaders
		}
		return evContinue, 0, replyResponseHeaders
	case *extprocv3.ProcessingRequest_ResponseBody:
		if r.ResponseBody.GetEndOfStream() {
			return evEnd, endBodyEOS, replyResponseBody
		}
		return evContinue, 0, replyResponseBody
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return evEnd, endTrailers, replyResponseTrailers
	}
	return evInvalid, 0, nil
}

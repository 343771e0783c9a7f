package extproc

import (
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

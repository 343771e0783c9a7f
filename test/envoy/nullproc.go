package envoy

import (
	"errors"
	"io"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NullProcessor is the reference ext_proc server that does nothing: it
// answers every message with the matching empty reply (CONTINUE), and never
// replies in observability mode. It is the baseline of the load benchmark
// and the stand-in server of the harness's own tests.
//
// Delay, if set, is a deliberately slow server: each reply is sent that long
// after the message was read (to trigger the client's message timeout).
// Spurious, if set, answers every message with the wrong reply type.
// Its zero value is ready to use and safe for concurrent streams.
type NullProcessor struct {
	extprocv3.UnimplementedExternalProcessorServer
	Delay    time.Duration
	Spurious bool
}

var _ extprocv3.ExternalProcessorServer = (*NullProcessor)(nil)

// Process implements the ext_proc service.
func (p *NullProcessor) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		if req.GetObservabilityMode() {
			continue
		}
		if p.Delay > 0 {
			t := time.NewTimer(p.Delay)
			select {
			case <-t.C:
			case <-srv.Context().Done():
				t.Stop()
				return nil
			}
		}
		resp := ContinueReply(req)
		if p.Spurious {
			resp = SpuriousReply(req)
		}
		if resp == nil {
			continue
		}
		if err := srv.Send(resp); err != nil {
			return nil //nolint:nilerr // the stream is gone; nothing to report
		}
	}
}

// ContinueReply returns the empty reply of the type that matches req (nil
// for a request with no processing message).
func ContinueReply(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	}
	return nil
}

// SpuriousReply returns a reply of a type that does not match req.
func SpuriousReply(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	if _, ok := req.GetRequest().(*extprocv3.ProcessingRequest_RequestTrailers); ok {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
}

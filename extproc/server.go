package extproc

import (
	"errors"
	"io"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/inflight-dev/inflight/mesh"
)

// endCause says which signal ended a request. Values index Metrics.ends.
type endCause uint8

const (
	endBodyEOS    endCause = iota // response body end_of_stream
	endHeadersEOS                 // response headers end_of_stream (no body)
	endTrailers                   // response trailers
	endStreamEOF                  // Envoy half-closed the stream
	endCanceled                   // the stream was cancelled (Envoy's reset, shutdown)
	endStreamErr                  // any other stream error, or an invalid message
	numEndCauses
)

var endCauseNames = [numEndCauses]string{"response_body_eos", "response_headers_eos", "response_trailers", "stream_eof", "stream_canceled", "stream_error"}

// Server is the ext_proc gRPC service. It never blocks Envoy: it replies to
// every message that needs a reply at once, with CONTINUE of the matching
// type, and in observability mode it sends nothing.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	tracker *Tracker
	metrics *Metrics
	log     *zap.Logger
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// NewServer returns a Server that counts into tracker. metrics and log may be
// nil.
func NewServer(tracker *Tracker, metrics *Metrics, log *zap.Logger) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	if metrics == nil {
		metrics = newMetrics()
	}
	return &Server{tracker: tracker, metrics: metrics, log: log}
}

// Process handles one ext_proc stream, i.e. one HTTP request.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	s.metrics.streamsActive.Inc()
	defer s.metrics.streamsActive.Dec()

	var req Request
	end := func(c endCause) {
		if req.Started() {
			s.tracker.End(&req)
			s.metrics.ends[c].Inc()
		}
	}
	// Whatever happens below, including a panic in gRPC code, the request
	// is released once. End is idempotent.
	defer end(endStreamErr)

	started := false
	for {
		msg, err := stream.Recv()
		if err != nil {
			return s.streamEnded(err, end)
		}
		ev, cause, reply := classify(msg)
		switch ev {
		case evInvalid:
			s.metrics.streamErrors.WithLabelValues("invalid_message").Inc()
			end(endStreamErr)
			return status.Error(codes.InvalidArgument, "ProcessingRequest has no request set")
		case evStart:
			// A second request_headers on one stream is a protocol
			// violation; it is answered but never counted twice.
			if !started {
				started = true
				t, reason := mesh.Resolve(requestAttributes(msg))
				req = s.tracker.Start(t, reason)
			}
		case evEnd:
			end(cause)
		}
		if !msg.GetObservabilityMode() {
			if err := stream.Send(reply); err != nil {
				return s.streamEnded(err, end)
			}
		}
		// Once the response is complete there is nothing left to count:
		// close the stream with OK and Envoy carries on without us.
		if ev == evEnd {
			return nil
		}
	}
}

// streamEnded ends the request for a stream that stopped with err, and
// returns what Process returns.
func (s *Server) streamEnded(err error, end func(endCause)) error {
	if errors.Is(err, io.EOF) {
		end(endStreamEOF)
		return nil
	}
	code := status.Code(err)
	if code == codes.Canceled || code == codes.DeadlineExceeded {
		end(endCanceled)
		return nil
	}
	end(endStreamErr)
	s.metrics.streamErrors.WithLabelValues(code.String()).Inc()
	s.log.Debug("ext_proc stream error", zap.Stringer("code", code))
	return err
}

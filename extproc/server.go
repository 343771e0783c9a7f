package extproc

import (
	"context"
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
	auth    Authenticator
	policy  *mesh.CallerPolicy
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// ServerOptions configures a Server. The zero value trusts the request
// attributes: a development setting (the binary allows it only on
// loopback); production sets Authenticator and Policy.
type ServerOptions struct {
	// Metrics and Log may be nil.
	Metrics *Metrics
	Log     *zap.Logger
	// Authenticator establishes the calling proxy's mesh identity per
	// stream, and Policy decides which namespaces it may count for. Both
	// or neither: with neither, the namespace a request's attributes claim
	// is believed.
	Authenticator Authenticator
	Policy        *mesh.CallerPolicy
}

// NewServer returns a Server that counts into tracker.
func NewServer(tracker *Tracker, o ServerOptions) *Server {
	s := &Server{tracker: tracker, metrics: o.Metrics, log: o.Log, auth: o.Authenticator, policy: o.Policy}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.metrics == nil {
		s.metrics = newMetrics()
	}
	if (s.auth == nil) != (s.policy == nil) {
		panic("extproc.NewServer: Authenticator and Policy must be set together")
	}
	return s
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
				req = s.start(stream.Context(), msg)
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

// start counts the request a request_headers message begins: for the
// target its attributes name if the caller may speak for that namespace,
// else under the reason why not. This is the per-request decision point
// after request_headers.
func (s *Server) start(ctx context.Context, msg *extprocv3.ProcessingRequest) Request {
	t, reason := mesh.Resolve(requestAttributes(msg))
	if s.auth != nil {
		caller, ok := s.auth.Caller(ctx)
		switch {
		case !ok:
			t, reason = mesh.Target{}, mesh.ReasonUnauthenticated
		case reason == mesh.ReasonNone:
			reason = s.policy.Authorize(caller, t)
		}
	}
	return s.tracker.Start(t, reason)
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

package extproc

import (
	"cmp"
	"context"
	"errors"
	"io"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/inflight-dev/inflight/mesh"
)

// endCause says which signal ended a request. Values index Metrics.ends.
type endCause uint8

const (
	endBodyEOS     endCause = iota // response body end_of_stream
	endHeadersEOS                  // response headers end_of_stream (no body)
	endTrailers                    // response trailers
	endStreamEOF                   // Envoy half-closed the stream
	endCanceled                    // the stream was cancelled (Envoy's reset, shutdown)
	endStreamErr                   // any other stream error, or an invalid message
	endHoldTimeout                 // held until its hold timeout, answered 503
	numEndCauses
)

var endCauseNames = [numEndCauses]string{"response_body_eos", "response_headers_eos", "response_trailers", "stream_eof", "stream_canceled", "stream_error", "hold_timeout"}

// DefaultRetryAfter is the Retry-After of the local replies (shed, hold
// timeout) when ServerOptions.RetryAfter is 0.
const DefaultRetryAfter = time.Second

// Server is the ext_proc gRPC service. It replies to every message that
// needs a reply at once, with CONTINUE of the matching type, and in
// observability mode it sends nothing — except in control mode when Gates
// say so: then it holds a request's request_headers unanswered (scale from
// zero) or answers it locally (shedding, hold timeout).
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	tracker *Tracker
	metrics *Metrics
	log     *zap.Logger
	auth    Authenticator
	policy  *mesh.CallerPolicy
	maxOpen int64
	gates   *Gates
	// The local replies, built once.
	shedReply, holdTimeoutReply *extprocv3.ProcessingResponse
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// OverLimitReaders bounds the streams over the open-stream cap that are
// waiting for their first message (to count it as untracked); beyond it
// further streams are closed without reading. It keeps a client that opens
// streams and sends nothing from holding unbounded memory.
const OverLimitReaders = 1024

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
	// MaxOpenStreams caps the streams tracked at once (0: no cap). A stream
	// opened beyond it is answered at once and closed with OK, so Envoy
	// goes on without the extproc; its request, when its request_headers
	// can be read, is counted in its target's untracked_total.
	MaxOpenStreams int
	// Gates, if set, hold and shed control-mode requests (ISSUE12.md);
	// nil: never. Observability-mode requests are never held or shed.
	Gates *Gates
	// RetryAfter is the Retry-After of the local replies, rounded up to
	// whole seconds; 0 means DefaultRetryAfter.
	RetryAfter time.Duration
}

// NewServer returns a Server that counts into tracker.
func NewServer(tracker *Tracker, o ServerOptions) *Server {
	s := &Server{tracker: tracker, metrics: o.Metrics, log: o.Log, auth: o.Authenticator, policy: o.Policy,
		maxOpen: int64(o.MaxOpenStreams), gates: o.Gates}
	retryAfter := cmp.Or(o.RetryAfter, DefaultRetryAfter)
	s.shedReply = immediateReply(replyShed, retryAfter)
	s.holdTimeoutReply = immediateReply(replyHoldTimeout, retryAfter)
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.metrics == nil {
		s.metrics = newMetrics()
	}
	s.metrics.maxOpen.Store(s.maxOpen)
	if (s.auth == nil) != (s.policy == nil) {
		panic("extproc.NewServer: Authenticator and Policy must be set together")
	}
	return s
}

// stream is one Process call's request state, on its goroutine only.
type stream struct {
	req      Request
	adm      admission // its place in its gate's counts, if any
	started  bool      // request_headers seen (the request was counted, or shed)
	response bool      // a response-direction message seen
}

// Process handles one ext_proc stream, i.e. one HTTP request.
func (s *Server) Process(ps extprocv3.ExternalProcessor_ProcessServer) error {
	n := s.metrics.open.Add(1)
	defer s.metrics.open.Add(-1)
	if s.maxOpen > 0 && n > s.maxOpen {
		return s.overLimit(ps)
	}

	var st stream
	// Whatever happens below, including a panic in gRPC code, the request
	// is released once (end is idempotent) and the stream's end recorded.
	cause := endStreamErr
	defer func() { s.finish(&st, cause) }()

	for {
		msg, err := ps.Recv()
		if err != nil {
			var ret error
			cause, ret = s.streamEnded(err)
			return ret
		}
		m := classify(msg)
		st.response = st.response || m.response
		switch m.ev {
		case evInvalid:
			s.metrics.streamErrors.WithLabelValues("invalid_message").Inc()
			return status.Error(codes.InvalidArgument, "ProcessingRequest has no request set")
		case evStart:
			// A second request_headers on one stream is a protocol
			// violation; it is answered but never counted twice.
			if st.started {
				break
			}
			st.started = true
			switch s.start(ps.Context(), msg, &st) {
			case admitShed:
				// Envoy closes the stream itself after a local reply.
				_ = ps.Send(s.shedReply)
				return nil
			case admitHold:
				var released bool
				var err error
				if released, cause, err = s.hold(ps, &st); !released {
					return err
				}
			}
		case evEnd:
			cause = m.cause
			s.end(&st, cause)
		}
		if !msg.GetObservabilityMode() {
			if err := ps.Send(m.reply); err != nil {
				var ret error
				cause, ret = s.streamEnded(err)
				return ret
			}
		}
		// Once the response is complete there is nothing left to count:
		// close the stream with OK and Envoy carries on without us.
		if m.ev == evEnd {
			return nil
		}
	}
}

// finish records how a stream ended: it releases its request, or counts a
// stream that never started one.
func (s *Server) finish(st *stream, c endCause) {
	if !st.started {
		s.metrics.noStart[c].Inc()
	}
	s.end(st, c)
}

// end releases the stream's request, if it is counted and not yet ended,
// recording how it ended. The cause is counted before the release, so that
// whoever sees the request's count drop (a snapshot, a test waiting for
// in_flight 0) also sees why it ended.
func (s *Server) end(st *stream, c endCause) {
	st.adm.leave()
	if !st.req.Started() {
		return
	}
	s.metrics.ends[c].Inc()
	if !st.response {
		s.metrics.noResponse[c].Inc()
	}
	s.tracker.End(&st.req)
}

// overLimit answers a stream opened beyond MaxOpenStreams at once: it reads
// the first message if few such streams are already waiting for theirs,
// counts a request_headers as untracked, replies CONTINUE (unless in
// observability mode) and closes with OK.
func (s *Server) overLimit(ps extprocv3.ExternalProcessor_ProcessServer) error {
	if s.metrics.overReaders.Add(1) > OverLimitReaders {
		s.metrics.overReaders.Add(-1)
		s.metrics.overLimit[overNotRead].Inc()
		return nil
	}
	msg, err := ps.Recv()
	s.metrics.overReaders.Add(-1)
	if err != nil {
		s.metrics.overLimit[overNotRead].Inc()
		return nil
	}
	m := classify(msg)
	if m.ev != evStart {
		s.metrics.overLimit[overNotRead].Inc()
		return nil
	}
	t, reason := s.resolve(ps.Context(), msg)
	s.tracker.Untracked(t, reason)
	s.metrics.overLimit[overUntracked].Inc()
	if !msg.GetObservabilityMode() {
		_ = ps.Send(m.reply)
	}
	return nil
}

// start counts the request a request_headers message begins: for the
// target its attributes name if the caller may speak for that namespace,
// else under the reason why not. This is the per-request decision point
// after request_headers: in control mode the gates may hold the request
// (it is counted in flight and held at once) or shed it (counted as shed
// only).
func (s *Server) start(ctx context.Context, msg *extprocv3.ProcessingRequest, st *stream) verdict {
	t, reason := s.resolve(ctx, msg)
	if s.gates == nil || msg.GetObservabilityMode() {
		st.req = s.tracker.Start(t, reason)
		return admitContinue
	}
	adm, v := s.gates.admit(t, reason)
	switch v {
	case admitShed:
		s.tracker.Shed(t, reason)
		return v
	case admitHold:
		st.req = s.tracker.StartHeld(t, reason)
	default:
		st.req = s.tracker.Start(t, reason)
	}
	st.adm = adm
	return v
}

// hold keeps a held request's request_headers unanswered: it first extends
// Envoy's message timer to the hold timeout + 1 s (one override per message,
// ENVOY.md §5), then waits for the first of its gate's release (it reports
// true: the caller sends the CONTINUE), its hold timeout (a 503 with
// Retry-After is sent) and its stream's end (the client or Envoy went
// away). Otherwise it returns how the stream ends and what Process
// returns.
func (s *Server) hold(ps extprocv3.ExternalProcessor_ProcessServer, st *stream) (bool, endCause, error) {
	h := st.adm.ticket
	if err := ps.Send(overrideMessageTimeout(min(h.timeout+time.Second, maxOverride))); err != nil {
		c, ret := s.streamEnded(err)
		return false, c, ret
	}
	timer := time.NewTimer(h.timeout)
	defer timer.Stop()
	select {
	case <-h.released:
	case <-timer.C:
		if st.adm.timeOut() {
			s.tracker.HoldTimedOut(&st.req)
			if err := ps.Send(s.holdTimeoutReply); err != nil {
				c, ret := s.streamEnded(err)
				return false, c, ret
			}
			return false, endHoldTimeout, nil
		}
		// Released at the same moment: it goes on.
	case <-ps.Context().Done():
		return false, endCanceled, nil
	}
	s.tracker.Released(&st.req)
	return true, 0, nil
}

// resolve returns the target a request's attributes name and, if it is not
// attributed to it, the reason why not: the tracker (Tracker.lookup) then
// counts it under the reason alone, whatever the target.
func (s *Server) resolve(ctx context.Context, msg *extprocv3.ProcessingRequest) (mesh.Target, mesh.Reason) {
	t, reason := mesh.Resolve(requestAttributes(msg))
	if s.auth != nil {
		caller, ok := s.auth.Caller(ctx)
		switch {
		case !ok:
			reason = mesh.ReasonUnauthenticated
		case reason == mesh.ReasonNone:
			reason = s.policy.Authorize(caller, t)
		}
	}
	return t, reason
}

// streamEnded classifies the error a stream stopped with and returns what
// Process returns.
func (s *Server) streamEnded(err error) (endCause, error) {
	switch code := status.Code(err); {
	case errors.Is(err, io.EOF):
		return endStreamEOF, nil
	case code == codes.Canceled || code == codes.DeadlineExceeded:
		return endCanceled, nil
	default:
		s.metrics.streamErrors.WithLabelValues(code.String()).Inc()
		s.log.Debug("ext_proc stream error", zap.Stringer("code", code))
		return endStreamErr, err
	}
}

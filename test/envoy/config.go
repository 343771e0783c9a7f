package envoy

import (
	"crypto/tls"
	"fmt"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
)

// Version selects the Envoy release whose side-stream lifetime the harness
// reproduces (ENVOY.md §2 "When Envoy closes").
type Version int

const (
	// Envoy136 is Envoy ≤ 1.36 (Istio ≤ 1.28): the side stream is closed
	// only when the HTTP stream is torn down (completion or reset).
	Envoy136 Version = iota
	// Envoy137 is Envoy ≥ 1.37 (Istio ≥ 1.29): the side stream is also
	// closed right after the last expected reply
	// (ext_proc_stream_close_optimization) and at response headers when the
	// response path has nothing to process.
	Envoy137
)

func (v Version) String() string {
	switch v {
	case Envoy136:
		return "envoy<=1.36"
	case Envoy137:
		return "envoy>=1.37"
	}
	return fmt.Sprintf("Version(%d)", int(v))
}

// Profile is one of the two install profiles of DESIGN.md.
type Profile int

const (
	// Observe: observability_mode=true, request and response headers SEND,
	// response body STREAMED. Replies are ignored, nothing is awaited, and
	// the close at filter destruction is deferred by DeferredCloseTimeout.
	Observe Profile = iota
	// Control: request and response headers SEND (+ response body STREAMED
	// on Envoy ≥ 1.37); every message's reply is awaited under the
	// per-message timer.
	Control
)

func (p Profile) String() string {
	switch p {
	case Observe:
		return "observe"
	case Control:
		return "control"
	}
	return fmt.Sprintf("Profile(%d)", int(p))
}

// CloseStyle is how the filter closes a side stream that is still open.
type CloseStyle int

const (
	// CloseReset is Envoy's default ProcessorStreamImpl::close(): half-close,
	// then RST_STREAM, the reset sent only once the stream's queued messages
	// and its END_STREAM are written to the socket (as Envoy's HTTP/2 codec
	// defers a local reset behind pending frames). The server may observe
	// EOF or CANCELLED first: the order is racy, as behind a real Envoy.
	CloseReset CloseStyle = iota
	// CloseGraceful is Envoy 1.34+'s opt-in graceful close: half-close,
	// wait up to GracefulCloseTimeout (default 1 s) for the server to end
	// the RPC, then reset. A server that returns on EOF sees EOF first.
	CloseGraceful
	// CloseResetOnly writes the stream's queued messages, then resets
	// without a half-close: the server sees CANCELLED first (and no EOF).
	// Envoy always half-closes first, but a grpc-go server can observe the
	// cancellation first anyway; this style makes that order deterministic.
	CloseResetOnly
)

func (s CloseStyle) String() string {
	switch s {
	case CloseReset:
		return "reset"
	case CloseGraceful:
		return "graceful"
	case CloseResetOnly:
		return "reset-only"
	}
	return fmt.Sprintf("CloseStyle(%d)", int(s))
}

// Balancing is how a client picks a server replica for each new stream.
type Balancing int

const (
	// RoundRobin cycles through the replicas stream by stream.
	RoundRobin Balancing = iota
	// Random picks a replica uniformly at random per stream (Config.Seed).
	Random
)

// Config is the ext_proc filter configuration plus the harness's knobs. The
// zero value is the shipped install: Envoy ≤ 1.36, observe profile,
// failure_mode_allow=true, Envoy's defaults for every timeout.
type Config struct {
	Version Version
	Profile Profile
	// Mode overrides the profile's processing_mode. Body modes NONE and
	// STREAMED are supported. The DEFAULT header mode means SEND.
	Mode *filterv3.ProcessingMode

	// FailClosed is failure_mode_allow=false: a timeout gives 504, a gRPC
	// error or spurious reply gives StatusOnError. The zero value is the
	// shipped failure_mode_allow=true (fail-open).
	FailClosed bool
	// MessageTimeout is message_timeout (default 200 ms). Not used in
	// observability mode.
	MessageTimeout time.Duration
	// StatusOnError is status_on_error (default 500).
	StatusOnError int
	// DeferredCloseTimeout is deferred_close_timeout (default 5 s); used only
	// in observability mode.
	DeferredCloseTimeout time.Duration
	// CloseStyle is how streams are closed (default CloseReset).
	CloseStyle CloseStyle
	// GracefulCloseTimeout is remote_close_timeout_milliseconds (default 1 s)
	// for CloseGraceful.
	GracefulCloseTimeout time.Duration

	// LegacyHeaderValue puts header values in HeaderValue.value instead of
	// raw_value (send_header_raw_value=false, older Envoys).
	LegacyHeaderValue bool
	// NoProtocolConfig omits protocol_config (Envoy < 1.34).
	NoProtocolConfig bool

	// Balancing and Seed choose replicas per stream.
	Balancing Balancing
	Seed      int64
	// ConnsPerReplica is the number of HTTP/2 connections to each replica
	// (Envoy has one pool per worker thread). Default 1.
	ConnsPerReplica int

	// TLS, if set, is the calling proxy's side of mTLS to the servers (its
	// workload certificate and the mesh roots). The harness does the
	// handshake itself, under gRPC, so its wire tracking still reads the
	// HTTP/2 frames; "h2" is offered by ALPN when NextProtos is empty.
	TLS *tls.Config
	// Metadata is sent as gRPC metadata on every side stream, e.g. the
	// x-forwarded-client-cert that the extproc's own sidecar would add.
	Metadata map[string]string

	// UncertainWindow bounds what Result.Uncertain calls "reset right after
	// its first message" (ENVOY.md §2). Default 5 ms.
	UncertainWindow time.Duration
	// WireTimeout bounds the wait for a stream's bytes to reach the socket
	// before it is reset anyway. Default 5 s.
	WireTimeout time.Duration

	// naiveReset (tests only) cancels right after CloseSend without waiting
	// for the bytes to be written: the grpc-go behaviour ENVOY.md §2 warns
	// about, to show that the wire check detects it.
	naiveReset bool
	// deferredClock, if set (tests), replaces the deferred-close timer.
	deferredClock func(time.Duration) <-chan time.Time
}

// mode returns the effective processing mode: the profile's, or Mode with
// DEFAULT header modes resolved to SEND.
func (c *Config) mode() *filterv3.ProcessingMode {
	if c.Mode != nil {
		orDefault := func(h, d filterv3.ProcessingMode_HeaderSendMode) filterv3.ProcessingMode_HeaderSendMode {
			if h == filterv3.ProcessingMode_DEFAULT {
				return d
			}
			return h
		}
		return &filterv3.ProcessingMode{
			RequestHeaderMode:   orDefault(c.Mode.GetRequestHeaderMode(), filterv3.ProcessingMode_SEND),
			ResponseHeaderMode:  orDefault(c.Mode.GetResponseHeaderMode(), filterv3.ProcessingMode_SEND),
			RequestTrailerMode:  orDefault(c.Mode.GetRequestTrailerMode(), filterv3.ProcessingMode_SKIP),
			ResponseTrailerMode: orDefault(c.Mode.GetResponseTrailerMode(), filterv3.ProcessingMode_SKIP),
			RequestBodyMode:     c.Mode.GetRequestBodyMode(),
			ResponseBodyMode:    c.Mode.GetResponseBodyMode(),
		}
	}
	m := &filterv3.ProcessingMode{
		RequestHeaderMode:   filterv3.ProcessingMode_SEND,
		ResponseHeaderMode:  filterv3.ProcessingMode_SEND,
		RequestBodyMode:     filterv3.ProcessingMode_NONE,
		ResponseBodyMode:    filterv3.ProcessingMode_NONE,
		RequestTrailerMode:  filterv3.ProcessingMode_SKIP,
		ResponseTrailerMode: filterv3.ProcessingMode_SKIP,
	}
	if c.Profile == Observe || c.Version >= Envoy137 {
		m.ResponseBodyMode = filterv3.ProcessingMode_STREAMED
	}
	return m
}

func (c *Config) withDefaults() Config {
	d := *c
	if d.MessageTimeout == 0 {
		d.MessageTimeout = 200 * time.Millisecond
	}
	if d.StatusOnError == 0 {
		d.StatusOnError = 500
	}
	if d.DeferredCloseTimeout == 0 {
		d.DeferredCloseTimeout = 5 * time.Second
	}
	if d.GracefulCloseTimeout == 0 {
		d.GracefulCloseTimeout = time.Second
	}
	if d.ConnsPerReplica == 0 {
		d.ConnsPerReplica = 1
	}
	if d.UncertainWindow == 0 {
		d.UncertainWindow = 5 * time.Millisecond
	}
	if d.WireTimeout == 0 {
		d.WireTimeout = 5 * time.Second
	}
	return d
}

// Validate reports a configuration the harness cannot reproduce.
func (c *Config) Validate() error {
	m := c.mode()
	for _, b := range []filterv3.ProcessingMode_BodySendMode{m.RequestBodyMode, m.ResponseBodyMode} {
		if b != filterv3.ProcessingMode_NONE && b != filterv3.ProcessingMode_STREAMED {
			return fmt.Errorf("envoy harness: body mode %v is not reproduced (NONE and STREAMED are)", b)
		}
	}
	if c.MessageTimeout < 0 || c.DeferredCloseTimeout < 0 || c.GracefulCloseTimeout < 0 {
		return fmt.Errorf("envoy harness: negative timeout")
	}
	if c.ConnsPerReplica < 0 {
		return fmt.Errorf("envoy harness: ConnsPerReplica %d < 0", c.ConnsPerReplica)
	}
	return nil
}

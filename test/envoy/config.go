package envoy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"

	"github.com/inflight-dev/inflight/istio"
)

// Version selects the Envoy release whose side-stream lifetime the harness
// reproduces (istio/doc.go, ENVOY.md §2 "When Envoy closes").
type Version int

const (
	// Envoy136 is Envoy ≤ 1.36 (Istio ≤ 1.28): the side stream is closed
	// only when the HTTP stream is torn down (Filter::onDestroy), deferred
	// by deferred_close_timeout in observability mode.
	Envoy136 Version = iota
	// Envoy137 is Envoy ≥ 1.37 (Istio ≥ 1.29): outside observability mode
	// the side stream is also closed after the reply to the last message
	// Envoy expects to send (closeGrpcStreamIfLastRespReceived, envoy#41425
	// and #42507), and at response headers when the response path has
	// nothing to process (encodeHeaders, noExternalProcess).
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

// Generation is the install's proxy generation whose Envoy behaves as v:
// the patch of the rendered EnvoyFilter that such a proxy receives.
func (v Version) Generation() (istio.Generation, error) {
	for _, g := range istio.Generations() {
		if g.EarlyStreamClose == (v >= Envoy137) {
			return g, nil
		}
	}
	return istio.Generation{}, fmt.Errorf("envoy harness: no install generation for %v", v)
}

// Profile is one of the two install profiles (istio.Profile).
type Profile int

const (
	// Observe is istio.ProfileObserve: observability mode; replies are
	// ignored, nothing is awaited, and the close at filter destruction is
	// deferred by deferred_close_timeout.
	Observe Profile = iota
	// Control is istio.ProfileControl: every message's reply is awaited
	// under the per-message timer.
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

func (p Profile) install() istio.Profile {
	if p == Control {
		return istio.ProfileControl
	}
	return istio.ProfileObserve
}

// Shipped returns the ext_proc filter configuration the install renders for
// profile p on a proxy whose Envoy behaves as v (istio.ExternalProcessor).
func Shipped(p Profile, v Version) (*filterv3.ExternalProcessor, error) {
	g, err := v.Generation()
	if err != nil {
		return nil, err
	}
	return istio.ExternalProcessor(istio.Options{Profile: p.install()}, g), nil
}

// LocalReplies says whether a local reply Envoy's router sends (the 503
// after an upstream reset before response headers, an upstream timeout's
// 504) goes through the ext_proc filter's encoder path, i.e. reaches the
// processor as response_headers.
type LocalReplies int

const (
	// LocalRepliesByVersion is the Version's behaviour: skipped on
	// Envoy136, sent on Envoy137.
	LocalRepliesByVersion LocalReplies = iota
	// LocalRepliesSkipped: Envoy 1.34–1.36, and the 1.30–1.33 patch
	// releases of March 2025 (CVE-2025-30157, runtime
	// skip_ext_proc_on_local_reply): the processor sees request_headers and
	// then only the stream's end.
	LocalRepliesSkipped
	// LocalRepliesSent: Envoy ≥ 1.37 for replies from filters after
	// ext_proc such as the router (envoy#41769), and 1.32/1.33 before that
	// fix: the processor sees the local reply's response_headers (status
	// 503, a body, no trailers).
	LocalRepliesSent
)

func (l LocalReplies) String() string {
	return [...]string{"by-version", "local-replies-skipped", "local-replies-sent"}[l]
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

// Config is the Envoy behaviour (Version), the ext_proc filter
// configuration it runs (Filter, by default exactly what the install
// renders for Profile), and the harness's own knobs. The harness has no
// processing defaults of its own: every mode, timeout and forwarding rule
// comes from Filter, and Envoy's documented defaults apply where Filter
// leaves a field unset.
type Config struct {
	Version Version
	// Profile selects the shipped filter (Shipped) when Filter is nil.
	Profile Profile
	// Filter is the ext_proc filter configuration; nil means
	// Shipped(Profile, Version). Tests of other configurations set it.
	// Body modes NONE and STREAMED are reproduced; Validate rejects what is
	// not.
	Filter *filterv3.ExternalProcessor
	// LocalReplies: whether the router's local replies reach the processor
	// (default: by Version).
	LocalReplies LocalReplies

	// Explicit overrides of the filter's values, for tests (zero: the
	// filter's value). FailClosed overrides failure_mode_allow to false.
	FailClosed           bool
	MessageTimeout       time.Duration
	StatusOnError        int
	DeferredCloseTimeout time.Duration

	// CloseStyle is how streams are closed (default CloseReset).
	CloseStyle CloseStyle
	// GracefulCloseTimeout is remote_close_timeout_milliseconds (Envoy's
	// default 1 s) for CloseGraceful.
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

// Envoy's defaults for fields the filter leaves unset (ext_proc.proto).
const (
	envoyMessageTimeout       = 200 * time.Millisecond
	envoyDeferredCloseTimeout = 5 * time.Second
	envoyStatusOnError        = 500
)

// filterSpec is the effective filter configuration: Config.Filter resolved
// with Envoy's defaults and the Config overrides. Read-only once built.
type filterSpec struct {
	observe        bool
	failOpen       bool
	mode           *filterv3.ProcessingMode
	messageTimeout time.Duration
	// maxMessageTimeout bounds override_message_timeout (0: every override
	// is ignored).
	maxMessageTimeout  time.Duration
	deferredClose      time.Duration
	statusOnError      int
	disableImmediate   bool
	requestAttributes  map[string]bool
	responseAttributes map[string]bool
	allowedHeaders     []headerMatcher
	disallowedHeaders  []headerMatcher
	localRepliesSent   bool
	earlyClose         bool // Envoy ≥ 1.37 close rules
}

// filter returns Config.Filter, or the shipped one.
func (c *Config) filter() (*filterv3.ExternalProcessor, error) {
	if c.Filter != nil {
		return c.Filter, nil
	}
	return Shipped(c.Profile, c.Version)
}

// Validate reports every configuration the harness cannot reproduce.
func (c *Config) Validate() error {
	_, err := c.spec()
	return err
}

func (c *Config) spec() (*filterSpec, error) {
	var errs []error
	ep, err := c.filter()
	if err != nil {
		return nil, err
	}
	if c.Version != Envoy136 && c.Version != Envoy137 {
		errs = append(errs, fmt.Errorf("envoy harness: Version %v: want Envoy136 or Envoy137", c.Version))
	}
	m := proto.Clone(ep.GetProcessingMode()).(*filterv3.ProcessingMode)
	if m == nil {
		m = &filterv3.ProcessingMode{}
	}
	// DEFAULT header modes are SEND, DEFAULT trailer modes SKIP.
	if m.RequestHeaderMode == filterv3.ProcessingMode_DEFAULT {
		m.RequestHeaderMode = filterv3.ProcessingMode_SEND
	}
	if m.ResponseHeaderMode == filterv3.ProcessingMode_DEFAULT {
		m.ResponseHeaderMode = filterv3.ProcessingMode_SEND
	}
	if m.RequestTrailerMode == filterv3.ProcessingMode_DEFAULT {
		m.RequestTrailerMode = filterv3.ProcessingMode_SKIP
	}
	if m.ResponseTrailerMode == filterv3.ProcessingMode_DEFAULT {
		m.ResponseTrailerMode = filterv3.ProcessingMode_SKIP
	}
	for _, b := range []filterv3.ProcessingMode_BodySendMode{m.RequestBodyMode, m.ResponseBodyMode} {
		if b != filterv3.ProcessingMode_NONE && b != filterv3.ProcessingMode_STREAMED {
			errs = append(errs, fmt.Errorf("envoy harness: body mode %v is not reproduced (NONE and STREAMED are)", b))
		}
	}
	if ep.GetAllowModeOverride() {
		errs = append(errs, errors.New("envoy harness: allow_mode_override is not reproduced"))
	}
	if ep.GetSendBodyWithoutWaitingForHeaderResponse() {
		errs = append(errs, errors.New("envoy harness: send_body_without_waiting_for_header_response is not reproduced"))
	}
	if ep.GetGrpcService().GetTimeout() != nil {
		errs = append(errs, errors.New("envoy harness: grpc_service.timeout is not reproduced"))
	}
	if c.MessageTimeout < 0 || c.DeferredCloseTimeout < 0 || c.GracefulCloseTimeout < 0 {
		errs = append(errs, errors.New("envoy harness: negative timeout"))
	}
	if c.ConnsPerReplica < 0 {
		errs = append(errs, fmt.Errorf("envoy harness: ConnsPerReplica %d < 0", c.ConnsPerReplica))
	}
	s := &filterSpec{
		observe:            ep.GetObservabilityMode(),
		failOpen:           ep.GetFailureModeAllow() && !c.FailClosed,
		mode:               m,
		messageTimeout:     envoyMessageTimeout,
		maxMessageTimeout:  ep.GetMaxMessageTimeout().AsDuration(),
		deferredClose:      envoyDeferredCloseTimeout,
		statusOnError:      envoyStatusOnError,
		disableImmediate:   ep.GetDisableImmediateResponse(),
		requestAttributes:  set(ep.GetRequestAttributes()),
		responseAttributes: set(ep.GetResponseAttributes()),
		earlyClose:         c.Version >= Envoy137,
	}
	if ep.GetMessageTimeout() != nil {
		s.messageTimeout = ep.GetMessageTimeout().AsDuration()
	}
	if ep.GetDeferredCloseTimeout() != nil {
		s.deferredClose = ep.GetDeferredCloseTimeout().AsDuration()
	}
	if code := ep.GetStatusOnError().GetCode(); code != 0 {
		s.statusOnError = int(code)
	}
	if c.MessageTimeout > 0 {
		s.messageTimeout = c.MessageTimeout
	}
	if c.DeferredCloseTimeout > 0 {
		s.deferredClose = c.DeferredCloseTimeout
	}
	if c.StatusOnError > 0 {
		s.statusOnError = c.StatusOnError
	}
	switch c.LocalReplies {
	case LocalRepliesByVersion:
		s.localRepliesSent = c.Version >= Envoy137
	case LocalRepliesSent:
		s.localRepliesSent = true
	case LocalRepliesSkipped:
	default:
		errs = append(errs, fmt.Errorf("envoy harness: LocalReplies %d", c.LocalReplies))
	}
	var err1, err2 error
	s.allowedHeaders, err1 = headerMatchers(ep.GetForwardRules().GetAllowedHeaders().GetPatterns())
	s.disallowedHeaders, err2 = headerMatchers(ep.GetForwardRules().GetDisallowedHeaders().GetPatterns())
	errs = append(errs, err1, err2)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

func (c *Config) withDefaults() Config {
	d := *c
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

func set(keys []string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// headerMatcher is one forward_rules StringMatcher, applied to lower-cased
// header names as Envoy's MutationUtils::headersToProto does.
type headerMatcher func(name string) bool

func headerMatchers(ps []*matcherv3.StringMatcher) ([]headerMatcher, error) {
	var out []headerMatcher
	for _, p := range ps {
		fold := func(s string) string { return s }
		if p.GetIgnoreCase() {
			fold = strings.ToLower
		}
		switch x := p.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			v := fold(x.Exact)
			out = append(out, func(n string) bool { return fold(n) == v })
		case *matcherv3.StringMatcher_Prefix:
			v := fold(x.Prefix)
			out = append(out, func(n string) bool { return strings.HasPrefix(fold(n), v) })
		case *matcherv3.StringMatcher_Suffix:
			v := fold(x.Suffix)
			out = append(out, func(n string) bool { return strings.HasSuffix(fold(n), v) })
		case *matcherv3.StringMatcher_Contains:
			v := fold(x.Contains)
			out = append(out, func(n string) bool { return strings.Contains(fold(n), v) })
		case *matcherv3.StringMatcher_SafeRegex:
			re, err := regexp.Compile("^(?:" + x.SafeRegex.GetRegex() + ")$")
			if err != nil {
				return nil, fmt.Errorf("envoy harness: forward_rules regex: %w", err)
			}
			out = append(out, re.MatchString)
		default:
			return nil, fmt.Errorf("envoy harness: forward_rules matcher %T is not reproduced", x)
		}
	}
	return out, nil
}

// forwarded is Envoy's forward_rules test: in the allow list (when there is
// one) and not in the disallow list.
func (s *filterSpec) forwarded(name string) bool {
	if len(s.allowedHeaders) > 0 && !anyMatch(s.allowedHeaders, name) {
		return false
	}
	return !anyMatch(s.disallowedHeaders, name)
}

func anyMatch(ms []headerMatcher, name string) bool {
	for _, m := range ms {
		if m(name) {
			return true
		}
	}
	return false
}

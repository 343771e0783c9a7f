package istio

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	networking "istio.io/api/networking/v1alpha3"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/mesh"
	"github.com/inflight-dev/inflight/scaling"
)

// Profile is an install profile (DESIGN.md § ext_proc semantics).
type Profile string

// The profiles.
const (
	// ProfileObserve (the default) runs ext_proc in observability mode:
	// Envoy never waits for the extproc, so it adds no latency.
	ProfileObserve Profile = "observe"
	// ProfileControl makes Envoy wait for the extproc's reply to request
	// headers (needed for load shedding and scale-from-zero holding).
	ProfileControl Profile = "control"
)

// Defaults of Options.
const (
	DefaultExtprocService   = "inflight-extproc"
	DefaultExtprocNamespace = "inflight-system"
	DefaultExtprocPort      = 9002
	// DefaultMessageTimeout bounds Envoy's wait for one reply in the
	// control profile; on expiry Envoy continues without the extproc
	// (fail-open), so it is also the worst latency the extproc can add.
	DefaultMessageTimeout = 200 * time.Millisecond
	// DefaultDeferredCloseTimeout is how long, in observability mode, Envoy
	// keeps an ext_proc stream open after its HTTP request is gone (Envoy's
	// default is 5 s). In the observe profile every response that has a body
	// and no trailers ends only there (the body is not sent: see the package
	// doc), so this is that profile's end bias: in-flight reads high by
	// arrival rate × this delay (0.1 per 1 req/s), busy-seconds by
	// requests × this delay. It only has to outlast the start of the
	// stream's own HTTP/2 stream: Envoy writes queued messages before the
	// reset (ENVOY.md §2), and a request shorter than a cold connection's
	// setup is at worst not counted at all, never leaked.
	DefaultDeferredCloseTimeout = 100 * time.Millisecond
	// MinDeferredCloseTimeout and MaxDeferredCloseTimeout bound
	// --deferred-close-timeout (and what Check accepts).
	MinDeferredCloseTimeout = 10 * time.Millisecond
	MaxDeferredCloseTimeout = time.Second
	// DefaultGatewayNamespace and the selector below address Istio's
	// default ingress gateway.
	DefaultGatewayNamespace = "istio-system"

	// MaxMessageTimeout is the control profile's max_message_timeout: the
	// longest wait for one reply that the extproc may ask for with an
	// override_message_timeout (Envoy ignores a longer one, and every one
	// when the field is unset), and the largest value Envoy accepts for the
	// field. The extproc asks for hold-timeout + HoldOverrideMargin when it
	// holds a request at the edge; scaling.MaxHoldTimeout keeps that within.
	MaxMessageTimeout = time.Hour
	// HoldOverrideMargin is how much longer than the hold-timeout the
	// extproc extends Envoy's timer, so that the extproc's own 503 with
	// Retry-After, sent at the hold-timeout, arrives before Envoy's timer
	// fires (which would continue fail-open to a Service with no endpoint).
	HoldOverrideMargin = time.Second
	// MinStreamTimeouts and MaxStreamTimeouts bound --stream-timeouts.
	MinStreamTimeouts = 10 * time.Second
	MaxStreamTimeouts = 24 * time.Hour

	// FilterName is the name the ext_proc filter gets in the HTTP
	// connection manager (what config_dump shows). The attributes Envoy
	// sends are keyed by mesh.AttributesKey whatever this is.
	FilterName = "inflight.ext_proc"
	// StatPrefix prefixes the filter's Envoy stats.
	StatPrefix = "inflight"
	// Priority orders this EnvoyFilter among others of the same proxy
	// (Istio's analyzer IST0155 asks for one on a relative patch matched by
	// proxyVersion).
	Priority = 10

	extProcType   = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
	hcmType       = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	hcmFilter     = "envoy.filters.network.http_connection_manager"
	routerFilter  = "envoy.filters.http.router"
	apiVersion    = "networking.istio.io/v1alpha3"
	kindEnvoyFilt = "EnvoyFilter"
)

// DefaultGatewaySelector selects Istio's default ingress gateway.
func DefaultGatewaySelector() map[string]string { return map[string]string{"istio": "ingressgateway"} }

// Options describe one EnvoyFilter. Zero fields take the defaults.
type Options struct {
	// Name of the EnvoyFilter; default inflight-<selector values>.
	Name string
	// Namespace of the EnvoyFilter: the selected workloads' namespace
	// (default istio-system for a gateway).
	Namespace string
	// Selector is the workloadSelector's labels (required for a sidecar;
	// default istio=ingressgateway for a gateway).
	Selector map[string]string
	// Profile is observe (default) or control.
	Profile Profile
	// Gateway inserts the filter into a gateway (context GATEWAY) instead
	// of the workloads' inbound sidecars (SIDECAR_INBOUND).
	Gateway bool
	// Outbound inserts the filter into the outbound listener of Port in
	// the sidecars of in-mesh callers (context SIDECAR_OUTBOUND, selected
	// by Selector in Namespace): an edge that exists while the model
	// workload is at zero. Control profile only, Port required.
	Outbound bool
	// Port, when set, limits a sidecar patch to the inbound filter chain of
	// that container port (the model server's port); with Outbound it is
	// the Service port whose outbound listener gets the filter.
	Port uint32
	// StreamTimeouts, when set (edge contexts, control profile), adds an
	// HTTP connection manager MERGE setting stream_idle_timeout and
	// request_timeout to this value: both run while a request is held
	// (Istio ≥ 1.31's EDGE connection profile sets them to 5 min on
	// gateways). Leave it 0 when they are unset (Istio's default).
	StreamTimeouts time.Duration

	// The extproc Service (port named grpc, appProtocol grpc).
	ExtprocService, ExtprocNamespace string
	ExtprocPort                      uint32

	MessageTimeout, DeferredCloseTimeout time.Duration
}

func (o *Options) applyDefaults() {
	if o.Profile == "" {
		o.Profile = ProfileObserve
	}
	if o.Gateway && o.Namespace == "" {
		o.Namespace = DefaultGatewayNamespace
	}
	if o.Gateway && len(o.Selector) == 0 {
		o.Selector = DefaultGatewaySelector()
	}
	if o.ExtprocService == "" {
		o.ExtprocService = DefaultExtprocService
	}
	if o.ExtprocNamespace == "" {
		o.ExtprocNamespace = DefaultExtprocNamespace
	}
	if o.ExtprocPort == 0 {
		o.ExtprocPort = DefaultExtprocPort
	}
	if o.MessageTimeout == 0 {
		o.MessageTimeout = DefaultMessageTimeout
	}
	if o.DeferredCloseTimeout == 0 {
		o.DeferredCloseTimeout = DefaultDeferredCloseTimeout
	}
	if o.Name == "" {
		o.Name = o.defaultName()
	}
}

// edge reports a context that sees a request before any model pod does
// (GATEWAY, SIDECAR_OUTBOUND): where requests can be held.
func (o Options) edge() bool { return o.Gateway || o.Outbound }

// context is the EnvoyFilter patch context of o.
func (o Options) context() networking.EnvoyFilter_PatchContext {
	switch {
	case o.Gateway:
		return networking.EnvoyFilter_GATEWAY
	case o.Outbound:
		return networking.EnvoyFilter_SIDECAR_OUTBOUND
	}
	return networking.EnvoyFilter_SIDECAR_INBOUND
}

// defaultName is inflight-<sorted selector values> (inflight-outbound-…
// for callers' sidecars), or inflight-gateway, cut to a valid object name.
func (o Options) defaultName() string {
	if o.Gateway {
		return "inflight-gateway"
	}
	sel := o.Selector
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("inflight")
	if o.Outbound {
		b.WriteString("-outbound")
	}
	for _, k := range keys {
		b.WriteByte('-')
		for _, r := range strings.ToLower(sel[k]) {
			if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '-' {
				b.WriteRune(r)
			} else {
				b.WriteByte('-')
			}
		}
	}
	n := b.String()
	if len(n) > 63 {
		n = n[:63]
	}
	return strings.TrimRight(n, "-")
}

// Validate reports every invalid option after defaults, naming the option
// (as the CLI flag), the value and what is allowed.
func (o Options) Validate() error {
	o.applyDefaults()
	var errs []error
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace is empty: want the namespace of the selected workloads"))
	} else if e := validation.IsDNS1123Label(o.Namespace); len(e) > 0 {
		errs = append(errs, fmt.Errorf("--namespace=%q: %s", o.Namespace, strings.Join(e, "; ")))
	}
	if e := validation.IsDNS1123Subdomain(o.Name); len(e) > 0 {
		errs = append(errs, fmt.Errorf("--name=%q: %s", o.Name, strings.Join(e, "; ")))
	}
	if len(o.Selector) == 0 {
		errs = append(errs, errors.New("--selector is empty: want the model pods' labels, e.g. app=vllm (an empty selector would select every workload of the namespace)"))
	}
	for k, v := range o.Selector {
		if e := validation.IsQualifiedName(k); len(e) > 0 {
			errs = append(errs, fmt.Errorf("--selector key %q: %s", k, strings.Join(e, "; ")))
		}
		if e := validation.IsValidLabelValue(v); len(e) > 0 {
			errs = append(errs, fmt.Errorf("--selector %s=%q: %s", k, v, strings.Join(e, "; ")))
		}
	}
	if o.Profile != ProfileObserve && o.Profile != ProfileControl {
		errs = append(errs, fmt.Errorf("--profile=%q: want observe or control", o.Profile))
	}
	if o.Gateway && o.Port != 0 {
		errs = append(errs, fmt.Errorf("--port=%d: only for a sidecar (without --gateway)", o.Port))
	}
	if o.Gateway && o.Outbound {
		errs = append(errs, errors.New("--gateway and --outbound: choose one context"))
	}
	if o.Outbound && o.Port == 0 {
		errs = append(errs, errors.New("--outbound without --port: want the model Service's port (the filter would otherwise make every outbound HTTP request of the callers wait for the extproc)"))
	}
	if o.Outbound && o.Profile != ProfileControl {
		errs = append(errs, fmt.Errorf("--outbound with --profile=%s: want control (the outbound context exists to hold and shed; counting there would duplicate the model pods' inbound count)", o.Profile))
	}
	if o.StreamTimeouts != 0 {
		if !o.edge() || o.Profile != ProfileControl {
			errs = append(errs, fmt.Errorf("--stream-timeouts=%s: only with --gateway or --outbound and --profile control (where requests are held)", o.StreamTimeouts))
		}
		if o.StreamTimeouts < MinStreamTimeouts || o.StreamTimeouts > MaxStreamTimeouts {
			errs = append(errs, fmt.Errorf("--stream-timeouts=%s: want %s to %s, at least your longest hold-timeout + %s", o.StreamTimeouts, MinStreamTimeouts, MaxStreamTimeouts, HoldOverrideMargin))
		}
	}
	if e := validation.IsDNS1035Label(o.ExtprocService); len(e) > 0 {
		errs = append(errs, fmt.Errorf("--extproc-service=%q: %s", o.ExtprocService, strings.Join(e, "; ")))
	}
	if e := validation.IsDNS1123Label(o.ExtprocNamespace); len(e) > 0 {
		errs = append(errs, fmt.Errorf("--extproc-namespace=%q: %s", o.ExtprocNamespace, strings.Join(e, "; ")))
	}
	if o.ExtprocPort > 65535 {
		errs = append(errs, fmt.Errorf("--extproc-port=%d: want 1 to 65535", o.ExtprocPort))
	}
	if o.Port > 65535 {
		errs = append(errs, fmt.Errorf("--port=%d: want 1 to 65535", o.Port))
	}
	if o.MessageTimeout < time.Millisecond || o.MessageTimeout > 10*time.Second {
		errs = append(errs, fmt.Errorf("--message-timeout=%s: want 1ms to 10s (it bounds the latency a slow extproc can add)", o.MessageTimeout))
	}
	if o.DeferredCloseTimeout < MinDeferredCloseTimeout || o.DeferredCloseTimeout > MaxDeferredCloseTimeout {
		errs = append(errs, fmt.Errorf("--deferred-close-timeout=%s: want %s to %s (observe profile: every response with a body ends this late)", o.DeferredCloseTimeout, MinDeferredCloseTimeout, MaxDeferredCloseTimeout))
	}
	return errors.Join(errs...)
}

// ExtprocHost is the extproc Service's cluster-local name.
func (o Options) ExtprocHost() string {
	o.applyDefaults()
	return fmt.Sprintf("%s.%s.svc.cluster.local", o.ExtprocService, o.ExtprocNamespace)
}

// ClusterName is Istio's outbound cluster for the extproc Service's gRPC
// port: EDS endpoints, per-stream load balancing and auto-mTLS.
func (o Options) ClusterName() string {
	o.applyDefaults()
	return fmt.Sprintf("outbound|%d||%s", o.ExtprocPort, o.ExtprocHost())
}

// ExternalProcessor returns the ext_proc filter configuration of the
// profile for a proxy generation (the reasoning, with Envoy's source, is in
// the package doc).
//
// Both profiles send request headers (the start), response headers (the end
// of a bodiless response) and response trailers (the end of gRPC and other
// trailer-terminated responses), and no body: O(1) messages per request,
// whatever the response's length. Response trailers SEND also keeps the
// stream of a bodied response open on Envoy ≥ 1.37 until the HTTP stream
// ends, as it always was up to 1.36, so the stream's end is the request's.
// observe adds observability_mode (Envoy never waits; the stream's close
// comes deferred_close_timeout after the request: that profile's end bias);
// control makes Envoy wait for the two header replies (each bounded by
// message_timeout) and ends exactly.
//
// control also sets max_message_timeout to MaxMessageTimeout, in every
// context, so one filter configuration serves every context: at the edge
// (gateway, callers' outbound sidecars) the extproc holds the
// request_headers reply of a request to a workload with no ready endpoint
// and extends Envoy's per-message timer once, to hold-timeout +
// HoldOverrideMargin (Filter::onNewTimeout accepts 1 ms to
// max_message_timeout, once per message: ProcessorState::
// restartMessageTimer); on the inbound sidecar the extproc never asks.
//
// Only the x-request-id header is forwarded (forward_rules): the extproc
// reads no header values, so no user data in headers leaves the proxy.
//
// Both generations get the same modes today; the generation stays a
// parameter because what each Envoy needs may differ (Check verifies each
// patch against its own generation's close rules).
func ExternalProcessor(o Options, _ Generation) *extprocv3.ExternalProcessor {
	o.applyDefaults()
	mode := &extprocv3.ProcessingMode{
		RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
		ResponseHeaderMode:  extprocv3.ProcessingMode_SEND,
		RequestBodyMode:     extprocv3.ProcessingMode_NONE,
		ResponseBodyMode:    extprocv3.ProcessingMode_NONE,
		RequestTrailerMode:  extprocv3.ProcessingMode_SKIP,
		ResponseTrailerMode: extprocv3.ProcessingMode_SEND,
	}
	ep := &extprocv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
			ClusterName: o.ClusterName(),
			Authority:   o.ExtprocHost(),
		}}},
		FailureModeAllow:  true,
		ProcessingMode:    mode,
		MessageTimeout:    durationpb.New(o.MessageTimeout),
		RequestAttributes: mesh.RequestAttributes(),
		StatPrefix:        StatPrefix,
		ForwardRules: &extprocv3.HeaderForwardingRules{AllowedHeaders: &matcherv3.ListStringMatcher{
			Patterns: []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "x-request-id"}}},
		}},
	}
	if o.Profile != ProfileControl {
		ep.ObservabilityMode = true
		ep.DeferredCloseTimeout = durationpb.New(o.DeferredCloseTimeout)
	} else {
		ep.MaxMessageTimeout = durationpb.New(MaxMessageTimeout)
	}
	return ep
}

// Spec returns the EnvoyFilter spec: per Generation, one HTTP_FILTER patch
// inserting the ext_proc filter before the router, and, with
// StreamTimeouts, one NETWORK_FILTER MERGE of the HTTP connection manager.
func Spec(o Options) (*networking.EnvoyFilter, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o.applyDefaults()
	spec := &networking.EnvoyFilter{
		WorkloadSelector: &networking.WorkloadSelector{Labels: o.Selector},
		Priority:         Priority,
	}
	for _, g := range Generations() {
		value, err := filterValue(ExternalProcessor(o, g))
		if err != nil {
			return nil, err
		}
		spec.ConfigPatches = append(spec.ConfigPatches, &networking.EnvoyFilter_EnvoyConfigObjectPatch{
			ApplyTo: networking.EnvoyFilter_HTTP_FILTER,
			Match:   o.listenerMatch(g, &networking.EnvoyFilter_ListenerMatch_SubFilterMatch{Name: routerFilter}),
			Patch:   &networking.EnvoyFilter_Patch{Operation: networking.EnvoyFilter_Patch_INSERT_BEFORE, Value: value},
		})
		if o.StreamTimeouts > 0 {
			value, err := hcmValue(StreamTimeouts(o.StreamTimeouts))
			if err != nil {
				return nil, err
			}
			spec.ConfigPatches = append(spec.ConfigPatches, &networking.EnvoyFilter_EnvoyConfigObjectPatch{
				ApplyTo: networking.EnvoyFilter_NETWORK_FILTER,
				Match:   o.listenerMatch(g, nil),
				Patch:   &networking.EnvoyFilter_Patch{Operation: networking.EnvoyFilter_Patch_MERGE, Value: value},
			})
		}
	}
	return spec, nil
}

// listenerMatch matches the HTTP connection manager (and sub, when set) of
// o's context on proxies of generation g: on the inbound sidecar the filter
// chain of container port Port (any when 0), on the outbound sidecar the
// listener of Service port Port, on a gateway every HTTP listener.
func (o Options) listenerMatch(g Generation, sub *networking.EnvoyFilter_ListenerMatch_SubFilterMatch) *networking.EnvoyFilter_EnvoyConfigObjectMatch {
	lm := &networking.EnvoyFilter_ListenerMatch{
		FilterChain: &networking.EnvoyFilter_ListenerMatch_FilterChainMatch{
			Filter: &networking.EnvoyFilter_ListenerMatch_FilterMatch{Name: hcmFilter, SubFilter: sub},
		},
	}
	if o.Outbound {
		lm.PortNumber = o.Port
	} else {
		lm.FilterChain.DestinationPort = o.Port
	}
	return &networking.EnvoyFilter_EnvoyConfigObjectMatch{
		Context:     o.context(),
		Proxy:       &networking.EnvoyFilter_ProxyMatch{ProxyVersion: g.ProxyVersion},
		ObjectTypes: &networking.EnvoyFilter_EnvoyConfigObjectMatch_Listener{Listener: lm},
	}
}

// StreamTimeouts is the HTTP connection manager fragment that
// --stream-timeouts merges: the two HCM clocks that run while a request is
// held (istio/doc.go, "Clocks on a held request").
func StreamTimeouts(d time.Duration) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		StreamIdleTimeout: durationpb.New(d),
		RequestTimeout:    durationpb.New(d),
	}
}

// hcmValue is a MERGE patch value {typed_config} in Envoy's JSON form.
func hcmValue(h *hcmv3.HttpConnectionManager) (*structpb.Struct, error) {
	tc, err := typedConfig(h)
	if err != nil {
		return nil, err
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{"typed_config": structpb.NewStructValue(tc)}}, nil
}

// typedConfig is m as an Any in Envoy's JSON form (proto field names,
// @type first).
func typedConfig(m proto.Message) (*structpb.Struct, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, err
	}
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(a)
	if err != nil {
		return nil, err
	}
	tc := &structpb.Struct{}
	if err := protojson.Unmarshal(js, tc); err != nil {
		return nil, err
	}
	return tc, nil
}

// filterValue is the patch value {name, typed_config} with the typed
// config in Envoy's JSON form (proto field names, @type first).
func filterValue(ep *extprocv3.ExternalProcessor) (*structpb.Struct, error) {
	tc, err := typedConfig(ep)
	if err != nil {
		return nil, err
	}
	// protojson omits enum zero values; the body modes (NONE) are the heart
	// of the profile, so they are written out for whoever reads the filter.
	if pm := tc.GetFields()["processing_mode"].GetStructValue(); pm != nil {
		for _, k := range []string{"request_body_mode", "response_body_mode"} {
			if _, ok := pm.GetFields()[k]; !ok {
				pm.Fields[k] = structpb.NewStringValue(extprocv3.ProcessingMode_NONE.String())
			}
		}
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		"name":         structpb.NewStringValue(FilterName),
		"typed_config": structpb.NewStructValue(tc),
	}}, nil
}

// Render returns the EnvoyFilter as a YAML document, with a header comment
// saying how it was made and how to remake it.
func Render(o Options) ([]byte, error) {
	spec, err := Spec(o)
	if err != nil {
		return nil, err
	}
	o.applyDefaults()
	specJSON, err := protojson.Marshal(spec)
	if err != nil {
		return nil, err
	}
	obj := map[string]any{
		"apiVersion": apiVersion,
		"kind":       kindEnvoyFilt,
		"metadata": map[string]any{
			"name":      o.Name,
			"namespace": o.Namespace,
			"labels": map[string]string{
				"app.kubernetes.io/part-of":   "inflight",
				"app.kubernetes.io/component": "envoyfilter",
				"inflight.dev/profile":        string(o.Profile),
			},
		},
		"spec": json.RawMessage(specJSON),
	}
	js, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	y, err := yaml.JSONToYAML(js)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by: %s\n", o.Command())
	b.WriteString("# Do not edit: re-render instead. Profile " + string(o.Profile) + "; one patch per Istio generation:\n")
	for _, g := range Generations() {
		fmt.Fprintf(&b, "#   proxyVersion %s: Istio %s (Envoy %s)\n", g.ProxyVersion, g.Istio, g.Envoy)
	}
	b.Write(y)
	return []byte(b.String()), nil
}

// Command is the inflightctl command line that renders o.
func (o Options) Command() string {
	o.applyDefaults()
	args := []string{"inflightctl envoyfilter", "--namespace " + o.Namespace, "--selector " + FormatSelector(o.Selector), "--profile " + string(o.Profile)}
	if o.Gateway {
		args = append(args, "--gateway")
	}
	if o.Outbound {
		args = append(args, "--outbound")
	}
	if o.Port != 0 {
		args = append(args, fmt.Sprintf("--port %d", o.Port))
	}
	if o.StreamTimeouts != 0 {
		args = append(args, "--stream-timeouts "+scaling.FormatDuration(o.StreamTimeouts))
	}
	if o.Name != o.defaultName() {
		args = append(args, "--name "+o.Name)
	}
	d := Options{}
	d.applyDefaults()
	if o.ExtprocService != d.ExtprocService {
		args = append(args, "--extproc-service "+o.ExtprocService)
	}
	if o.ExtprocNamespace != d.ExtprocNamespace {
		args = append(args, "--extproc-namespace "+o.ExtprocNamespace)
	}
	if o.ExtprocPort != d.ExtprocPort {
		args = append(args, fmt.Sprintf("--extproc-port %d", o.ExtprocPort))
	}
	if o.MessageTimeout != d.MessageTimeout {
		args = append(args, "--message-timeout "+o.MessageTimeout.String())
	}
	if o.DeferredCloseTimeout != d.DeferredCloseTimeout {
		args = append(args, "--deferred-close-timeout "+o.DeferredCloseTimeout.String())
	}
	return strings.Join(args, " ")
}

// ParseSelector parses "k=v,k2=v2" into labels.
func ParseSelector(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	m, err := labels.ConvertSelectorToLabelsMap(s)
	if err != nil {
		return nil, fmt.Errorf("--selector=%q: want k=v[,k=v...]: %w", s, err)
	}
	return m, nil
}

// FormatSelector is the inverse of ParseSelector, keys sorted.
func FormatSelector(sel map[string]string) string {
	return labels.Set(sel).String()
}

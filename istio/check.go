package istio

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	networking "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/mesh"
	"github.com/inflight-dev/inflight/scaling"
)

// Checked is an EnvoyFilter that passed Check.
type Checked struct {
	Metadata metav1.ObjectMeta
	Spec     *networking.EnvoyFilter
	// Context is every patch's match context.
	Context networking.EnvoyFilter_PatchContext
	// Patches are the ext_proc patches, in the document's order.
	Patches []CheckedPatch
	// StreamTimeouts is the stream_idle_timeout = request_timeout that the
	// filter's HTTP connection manager MERGE patches set (0: none).
	StreamTimeouts time.Duration
}

// CheckedPatch is one patch of a Checked EnvoyFilter.
type CheckedPatch struct {
	// Generation is the proxy generation the patch's proxyVersion selects.
	Generation Generation
	// Processor is the patch's typed_config, decoded strictly.
	Processor *extprocv3.ExternalProcessor
}

// envelope is the Kubernetes object around the spec, decoded strictly.
type envelope struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       json.RawMessage   `json:"spec"`
}

// Check decodes one EnvoyFilter YAML document strictly (unknown fields are
// errors, in the object, in Istio's spec and in Envoy's typed_config), runs
// go-control-plane's ValidateAll on each ext_proc configuration, and checks
// what counting requires:
//   - every ext_proc patch is an HTTP_FILTER INSERT_BEFORE of the router,
//     all in one context (SIDECAR_INBOUND, GATEWAY or SIDECAR_OUTBOUND; the
//     outbound one pinned to a listener port), matched by a proxyVersion
//     that selects exactly one Generation, and every Generation has one;
//   - in an edge context (GATEWAY, SIDECAR_OUTBOUND) a NETWORK_FILTER MERGE
//     of the HTTP connection manager per Generation may set
//     stream_idle_timeout and request_timeout (the same value, nothing else);
//   - the control profile can hold and answer locally: immediate_response is
//     not disabled and, at the edge, max_message_timeout admits the longest
//     hold (scaling.MaxHoldTimeout + HoldOverrideMargin); the outbound
//     context runs only the control profile;
//   - failure_mode_allow is true, the gRPC service is Istio's outbound
//     cluster of a Service with an authority, message_timeout is set;
//   - the request attributes are exactly mesh.RequestAttributes();
//   - the end of a request is exact, or bounded by a short deferred close in
//     observability mode, for that generation's Envoy: response headers and
//     trailers SEND, request body NONE, response body NONE or STREAMED, no
//     mode override (package doc).
func Check(doc []byte) (*Checked, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	var env envelope
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return nil, fmt.Errorf("object: %w", err)
	}
	if env.APIVersion != apiVersion || env.Kind != kindEnvoyFilt {
		return nil, fmt.Errorf("object: %s/%s, want %s/%s", env.APIVersion, env.Kind, apiVersion, kindEnvoyFilt)
	}
	if env.Metadata.Name == "" || env.Metadata.Namespace == "" {
		return nil, errors.New("object: metadata.name and metadata.namespace are required")
	}
	spec := &networking.EnvoyFilter{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(env.Spec, spec); err != nil {
		return nil, fmt.Errorf("spec (istio.networking.v1alpha3.EnvoyFilter): %w", err)
	}
	if len(spec.GetWorkloadSelector().GetLabels()) == 0 {
		return nil, errors.New("spec.workloadSelector.labels: empty; the filter would apply to every workload of the namespace")
	}
	out := &Checked{Metadata: env.Metadata, Spec: spec}
	seen, seenHCM := map[string]bool{}, map[string]bool{}
	for i, p := range spec.GetConfigPatches() {
		ctx := p.GetMatch().GetContext()
		if i == 0 {
			out.Context = ctx
		} else if ctx != out.Context {
			return nil, fmt.Errorf("spec.configPatches[%d]: context %s differs from the first patch's %s", i, ctx, out.Context)
		}
		if err := checkContext(p.GetMatch()); err != nil {
			return nil, fmt.Errorf("spec.configPatches[%d]: %w", i, err)
		}
		if p.GetApplyTo() == networking.EnvoyFilter_NETWORK_FILTER {
			g, d, err := checkHCMPatch(p)
			if err != nil {
				return nil, fmt.Errorf("spec.configPatches[%d]: %w", i, err)
			}
			if seenHCM[g.Name] {
				return nil, fmt.Errorf("spec.configPatches[%d]: a second HTTP connection manager patch for %s", i, g.Name)
			}
			if len(seenHCM) > 0 && d != out.StreamTimeouts {
				return nil, fmt.Errorf("spec.configPatches[%d]: stream timeouts %s differ from another generation's %s", i, d, out.StreamTimeouts)
			}
			seenHCM[g.Name], out.StreamTimeouts = true, d
			continue
		}
		cp, err := checkPatch(p)
		if err != nil {
			return nil, fmt.Errorf("spec.configPatches[%d]: %w", i, err)
		}
		if seen[cp.Generation.Name] {
			return nil, fmt.Errorf("spec.configPatches[%d]: a second patch for %s", i, cp.Generation.Name)
		}
		if err := checkEdgeProcessor(cp.Processor, ctx); err != nil {
			return nil, fmt.Errorf("spec.configPatches[%d].patch.value.typed_config (%s): %w", i, cp.Generation.Name, err)
		}
		seen[cp.Generation.Name] = true
		out.Patches = append(out.Patches, cp)
	}
	for _, g := range Generations() {
		if !seen[g.Name] {
			return nil, fmt.Errorf("spec.configPatches: no patch for %s (Istio %s)", g.Name, g.Istio)
		}
		if len(seenHCM) > 0 && !seenHCM[g.Name] {
			return nil, fmt.Errorf("spec.configPatches: no HTTP connection manager patch for %s (Istio %s), while another generation has one", g.Name, g.Istio)
		}
	}
	return out, nil
}

// edgeContext reports a context where requests can be held.
func edgeContext(c networking.EnvoyFilter_PatchContext) bool {
	return c == networking.EnvoyFilter_GATEWAY || c == networking.EnvoyFilter_SIDECAR_OUTBOUND
}

// checkContext checks the context and its listener match: an outbound
// patch must name its listener's port.
func checkContext(m *networking.EnvoyFilter_EnvoyConfigObjectMatch) error {
	switch c := m.GetContext(); c {
	case networking.EnvoyFilter_SIDECAR_INBOUND, networking.EnvoyFilter_GATEWAY:
	case networking.EnvoyFilter_SIDECAR_OUTBOUND:
		if m.GetListener().GetPortNumber() == 0 {
			return errors.New("match.listener.portNumber: unset in SIDECAR_OUTBOUND; the filter would make every outbound HTTP request of the callers wait for the extproc")
		}
	default:
		return fmt.Errorf("match.context %s, want SIDECAR_INBOUND, GATEWAY or SIDECAR_OUTBOUND", c)
	}
	return nil
}

// checkEdgeProcessor checks what holding and answering locally need of the
// ext_proc configuration in context c (see Check).
func checkEdgeProcessor(ep *extprocv3.ExternalProcessor, c networking.EnvoyFilter_PatchContext) error {
	if ep.GetObservabilityMode() {
		if c == networking.EnvoyFilter_SIDECAR_OUTBOUND {
			return errors.New("observability_mode: true in SIDECAR_OUTBOUND; the outbound context exists to hold and shed (control profile); counting there would duplicate the inbound count")
		}
		return nil
	}
	if ep.GetDisableImmediateResponse() {
		return errors.New("disable_immediate_response: true; hold timeouts and load shedding answer with immediate_response (503/429 with Retry-After)")
	}
	if !edgeContext(c) {
		return nil
	}
	want := scaling.MaxHoldTimeout + HoldOverrideMargin
	if got := ep.GetMaxMessageTimeout().AsDuration(); got < want {
		return fmt.Errorf("max_message_timeout: %s; want at least %s (the longest hold-timeout %s + %s) so that Envoy honours the extproc's override_message_timeout for a held request (a shorter hold would end at message_timeout, fail-open, 503 no_healthy_upstream)",
			got, want, scaling.FormatDuration(scaling.MaxHoldTimeout), HoldOverrideMargin)
	}
	return nil
}

// checkHCMPatch checks a NETWORK_FILTER MERGE of the HTTP connection
// manager that sets only stream_idle_timeout and request_timeout, equal and
// within MinStreamTimeouts..MaxStreamTimeouts, in an edge context, pinned to
// one generation.
func checkHCMPatch(p *networking.EnvoyFilter_EnvoyConfigObjectPatch) (Generation, time.Duration, error) {
	m := p.GetMatch()
	if !edgeContext(m.GetContext()) {
		return Generation{}, 0, fmt.Errorf("NETWORK_FILTER patch in %s; only the edge contexts (GATEWAY, SIDECAR_OUTBOUND) get stream timeouts", m.GetContext())
	}
	f := m.GetListener().GetFilterChain().GetFilter()
	if f.GetName() != hcmFilter || f.GetSubFilter() != nil {
		return Generation{}, 0, fmt.Errorf("match.listener.filterChain.filter: %q (subFilter %q), want %s alone", f.GetName(), f.GetSubFilter().GetName(), hcmFilter)
	}
	if op := p.GetPatch().GetOperation(); op != networking.EnvoyFilter_Patch_MERGE {
		return Generation{}, 0, fmt.Errorf("patch.operation %s, want MERGE (the HTTP connection manager)", op)
	}
	g, err := patchGeneration(m)
	if err != nil {
		return Generation{}, 0, err
	}
	val := p.GetPatch().GetValue().GetFields()
	for k := range val {
		if k != "typed_config" {
			return g, 0, fmt.Errorf("patch.value.%s: unknown field (want typed_config)", k)
		}
	}
	h := &hcmv3.HttpConnectionManager{}
	if err := decodeTypedConfig(val["typed_config"].GetStructValue(), hcmType, h); err != nil {
		return g, 0, err
	}
	want := StreamTimeouts(h.GetStreamIdleTimeout().AsDuration())
	if !proto.Equal(h, want) {
		return g, 0, errors.New("patch.value.typed_config: want exactly stream_idle_timeout and request_timeout, equal (nothing else of the connection manager is changed)")
	}
	d := h.GetStreamIdleTimeout().AsDuration()
	if !h.GetStreamIdleTimeout().IsValid() || d < MinStreamTimeouts || d > MaxStreamTimeouts {
		return g, 0, fmt.Errorf("patch.value.typed_config.stream_idle_timeout: %s; want %s to %s", h.GetStreamIdleTimeout().AsDuration(), MinStreamTimeouts, MaxStreamTimeouts)
	}
	return g, d, nil
}

// patchGeneration is the Generation a patch's proxyVersion selects.
func patchGeneration(m *networking.EnvoyFilter_EnvoyConfigObjectMatch) (Generation, error) {
	pv := m.GetProxy().GetProxyVersion()
	if pv == "" {
		return Generation{}, errors.New("match.proxy.proxyVersion: empty; every patch must be pinned to a proxy generation")
	}
	re, err := regexp.Compile(pv)
	if err != nil {
		return Generation{}, fmt.Errorf("match.proxy.proxyVersion: %w", err)
	}
	gi := generationOf(re)
	if gi < 0 {
		return Generation{}, fmt.Errorf("match.proxy.proxyVersion %q does not select exactly one proxy generation", pv)
	}
	return Generations()[gi], nil
}

// decodeTypedConfig decodes a patch's typed_config of type typ into m,
// strictly (an unknown field is an error).
func decodeTypedConfig(tc *structpb.Struct, typ string, m proto.Message) error {
	if tc == nil {
		return errors.New("patch.value.typed_config: missing")
	}
	if t := tc.GetFields()["@type"].GetStringValue(); t != typ {
		return fmt.Errorf("patch.value.typed_config.@type %q, want %s", t, typ)
	}
	tcJSON, err := protojson.Marshal(tc)
	if err != nil {
		return err
	}
	a := &anypb.Any{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(tcJSON, a); err != nil {
		return fmt.Errorf("patch.value.typed_config: %w", err)
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("patch.value.typed_config: %w", err)
	}
	return nil
}

func checkPatch(p *networking.EnvoyFilter_EnvoyConfigObjectPatch) (CheckedPatch, error) {
	var cp CheckedPatch
	if p.GetApplyTo() != networking.EnvoyFilter_HTTP_FILTER {
		return cp, fmt.Errorf("applyTo %s, want HTTP_FILTER", p.GetApplyTo())
	}
	m := p.GetMatch()
	f := m.GetListener().GetFilterChain().GetFilter()
	if f.GetName() != hcmFilter || f.GetSubFilter().GetName() != routerFilter {
		return cp, fmt.Errorf("match.listener.filterChain.filter: %q/%q, want %s/%s", f.GetName(), f.GetSubFilter().GetName(), hcmFilter, routerFilter)
	}
	if op := p.GetPatch().GetOperation(); op != networking.EnvoyFilter_Patch_INSERT_BEFORE {
		return cp, fmt.Errorf("patch.operation %s, want INSERT_BEFORE (the router)", op)
	}
	g, err := patchGeneration(m)
	if err != nil {
		return cp, err
	}
	cp.Generation = g

	val := p.GetPatch().GetValue().GetFields()
	for k := range val {
		if k != "name" && k != "typed_config" {
			return cp, fmt.Errorf("patch.value.%s: unknown field (want name and typed_config)", k)
		}
	}
	if val["name"].GetStringValue() == "" {
		return cp, errors.New("patch.value.name: empty")
	}
	ep := &extprocv3.ExternalProcessor{}
	if err := decodeTypedConfig(val["typed_config"].GetStructValue(), extProcType, ep); err != nil {
		return cp, err
	}
	if err := ep.ValidateAll(); err != nil {
		return cp, fmt.Errorf("patch.value.typed_config: ValidateAll: %w", err)
	}
	if err := CheckProcessor(ep, cp.Generation); err != nil {
		return cp, fmt.Errorf("patch.value.typed_config (%s): %w", cp.Generation.Name, err)
	}
	cp.Processor = ep
	return cp, nil
}

// CheckProcessor checks what counting requires of one ext_proc
// configuration on a proxy of the given generation (see Check). The rules happen to
// be the same for every generation today: response trailers SEND is what
// keeps a body-NONE stream open to the request's end on Envoy ≥ 1.37, and it
// is required everywhere because trailers also end gRPC responses.
func CheckProcessor(ep *extprocv3.ExternalProcessor, _ Generation) error {
	if !ep.GetFailureModeAllow() {
		return errors.New("failure_mode_allow: false; inference must never fail because the counter is down")
	}
	eg := ep.GetGrpcService().GetEnvoyGrpc()
	if eg == nil {
		return errors.New("grpc_service: want envoy_grpc with Istio's outbound cluster of the extproc Service")
	}
	parts := strings.Split(eg.GetClusterName(), "|")
	if len(parts) != 4 || parts[0] != "outbound" || parts[1] == "" || !strings.HasSuffix(parts[3], ".svc.cluster.local") {
		return fmt.Errorf("grpc_service.envoy_grpc.cluster_name %q: want outbound|PORT||SERVICE.NAMESPACE.svc.cluster.local", eg.GetClusterName())
	}
	if eg.GetAuthority() != parts[3] {
		return fmt.Errorf("grpc_service.envoy_grpc.authority %q: want %q (a cluster name with | is not a valid authority)", eg.GetAuthority(), parts[3])
	}
	if ep.GetGrpcService().GetTimeout() != nil {
		return errors.New("grpc_service.timeout: set; it would cut every stream (a whole HTTP request) at that age")
	}
	if ep.GetMessageTimeout() == nil {
		return errors.New("message_timeout: unset; set it so the latency a slow extproc can add is explicit")
	}
	if got, want := ep.GetRequestAttributes(), mesh.RequestAttributes(); !slices.Equal(got, want) {
		return fmt.Errorf("request_attributes %q: want exactly mesh.RequestAttributes() %q", got, want)
	}
	m := ep.GetProcessingMode()
	if h := m.GetRequestHeaderMode(); h == extprocv3.ProcessingMode_SKIP {
		return errors.New("processing_mode.request_header_mode: SKIP; request headers are the start of a request")
	}
	if h := m.GetResponseHeaderMode(); h == extprocv3.ProcessingMode_SKIP {
		return errors.New("processing_mode.response_header_mode: SKIP; a response without body ends at its headers (and on Envoy ≥ 1.37 an unprocessed response path closes the stream at response headers)")
	}
	if m.GetResponseTrailerMode() != extprocv3.ProcessingMode_SEND {
		return fmt.Errorf("processing_mode.response_trailer_mode: %s; want SEND: trailers end gRPC (trailer-terminated) responses, and on Envoy ≥ 1.37 a body NONE without trailers SEND closes the stream right after the response headers reply", m.GetResponseTrailerMode())
	}
	if m.GetRequestBodyMode() != extprocv3.ProcessingMode_NONE {
		return fmt.Errorf("processing_mode.request_body_mode: %s; request bodies (prompts) must not be sent", m.GetRequestBodyMode())
	}
	switch b := m.GetResponseBodyMode(); b {
	case extprocv3.ProcessingMode_NONE:
		// The end is the response headers' end_of_stream, the trailers, or
		// the stream's end, which trailers SEND keeps at the HTTP stream's
		// end on every generation (package doc).
	case extprocv3.ProcessingMode_STREAMED:
		// Exact (end_of_stream of the last chunk) but one message per
		// response chunk: allowed, not rendered.
	default:
		return fmt.Errorf("processing_mode.response_body_mode: %s; want NONE (rendered) or STREAMED: BUFFERED modes hold the whole response in Envoy and are excluded from Envoy 1.37's close rules, FULL_DUPLEX_STREAMED turns failure_mode_allow off once body flowed", b)
	}
	if ep.GetAllowModeOverride() {
		return errors.New("allow_mode_override: true; a reply's mode_override could switch the response path to body NONE with trailers SKIP, which ends the stream early on Envoy ≥ 1.37")
	}
	if ep.GetObservabilityMode() {
		d := ep.GetDeferredCloseTimeout()
		if d == nil {
			return errors.New("deferred_close_timeout: unset in observability mode (Envoy's default 5 s would delay every bodied response's end by 5 s); set it low")
		}
		if dd := d.AsDuration(); dd < MinDeferredCloseTimeout || dd > MaxDeferredCloseTimeout {
			return fmt.Errorf("deferred_close_timeout: %s; want %s to %s: in observability mode every response with a body and no trailers ends this late", dd, MinDeferredCloseTimeout, MaxDeferredCloseTimeout)
		}
	}
	return nil
}

// SplitDocuments splits a multi-document YAML stream, dropping empty ones.
func SplitDocuments(b []byte) [][]byte {
	var out [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

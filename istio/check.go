package istio

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	networking "istio.io/api/networking/v1alpha3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/mesh"
)

// Checked is an EnvoyFilter that passed Check.
type Checked struct {
	Metadata metav1.ObjectMeta
	Spec     *networking.EnvoyFilter
	// Patches are in the document's order.
	Patches []CheckedPatch
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
//   - every patch is an HTTP_FILTER INSERT_BEFORE of the router, in the
//     SIDECAR_INBOUND or GATEWAY context, matched by a proxyVersion that
//     selects exactly one Generation, and every Generation has one patch;
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
	seen := map[string]bool{}
	var context networking.EnvoyFilter_PatchContext
	for i, p := range spec.GetConfigPatches() {
		cp, err := checkPatch(p)
		if err != nil {
			return nil, fmt.Errorf("spec.configPatches[%d]: %w", i, err)
		}
		if i == 0 {
			context = p.GetMatch().GetContext()
		} else if p.GetMatch().GetContext() != context {
			return nil, fmt.Errorf("spec.configPatches[%d]: context %s differs from the first patch's %s", i, p.GetMatch().GetContext(), context)
		}
		if seen[cp.Generation.Name] {
			return nil, fmt.Errorf("spec.configPatches[%d]: a second patch for %s", i, cp.Generation.Name)
		}
		seen[cp.Generation.Name] = true
		out.Patches = append(out.Patches, cp)
	}
	for _, g := range Generations() {
		if !seen[g.Name] {
			return nil, fmt.Errorf("spec.configPatches: no patch for %s (Istio %s)", g.Name, g.Istio)
		}
	}
	return out, nil
}

func checkPatch(p *networking.EnvoyFilter_EnvoyConfigObjectPatch) (CheckedPatch, error) {
	var cp CheckedPatch
	if p.GetApplyTo() != networking.EnvoyFilter_HTTP_FILTER {
		return cp, fmt.Errorf("applyTo %s, want HTTP_FILTER", p.GetApplyTo())
	}
	m := p.GetMatch()
	if c := m.GetContext(); c != networking.EnvoyFilter_SIDECAR_INBOUND && c != networking.EnvoyFilter_GATEWAY {
		return cp, fmt.Errorf("match.context %s, want SIDECAR_INBOUND or GATEWAY", c)
	}
	f := m.GetListener().GetFilterChain().GetFilter()
	if f.GetName() != hcmFilter || f.GetSubFilter().GetName() != routerFilter {
		return cp, fmt.Errorf("match.listener.filterChain.filter: %q/%q, want %s/%s", f.GetName(), f.GetSubFilter().GetName(), hcmFilter, routerFilter)
	}
	if op := p.GetPatch().GetOperation(); op != networking.EnvoyFilter_Patch_INSERT_BEFORE {
		return cp, fmt.Errorf("patch.operation %s, want INSERT_BEFORE (the router)", op)
	}
	pv := m.GetProxy().GetProxyVersion()
	if pv == "" {
		return cp, errors.New("match.proxy.proxyVersion: empty; every patch must be pinned to a proxy generation")
	}
	re, err := regexp.Compile(pv)
	if err != nil {
		return cp, fmt.Errorf("match.proxy.proxyVersion: %w", err)
	}
	gi := generationOf(re)
	if gi < 0 {
		return cp, fmt.Errorf("match.proxy.proxyVersion %q does not select exactly one proxy generation", pv)
	}
	cp.Generation = Generations()[gi]

	val := p.GetPatch().GetValue().GetFields()
	for k := range val {
		if k != "name" && k != "typed_config" {
			return cp, fmt.Errorf("patch.value.%s: unknown field (want name and typed_config)", k)
		}
	}
	if val["name"].GetStringValue() == "" {
		return cp, errors.New("patch.value.name: empty")
	}
	tc := val["typed_config"].GetStructValue()
	if tc == nil {
		return cp, errors.New("patch.value.typed_config: missing")
	}
	if t := tc.GetFields()["@type"].GetStringValue(); t != extProcType {
		return cp, fmt.Errorf("patch.value.typed_config.@type %q, want %s", t, extProcType)
	}
	tcJSON, err := protojson.Marshal(tc)
	if err != nil {
		return cp, err
	}
	a := &anypb.Any{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(tcJSON, a); err != nil {
		return cp, fmt.Errorf("patch.value.typed_config: %w", err)
	}
	ep := &extprocv3.ExternalProcessor{}
	if err := a.UnmarshalTo(ep); err != nil {
		return cp, fmt.Errorf("patch.value.typed_config: %w", err)
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

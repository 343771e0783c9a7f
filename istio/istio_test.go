package istio

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"github.com/inflight-dev/inflight/mesh"
	"github.com/inflight-dev/inflight/scaling"
)

var update = flag.Bool("update", false, "rewrite the rendered examples in examples/")

// examples are the rendered EnvoyFilters shipped in examples/.
func examples() map[string]Options {
	vllm := map[string]string{"app": "vllm"}
	return map[string]Options{
		"observe-sidecar.yaml":                 {Namespace: "models", Selector: vllm},
		"control-sidecar.yaml":                 {Namespace: "models", Selector: vllm, Profile: ProfileControl},
		"observe-gateway.yaml":                 {Gateway: true},
		"control-gateway.yaml":                 {Gateway: true, Profile: ProfileControl},
		"control-gateway-stream-timeouts.yaml": {Gateway: true, Profile: ProfileControl, StreamTimeouts: 10 * time.Minute},
		"control-outbound.yaml":                {Outbound: true, Namespace: "apps", Selector: map[string]string{"app": "chat-frontend"}, Port: 8000, Profile: ProfileControl},
	}
}

// TestExamplesUpToDate renders every example and compares it with the file
// in examples/ (go test ./istio -update rewrites them). It also fails on a
// file in examples/ that no example renders.
func TestExamplesUpToDate(t *testing.T) {
	want := map[string]bool{}
	for name, o := range examples() {
		want[name] = true
		got, err := Render(o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		path := filepath.Join("examples", name)
		if *update {
			if err := os.MkdirAll("examples", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		file, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s: %v (run go test ./istio -update)", name, err)
		}
		if !bytes.Equal(file, got) {
			t.Errorf("%s is stale: run go test ./istio -update", path)
		}
	}
	files, err := filepath.Glob("examples/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if !want[filepath.Base(f)] {
			t.Errorf("%s is not rendered by any example: remove it or add it to examples()", f)
		}
	}
}

// shippedDocuments returns every YAML document under istio/.
func shippedDocuments(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || (!strings.HasSuffix(p, ".yaml") && !strings.HasSuffix(p, ".yml")) {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, doc := range SplitDocuments(b) {
			out[p+"#"+string(rune('0'+i))] = doc
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestShippedAndRenderedEnvoyFiltersCheck decodes every shipped and
// rendered EnvoyFilter strictly (Istio's EnvoyFilter type, go-control-plane's
// ExternalProcessor with ValidateAll) and asserts the request attributes are
// exactly mesh.RequestAttributes().
func TestShippedAndRenderedEnvoyFiltersCheck(t *testing.T) {
	docs := shippedDocuments(t)
	if len(docs) < len(examples()) {
		t.Fatalf("found %d shipped documents, want at least %d", len(docs), len(examples()))
	}
	for name, o := range examples() {
		b, err := Render(o)
		if err != nil {
			t.Fatal(err)
		}
		docs["rendered:"+name] = b
	}
	more := []Options{
		{Namespace: "llm", Selector: map[string]string{"app.kubernetes.io/name": "tgi", "tier": "gpu"}, Port: 8080},
		{Namespace: "llm", Selector: map[string]string{"app": "x"}, Profile: ProfileControl, ExtprocNamespace: "infl", ExtprocService: "ep", ExtprocPort: 7000, MessageTimeout: 50 * time.Millisecond},
		{Namespace: "gw", Selector: map[string]string{"istio": "gw"}, Gateway: true, DeferredCloseTimeout: 300 * time.Millisecond},
	}
	for i, o := range more {
		b, err := Render(o)
		if err != nil {
			t.Fatal(err)
		}
		docs["rendered:more"+string(rune('0'+i))] = b
	}
	for name, doc := range docs {
		c, err := Check(doc)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if len(c.Patches) != len(Generations()) {
			t.Errorf("%s: %d patches, want one per generation (%d)", name, len(c.Patches), len(Generations()))
		}
		for _, p := range c.Patches {
			if got := p.Processor.GetRequestAttributes(); !slices.Equal(got, mesh.RequestAttributes()) {
				t.Errorf("%s %s: request_attributes %q, want mesh.RequestAttributes() %q", name, p.Generation.Name, got, mesh.RequestAttributes())
			}
		}
	}
}

// TestCheckRejects proves Check fails on each defect it is meant to catch.
func TestCheckRejects(t *testing.T) {
	base, err := Render(Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}, Profile: ProfileControl})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Check(base); err != nil {
		t.Fatalf("base does not pass: %v", err)
	}
	doc := string(base)
	cases := []struct {
		name     string
		old, new string
		all      bool
		wantErr  string
	}{
		{"unknown typed_config field", "failure_mode_allow: true", "failure_mode_allow: true\n          failure_mode_alow: true", false, "failure_mode_alow"},
		{"unknown spec field", "  priority: 10", "  priority: 10\n  prority: 3", false, "prority"},
		{"unknown object field", "kind: EnvoyFilter", "kind: EnvoyFilter\nstatus: {}", false, "status"},
		{"fail-closed", "failure_mode_allow: true", "failure_mode_allow: false", false, "failure_mode_allow"},
		{"attribute dropped", "- xds.node.id\n", "", false, "request_attributes"},
		{"attribute added", "- xds.cluster_name\n", "- xds.cluster_name\n          - request.path\n", false, "request_attributes"},
		{"wrong type", "ext_proc.v3.ExternalProcessor", "ext_authz.v3.ExtAuthz", false, "@type"},
		{"invalid by ValidateAll", "message_timeout: 0.200s", "message_timeout: 7200s", false, "ValidateAll"},
		{"cluster not outbound", "cluster_name: outbound|", "cluster_name: inbound|", true, "cluster_name"},
		{"trailers skipped", "response_trailer_mode: SEND", "response_trailer_mode: SKIP", false, "response_trailer_mode"},
		{"trailers default", "response_trailer_mode: SEND", "response_trailer_mode: DEFAULT", false, "response_trailer_mode"},
		{"response headers skipped", "response_header_mode: SEND", "response_header_mode: SKIP", false, "response_header_mode"},
		{"buffered body", "response_body_mode: NONE", "response_body_mode: BUFFERED", false, "BUFFERED"},
		{"full duplex body", "response_body_mode: NONE", "response_body_mode: FULL_DUPLEX_STREAMED", false, "FULL_DUPLEX_STREAMED"},
		{"request body sent", "request_body_mode: NONE", "request_body_mode: STREAMED", false, "request_body_mode"},
		{"mode override", "failure_mode_allow: true", "failure_mode_allow: true\n          allow_mode_override: true", false, "allow_mode_override"},
		{"overlapping versions", `proxyVersion: ^1\.2[4-8]([.-].*)?$`, `proxyVersion: ^1\..*$`, false, "exactly one"},
		{"unpinned patch", `proxyVersion: ^1\.2[4-8]([.-].*)?$`, `proxyVersion: ""`, false, "proxyVersion"},
		{"empty selector", "app: vllm", "{}", false, "workloadSelector"},
		{"mixed contexts", "context: SIDECAR_INBOUND", "context: GATEWAY", false, "differs from the first patch's"},
		{"outbound context without a port", "context: SIDECAR_INBOUND", "context: SIDECAR_OUTBOUND", true, "portNumber"},
		{"any context", "context: SIDECAR_INBOUND", "context: ANY", true, "want SIDECAR_INBOUND, GATEWAY or SIDECAR_OUTBOUND"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := 1
			if tc.all {
				n = -1
			}
			mut := strings.Replace(doc, tc.old, tc.new, n)
			if mut == doc {
				t.Fatalf("mutation %q did not apply to:\n%s", tc.old, doc)
			}
			_, err := Check([]byte(mut))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Check = %v, want an error mentioning %q", err, tc.wantErr)
			}
		})
	}
	// STREAMED bodies are exact too (one message per chunk): accepted.
	if _, err := Check([]byte(strings.Replace(doc, "response_body_mode: NONE", "response_body_mode: STREAMED", -1))); err != nil {
		t.Errorf("STREAMED response body rejected: %v", err)
	}
	// Observability mode: the deferred close is the end bias, so it must be
	// set and short.
	obs, err := Render(Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Check(obs); err != nil {
		t.Fatalf("observe base does not pass: %v", err)
	}
	for name, mut := range map[string]string{
		"deferred close unset":    strings.Replace(string(obs), "          deferred_close_timeout: 0.100s\n", "", 1),
		"deferred close too long": strings.Replace(string(obs), "deferred_close_timeout: 0.100s", "deferred_close_timeout: 5s", 1),
	} {
		if mut == string(obs) {
			t.Fatalf("%s: mutation did not apply", name)
		}
		if _, err := Check([]byte(mut)); err == nil || !strings.Contains(err.Error(), "deferred_close_timeout") {
			t.Errorf("%s: Check = %v, want a deferred_close_timeout error", name, err)
		}
	}
	// A filter with one generation's patch removed fails coverage.
	c, _ := Check(base)
	if len(c.Patches) < 2 {
		t.Fatal("want two patches")
	}
	i := strings.Index(doc, "  - applyTo:")
	j := strings.LastIndex(doc, "  - applyTo:")
	if i < 0 || j <= i {
		t.Fatalf("cannot find two patches in:\n%s", doc)
	}
	if _, err := Check([]byte(doc[:j] + "  priority: 10\n  workloadSelector:\n    labels:\n      app: vllm\n")); err == nil || !strings.Contains(err.Error(), "no patch for") {
		t.Fatalf("Check without the last patch = %v, want a coverage error", err)
	}
}

func TestGenerations(t *testing.T) {
	gens := Generations()
	for i, g := range gens {
		re := regexp.MustCompile(g.ProxyVersion)
		if got := generationOf(re); got != i {
			t.Errorf("%s: generationOf = %d, want %d", g.Name, got, i)
		}
		for j, o := range gens {
			for _, v := range o.Examples {
				if re.MatchString(v) != (i == j) {
					t.Errorf("%s: proxyVersion %q on %q = %v", g.Name, g.ProxyVersion, v, !(i == j))
				}
			}
		}
		for _, v := range UnsupportedVersions() {
			if re.MatchString(v) {
				t.Errorf("%s matches unsupported %q", g.Name, v)
			}
		}
	}
	if !gens[len(gens)-1].EarlyStreamClose || gens[0].EarlyStreamClose {
		t.Error("only the newest generation (Envoy ≥ 1.37) closes streams early")
	}
}

func TestProfiles(t *testing.T) {
	gens := Generations()
	type want struct {
		obs  bool
		body extprocv3.ProcessingMode_BodySendMode
	}
	cases := []struct {
		p    Profile
		g    Generation
		want want
	}{
		{ProfileObserve, gens[0], want{true, extprocv3.ProcessingMode_NONE}},
		{ProfileObserve, gens[1], want{true, extprocv3.ProcessingMode_NONE}},
		{ProfileControl, gens[0], want{false, extprocv3.ProcessingMode_NONE}},
		{ProfileControl, gens[1], want{false, extprocv3.ProcessingMode_NONE}},
	}
	for _, tc := range cases {
		ep := ExternalProcessor(Options{Namespace: "m", Selector: map[string]string{"a": "b"}, Profile: tc.p}, tc.g)
		m := ep.GetProcessingMode()
		if ep.GetObservabilityMode() != tc.want.obs || m.GetResponseBodyMode() != tc.want.body {
			t.Errorf("%s/%s: observability %v body %s, want %v %s", tc.p, tc.g.Name, ep.GetObservabilityMode(), m.GetResponseBodyMode(), tc.want.obs, tc.want.body)
		}
		if m.GetRequestHeaderMode() != extprocv3.ProcessingMode_SEND || m.GetResponseHeaderMode() != extprocv3.ProcessingMode_SEND ||
			m.GetResponseTrailerMode() != extprocv3.ProcessingMode_SEND || m.GetRequestBodyMode() != extprocv3.ProcessingMode_NONE {
			t.Errorf("%s/%s: want headers and response trailers SEND, request body NONE: %v", tc.p, tc.g.Name, m)
		}
		if !ep.GetFailureModeAllow() {
			t.Errorf("%s/%s: not fail-open", tc.p, tc.g.Name)
		}
		if tc.want.obs && ep.GetDeferredCloseTimeout().AsDuration() != DefaultDeferredCloseTimeout {
			t.Errorf("%s/%s: deferred_close_timeout %v", tc.p, tc.g.Name, ep.GetDeferredCloseTimeout())
		}
		if got := ep.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != "outbound|9002||inflight-extproc.inflight-system.svc.cluster.local" {
			t.Errorf("cluster %q", got)
		}
		if err := CheckProcessor(ep, tc.g); err != nil {
			t.Errorf("%s/%s: %v", tc.p, tc.g.Name, err)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	ok := Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		o    Options
		want string
	}{
		{Options{Selector: map[string]string{"app": "vllm"}}, "--namespace is empty"},
		{Options{Namespace: "Models", Selector: map[string]string{"app": "vllm"}}, "--namespace"},
		{Options{Namespace: "models"}, "--selector is empty"},
		{Options{Namespace: "models", Selector: map[string]string{"app": "v llm"}}, "--selector app="},
		{Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}, Profile: "fast"}, "--profile"},
		{Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}, MessageTimeout: time.Hour}, "--message-timeout"},
		{Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}, DeferredCloseTimeout: time.Minute}, "--deferred-close-timeout"},
		{Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}, DeferredCloseTimeout: time.Millisecond}, "--deferred-close-timeout"},
		{Options{Gateway: true, Port: 80}, "--port"},
		{Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}, ExtprocPort: 70000}, "--extproc-port"},
		{Options{Namespace: "apps", Selector: map[string]string{"app": "fe"}, Outbound: true, Profile: ProfileControl}, "--outbound without --port"},
		{Options{Namespace: "apps", Selector: map[string]string{"app": "fe"}, Outbound: true, Port: 8000}, "--outbound with --profile=observe"},
		{Options{Gateway: true, Outbound: true, Profile: ProfileControl}, "choose one context"},
		{Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}, Profile: ProfileControl, StreamTimeouts: time.Hour}, "only with --gateway or --outbound"},
		{Options{Gateway: true, StreamTimeouts: time.Hour}, "only with --gateway or --outbound"},
		{Options{Gateway: true, Profile: ProfileControl, StreamTimeouts: time.Second}, "--stream-timeouts=1s: want 10s to 24h0m0s"},
		{Options{Gateway: true, Profile: ProfileControl, StreamTimeouts: 48 * time.Hour}, "--stream-timeouts"},
	}
	for _, tc := range bad {
		err := tc.o.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: Validate = %v, want %q", tc.o, err, tc.want)
		}
		if _, err := Render(tc.o); err == nil {
			t.Errorf("%+v: Render accepted invalid options", tc.o)
		}
	}
}

func TestSelectorAndName(t *testing.T) {
	sel, err := ParseSelector("app=vllm,tier=gpu")
	if err != nil || len(sel) != 2 || sel["tier"] != "gpu" {
		t.Fatalf("ParseSelector = %v, %v", sel, err)
	}
	if got := FormatSelector(sel); got != "app=vllm,tier=gpu" {
		t.Errorf("FormatSelector = %q", got)
	}
	if _, err := ParseSelector("app"); err == nil {
		t.Error("ParseSelector accepted a key without value")
	}
	if got := (Options{Selector: sel}).defaultName(); got != "inflight-vllm-gpu" {
		t.Errorf("defaultName = %q", got)
	}
	if got := (Options{Selector: sel, Outbound: true}).defaultName(); got != "inflight-outbound-vllm-gpu" {
		t.Errorf("outbound defaultName = %q", got)
	}
	long := map[string]string{"a": strings.Repeat("x", 62), "b": "y"}
	if got := (Options{Selector: long}).defaultName(); len(got) > 63 || strings.HasSuffix(got, "-") {
		t.Errorf("defaultName = %q", got)
	}
	o := Options{Namespace: "models", Selector: sel, Port: 8000, Profile: ProfileControl}
	if got, want := o.Command(), "inflightctl envoyfilter --namespace models --selector app=vllm,tier=gpu --profile control --port 8000"; got != want {
		t.Errorf("Command = %q, want %q", got, want)
	}
}

// TestCheckEdge proves the edge rules: the control profile at the edge must
// admit the longest hold (max_message_timeout), answer locally
// (immediate_response), pin the outbound listener's port and run control
// there, and an HTTP connection manager MERGE may set only the two stream
// timeouts, equal, in range, for every generation, at the edge only.
func TestCheckEdge(t *testing.T) {
	render := func(o Options) string {
		t.Helper()
		b, err := Render(o)
		if err != nil {
			t.Fatal(err)
		}
		c, err := Check(b)
		if err != nil {
			t.Fatalf("%+v does not pass: %v", o, err)
		}
		if c.StreamTimeouts != o.StreamTimeouts {
			t.Fatalf("Checked.StreamTimeouts = %s, want %s", c.StreamTimeouts, o.StreamTimeouts)
		}
		return string(b)
	}
	gw := render(Options{Gateway: true, Profile: ProfileControl, StreamTimeouts: 10 * time.Minute})
	out := render(Options{Outbound: true, Namespace: "apps", Selector: map[string]string{"app": "fe"}, Port: 8000, Profile: ProfileControl})
	inbound := render(Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}, Profile: ProfileControl})
	hcmPatch := gw[strings.Index(gw, "  - applyTo: NETWORK_FILTER") : strings.Index(gw, "          stream_idle_timeout: 600s\n")+len("          stream_idle_timeout: 600s\n")]
	cases := []struct {
		name, doc, old, new string
		all                 bool
		wantErr             string
	}{
		{"gateway: overrides ignored", gw, "          max_message_timeout: 3600s\n", "", true, "max_message_timeout: 0s"},
		{"gateway: max too short", gw, "max_message_timeout: 3600s", "max_message_timeout: 300s", true, "want at least 59m1s"},
		{"outbound: max too short", out, "max_message_timeout: 3600s", "max_message_timeout: 60s", true, "max_message_timeout"},
		{"immediate_response disabled", inbound, "failure_mode_allow: true", "failure_mode_allow: true\n          disable_immediate_response: true", false, "disable_immediate_response"},
		{"outbound: no port", out, "        portNumber: 8000\n", "", true, "portNumber"},
		{"outbound: observe", out, "          max_message_timeout: 3600s\n", "          deferred_close_timeout: 0.100s\n          observability_mode: true\n", true, "observability_mode"},
		{"timeouts differ", gw, "request_timeout: 600s", "request_timeout: 300s", false, "want exactly stream_idle_timeout and request_timeout"},
		{"timeouts: another field", gw, "request_timeout: 600s", "request_timeout: 600s\n          use_remote_address: true", false, "want exactly"},
		{"timeouts: unknown field", gw, "request_timeout: 600s", "request_timeout: 600s\n          request_timeot: 1s", false, "request_timeot"},
		{"timeouts: too short", gw, "_timeout: 600s", "_timeout: 5s", true, "want 10s to 24h0m0s"},
		{"timeouts: not a merge", gw, "operation: MERGE", "operation: REPLACE", false, "want MERGE"},
		{"timeouts: one generation only", gw, hcmPatch, "", false, "no HTTP connection manager patch for"},
		{"timeouts: inbound", inbound, "  priority: 10", strings.ReplaceAll(hcmPatch, "GATEWAY", "SIDECAR_INBOUND") + "  priority: 10", false, "only the edge contexts"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := 1
			if tc.all {
				n = -1
			}
			mut := strings.Replace(tc.doc, tc.old, tc.new, n)
			if mut == tc.doc {
				t.Fatalf("mutation %q did not apply", tc.old)
			}
			_, err := Check([]byte(mut))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Check = %v, want an error mentioning %q", err, tc.wantErr)
			}
		})
	}
	// An inbound control filter needs no max_message_timeout (the extproc
	// never holds there), and observe at the gateway needs none either.
	if _, err := Check([]byte(strings.Replace(inbound, "          max_message_timeout: 3600s\n", "", -1))); err != nil {
		t.Errorf("inbound control without max_message_timeout rejected: %v", err)
	}
	if _, err := Check([]byte(render(Options{Gateway: true}))); err != nil {
		t.Errorf("observe gateway rejected: %v", err)
	}
}

// TestHoldTimeoutFitsMessageTimeout: the longest hold-timeout the
// annotation accepts, plus the margin, is an override Envoy honours under
// the rendered max_message_timeout; a longer one is rejected by the
// annotation parser.
func TestHoldTimeoutFitsMessageTimeout(t *testing.T) {
	if scaling.MaxHoldTimeout+HoldOverrideMargin > MaxMessageTimeout {
		t.Fatalf("scaling.MaxHoldTimeout %s + %s > max_message_timeout %s", scaling.MaxHoldTimeout, HoldOverrideMargin, MaxMessageTimeout)
	}
	ok := map[string]string{scaling.AnnotationPrefix + scaling.AnnTarget: "1", scaling.AnnotationPrefix + scaling.AnnHoldTimeout: scaling.FormatDuration(scaling.MaxHoldTimeout)}
	if _, err := scaling.ParseAnnotations(ok); err != nil {
		t.Fatalf("the longest hold-timeout is rejected: %v", err)
	}
	ok[scaling.AnnotationPrefix+scaling.AnnHoldTimeout] = scaling.FormatDuration(scaling.MaxHoldTimeout + time.Second)
	if _, err := scaling.ParseAnnotations(ok); err == nil {
		t.Fatal("a hold-timeout above scaling.MaxHoldTimeout is accepted")
	}
	ep := ExternalProcessor(Options{Gateway: true, Profile: ProfileControl}, Generations()[0])
	if got := ep.GetMaxMessageTimeout().AsDuration(); got != MaxMessageTimeout {
		t.Fatalf("control max_message_timeout %s, want %s", got, MaxMessageTimeout)
	}
	if err := ep.ValidateAll(); err != nil {
		t.Fatalf("MaxMessageTimeout is not a valid max_message_timeout: %v", err)
	}
}

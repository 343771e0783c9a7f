package mesh

import (
	"slices"
	"testing"
)

func sidecar() Map {
	return Map{
		AttrPod:         "vllm-7d9f8b6c5d-x2k9p",
		AttrNamespace:   "models",
		AttrWorkload:    "vllm",
		AttrNodeID:      "sidecar~10.0.0.7~vllm-7d9f8b6c5d-x2k9p.models~models.svc.cluster.local",
		AttrCluster:     "inbound|8000||",
		AttrServiceHost: "vllm.models.svc.cluster.local",
	}
}

func with(m Map, kv ...string) Map {
	out := Map{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "<delete>" {
			delete(out, kv[i])
			continue
		}
		out[kv[i]] = kv[i+1]
	}
	return out
}

func TestResolve(t *testing.T) {
	full := Target{Namespace: "models", Workload: "vllm", Service: "vllm", Pod: "vllm-7d9f8b6c5d-x2k9p"}
	tests := []struct {
		name   string
		attrs  Attributes
		want   Target
		reason Reason
	}{
		{"sidecar, everything present", sidecar(), full, ReasonNone},
		{"node id fallback for pod and namespace",
			with(sidecar(), AttrPod, "<delete>", AttrNamespace, "<delete>"), full, ReasonNone},
		{"workload derived from the pod name",
			with(sidecar(), AttrWorkload, "<delete>"), full, ReasonNone},
		{"statefulset pod name",
			with(sidecar(), AttrWorkload, "<delete>", AttrPod, "llama-0", AttrNodeID, "<delete>"),
			Target{Namespace: "models", Workload: "llama", Service: "vllm", Pod: "llama-0"}, ReasonNone},
		{"no service metadata still identifies the workload",
			with(sidecar(), AttrServiceHost, "<delete>"),
			Target{Namespace: "models", Workload: "vllm", Pod: "vllm-7d9f8b6c5d-x2k9p"}, ReasonNone},
		{"service of another namespace is ignored",
			with(sidecar(), AttrServiceHost, "other.elsewhere.svc.cluster.local"),
			Target{Namespace: "models", Workload: "vllm", Pod: "vllm-7d9f8b6c5d-x2k9p"}, ReasonNone},
		{"namespace from the service host as last resort",
			Map{AttrCluster: "inbound|8000||", AttrWorkload: "vllm", AttrServiceHost: "vllm.models.svc.cluster.local"},
			Target{Namespace: "models", Workload: "vllm", Service: "vllm"}, ReasonNone},
		{"missing cluster name but node metadata present",
			with(sidecar(), AttrCluster, "<delete>"), full, ReasonNone},
		{"gateway: outbound cluster names the service",
			Map{AttrCluster: "outbound|8000||vllm.models.svc.cluster.local", AttrPod: "istio-ingressgateway-abc", AttrNamespace: "istio-system"},
			Target{Namespace: "models", Service: "vllm"}, ReasonNone},
		{"gateway with subset and custom domain",
			Map{AttrCluster: "outbound|80|v2|vllm.models.svc.corp.example"},
			Target{Namespace: "models", Service: "vllm"}, ReasonNone},
		{"nothing at all", Map{}, Target{}, ReasonNoAttributes},
		{"nil attributes", nil, Target{}, ReasonNoAttributes},
		{"empty strings count as absent", Map{AttrPod: "", AttrNamespace: ""}, Target{}, ReasonNoAttributes},
		{"outbound with too few fields", Map{AttrCluster: "outbound|8000|vllm.models.svc.cluster.local"}, Target{}, ReasonBadCluster},
		{"outbound without a port", Map{AttrCluster: "outbound|||vllm.models.svc.cluster.local"}, Target{}, ReasonBadCluster},
		{"outbound to a non-service host", Map{AttrCluster: "outbound|443||api.example.com"}, Target{}, ReasonBadCluster},
		{"blackhole cluster", Map{AttrCluster: "BlackHoleCluster"}, Target{}, ReasonUnknownCluster},
		{"inbound without namespace", Map{AttrCluster: "inbound|8000||", AttrWorkload: "vllm"}, Target{}, ReasonNoNamespace},
		{"inbound without workload or pod", Map{AttrCluster: "inbound|8000||", AttrNamespace: "models"}, Target{}, ReasonNoWorkload},
		{"upper-case namespace is invalid", with(sidecar(), AttrNamespace, "Models", AttrServiceHost, "<delete>"), Target{}, ReasonInvalidName},
		{"injected label characters are invalid", with(sidecar(), AttrWorkload, "vllm\"}\n"), Target{}, ReasonInvalidName},
		{"overlong workload is invalid", with(sidecar(), AttrWorkload, string(make([]byte, 300))), Target{}, ReasonInvalidName},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := Resolve(tc.attrs)
			if got != tc.want || reason != tc.reason {
				t.Fatalf("Resolve = %+v, %q; want %+v, %q", got, reason, tc.want, tc.reason)
			}
		})
	}
}

func TestParseNodeID(t *testing.T) {
	tests := []struct {
		id, pod, ns string
		ok          bool
	}{
		{"sidecar~10.0.0.7~vllm-0.models~models.svc.cluster.local", "vllm-0", "models", true},
		{"sidecar~::1~a.b.c~c.svc.cluster.local", "a.b", "c", true},
		{"router~10.0.0.7~gw.istio-system~istio-system.svc.cluster.local", "", "", false},
		{"sidecar~10.0.0.7~nodot~models.svc.cluster.local", "", "", false},
		{"sidecar~10.0.0.7~trailing.~x", "", "", false},
		{"sidecar~too~few", "", "", false},
		{"", "", "", false},
	}
	for _, tc := range tests {
		pod, ns, ok := ParseNodeID(tc.id)
		if pod != tc.pod || ns != tc.ns || ok != tc.ok {
			t.Errorf("ParseNodeID(%q) = %q, %q, %v; want %q, %q, %v", tc.id, pod, ns, ok, tc.pod, tc.ns, tc.ok)
		}
	}
}

func TestWorkloadFromPod(t *testing.T) {
	tests := map[string]string{
		"vllm-7d9f8b6c5d-x2k9p":    "vllm",
		"my-model-5f6b7c8d9-abcde": "my-model",
		"llama-0":                  "llama",
		"standalone":               "standalone",
		"a-b-c":                    "a-b",
	}
	for pod, want := range tests {
		if got := WorkloadFromPod(pod); got != want {
			t.Errorf("WorkloadFromPod(%q) = %q, want %q", pod, got, want)
		}
	}
}

func TestRequestAttributesCoverResolve(t *testing.T) {
	attrs := RequestAttributes()
	for _, k := range []string{AttrPod, AttrNamespace, AttrWorkload, AttrNodeID, AttrCluster, AttrServiceHost} {
		if !slices.Contains(attrs, k) {
			t.Errorf("RequestAttributes() lacks %q, which Resolve reads", k)
		}
	}
	attrs[0] = "mutated"
	if RequestAttributes()[0] == "mutated" {
		t.Error("RequestAttributes returns shared state")
	}
}

func TestTargetSource(t *testing.T) {
	for _, tc := range []struct {
		t    Target
		want Source
	}{
		{Target{Namespace: "m", Workload: "w", Service: "s", Pod: "p"}, SourceInbound},
		{Target{Namespace: "m", Workload: "w"}, SourceInbound},
		{Target{Namespace: "m", Service: "s"}, SourceEdge},
		{Target{Namespace: "m"}, ""},
		{Target{}, ""},
	} {
		if got := tc.t.Source(); got != tc.want {
			t.Errorf("%+v: source %q, want %q", tc.t, got, tc.want)
		}
	}
	// What Resolve returns for a gateway's cluster is an edge target.
	got, reason := Resolve(Map{AttrCluster: "outbound|8000||llama.models.svc.cluster.local"})
	if reason != ReasonNone || got.Source() != SourceEdge {
		t.Fatalf("outbound cluster: %+v %q", got, reason)
	}
}

// Package helm tests the Helm chart deploy/helm/inflight with Helm's own Go
// library: rendering as `helm template` does (action.Install, client-side
// dry-run), `helm lint`, values.schema.json, and a server-side dry-run of
// the rendered objects on the real test kube-apiserver.
//
// It is a nested Go module so that Helm's dependency graph (kubectl,
// kustomize, ORAS, …) stays out of the main module's go.mod; it imports the
// main module (replace ../..) for the test control plane, istio.Render and
// the manifest helpers in deploy/deploytest. `make test` runs it.
package helm

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	releasev1 "helm.sh/helm/v4/pkg/release/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/deploy/deploytest"
	"github.com/inflight-dev/inflight/istio"
	"github.com/inflight-dev/inflight/test/controlplane"
)

func TestMain(m *testing.M) {
	// Helm logs through slog's default logger (e.g. one line per symbolic
	// link in the chart: files/ links to deploy/monitoring and dashboards).
	slog.SetDefault(slog.New(slog.DiscardHandler))
	os.Exit(controlplane.Main(m))
}

// kubeVersion is the test control plane's Kubernetes version: the chart
// requires >= 1.29 and Helm's client-side default is older.
var kubeVersion = &common.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"}

// chartDir is the chart, relative to this folder.
var chartDir = filepath.Join("..", "..", "deploy", "helm", "inflight")

// helmOnlyLabels are the labels the chart adds and the kustomize tree has not.
var helmOnlyLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}

func loadChart(t *testing.T) *chartv2.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load %s: %v", chartDir, err)
	}
	return c
}

// render renders the chart as `helm template inflight deploy/helm/inflight
// -n ns` with vals on top of values.yaml.
func render(t *testing.T, ns string, vals map[string]any) ([]deploytest.Object, error) {
	t.Helper()
	inst := action.NewInstall(action.NewConfiguration())
	inst.DryRunStrategy = action.DryRunClient
	inst.ReleaseName = "inflight"
	inst.Namespace = ns
	inst.Replace = true
	inst.KubeVersion = kubeVersion
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := inst.RunWithContext(ctx, loadChart(t), vals)
	if err != nil {
		return nil, err
	}
	rel, ok := r.(*releasev1.Release)
	if !ok {
		t.Fatalf("install returned %T, want *v1.Release", r)
	}
	return deploytest.Split([]byte(rel.Manifest))
}

func mustRender(t *testing.T, ns string, vals map[string]any) []deploytest.Object {
	t.Helper()
	objs, err := render(t, ns, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return objs
}

// withoutHelmLabels returns a copy of u without the chart's own labels.
func withoutHelmLabels(t *testing.T, u *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	c := u.DeepCopy()
	l := c.GetLabels()
	for _, k := range helmOnlyLabels {
		if _, ok := l[k]; !ok {
			t.Errorf("%s %s lacks the label %s", u.GetKind(), u.GetName(), k)
		}
		delete(l, k)
	}
	c.SetLabels(l)
	return c
}

func byID(t *testing.T, objs []deploytest.Object) map[string]*unstructured.Unstructured {
	t.Helper()
	m := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		if _, dup := m[o.ID()]; dup {
			t.Errorf("duplicate %s", o.ID())
		}
		m[o.ID()] = o.U
	}
	return m
}

// diff describes how two objects differ, field by field (top two levels).
func diff(a, b map[string]any, path string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(mergeKeys(a, b))) {
		av, bv := a[k], b[k]
		if reflect.DeepEqual(av, bv) {
			continue
		}
		am, aok := av.(map[string]any)
		bm, bok := bv.(map[string]any)
		if aok && bok {
			out = append(out, diff(am, bm, path+"."+k)...)
			continue
		}
		ay, _ := yaml.Marshal(av)
		by, _ := yaml.Marshal(bv)
		out = append(out, fmt.Sprintf("%s.%s:\n  chart:     %s\n  kustomize: %s", path, k,
			strings.ReplaceAll(strings.TrimSpace(string(ay)), "\n", "\n             "),
			strings.ReplaceAll(strings.TrimSpace(string(by)), "\n", "\n             ")))
	}
	return out
}

func mergeKeys(a, b map[string]any) map[string]bool {
	m := map[string]bool{}
	for k := range a {
		m[k] = true
	}
	for k := range b {
		m[k] = true
	}
	return m
}

// TestChartMatchesKustomize renders the chart with its default values (and
// namespace.create, which the kustomize tree always does) and checks that
// it yields the same objects as kubectl kustomize deploy/, object by
// object, apart from Helm's own labels.
func TestChartMatchesKustomize(t *testing.T) {
	chart := byID(t, mustRender(t, "inflight-system", map[string]any{"namespace": map[string]any{"create": true}}))
	kust := byID(t, deploytest.Kustomize(t, filepath.Join("..", "..", "deploy")))
	for id := range kust {
		if _, ok := chart[id]; !ok {
			t.Errorf("the chart lacks %s", id)
		}
	}
	for id, c := range chart {
		k, ok := kust[id]
		if !ok {
			t.Errorf("the chart has %s, which the kustomize tree has not", id)
			continue
		}
		if d := diff(withoutHelmLabels(t, c).Object, k.Object, ""); len(d) > 0 {
			t.Errorf("%s differs:\n%s", id, strings.Join(d, "\n"))
		}
	}
	t.Logf("%d objects compared", len(chart))
	if len(chart) < 20 {
		t.Errorf("only %d objects rendered", len(chart))
	}
}

// TestChartLint runs Helm's linter (helm lint) with the default values and
// with a set of values using every option; neither may give a warning or
// an error. A chart with a broken template must fail it.
func TestChartLint(t *testing.T) {
	for name, vals := range map[string]map[string]any{"defaults": nil, "every option": everyOption()} {
		l := lint.RunAll(chartDir, vals, "inflight-system", lint.WithKubeVersion(kubeVersion))
		for _, m := range l.Messages {
			t.Logf("%s: %s", name, m)
		}
		if l.HighestSeverity >= support.WarningSev {
			t.Errorf("%s: helm lint reports severity %d (warning or worse)", name, l.HighestSeverity)
		}
	}
	// The linter can fail: a copy of the chart with an unclosed action.
	broken := t.TempDir()
	copyDir(t, chartDir, broken)
	p := filepath.Join(broken, "templates", "extproc.yaml")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, append(b, []byte("\n{{ .Values.extproc.replicas \n")...), 0o644); err != nil {
		t.Fatal(err)
	}
	if l := lint.RunAll(broken, nil, "inflight-system", lint.WithKubeVersion(kubeVersion)); l.HighestSeverity < support.ErrorSev {
		t.Errorf("helm lint passed a template with an unclosed action: %v", l.Messages)
	}
}

// copyDir copies a directory tree, following symbolic links.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p) // follows a link to a file
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// everyOption sets each value away from its default.
func everyOption() map[string]any {
	res := func(cpu, mem string) map[string]any {
		return map[string]any{"requests": map[string]any{"cpu": cpu, "memory": mem}, "limits": map[string]any{"memory": mem}}
	}
	return map[string]any{
		"namespace": map[string]any{"create": true},
		"images": map[string]any{
			"extproc":    map[string]any{"repository": "registry.example/inflight-extproc", "tag": "", "digest": "sha256:" + strings.Repeat("ab", 32)},
			"controller": map[string]any{"repository": "registry.example/inflight-controller", "tag": "v0.1.0"},
			"pullPolicy": "Always",
		},
		"extproc": map[string]any{
			"replicas": 3, "drainDelay": "20s", "drainTimeout": "1h", "terminationGracePeriodSeconds": 3635,
			"resources": res("500m", "512Mi"), "extraArgs": []any{"--max-targets=5000"},
			"podAnnotations": map[string]any{"a": "b"}, "nodeSelector": map[string]any{"pool": "system"},
			"tolerations": []any{map[string]any{"key": "system", "operator": "Exists"}},
		},
		"controller": map[string]any{"replicas": 1, "resources": res("200m", "1Gi"), "extraArgs": []any{"--tick=2s"}, "watchNamespace": "models"},
		"mesh": map[string]any{
			"trustDomain": "corp.example", "revision": "canary", "allowedPrincipals": []any{"corp.example/ns/models/*"},
			"gatewayIdentities": []any{"spiffe://corp.example/ns/gw/sa/edge=models,shop"},
			"istiod":            map[string]any{"namespace": "istio-canary", "podLabels": map[string]any{"app": "istiod", "istio.io/rev": "canary"}},
		},
		"networkPolicy": map[string]any{
			"gatewayNamespace": "gateways", "dnsNamespace": "dns", "apiServerCIDRs": []any{"192.0.2.10/32"},
			"prometheus": map[string]any{"namespace": "observability", "podLabels": map[string]any{"app": "prom"}},
		},
		"monitoring": map[string]any{"labels": map[string]any{"release": "kps"}, "interval": "30s"},
		"keda":       map[string]any{"enabled": true},
		"dashboards": map[string]any{"labels": map[string]any{"grafana_dashboard": "1", "team": "ml"}},
		"envoyFilters": []any{
			map[string]any{"namespace": "models", "selector": map[string]any{"app": "vllm"}},
			map[string]any{"namespace": "models", "selector": map[string]any{"app": "tgi", "tier": "gpu"}, "profile": "control", "port": 8080},
			map[string]any{"gateway": true, "generations": []any{"istio-1.29+"}},
			map[string]any{"gateway": true, "selector": map[string]any{"istio": "edge"}, "profile": "control", "streamTimeouts": "1h", "name": "edge"},
			map[string]any{"namespace": "models", "selector": map[string]any{"app": "chat-ui"}, "outbound": true, "port": 8000, "profile": "control", "streamTimeouts": "59m1s"},
		},
	}
}

// TestChartValues checks that each value reaches the objects it is for.
func TestChartValues(t *testing.T) {
	objs := mustRender(t, "ml-infra", everyOption())
	m := byID(t, objs)
	get := func(id string, path ...string) any {
		t.Helper()
		u, ok := m[id]
		if !ok {
			t.Fatalf("no %s", id)
		}
		v, found, err := unstructured.NestedFieldNoCopy(u.Object, path...)
		if err != nil || !found {
			t.Fatalf("%s: no %s (%v)", id, strings.Join(path, "."), err)
		}
		return v
	}
	ext, ctl := "Deployment ml-infra/inflight-extproc", "Deployment ml-infra/inflight-controller"
	container := func(id string) map[string]any {
		return get(id, "spec", "template", "spec", "containers").([]any)[0].(map[string]any)
	}
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"extproc replicas", get(ext, "spec", "replicas"), float64(3)},
		{"controller replicas", get(ctl, "spec", "replicas"), float64(1)},
		{"extproc image by digest", container(ext)["image"], "registry.example/inflight-extproc@sha256:" + strings.Repeat("ab", 32)},
		{"controller image by tag", container(ctl)["image"], "registry.example/inflight-controller:v0.1.0"},
		{"pull policy", container(ctl)["imagePullPolicy"], "Always"},
		{"extproc memory limit", get(ext, "spec", "template", "spec", "containers").([]any)[0].(map[string]any)["resources"].(map[string]any)["limits"].(map[string]any)["memory"], "512Mi"},
		{"grace period", get(ext, "spec", "template", "spec", "terminationGracePeriodSeconds"), float64(3635)},
		{"node selector", get(ext, "spec", "template", "spec", "nodeSelector", "pool"), "system"},
		{"pod annotation", get(ext, "spec", "template", "metadata", "annotations", "a"), "b"},
		{"controller extproc namespace", slices.Contains(container(ctl)["args"].([]any), any("--extproc-namespace=ml-infra")), true},
		{"keda listen", slices.Contains(container(ctl)["args"].([]any), any("--keda-listen=:9003")), true},
		{"keda service port", get("Service ml-infra/inflight-controller-keda", "spec", "ports").([]any)[0].(map[string]any)["targetPort"], "keda"},
		{"keda network policy", get("NetworkPolicy ml-infra/inflight-controller-keda", "spec", "ingress").([]any)[0].(map[string]any)["from"].([]any)[0].(map[string]any)["namespaceSelector"].(map[string]any)["matchLabels"].(map[string]any)["kubernetes.io/metadata.name"], "keda"},
		{"controller extra arg", slices.Contains(container(ctl)["args"].([]any), any("--tick=2s")), true},
		{"extproc drain delay", slices.Contains(container(ext)["args"].([]any), any("--drain-delay=20s")), true},
		{"extproc drain timeout", slices.Contains(container(ext)["args"].([]any), any("--drain-timeout=1h")), true},
		{"extproc extra arg", slices.Contains(container(ext)["args"].([]any), any("--max-targets=5000")), true},
		{"namespace object", get("Namespace /ml-infra", "metadata", "labels", "pod-security.kubernetes.io/enforce"), "restricted"},
		{"monitor label", get("ServiceMonitor ml-infra/inflight-extproc", "metadata", "labels", "release"), "kps"},
		{"rule label", get("PrometheusRule ml-infra/inflight", "metadata", "labels", "release"), "kps"},
		{"scrape interval", get("PodMonitor ml-infra/inflight-controller", "spec", "podMetricsEndpoints").([]any)[0].(map[string]any)["interval"], "30s"},
		{"dashboard label", get("ConfigMap ml-infra/inflight-dashboard-health", "metadata", "labels", "team"), "ml"},
		{"namespaced RBAC", get("RoleBinding models/inflight-controller", "subjects").([]any)[0].(map[string]any)["namespace"], "ml-infra"},
		{"namespaced role", get("Role models/inflight-controller", "rules").([]any)[1].(map[string]any)["resources"], []any{"deployments/scale"}},
		{"controller watches one namespace", slices.Contains(container(ctl)["args"].([]any), any("--namespace=models")), true},
		{"extproc MEMORY_LIMIT from its limit", container(ext)["env"].([]any)[1], map[string]any{"name": "MEMORY_LIMIT",
			"valueFrom": map[string]any{"resourceFieldRef": map[string]any{"containerName": "extproc", "resource": "limits.memory"}}}},
		{"controller GOMEMLIMIT 90 % of 1Gi", container(ctl)["env"].([]any)[2].(map[string]any)["value"], "921MiB"},
		{"xfcc-by", slices.Contains(container(ext)["args"].([]any), any("--xfcc-by=spiffe://corp.example/ns/ml-infra/sa/inflight-extproc")), true},
		{"gateway identity", slices.Contains(container(ext)["args"].([]any), any("--gateway-identity=spiffe://corp.example/ns/gw/sa/edge=models,shop")), true},
		{"revision label", get(ext, "spec", "template", "metadata", "labels", "istio.io/rev"), "canary"},
		{"sidecar drain = delay + timeout + 5s", get(ext, "spec", "template", "metadata", "annotations", "proxy.istio.io/config"), `{"proxyHeaders":{"forwardedClientCert":"SANITIZE_SET"},"terminationDrainDuration":"3625s"}`},
		{"allowed principals", get("AuthorizationPolicy ml-infra/inflight-extproc", "spec", "rules").([]any)[0].(map[string]any)["from"].([]any)[0].(map[string]any)["source"].(map[string]any)["principals"], []any{"corp.example/ns/models/*"}},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s: got %v (%T), want %v (%T)", c.what, c.got, c.got, c.want, c.want)
		}
	}
	np, _ := yaml.Marshal(m["NetworkPolicy ml-infra/inflight-extproc-admin"].Object)
	for _, want := range []string{"kubernetes.io/metadata.name: observability", "app: prom"} {
		if !strings.Contains(string(np), want) {
			t.Errorf("inflight-extproc-admin lacks %q:\n%s", want, np)
		}
	}
	for id, want := range map[string][]string{
		"NetworkPolicy ml-infra/inflight-controller-egress": {"cidr: 192.0.2.10/32", "kubernetes.io/metadata.name: dns"},
		"NetworkPolicy ml-infra/inflight-extproc-egress":    {"kubernetes.io/metadata.name: istio-canary", "istio.io/rev: canary", "port: 15012"},
	} {
		b, _ := yaml.Marshal(m[id].Object)
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				t.Errorf("%s lacks %q:\n%s", id, w, b)
			}
		}
	}
	if _, ok := m["ClusterRole /inflight-controller"]; ok {
		t.Error("controller.watchNamespace set, yet a ClusterRole is rendered")
	}
	if _, ok := get(ext, "spec", "template", "metadata", "labels").(map[string]any)["sidecar.istio.io/inject"]; ok {
		t.Error("with mesh.revision the extproc pods must not also carry sidecar.istio.io/inject")
	}

	// Turned off: NetworkPolicies, monitors, rule, dashboards.
	off := byID(t, mustRender(t, "inflight-system", map[string]any{
		"networkPolicy": map[string]any{"enabled": false},
		"monitoring":    map[string]any{"serviceMonitor": false, "prometheusRule": false},
		"dashboards":    map[string]any{"enabled": false},
	}))
	for id := range off {
		if strings.HasPrefix(id, "NetworkPolicy ") || strings.HasPrefix(id, "ConfigMap ") || strings.Contains(id, "Monitor ") || strings.HasPrefix(id, "PrometheusRule ") || strings.HasPrefix(id, "Namespace ") {
			t.Errorf("%s rendered though turned off", id)
		}
	}
	if len(off) != 13 {
		t.Errorf("%d objects with everything optional off, want 13: %v", len(off), slices.Sorted(maps.Keys(off)))
	}
}

// TestChartSchema checks that values.schema.json rejects bad values, each
// with an error naming the value.
func TestChartSchema(t *testing.T) {
	for name, c := range map[string]struct {
		vals map[string]any
		want string
	}{
		"unknown key":          {map[string]any{"extproc": map[string]any{"replica": 3}}, "replica"},
		"zero replicas":        {map[string]any{"controller": map[string]any{"replicas": 0}}, "replicas"},
		"moving tag":           {map[string]any{"images": map[string]any{"controller": map[string]any{"tag": "latest"}}}, "tag"},
		"bad digest":           {map[string]any{"images": map[string]any{"extproc": map[string]any{"digest": "sha256:xyz"}}}, "digest"},
		"bad profile":          {map[string]any{"envoyFilters": []any{map[string]any{"namespace": "m", "selector": map[string]any{"a": "b"}, "profile": "fast"}}}, "profile"},
		"bad generation":       {map[string]any{"envoyFilters": []any{map[string]any{"namespace": "m", "selector": map[string]any{"a": "b"}, "generations": []any{"1.22"}}}}, "generations"},
		"bad duration":         {map[string]any{"extproc": map[string]any{"drainTimeout": "25"}}, "drainTimeout"},
		"fractional delay":     {map[string]any{"extproc": map[string]any{"drainDelay": "1.5s"}}, "drainDelay"},
		"grace < drain":        {map[string]any{"extproc": map[string]any{"drainTimeout": "10m"}}, "extproc.terminationGracePeriodSeconds=330: want ≥ extproc.drainDelay (15s) + extproc.drainTimeout (10m) + 15 = 630"},
		"flag without dash":    {map[string]any{"extproc": map[string]any{"extraArgs": []any{"max-targets=5"}}}, "extraArgs"},
		"gateway with port":    {map[string]any{"envoyFilters": []any{map[string]any{"gateway": true, "port": 8080}}}, "port=8080: only for a sidecar"},
		"sidecar, no labels":   {map[string]any{"envoyFilters": []any{map[string]any{"namespace": "models"}}}, "selector is empty"},
		"bad gateway id":       {map[string]any{"mesh": map[string]any{"gatewayIdentities": []any{"istio-system/gw"}}}, "gatewayIdentities"},
		"unparsable limit":     {map[string]any{"controller": map[string]any{"resources": map[string]any{"requests": map[string]any{"cpu": "1", "memory": "1G"}, "limits": map[string]any{"memory": "1G"}}}}, "controller.goMemLimit"},
		"watch own ns":         {map[string]any{"controller": map[string]any{"watchNamespace": "inflight-system"}}, "watchNamespace must differ"},
		"keda, 2 replicas":     {map[string]any{"keda": map[string]any{"enabled": true}}, "keda.enabled needs controller.replicas=1"},
		"no namespace":         {map[string]any{"envoyFilters": []any{map[string]any{"selector": map[string]any{"a": "b"}}}}, "namespace is empty"},
		"gateway and outbound": {map[string]any{"envoyFilters": []any{map[string]any{"gateway": true, "outbound": true, "profile": "control"}}}, "gateway and outbound: choose one"},
		"outbound, no port":    {map[string]any{"envoyFilters": []any{map[string]any{"namespace": "m", "selector": map[string]any{"a": "b"}, "outbound": true, "profile": "control"}}}, "outbound without port"},
		"outbound, observe":    {map[string]any{"envoyFilters": []any{map[string]any{"namespace": "m", "selector": map[string]any{"a": "b"}, "outbound": true, "port": 80}}}, "outbound with profile=\"observe\": want control"},
		"timeouts on inbound":  {map[string]any{"envoyFilters": []any{map[string]any{"namespace": "m", "selector": map[string]any{"a": "b"}, "profile": "control", "streamTimeouts": "1h"}}}, "streamTimeouts=1h: only with gateway or outbound"},
		"timeouts too short":   {map[string]any{"envoyFilters": []any{map[string]any{"gateway": true, "profile": "control", "streamTimeouts": "5s"}}}, "streamTimeouts=5s: want 10s to 24h"},
		"timeouts, bad form":   {map[string]any{"envoyFilters": []any{map[string]any{"gateway": true, "profile": "control", "streamTimeouts": "300"}}}, "streamTimeouts"},
	} {
		_, err := render(t, "inflight-system", c.vals)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: render error %v, want one naming %q", name, err, c.want)
		}
	}
}

// TestChartEnvoyFilters checks each EnvoyFilter the chart renders against
// istio.Render with the same options, object by object.
func TestChartEnvoyFilters(t *testing.T) {
	type entry struct {
		vals map[string]any
		opts istio.Options
		gens []string // nil: every generation
	}
	entries := []entry{
		{map[string]any{"namespace": "models", "selector": map[string]any{"app": "vllm"}}, istio.Options{Namespace: "models", Selector: map[string]string{"app": "vllm"}}, nil},
		{map[string]any{"namespace": "models", "selector": map[string]any{"app": "TGI_x", "tier": "gpu"}, "profile": "control", "port": 8080},
			istio.Options{Namespace: "models", Selector: map[string]string{"app": "TGI_x", "tier": "gpu"}, Profile: istio.ProfileControl, Port: 8080}, nil},
		{map[string]any{"gateway": true}, istio.Options{Gateway: true}, nil},
		{map[string]any{"gateway": true, "profile": "control", "namespace": "gw", "selector": map[string]any{"istio": "gw"}, "name": "edge"},
			istio.Options{Gateway: true, Profile: istio.ProfileControl, Namespace: "gw", Selector: map[string]string{"istio": "gw"}, Name: "edge"}, nil},
		{map[string]any{"namespace": "models", "selector": map[string]any{"app": "old"}, "generations": []any{"istio-1.24-1.28"}},
			istio.Options{Namespace: "models", Selector: map[string]string{"app": "old"}}, []string{"istio-1.24-1.28"}},
		// Issue 12 edge contexts: in-mesh callers' outbound sidecars, and
		// the HTTP connection manager's clocks while requests are held.
		{map[string]any{"namespace": "apps", "selector": map[string]any{"app": "chat-ui"}, "outbound": true, "port": 8000, "profile": "control"},
			istio.Options{Namespace: "apps", Selector: map[string]string{"app": "chat-ui"}, Outbound: true, Port: 8000, Profile: istio.ProfileControl}, nil},
		{map[string]any{"namespace": "apps", "selector": map[string]any{"app": "chat-ui"}, "outbound": true, "port": 8000, "profile": "control", "streamTimeouts": "1h30s", "name": "callers"},
			istio.Options{Namespace: "apps", Selector: map[string]string{"app": "chat-ui"}, Outbound: true, Port: 8000, Profile: istio.ProfileControl, StreamTimeouts: time.Hour + 30*time.Second, Name: "callers"}, nil},
		{map[string]any{"gateway": true, "profile": "control", "streamTimeouts": "10m", "generations": []any{"istio-1.29+"}},
			istio.Options{Gateway: true, Profile: istio.ProfileControl, StreamTimeouts: 10 * time.Minute}, []string{"istio-1.29+"}},
	}
	const ns = "ml-infra" // not the default: the extproc address must follow the release
	var list []any
	for _, e := range entries {
		list = append(list, e.vals)
	}
	objs := mustRender(t, ns, map[string]any{"envoyFilters": list})
	var got []deploytest.Object
	for _, o := range objs {
		if o.U.GetKind() == "EnvoyFilter" {
			got = append(got, o)
		}
	}
	if len(got) != len(entries) {
		t.Fatalf("%d EnvoyFilters rendered, want %d", len(got), len(entries))
	}
	for i, e := range entries {
		e.opts.ExtprocNamespace = ns
		b, err := istio.Render(e.opts)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]any{}
		if err := yaml.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if e.gens != nil {
			var keep []any
			for _, g := range istio.Generations() {
				if slices.Contains(e.gens, g.Name) {
					for _, p := range want["spec"].(map[string]any)["configPatches"].([]any) {
						if p.(map[string]any)["match"].(map[string]any)["proxy"].(map[string]any)["proxyVersion"] == g.ProxyVersion {
							keep = append(keep, p)
						}
					}
				}
			}
			want["spec"].(map[string]any)["configPatches"] = keep
		}
		if d := diff(withoutHelmLabels(t, got[i].U).Object, want, ""); len(d) > 0 {
			t.Errorf("envoyFilters[%d] (%s) differs from istio.Render:\n%s", i, got[i].ID(), strings.Join(d, "\n"))
		}
	}
}

// TestChartServerSideDryRun applies every object the chart renders (with
// every option, EnvoyFilters included) to the real kube-apiserver: the
// namespace for real, the rest as a server-side dry-run with strict field
// validation, Istio's CRDs installed from istio.io/api. prometheus-operator
// objects are left out (no CRD here; they equal the kustomize tree's, which
// deploy/ decodes strictly into the operator's types).
func TestChartServerSideDryRun(t *testing.T) {
	cfg := controlplane.Config(t)
	deploytest.InstallIstioCRDs(t, cfg, deploytest.IstioCRDNames...)
	vals := everyOption()
	vals["namespace"] = map[string]any{"create": true}
	objs := mustRender(t, "ml-infra", vals)
	ap := deploytest.NewApplier(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, ns := range []string{"ml-infra", "models", "istio-system"} {
		nsObj := deploytest.Object{U: &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}}
		if ns == "ml-infra" {
			nsObj = deploytest.Find(t, objs, "Namespace", ns)
		}
		if err := ap.Apply(ctx, nsObj, false); err != nil {
			t.Fatalf("create namespace %s: %v", ns, err)
		}
	}
	n := 0
	for _, o := range objs {
		if deploytest.IsMonitoring(o) {
			continue
		}
		if err := ap.Apply(ctx, o, true); err != nil {
			t.Errorf("server-side dry-run apply: %s: %v", o.ID(), err)
		}
		n++
	}
	t.Logf("%d objects passed a server-side dry-run apply", n)
	if n < 20 {
		t.Errorf("only %d objects applied", n)
	}
	// The dry-run can fail: an unknown field is rejected.
	bad := deploytest.Find(t, objs, "Deployment", "inflight-controller")
	bad.U = bad.U.DeepCopy()
	if err := unstructured.SetNestedField(bad.U.Object, float64(1), "spec", "replica"); err != nil {
		t.Fatal(err)
	}
	if err := ap.Apply(ctx, bad, true); err == nil {
		t.Error("an unknown field passed the dry-run")
	}
}

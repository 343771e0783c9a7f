package deploy

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/istio"
)

var update = flag.Bool("update", false, "rewrite the generated chart files")

// chartFilterData is the path of the Helm chart's ext_proc filter
// configurations, generated from istio/ by TestChartEnvoyFilterData.
var chartFilterData = filepath.Join("helm", "inflight", "files", "envoyfilter.yaml")

// envoyFilterData renders, for every profile and proxy generation, the
// typed_config istio/ puts into an EnvoyFilter patch, with the generations'
// names and proxyVersion expressions, as the chart's data file.
func envoyFilterData(t *testing.T) []byte {
	t.Helper()
	type generation struct {
		Name         string `json:"name"`
		ProxyVersion string `json:"proxyVersion"`
	}
	data := struct {
		Generations []generation              `json:"generations"`
		Profiles    map[string]map[string]any `json:"profiles"`
	}{Profiles: map[string]map[string]any{}}
	gens := istio.Generations()
	for _, g := range gens {
		data.Generations = append(data.Generations, generation{Name: g.Name, ProxyVersion: g.ProxyVersion})
	}
	for _, p := range []istio.Profile{istio.ProfileObserve, istio.ProfileControl} {
		spec, err := istio.Spec(istio.Options{Namespace: "models", Selector: map[string]string{"app": "x"}, Profile: p})
		if err != nil {
			t.Fatal(err)
		}
		if len(spec.ConfigPatches) != len(gens) {
			t.Fatalf("profile %s: %d patches for %d generations", p, len(spec.ConfigPatches), len(gens))
		}
		data.Profiles[string(p)] = map[string]any{}
		for i, cp := range spec.ConfigPatches {
			if got := cp.GetMatch().GetProxy().GetProxyVersion(); got != gens[i].ProxyVersion {
				t.Fatalf("profile %s patch %d matches %q, want generation %s", p, i, got, gens[i].Name)
			}
			js, err := protojson.Marshal(cp.GetPatch().GetValue().GetFields()["typed_config"])
			if err != nil {
				t.Fatal(err)
			}
			var tc map[string]any
			if err := yaml.Unmarshal(js, &tc); err != nil {
				t.Fatal(err)
			}
			data.Profiles[string(p)][gens[i].Name] = tc
		}
	}
	y, err := yaml.Marshal(data)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte("# Generated from istio/ by: go test ./deploy -run TestChartEnvoyFilterData -update\n"+
		"# Do not edit. The ext_proc filter of each profile and proxy generation, for\n"+
		"# templates/envoyfilters.yaml (grpc_service is set there from the release namespace).\n"), y...)
}

// TestChartEnvoyFilterData fails when the chart's copy of the EnvoyFilter
// configurations differs from what istio/ renders now (run it with -update
// after a change in istio/). test/helm then checks that the chart's
// EnvoyFilters equal istio.Render's, object by object.
func TestChartEnvoyFilterData(t *testing.T) {
	got := envoyFilterData(t)
	if *update {
		if err := os.WriteFile(chartFilterData, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(chartFilterData)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale: istio/ renders another ext_proc configuration now; run\n  go test ./deploy -run TestChartEnvoyFilterData -update\n--- got\n%s\n--- want\n%s", chartFilterData, got, want)
	}
}

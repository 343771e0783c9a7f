package deploy

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/deploy/deploytest"
	"github.com/inflight-dev/inflight/istio"
	"github.com/inflight-dev/inflight/test/controlplane"
)

// TestEnvoyFiltersServerSideDryRun installs Istio's EnvoyFilter CRD (with
// its OpenAPI schema and validation rules) into the test kube-apiserver and
// dry-run applies every shipped example and freshly rendered EnvoyFilter
// with strict field validation.
func TestEnvoyFiltersServerSideDryRun(t *testing.T) {
	cfg := controlplane.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	deploytest.InstallIstioCRDs(t, cfg, "envoyfilters.networking.istio.io")
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gvr := schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1alpha3", Resource: "envoyfilters"}

	docs := map[string][]byte{}
	files, err := filepath.Glob(filepath.Join("..", "istio", "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no istio/examples: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs[filepath.Base(f)] = b
	}
	for name, o := range map[string]istio.Options{
		"rendered port+control":   {Namespace: "models", Selector: map[string]string{"app": "tgi", "tier": "gpu"}, Port: 8080, Profile: istio.ProfileControl},
		"rendered custom gateway": {Namespace: "gateways", Selector: map[string]string{"istio": "gw"}, Gateway: true},
	} {
		b, err := istio.Render(o)
		if err != nil {
			t.Fatal(err)
		}
		docs[name] = b
	}
	apply := func(doc []byte, dryRun bool) error {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			return err
		}
		ns := u.GetNamespace()
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		data, err := json.Marshal(u.Object)
		if err != nil {
			return err
		}
		opts := metav1.PatchOptions{FieldManager: "inflight-deploy-test", Force: ptr.To(true), FieldValidation: "Strict"}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		_, err = dyn.Resource(gvr).Namespace(ns).Patch(ctx, u.GetName(), types.ApplyPatchType, data, opts)
		return err
	}
	for name, doc := range docs {
		if err := apply(doc, true); err != nil {
			t.Errorf("%s: server-side dry-run apply: %v", name, err)
		}
	}
	t.Logf("%d EnvoyFilters passed a server-side dry-run apply against Istio's CRD schema", len(docs))

	// The check can fail: an unknown spec field and a bad enum are rejected.
	base := docs["observe-sidecar.yaml"]
	for what, bad := range map[string]string{
		"unknown field": strings.Replace(string(base), "  priority: 10", "  prority: 10", 1),
		"bad enum":      strings.Replace(string(base), "context: SIDECAR_INBOUND", "context: INBOUND", 1),
	} {
		if bad == string(base) {
			t.Fatalf("%s: mutation did not apply", what)
		}
		if err := apply([]byte(bad), true); err == nil {
			t.Errorf("%s: accepted by the dry-run", what)
		}
	}
}

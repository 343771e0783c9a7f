// Package deploytest holds what the tests of inflight's install manifests
// share — the deploy package's (kustomize) and test/helm's (the Helm chart,
// a nested module): rendering with kubectl kustomize, splitting a YAML
// stream into objects, Istio's CRDs from the istio.io/api module, and a
// server-side apply (dry-run or real) against the test kube-apiserver.
//
// Test-only: nothing in a binary imports it. Concurrency: an Applier may be
// used from one goroutine at a time.
package deploytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/test/controlplane"
)

// RequireTool returns the path of a command, or skips (fails under
// INFLIGHT_REQUIRE_CONTROLPLANE=1, i.e. in CI) when it is missing.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if controlplane.Required() {
			t.Fatalf("%s not found on PATH (%s=1: CI must have it; make test's deps target installs it from Debian's packages)", name, controlplane.RequireEnv)
		}
		t.Skipf("%s not found on PATH: skipping (install it to run this check)", name)
	}
	return p
}

// Object is one rendered manifest.
type Object struct {
	U   *unstructured.Unstructured
	Raw []byte // the document as YAML
}

// ID is "Kind namespace/name".
func (o Object) ID() string {
	return fmt.Sprintf("%s %s/%s", o.U.GetKind(), o.U.GetNamespace(), o.U.GetName())
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// Split parses a multi-document YAML stream, skipping empty documents (and
// documents holding only comments).
func Split(stream []byte) ([]Object, error) {
	var objs []Object
	for _, doc := range docSep.Split(string(stream), -1) {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			return nil, fmt.Errorf("%w\n%s", err, doc)
		}
		if len(u.Object) == 0 {
			continue
		}
		objs = append(objs, Object{U: u, Raw: []byte(doc)})
	}
	return objs, nil
}

// KustomizeModule is the kustomize release run with `go run` when kubectl
// is not installed (the one kubectl 1.32 embeds), so a machine without
// kubectl renders the same way and no kustomize module enters go.mod.
const KustomizeModule = "sigs.k8s.io/kustomize/kustomize/v5@v5.5.0"

// Kustomize renders dir with kubectl kustomize, or with KustomizeModule
// when kubectl is not on PATH.
func Kustomize(t testing.TB, dir string) []Object {
	t.Helper()
	args := []string{"kustomize", dir}
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		args = append([]string{kubectl}, args...)
	} else {
		args = []string{"go", "run", KustomizeModule, "build", dir}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // the first go run compiles kustomize
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	objs, err := Split(out)
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return objs
}

// Find returns the object of that kind and name, or fails the test.
func Find(t testing.TB, objs []Object, kind, name string) Object {
	t.Helper()
	for _, o := range objs {
		if o.U.GetKind() == kind && o.U.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %q in the rendered install", kind, name)
	return Object{}
}

// IsMonitoring reports a prometheus-operator object (no CRD on the test
// API server: those are decoded strictly into the operator's Go types).
func IsMonitoring(o Object) bool {
	return strings.HasPrefix(o.U.GetAPIVersion(), "monitoring.coreos.com/")
}

// IstioCRDNames are the Istio CRDs inflight's manifests use.
var IstioCRDNames = []string{
	"envoyfilters.networking.istio.io",
	"peerauthentications.security.istio.io",
	"authorizationpolicies.security.istio.io",
}

// IstioCRDs returns Istio's own CustomResourceDefinitions of those names
// (e.g. envoyfilters.networking.istio.io), from the istio.io/api module the
// main module depends on.
func IstioCRDs(t testing.TB, names ...string) []*apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m istio.io/api: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*apiextensionsv1.CustomResourceDefinition{}
	for _, doc := range docSep.Split(string(b), -1) {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal([]byte(doc), crd); err != nil {
			t.Fatal(err)
		}
		byName[crd.Name] = crd
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, n := range names {
		crd, ok := byName[n]
		if !ok {
			t.Fatalf("no CRD %s in istio.io/api", n)
		}
		crds = append(crds, crd)
	}
	return crds
}

// InstallIstioCRDs creates Istio's CRDs of those names on the API server
// (already existing ones are kept) and waits until they are established.
func InstallIstioCRDs(t testing.TB, cfg *rest.Config, names ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ax, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, crd := range IstioCRDs(t, names...) {
		if _, err := ax.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create %s: %v", crd.Name, err)
		}
	}
	established := func(name string) bool {
		c, err := ax.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, cond := range c.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return true
			}
		}
		return false
	}
	tk := time.NewTicker(100 * time.Millisecond)
	defer tk.Stop()
	for _, n := range names {
		for deadline := time.Now().Add(30 * time.Second); !established(n); <-tk.C {
			if time.Now().After(deadline) {
				t.Fatalf("%s not established after 30s", n)
			}
		}
	}
}

// Applier applies objects with server-side apply and strict field
// validation, resolving kinds through discovery (so CRDs installed after
// it was made are found too).
type Applier struct {
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

// NewApplier returns an Applier for the API server of cfg.
func NewApplier(t testing.TB, cfg *rest.Config) *Applier {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &Applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

// Dynamic is the applier's dynamic client.
func (a *Applier) Dynamic() dynamic.Interface { return a.dyn }

// Apply applies o (for real, or with dryRun every admission step runs and
// nothing is stored).
func (a *Applier) Apply(ctx context.Context, o Object, dryRun bool) error {
	gvk := o.U.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		a.mapper.Reset()
		if m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version); err != nil {
			return fmt.Errorf("%s: %w", o.ID(), err)
		}
	}
	data, err := json.Marshal(o.U.Object)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: "inflight-deploy-test", Force: ptr.To(true), FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = a.dyn.Resource(m.Resource).Namespace(o.U.GetNamespace()).Patch(ctx, o.U.GetName(), types.ApplyPatchType, data, opts)
	return err
}

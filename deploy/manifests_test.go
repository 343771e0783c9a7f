package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	securityv1beta1 "istio.io/api/security/v1beta1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/inflight-dev/inflight/deploy/deploytest"
	"github.com/inflight-dev/inflight/istio"
	"github.com/inflight-dev/inflight/scaling/kube"
	"github.com/inflight-dev/inflight/test/controlplane"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Main(m)) }

func requireTool(t *testing.T, name string) string { return deploytest.RequireTool(t, name) }

type object = deploytest.Object

func kustomize(t *testing.T, dir string) []object { return deploytest.Kustomize(t, dir) }

func find(t *testing.T, objs []object, kind, name string) object {
	return deploytest.Find(t, objs, kind, name)
}

// strictDecoder decodes YAML into the registered Go types, rejecting unknown
// and duplicate fields.
func strictDecode(t *testing.T, o object, into runtime.Object) {
	t.Helper()
	s := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, kjson.SerializerOptions{Yaml: true, Strict: true})
	if _, _, err := s.Decode(o.Raw, nil, into); err != nil {
		t.Fatalf("%s: strict decode: %v", o.ID(), err)
	}
}

// TestKustomizeRenders renders deploy/ and deploy/base and checks the set of
// objects.
func TestKustomizeRenders(t *testing.T) {
	all := kustomize(t, ".")
	base := kustomize(t, "base")
	want := []string{
		"Namespace /inflight-system",
		"ServiceAccount inflight-system/inflight-extproc", "Service inflight-system/inflight-extproc",
		"Deployment inflight-system/inflight-extproc", "PodDisruptionBudget inflight-system/inflight-extproc",
		"ServiceAccount inflight-system/inflight-controller", "ClusterRole /inflight-controller",
		"ClusterRoleBinding /inflight-controller", "Role inflight-system/inflight-controller",
		"RoleBinding inflight-system/inflight-controller",
		"Deployment inflight-system/inflight-controller", "PodDisruptionBudget inflight-system/inflight-controller",
		"NetworkPolicy inflight-system/default-deny", "NetworkPolicy inflight-system/inflight-extproc-grpc",
		"NetworkPolicy inflight-system/inflight-extproc-admin", "NetworkPolicy inflight-system/inflight-controller-admin",
		"NetworkPolicy inflight-system/inflight-controller-egress", "NetworkPolicy inflight-system/inflight-extproc-egress",
		"PeerAuthentication inflight-system/inflight-extproc", "AuthorizationPolicy inflight-system/inflight-extproc",
	}
	monitoring := []string{
		"ServiceMonitor inflight-system/inflight-extproc", "PodMonitor inflight-system/inflight-controller",
		"PrometheusRule inflight-system/inflight",
		"ConfigMap inflight-system/inflight-dashboard-overview", "ConfigMap inflight-system/inflight-dashboard-service",
		"ConfigMap inflight-system/inflight-dashboard-health",
	}
	ids := func(objs []object) map[string]bool {
		m := map[string]bool{}
		for _, o := range objs {
			if m[o.ID()] {
				t.Errorf("duplicate %s", o.ID())
			}
			m[o.ID()] = true
		}
		return m
	}
	gotAll, gotBase := ids(all), ids(base)
	for _, id := range want {
		if !gotAll[id] || !gotBase[id] {
			t.Errorf("missing %s (deploy/: %v, deploy/base: %v)", id, gotAll[id], gotBase[id])
		}
	}
	for _, id := range monitoring {
		if !gotAll[id] {
			t.Errorf("deploy/ is missing %s", id)
		}
		if gotBase[id] {
			t.Errorf("deploy/base has %s: base must need no CRD and no Grafana", id)
		}
	}
	if len(gotAll) != len(want)+len(monitoring) {
		t.Errorf("deploy/ renders %d objects, want %d: %v", len(gotAll), len(want)+len(monitoring), gotAll)
	}
}

// TestInstallConsistency checks the manifests against the code they deploy:
// the EnvoyFilter's cluster, the controller's defaults, the binaries' flags.
func TestInstallConsistency(t *testing.T) {
	objs := kustomize(t, ".")
	k := kube.DefaultOptions()

	var svc corev1.Service
	strictDecode(t, find(t, objs, "Service", istio.DefaultExtprocService), &svc)
	if svc.Namespace != istio.DefaultExtprocNamespace || svc.Namespace != k.ExtprocNamespace || svc.Name != k.ExtprocService {
		t.Errorf("extproc Service %s/%s: the EnvoyFilter expects %s/%s, the controller %s/%s", svc.Namespace, svc.Name,
			istio.DefaultExtprocNamespace, istio.DefaultExtprocService, k.ExtprocNamespace, k.ExtprocService)
	}
	ports := map[string]corev1.ServicePort{}
	for _, p := range svc.Spec.Ports {
		ports[p.Name] = p
	}
	if p := ports["grpc"]; p.Port != istio.DefaultExtprocPort || ptr.Deref(p.AppProtocol, "") != "grpc" {
		t.Errorf("extproc Service port grpc = %+v: want port %d, appProtocol grpc (Istio must speak HTTP/2)", p, istio.DefaultExtprocPort)
	}
	if p, ok := ports[k.SnapshotPort]; !ok || p.Port != 9090 {
		t.Errorf("extproc Service has no port %q = 9090 (the controller reads snapshots from it): %+v", k.SnapshotPort, ports)
	}
	if svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("extproc Service type %s: admin ports must stay inside the cluster", svc.Spec.Type)
	}

	for _, name := range []string{"inflight-extproc", "inflight-controller"} {
		var d appsv1.Deployment
		strictDecode(t, find(t, objs, "Deployment", name), &d)
		checkDeployment(t, &d)
		var pdb policyv1.PodDisruptionBudget
		strictDecode(t, find(t, objs, "PodDisruptionBudget", name), &pdb)
		if !labelsMatch(pdb.Spec.Selector, d.Spec.Template.Labels) {
			t.Errorf("PDB %s does not select its Deployment's pods", name)
		}
	}

	// extproc: the drain set explicitly and within the grace period; no
	// API token.
	var ext appsv1.Deployment
	strictDecode(t, find(t, objs, "Deployment", "inflight-extproc"), &ext)
	drain := checkExtprocDrain(t, &ext)
	if ptr.Deref(ext.Spec.Template.Spec.AutomountServiceAccountToken, true) {
		t.Error("extproc mounts a ServiceAccount token it never uses")
	}
	checkExtprocMesh(t, objs, &ext, drain)

	// controller: its ServiceAccount is the one the RBAC binds.
	var ctl appsv1.Deployment
	strictDecode(t, find(t, objs, "Deployment", "inflight-controller"), &ctl)
	sa := ctl.Spec.Template.Spec.ServiceAccountName
	find(t, objs, "ServiceAccount", sa)
	for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
		var rb rbacv1.RoleBinding
		o := find(t, objs, kind, "inflight-controller")
		if err := yaml.UnmarshalStrict(o.Raw, &rb); err != nil {
			t.Fatalf("%s: %v", o.ID(), err)
		}
		if len(rb.Subjects) != 1 || rb.Subjects[0].Name != sa || rb.Subjects[0].Namespace != ctl.Namespace {
			t.Errorf("%s binds %+v, want the controller's ServiceAccount %s/%s", o.ID(), rb.Subjects, ctl.Namespace, sa)
		}
	}
	shutdown := flagDuration(t, ctl.Spec.Template.Spec.Containers[0].Args, "--shutdown-timeout", 10*time.Second)
	if g := time.Duration(ptr.Deref(ctl.Spec.Template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second; g <= shutdown {
		t.Errorf("controller terminationGracePeriodSeconds %v ≤ --shutdown-timeout %v", g, shutdown)
	}
	env := map[string]string{}
	for _, e := range ctl.Spec.Template.Spec.Containers[0].Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("controller env %v: want POD_NAME and POD_NAMESPACE from the downward API (Lease identity and namespace)", env)
	}

	// NetworkPolicies: gRPC from mesh namespaces; admin from the controller.
	var grpcNP, adminNP networkingv1.NetworkPolicy
	strictDecode(t, find(t, objs, "NetworkPolicy", "inflight-extproc-grpc"), &grpcNP)
	strictDecode(t, find(t, objs, "NetworkPolicy", "inflight-extproc-admin"), &adminNP)
	if p := grpcNP.Spec.Ingress[0].Ports[0].Port; p == nil || p.String() != "grpc" {
		t.Errorf("inflight-extproc-grpc allows port %v, want grpc", p)
	}
	fromController := false
	for _, peer := range adminNP.Spec.Ingress[0].From {
		if peer.NamespaceSelector == nil && labelsMatch(peer.PodSelector, ctl.Spec.Template.Labels) {
			fromController = true
		}
	}
	if !fromController {
		t.Error("inflight-extproc-admin does not admit the controller's pods")
	}

	// Dashboards: one ConfigMap per JSON file, labelled for Grafana's sidecar.
	files, err := filepath.Glob("dashboards/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	for _, f := range files {
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := "inflight-dashboard-" + strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "inflight-"), ".json")
		var cm corev1.ConfigMap
		strictDecode(t, find(t, objs, "ConfigMap", name), &cm)
		if cm.Labels["grafana_dashboard"] != "1" {
			t.Errorf("ConfigMap %s lacks the label grafana_dashboard: \"1\"", name)
		}
		if cm.Data[filepath.Base(f)] != string(want) {
			t.Errorf("ConfigMap %s does not hold %s", name, f)
		}
	}
}

// checkDeployment checks replicas, probes and the security context of an
// inflight Deployment.
func checkDeployment(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	if ptr.Deref(d.Spec.Replicas, 1) != 2 {
		t.Errorf("%s: replicas %d, want 2", d.Name, ptr.Deref(d.Spec.Replicas, 1))
	}
	ps := d.Spec.Template.Spec
	if sc := ps.SecurityContext; sc == nil || !ptr.Deref(sc.RunAsNonRoot, false) || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext %+v: want runAsNonRoot and seccomp RuntimeDefault", d.Name, sc)
	}
	if len(ps.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", d.Name, len(ps.Containers))
	}
	c := ps.Containers[0]
	sc := c.SecurityContext
	if sc == nil || !ptr.Deref(sc.RunAsNonRoot, false) || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) ||
		ptr.Deref(sc.AllowPrivilegeEscalation, true) || sc.Capabilities == nil ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 {
		t.Errorf("%s: container securityContext %+v: want non-root, read-only root fs, no privilege escalation, drop ALL", d.Name, sc)
	}
	// An image is named by a release tag or a digest, never a moving tag.
	name, tag, _ := strings.Cut(c.Image[strings.LastIndex(c.Image, "/")+1:], ":")
	if tag == "" && !strings.Contains(name, "@sha256:") || strings.HasPrefix(tag, "latest") {
		t.Errorf("%s: image %q: want a release tag or a sha256 digest, not latest", d.Name, c.Image)
	}
	probe := func(what string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "admin" {
			t.Errorf("%s: %s probe %+v: want GET %s on port admin", d.Name, what, p, path)
		}
	}
	probe("readiness", c.ReadinessProbe, "/readyz")
	probe("liveness", c.LivenessProbe, "/healthz")
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: resources %+v: want cpu and memory requests and a memory limit", d.Name, c.Resources)
	}
	hasPodName := false
	for _, e := range c.Env {
		if e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			hasPodName = true
		}
	}
	if !hasPodName {
		t.Errorf("%s: no POD_NAME from the downward API", d.Name)
	}
	checkMemoryLimit(t, d.Name, c)
	// The extproc is in the mesh (its sidecar authenticates the callers);
	// the controller is not.
	want := map[string]string{"inflight-extproc": "true", "inflight-controller": "false"}[d.Name]
	if got := d.Spec.Template.Labels["sidecar.istio.io/inject"]; got != want {
		t.Errorf("%s: pod label sidecar.istio.io/inject=%q, want %q", d.Name, got, want)
	}
}

func labelsMatch(sel *metav1.LabelSelector, lbl map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() {
		return false
	}
	return s.Matches(labelsSet(lbl))
}

type labelsSet map[string]string

func (l labelsSet) Has(k string) bool              { _, ok := l[k]; return ok }
func (l labelsSet) Get(k string) string            { return l[k] }
func (l labelsSet) Lookup(k string) (string, bool) { v, ok := l[k]; return v, ok }

// checkMemoryLimit checks how each binary learns its memory limit. The
// extproc reads the container's limits.memory from $MEMORY_LIMIT (downward
// API), checks that its bounds fit in 7/8 of it and sets its Go heap limit
// there itself, so no GOMEMLIMIT is set. The controller has GOMEMLIMIT at
// 85–90 % of its limit: the GC works harder before the kernel kills the
// container, with room for non-heap memory.
func checkMemoryLimit(t *testing.T, name string, c corev1.Container) {
	t.Helper()
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if name == "inflight-extproc" {
		ml, ok := env["MEMORY_LIMIT"]
		if rf := ml.ValueFrom; !ok || rf == nil || rf.ResourceFieldRef == nil || rf.ResourceFieldRef.Resource != "limits.memory" ||
			rf.ResourceFieldRef.ContainerName != c.Name || !rf.ResourceFieldRef.Divisor.IsZero() {
			t.Errorf("%s: MEMORY_LIMIT %+v: want the container's limits.memory in bytes (resourceFieldRef, no divisor)", name, ml)
		}
		if g, ok := env["GOMEMLIMIT"]; ok {
			t.Errorf("%s: GOMEMLIMIT=%q: the binary sets the heap limit to 7/8 of $MEMORY_LIMIT itself", name, g.Value)
		}
		return
	}
	limit := c.Resources.Limits.Memory().Value()
	gml := int64(-1)
	if n, ok := strings.CutSuffix(env["GOMEMLIMIT"].Value, "MiB"); ok {
		if v, err := strconv.ParseInt(n, 10, 64); err == nil {
			gml = v << 20
		}
	}
	if gml < limit*85/100 || gml > limit*90/100 {
		t.Errorf("%s: GOMEMLIMIT %d bytes for a %d-byte limit: want 85–90 %% of it, in MiB", name, gml, limit)
	}
}

// checkExtprocDrain checks the extproc's drain settings (issue 10.4):
// --drain-delay and --drain-timeout are set explicitly (not left to the
// binary's defaults), each within the binary's range, the delay at least the
// README's 15 s EDS propagation margin and the timeout at least 5 min (long
// LLM generations), and the pod's grace period is ≥ delay + timeout + 15 s,
// so the process exits on its own before SIGKILL. It returns delay + timeout:
// how long the sidecar must outlive the SIGTERM.
func checkExtprocDrain(t *testing.T, ext *appsv1.Deployment) time.Duration {
	t.Helper()
	args := ext.Spec.Template.Spec.Containers[0].Args
	for _, f := range []string{"--drain-delay=", "--drain-timeout="} {
		if !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, f) }) {
			t.Errorf("extproc args %q: want %s set explicitly", args, f)
		}
	}
	delay := flagDuration(t, args, "--drain-delay", 0)
	timeout := flagDuration(t, args, "--drain-timeout", 0)
	if delay < 15*time.Second || delay > 2*time.Minute {
		t.Errorf("extproc --drain-delay=%v: want 15s (EDS propagation) to 2m (the binary's maximum)", delay)
	}
	if timeout < 5*time.Minute || timeout > time.Hour {
		t.Errorf("extproc --drain-timeout=%v: want 5m (long LLM generations) to 1h (the binary's maximum)", timeout)
	}
	grace := time.Duration(ptr.Deref(ext.Spec.Template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
	if grace < delay+timeout+15*time.Second {
		t.Errorf("extproc terminationGracePeriodSeconds %v: want ≥ --drain-delay %v + --drain-timeout %v + 15s", grace, delay, timeout)
	}
	return delay + timeout
}

func flagDuration(t *testing.T, args []string, name string, def time.Duration) time.Duration {
	t.Helper()
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("%s: %v", a, err)
			}
			return d
		}
	}
	return def
}

// TestServerSideDryRun applies every core object to the real kube-apiserver
// with server-side apply, dry-run, strict field validation; the namespace is
// created for real first so namespaced objects have one. The pods of each
// Deployment are also dry-run created, which runs PodSecurity admission
// against the namespace's "restricted" level.
func TestServerSideDryRun(t *testing.T) {
	cfg := controlplane.Config(t)
	objs := kustomize(t, ".")
	ap := deploytest.NewApplier(t, cfg)
	dyn := ap.Dynamic()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	apply := func(o object, dryRun bool) error { return ap.Apply(ctx, o, dryRun) }
	deploytest.InstallIstioCRDs(t, cfg, deploytest.IstioCRDNames...)
	ns := find(t, objs, "Namespace", "inflight-system")
	if err := apply(ns, false); err != nil {
		t.Fatalf("create %s: %v", ns.ID(), err)
	}
	n := 0
	for _, o := range objs {
		if deploytest.IsMonitoring(o) {
			continue // no prometheus-operator CRDs here: decoded strictly in TestMonitoringTypes
		}
		if err := apply(o, true); err != nil {
			t.Errorf("server-side dry-run apply: %s: %v", o.ID(), err)
		}
		n++
	}
	t.Logf("%d objects passed a server-side dry-run apply", n)

	// The pods the Deployments would create pass PodSecurity "restricted".
	cs := dyn.Resource(corev1.SchemeGroupVersion.WithResource("pods")).Namespace("inflight-system")
	for _, name := range []string{"inflight-extproc", "inflight-controller"} {
		var d appsv1.Deployment
		strictDecode(t, find(t, objs, "Deployment", name), &d)
		pod := podOf(&d)
		if _, err := cs.Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}); err != nil {
			t.Errorf("dry-run create of a %s pod: %v", name, err)
		}
	}

	// The checks can fail: an unknown field, an invalid value and a pod
	// that breaks the restricted level are each rejected.
	var ext appsv1.Deployment
	strictDecode(t, find(t, objs, "Deployment", "inflight-extproc"), &ext)
	bad := find(t, objs, "Deployment", "inflight-extproc")
	bad.U = bad.U.DeepCopy()
	if err := unstructured.SetNestedField(bad.U.Object, int64(1), "spec", "replica"); err != nil {
		t.Fatal(err)
	}
	if err := apply(bad, true); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Errorf("an unknown field passed the dry-run: %v", err)
	}
	bad.U = find(t, objs, "Deployment", "inflight-extproc").U.DeepCopy()
	if err := unstructured.SetNestedField(bad.U.Object, int64(-1), "spec", "replicas"); err != nil {
		t.Fatal(err)
	}
	if err := apply(bad, true); err == nil {
		t.Error("replicas: -1 passed the dry-run")
	}
	pod := podOf(&ext)
	pod.Object["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)["securityContext"] = map[string]any{"privileged": true}
	if _, err := cs.Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err == nil {
		t.Error("a privileged pod passed PodSecurity in inflight-system: is the namespace's enforce label effective?")
	}
}

// podOf returns a Pod built from a Deployment's template, as unstructured.
func podOf(d *appsv1.Deployment) *unstructured.Unstructured {
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: d.Name + "-dryrun", Namespace: d.Namespace, Labels: d.Spec.Template.Labels},
		Spec:       d.Spec.Template.Spec,
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(p)
	if err != nil {
		panic(err) // a typed Pod always converts
	}
	return &unstructured.Unstructured{Object: m}
}

// TestMonitoringTypes decodes the PodMonitor, ServiceMonitor and
// PrometheusRule strictly into prometheus-operator's Go types.
func TestMonitoringTypes(t *testing.T) {
	objs := kustomize(t, ".")
	n := 0
	for _, o := range objs {
		if !deploytest.IsMonitoring(o) {
			continue
		}
		var into any
		switch o.U.GetKind() {
		case monv1.PodMonitorsKind:
			into = &monv1.PodMonitor{}
		case monv1.ServiceMonitorsKind:
			into = &monv1.ServiceMonitor{}
		case monv1.PrometheusRuleKind:
			into = &monv1.PrometheusRule{}
		default:
			t.Errorf("%s: unexpected monitoring kind", o.ID())
			continue
		}
		if err := decodeStrict(o.Raw, into); err != nil {
			t.Errorf("%s: %v", o.ID(), err)
		}
		n++
	}
	if n != 3 {
		t.Errorf("decoded %d monitoring objects, want 3", n)
	}
	// And the check can fail.
	bad := bytes.Replace(find(t, objs, "PodMonitor", "inflight-controller").Raw, []byte("honorLabels:"), []byte("honourLabels:"), 1)
	if err := decodeStrict(bad, &monv1.PodMonitor{}); err == nil {
		t.Error("a misspelt PodMonitor field decoded")
	}
}

func decodeStrict(doc []byte, into any) error {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// ruleGroups returns the PrometheusRule's spec as a Prometheus rule file.
func ruleGroups(t *testing.T) []byte {
	t.Helper()
	var pr monv1.PrometheusRule
	if err := decodeStrict(find(t, kustomize(t, "."), "PrometheusRule", "inflight").Raw, &pr); err != nil {
		t.Fatal(err)
	}
	b, err := yaml.Marshal(pr.Spec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPromtoolCheckRules runs promtool check rules on the alert rules, and
// on a broken copy to prove the check runs.
func TestPromtoolCheckRules(t *testing.T) {
	promtool := requireTool(t, "promtool")
	rules := ruleGroups(t)
	dir := t.TempDir()
	check := func(name string, b []byte) (string, error) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, promtool, "check", "rules", p).CombinedOutput()
		return string(out), err
	}
	out, err := check("inflight.rules.yaml", rules)
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool check rules: no SUCCESS in\n%s", out)
	}
	t.Log(strings.TrimSpace(out))
	broken := bytes.Replace(rules, []byte("sum(up{"), []byte("sum(up{{"), 1)
	if out, err := check("broken.rules.yaml", broken); err == nil {
		t.Fatalf("promtool accepted a broken expression:\n%s", out)
	}

	// The alerts' unit tests (monitoring/alerts_test.yaml): each alert fires
	// when it should and not before.
	unit, err := os.ReadFile(filepath.Join("monitoring", "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "alerts_test.yaml")
	if err := os.WriteFile(p, unit, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, promtool, "test", "rules", p).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules monitoring/alerts_test.yaml: %v\n%s", err, out)
	}
}

// checkExtprocMesh checks the extproc's place in the mesh (issue 10): its
// sidecar hands over exactly one XFCC element and outlives the drain, the
// admin port stays out of the sidecar, the binary reads identities from XFCC
// with its own SPIFFE ID, PeerAuthentication is STRICT and the
// AuthorizationPolicy admits only mesh identities, only on the gRPC port.
func checkExtprocMesh(t *testing.T, objs []object, ext *appsv1.Deployment, drain time.Duration) {
	t.Helper()
	ann := ext.Spec.Template.Annotations
	var pc meshv1alpha1.ProxyConfig
	if err := protojson.Unmarshal([]byte(ann["proxy.istio.io/config"]), &pc); err != nil {
		t.Fatalf("extproc proxy.istio.io/config %q: %v", ann["proxy.istio.io/config"], err)
	}
	if got := pc.GetProxyHeaders().GetForwardedClientCert(); got != meshv1alpha1.ForwardClientCertDetails_SANITIZE_SET {
		t.Errorf("extproc sidecar forwardedClientCert %v, want SANITIZE_SET (one XFCC element, the sidecar's own)", got)
	}
	grace := time.Duration(ptr.Deref(ext.Spec.Template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
	if d := pc.GetTerminationDrainDuration().AsDuration(); d <= drain || d >= grace {
		t.Errorf("extproc sidecar terminationDrainDuration %v: want more than --drain-delay + --drain-timeout (%v; the sidecar carries the streams until the extproc has cut them) and less than the grace period %v", d, drain, grace)
	}
	if got := ann["traffic.sidecar.istio.io/excludeInboundPorts"]; got != "9090" {
		t.Errorf("extproc excludeInboundPorts %q, want 9090 (the admin port is read in plaintext by the controller and Prometheus)", got)
	}
	args := ext.Spec.Template.Spec.Containers[0].Args
	for _, want := range []string{"--caller-identity=xfcc", "--xfcc-by=spiffe://cluster.local/ns/" + ext.Namespace + "/sa/" + ext.Spec.Template.Spec.ServiceAccountName} {
		if !slices.Contains(args, want) {
			t.Errorf("extproc args %q lack %s", args, want)
		}
	}

	var pa securityv1beta1.PeerAuthentication
	specOf(t, find(t, objs, "PeerAuthentication", "inflight-extproc"), &pa)
	if pa.GetMtls().GetMode() != securityv1beta1.PeerAuthentication_MutualTLS_STRICT || !maps.Equal(pa.GetSelector().GetMatchLabels(), ext.Spec.Selector.MatchLabels) {
		t.Errorf("PeerAuthentication %v: want STRICT on the extproc's pods", &pa)
	}
	var ap securityv1beta1.AuthorizationPolicy
	specOf(t, find(t, objs, "AuthorizationPolicy", "inflight-extproc"), &ap)
	if ap.GetAction() != securityv1beta1.AuthorizationPolicy_ALLOW || !maps.Equal(ap.GetSelector().GetMatchLabels(), ext.Spec.Selector.MatchLabels) || len(ap.GetRules()) != 1 {
		t.Fatalf("AuthorizationPolicy %v: want one ALLOW rule on the extproc's pods", &ap)
	}
	r := ap.GetRules()[0]
	if len(r.GetFrom()) != 1 || !slices.Equal(r.GetFrom()[0].GetSource().GetPrincipals(), []string{"*"}) ||
		len(r.GetTo()) != 1 || !slices.Equal(r.GetTo()[0].GetOperation().GetPorts(), []string{fmt.Sprint(istio.DefaultExtprocPort)}) {
		t.Errorf("AuthorizationPolicy rule %v: want principals [*] (mTLS identities only) to port %d", r, istio.DefaultExtprocPort)
	}
}

// specOf decodes an Istio object's spec strictly into its protobuf type.
func specOf(t *testing.T, o object, into proto.Message) {
	t.Helper()
	spec, ok := o.U.Object["spec"]
	if !ok {
		t.Fatalf("%s has no spec", o.ID())
	}
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(js, into); err != nil {
		t.Fatalf("%s: spec does not decode strictly into %T: %v", o.ID(), into, err)
	}
}

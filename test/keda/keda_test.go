// Package keda tests inflight's KEDA external scaler with KEDA's own client
// code: the external-push scaler of github.com/kedacore/keda/v2/pkg/scalers
// (what the KEDA operator runs for a ScaledObject trigger of type
// external-push) calls the real inflight controller binary, built from the
// main module, over gRPC on 127.0.0.1; the controller runs against the real
// test kube-apiserver (envtest, the binaries of test/controlplane/build.sh)
// and sums an extproc replica's /v1/snapshot.
//
// It is a nested Go module because KEDA's module pulls in every scaler's
// client (cloud SDKs, databases, queues: ~900 go.sum lines); it does not
// import the main module, whose binaries it builds with `go build`.
//
// The extproc replica here is a snapshot server speaking the versioned
// /v1/snapshot contract (inflight.dev/snapshot/v1, pinned by a golden file
// in extproc/) with counters the test sets: what is under test is the
// controller's KEDA API, not the counting.
package keda

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
	appsv1 "k8s.io/api/apps/v1"
	v2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

const requireEnv = "INFLIGHT_REQUIRE_CONTROLPLANE"

var (
	env     *envtest.Environment
	kubecfg string // admin kubeconfig file
	cs      *kubernetes.Clientset
)

func TestMain(m *testing.M) {
	// KEDA's scaler logs through controller-runtime's logger (e.g. a failed
	// call while the binary starts): to stderr, seen with -v.
	ctrllog.SetLogger(funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, "keda:", prefix, args) }, funcr.Options{}))
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		if os.Getenv(requireEnv) == "1" {
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "skipping the KEDA tests:", err)
		os.Exit(0)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir, _ = filepath.Abs(filepath.Join("..", "..", ".cache", "controlplane", "bin"))
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return 0, fmt.Errorf("test control plane missing (%v): run test/controlplane/build.sh", err)
		}
	}
	env = &envtest.Environment{BinaryAssetsDirectory: dir, ControlPlaneStartTimeout: time.Minute, ControlPlaneStopTimeout: 30 * time.Second}
	cfg, err := env.Start()
	if err != nil {
		return 0, fmt.Errorf("start the control plane from %s: %w", dir, err)
	}
	defer func() { _ = env.Stop() }()
	user, err := env.AddUser(envtest.User{Name: "inflight-keda-test", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return 0, err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return 0, err
	}
	f, err := os.CreateTemp("", "inflight-keda-kubeconfig-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(kc); err != nil {
		return 0, err
	}
	_ = f.Close()
	kubecfg = f.Name()
	if cs, err = kubernetes.NewForConfig(cfg); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

// freeAddr is a 127.0.0.1 address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// replica serves /v1/snapshot for one workload whose requests in flight the
// test sets; busy-seconds integrate in_flight over the replica's uptime, as
// the extproc's tracker does.
type replica struct {
	mu       sync.Mutex
	start    time.Time
	inFlight int
	since    time.Time // of the last change
	busy     float64   // busy-seconds up to since
	started  int
}

func (r *replica) set(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.busy += float64(r.inFlight) * now.Sub(r.since).Seconds()
	if n > r.inFlight {
		r.started += n - r.inFlight
	}
	r.inFlight, r.since = n, now
}

func (r *replica) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != "/v1/snapshot" {
		http.NotFound(w, req)
		return
	}
	r.mu.Lock()
	now := time.Now()
	busy := r.busy + float64(r.inFlight)*now.Sub(r.since).Seconds()
	target := map[string]any{
		"namespace": "models", "workload": "vllm", "service": "vllm", "pod": "vllm-0",
		"in_flight": r.inFlight, "started_total": r.started, "completed_total": r.started - r.inFlight,
		"busy_seconds_total": busy, "duration_seconds_sum": 0,
	}
	snap := map[string]any{
		"version": "inflight.dev/snapshot/v1", "replica": "extproc-0", "boot_id": "0123456789abcdef",
		"time": now.UTC().Format(time.RFC3339Nano), "uptime_seconds": now.Sub(r.start).Seconds(),
		"targets": []any{target},
	}
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(snap)
}

// buildController builds cmd/controller of the main module.
func buildController(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "controller")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/controller")
	cmd.Dir = filepath.Join("..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/controller: %v\n%s", err, b)
	}
	return out
}

// TestExternalPushScaler runs KEDA's external-push scaler against the
// controller's --keda-listen: the metric spec, the metric value from the
// extproc's counters, and StreamIsActive pushing the 0 → 1 wake-up and the
// return to 0.
func TestExternalPushScaler(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := buildController(t)

	for _, ns := range []string{"inflight-system", "models"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The scaled Deployment and its pod: the controller counts a target for
	// a Deployment only from a live pod of it (issue 10.2), for KEDA's sums
	// as for its own. Nothing runs the pod; it only has to exist.
	lbl := map[string]string{"app": "vllm"}
	if _, err := cs.AppsV1().Deployments("models").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "vllm"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "model:1"}}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Pods("models").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "vllm-0", Labels: lbl},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "model:1"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rep := &replica{start: time.Now(), since: time.Now()}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: rep, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	defer hs.Close()
	_, portStr, _ := net.SplitHostPort(lis.Addr().String())
	port, _ := strconv.Atoi(portStr)
	ready := true
	name, p32 := "admin", int32(port)
	// The API server refuses loopback endpoint addresses: the slice holds a
	// documentation address (RFC 5737) that nothing dials; the controller
	// runs with --snapshot-dial-host 127.0.0.1.
	if _, err := cs.DiscoveryV1().EndpointSlices("inflight-system").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "inflight-extproc-0", Labels: map[string]string{discoveryv1.LabelServiceName: "inflight-extproc"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.10"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &p32}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	kedaAddr := freeAddr(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "controller.log"))
	if err != nil {
		t.Fatal(err)
	}
	ctl := exec.Command(bin, "--kubeconfig="+kubecfg, "--admin-listen="+freeAddr(t), "--keda-listen="+kedaAddr,
		"--snapshot-dial-host=127.0.0.1", "--identity=keda-test", "--lease-namespace=inflight-system", "--log-format=console")
	ctl.Stdout, ctl.Stderr = logf, logf
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = ctl.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = ctl.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = ctl.Process.Kill()
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("controller log:\n%s", b)
		}
	}()

	// KEDA's scaler, as the operator builds it for:
	//   triggers: [{type: external-push, metadata: {scalerAddress: …, workload: vllm, targetInFlight: "4"}}]
	sc, err := scalers.NewExternalPushScaler(&scalersconfig.ScalerConfig{
		ScalableObjectName: "vllm", ScalableObjectNamespace: "models", ScalableObjectType: "ScaledObject",
		TriggerType: "external-push", TriggerIndex: 0, MetricType: v2.AverageValueMetricType,
		TriggerMetadata:   map[string]string{"scalerAddress": kedaAddr, "workload": "vllm", "targetInFlight": "4"},
		GlobalHTTPTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close(ctx)

	// The binary needs a moment to listen: KEDA's scaler logs the failed
	// call and returns no spec until then.
	specs := sc.GetMetricSpecForScaling(ctx)
	for deadline := time.Now().Add(60 * time.Second); len(specs) == 0 && time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		specs = sc.GetMetricSpecForScaling(ctx)
	}
	if len(specs) != 1 || specs[0].External == nil || specs[0].External.Metric.Name != "s0-inflight-models-vllm" ||
		specs[0].External.Target.AverageValue == nil || specs[0].External.Target.AverageValue.AsApproximateFloat64() != 4 {
		t.Fatalf("metric spec %+v: want one external metric s0-inflight-models-vllm with average value 4", specs)
	}

	active := make(chan bool, 16)
	go sc.Run(ctx, active)
	next := func(want bool, within time.Duration) time.Duration {
		t.Helper()
		begin := time.Now()
		for {
			select {
			case a, ok := <-active:
				if !ok {
					t.Fatal("StreamIsActive ended")
				}
				if a == want {
					return time.Since(begin)
				}
				t.Logf("StreamIsActive sent %v while waiting for %v", a, want)
			case <-time.After(within - time.Since(begin)):
				t.Fatalf("StreamIsActive sent no %v within %v", want, within)
			}
		}
	}
	// The controller must first lead and tick: the stream opens (KEDA
	// retries with back-off until then) and sends the current state.
	next(false, 90*time.Second)

	rep.set(6) // six requests in flight: the wake-up
	wake := next(true, 10*time.Second)
	t.Logf("0 → 1 pushed %v after the requests started (tick 1 s)", wake.Round(time.Millisecond))

	var got float64
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		vals, act, err := sc.GetMetricsAndActivity(ctx, "s0-inflight-models-vllm")
		if err != nil || len(vals) != 1 {
			t.Fatalf("GetMetricsAndActivity: %v %v", vals, err)
		}
		got = vals[0].Value.AsApproximateFloat64()
		if !act {
			t.Fatalf("GetMetricsAndActivity: not active with 6 in flight")
		}
		if got > 5.9 && got < 6.1 {
			break
		}
	}
	if got < 5.9 || got > 6.1 {
		t.Fatalf("metric value %v, want 6 (mean requests in flight over a tick)", got)
	}

	rep.set(0)
	next(false, 10*time.Second)

	// inflight's own controller never wrote this Deployment's scale: it
	// has no inflight.dev/target (KEDA's HPA scales it).
	d, err := cs.AppsV1().Deployments("models").Get(ctx, "vllm", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *d.Spec.Replicas != 1 {
		t.Errorf("spec.replicas = %d, want 1: the controller scaled a Deployment it does not manage", *d.Spec.Replicas)
	}
}

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/sim"
	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/demo/fleet"
	"github.com/inflight-dev/inflight/test/demo/replay"
	"github.com/inflight-dev/inflight/test/demo/stack"
	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/testutil"
)

const zeroNS = "e2e-zero"

// Issue 12.6, end to end with the real binaries (extproc, controller), the
// real API server, the demo's simulated fleet and the Envoy-faithful
// harness as a gateway running the shipped control filter:
//   - zero → held → ready → answered: a request for a Service whose
//     Deployment is at 0 replicas is held by the extproc, counted as demand
//     at once (the controller wakes the Deployment: cause wake), and
//     answered 200 once a replica is ready and in the Service's
//     EndpointSlice;
//   - hold timeout → 503: for a Deployment that never gets a ready replica,
//     the held request gets 503 with Retry-After at its hold-timeout (2s);
//   - shedding at max-queue: max-queue 1 × 1 ready replica, one extproc:
//     of 3 concurrent requests 1 is served, 2 get 429 with Retry-After.
//
// Every extproc count returns to zero.
func TestScaleFromZeroHoldAndShed(t *testing.T) {
	testutil.SkipUnlessLong(t)
	cfg := controlplane.Config(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bins := build(ctx, t)
	st, err := stack.Start(stack.Options{Bins: bins, Dir: t.TempDir(), Config: cfg, Tick: 200 * time.Millisecond,
		LeaseDuration: leaseDur, RenewDeadline: renewDL, RetryPeriod: retryPer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		if t.Failed() {
			dumpLogs(t, st)
		}
	})
	// Earlier tests' extproc endpoints (their processes are gone) would
	// only add failed fetches and lower the share: remove them.
	if err := stack.EnsureNamespace(ctx, st.Client, stack.SystemNamespace); err != nil {
		t.Fatal(err)
	}
	if err := st.Client.DiscoveryV1().EndpointSlices(stack.SystemNamespace).DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + stack.ExtprocService}); err != nil {
		t.Fatal(err)
	}
	ep, err := st.StartExtproc(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.StartController(ctx, 30); err != nil {
		t.Fatal(err)
	}
	if err := stack.EnsureNamespace(ctx, st.Client, zeroNS); err != nil {
		t.Fatal(err)
	}
	p := scaling.AnnotationPrefix
	createZeroModel(ctx, t, st, "zero", 0, map[string]string{p + "min-replicas": "0", p + "max-replicas": "2", p + "hold-timeout": "60s"})
	createZeroModel(ctx, t, st, "stuck", 0, map[string]string{p + "min-replicas": "0", p + "max-replicas": "1", p + "hold-timeout": "2s"})
	createZeroModel(ctx, t, st, "busy", 1, map[string]string{p + "min-replicas": "1", p + "max-replicas": "1", p + "max-queue": "1"})
	zeroEDS := runFleet(ctx, t, st, "zero", false)
	busyEDS := runFleet(ctx, t, st, "busy", true)
	stuckEDS := func() bool { return false } // no fleet: never a ready replica
	waitLeader(ctx, t, st, nil, 30*time.Second)

	c, err := envoy.NewClient(envoy.Config{Profile: envoy.Control, Version: envoy.Envoy137}, ep.GRPC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	send := func(svc string, hasEndpoint func() bool, serve time.Duration) <-chan *envoy.Result {
		out := make(chan *envoy.Result, 1)
		go func() {
			out <- c.Do(ctx, &envoy.Request{Attributes: envoy.GatewayAttributes(zeroNS, svc, 8000),
				NoHealthyUpstream: func() bool { return !hasEndpoint() },
				Response:          envoy.Response{HeadersDelay: serve, Body: [][]byte{[]byte("ok")}}})
		}()
		return out
	}
	retryAfter := func(r *envoy.Result) bool {
		for _, h := range r.LocalHeaders {
			if strings.EqualFold(h.Name, "retry-after") {
				return true
			}
		}
		return false
	}

	// The first gate table (until then the extproc fails open: no holding).
	if err := stack.Poll(ctx, 30*time.Second, 50*time.Millisecond, func() bool {
		var gs extproc.GatesStatus
		if stack.GetJSON(ctx, "http://"+ep.Admin+"/v1/gates", &gs) != nil || gs.Document == nil {
			return false
		}
		for _, g := range gs.Document.Gates {
			if g.Service == "zero" && g.Hold {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal("the extproc never got a gate table holding Service zero")
	}

	// The leading controller waits on the extproc for a wake (GET
	// /v1/gates/wake), so the held request wakes the workload at once.
	if err := stack.Poll(ctx, 30*time.Second, 50*time.Millisecond, func() bool {
		var gs extproc.GatesStatus
		return stack.GetJSON(ctx, "http://"+ep.Admin+"/v1/gates", &gs) == nil && gs.WakeWaiters >= 1
	}); err != nil {
		t.Fatal("no controller waits on the extproc for a wake")
	}

	// Zero → held → ready → answered.
	sent := time.Now()
	first := send("zero", zeroEDS, 100*time.Millisecond)
	if err := stack.Poll(ctx, 30*time.Second, 50*time.Millisecond, func() bool { return held(ctx, ep, "zero") >= 1 }); err != nil {
		select {
		case r := <-first:
			t.Fatalf("the request for the Service at zero was never held: it ended with status %d immediate %v fail-open %v (%v), overrides %d ignored %d",
				r.Status, r.ImmediateResponse, r.FailOpen, r.ProcessorErr, r.TimeoutOverrides, r.IgnoredOverrides)
		default:
		}
		t.Fatalf("the request for the Service at zero was never held (held %d)", held(ctx, ep, "zero"))
	}
	isHeld := time.Now()
	_ = stack.Poll(ctx, 30*time.Second, 10*time.Millisecond, func() bool { return replicasOf(ctx, t, st, "zero") >= 1 })
	t.Logf("held seen %v after the send; spec.replicas 0 → 1 %v after that (tick 200ms)",
		isHeld.Sub(sent).Round(time.Millisecond), time.Since(isHeld).Round(time.Millisecond))
	select {
	case r := <-first:
		t.Logf("the held request answered %v after it was sent (cold start 1 s, release delay 1 s)", time.Since(sent).Round(time.Millisecond))
		if r.Status != 200 || r.ImmediateResponse || r.NoHealthyUpstream || r.FailOpen {
			t.Errorf("held request: status %d immediate %v no-healthy-upstream %v fail-open %v (%v), want 200 through the filter",
				r.Status, r.ImmediateResponse, r.NoHealthyUpstream, r.FailOpen, r.ProcessorErr)
		}
		if r.TimeoutOverrides != 1 {
			t.Errorf("held request: %d message timeout overrides applied, want 1", r.TimeoutOverrides)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("the held request was not answered within 60s (replicas %d)", replicasOf(ctx, t, st, "zero"))
	}
	if n := replicasOf(ctx, t, st, "zero"); n < 1 {
		t.Errorf("zero: %d replicas after its request was answered", n)
	}
	evs, err := st.Client.CoreV1().Events(zeroNS).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=zero"})
	if err != nil {
		t.Fatal(err)
	}
	woke := false
	for _, e := range evs.Items {
		woke = woke || e.Reason == "ScaledUp" && strings.Contains(e.Message, scaling.CauseWake.Message())
	}
	if !woke {
		t.Errorf("no ScaledUp Event on zero with the wake cause (%q)", scaling.CauseWake.Message())
	}
	if n := counter(ctx, t, "http://"+waitLeader(ctx, t, st, nil, 30*time.Second).Admin+"/metrics", "inflight_controller_wake_ticks_total"); n < 1 {
		t.Errorf("inflight_controller_wake_ticks_total = %v: the held request did not ask for a tick at once", n)
	}

	// Hold timeout → 503 with Retry-After.
	select {
	case r := <-send("stuck", stuckEDS, 100*time.Millisecond):
		if r.Status != 503 || !r.ImmediateResponse || !retryAfter(r) {
			t.Errorf("hold timeout: status %d immediate %v headers %v, want 503 with Retry-After from the extproc", r.Status, r.ImmediateResponse, r.LocalHeaders)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the request for a workload that never gets ready was not answered within 60s")
	}

	// Shedding at max-queue: 1 × 1 ready, share 1.
	if err := stack.Poll(ctx, 30*time.Second, 50*time.Millisecond, busyEDS); err != nil {
		t.Fatal("busy never had a ready endpoint")
	}
	var rs []<-chan *envoy.Result
	for range 3 {
		rs = append(rs, send("busy", busyEDS, 3*time.Second))
	}
	served, shed := 0, 0
	for _, ch := range rs {
		r := <-ch
		switch {
		case r.Status == 200 && !r.ImmediateResponse:
			served++
		case r.Status == 429 && r.ImmediateResponse && retryAfter(r):
			shed++
		default:
			t.Errorf("busy: status %d immediate %v headers %v", r.Status, r.ImmediateResponse, r.LocalHeaders)
		}
	}
	if served != 1 || shed != 2 {
		t.Errorf("max-queue 1 × 1 ready: %d served, %d shed (429 + Retry-After), want 1 and 2", served, shed)
	}

	// No count leaks.
	var last string
	if err := stack.Poll(ctx, 15*time.Second, 50*time.Millisecond, func() bool {
		s, err := stack.Snapshot(ctx, ep.Admin)
		if err != nil {
			last = err.Error()
			return false
		}
		last = ""
		for _, r := range s.Targets {
			if r.InFlight != 0 || r.Held != 0 {
				last += fmt.Sprintf("%s/%s%s: in_flight %d held %d; ", r.Namespace, r.Service, r.Reason, r.InFlight, r.Held)
			}
		}
		return last == ""
	}); err != nil {
		t.Errorf("extproc counts did not return to zero: %s", last)
	}
}

// createZeroModel creates a Deployment name (target 1, short windows) with replicas
// and the extra annotations, and its Service selecting it.
func createZeroModel(ctx context.Context, t *testing.T, st *stack.Stack, name string, replicas int32, extra map[string]string) {
	t.Helper()
	p := scaling.AnnotationPrefix
	ann := map[string]string{p + scaling.AnnTarget: "1", p + scaling.AnnWindow: "6s", p + scaling.AnnPanicWindow: "1s",
		p + scaling.AnnColdStart: "1s", p + scaling.AnnScaleDownDelay: "5m"}
	for k, v := range extra {
		ann[k] = v
	}
	lbl := map[string]string{"app": name}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: zeroNS, Annotations: ann},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To(replicas), Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "example.invalid/model:e2e"}}}}}}
	if _, err := st.Client.AppsV1().Deployments(zeroNS).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: zeroNS},
		Spec: corev1.ServiceSpec{Selector: lbl, Ports: []corev1.ServicePort{{Name: "http", Port: 8000}}}}
	if _, err := st.Client.CoreV1().Services(zeroNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runFleet runs the simulated fleet of Deployment name (1 s cold start),
// which also plays the EndpointSlice controller for its Service, and the
// gateway's EDS view of that Service (the demo's, no delay). It returns
// whether the gateway has an endpoint for the Service.
func runFleet(ctx context.Context, t *testing.T, st *stack.Stack, name string, warm bool) (hasEndpoint func() bool) {
	t.Helper()
	m := sim.Model{Batch: 4, PrefillTPS: 5000, SecPerToken: 0.01, ColdStart: 1}
	fl, err := fleet.New(st.Client, fleet.Options{Namespace: zeroNS, Deployment: name, Service: name, Model: m, Speed: 1, WarmStart: warm})
	if err != nil {
		t.Fatal(err)
	}
	eds := replay.NewEDS(st.Client, zeroNS, name, 0)
	fctx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- fl.Run(fctx) }()
	go func() { done <- eds.Run(fctx) }()
	t.Cleanup(func() {
		stop()
		for range 2 {
			if err := <-done; err != nil && fctx.Err() == nil {
				t.Errorf("fleet %s: %v", name, err)
			}
		}
	})
	return func() bool { return eds.Count() > 0 }
}

// held is the held count of the extproc's edge target for Service svc.
func held(ctx context.Context, ep *stack.Extproc, svc string) int64 {
	_, n, _ := stack.EdgeInFlight(ctx, []*stack.Extproc{ep}, zeroNS, svc)
	return n
}

func replicasOf(ctx context.Context, t *testing.T, st *stack.Stack, name string) int32 {
	t.Helper()
	d, err := st.Client.AppsV1().Deployments(zeroNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return *d.Spec.Replicas
}

// counter reads one unlabelled counter from a Prometheus text page.
func counter(ctx context.Context, t *testing.T, url, name string) float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %q: %v", name, v, err)
			}
			return f
		}
	}
	t.Fatalf("%s: not on %s (%v)", name, url, sc.Err())
	return 0
}

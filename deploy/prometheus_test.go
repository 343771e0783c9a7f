package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling/kube"
	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/testutil"
)

// startProcess starts a command whose output goes to a file in the test's
// temp dir, and stops it (SIGTERM, then SIGKILL after 10 s) at cleanup.
func startProcess(t *testing.T, name string, bin string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pid := cmd.Process.Pid
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("%s (pid %d) log tail:\n%s", name, pid, b)
		}
	})
	return cmd
}

// waitHTTP polls url (bounded) until it answers 200.
func waitHTTP(t *testing.T, u string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tk := time.NewTicker(100 * time.Millisecond)
	defer tk.Stop()
	for {
		resp, err := http.Get(u)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v: %v", u, timeout, err)
		}
		<-tk.C
	}
}

// goBuild builds a main package of the module into the test's temp dir.
func goBuild(t *testing.T, pkg string) string {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// extprocReplica is a running extproc binary.
type extprocReplica struct{ name, grpc, admin string }

func startExtproc(t *testing.T, bin, name string) extprocReplica {
	r := extprocReplica{name: name, grpc: testutil.FreeAddr(t), admin: testutil.FreeAddr(t)}
	startProcess(t, name, bin, "--grpc-listen="+r.grpc, "--admin-listen="+r.admin,
		"--replica-name="+name, "--drain-delay=0s", "--drain-timeout=1s", "--log-format=console", "--caller-identity=trust-attributes")
	waitHTTP(t, "http://"+r.admin+"/readyz", 30*time.Second)
	return r
}

// load drives the extprocs like Envoy sidecars in front of two vllm pods
// until ctx ends: streamed responses (in flight ≈ workers), some requests
// with no attributes (the unknown target), some aborted, and a malformed
// message now and then (a stream error).
func load(ctx context.Context, t *testing.T, reps []extprocReplica) *sync.WaitGroup {
	var addrs []string
	for _, r := range reps {
		addrs = append(addrs, r.grpc)
	}
	c, err := envoy.NewClient(envoy.Config{Version: envoy.Envoy137, DeferredCloseTimeout: 200 * time.Millisecond}, addrs...)
	if err != nil {
		t.Fatal(err)
	}
	pods := []string{"vllm-7c9d5b6f4-k2x8p", "vllm-7c9d5b6f4-q9z4m"}
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				req := &envoy.Request{
					Attributes: envoy.InboundAttributes("models", "vllm", "vllm", pods[(w+i)%2], fmt.Sprintf("10.0.0.%d", 10+(w+i)%2), 8000),
					Response:   envoy.Response{Body: [][]byte{[]byte("data: a\n\n"), []byte("data: b\n\n"), []byte("data: [DONE]\n\n")}, ChunkDelay: 100 * time.Millisecond},
				}
				switch {
				case i%7 == 3:
					req.Attributes = nil // no attributes: the unknown target
				case i%11 == 5:
					req.Failure = envoy.Failure{Phase: envoy.AbortMidResponseBody, AfterChunks: 1}
				}
				c.Do(ctx, req)
			}
		}()
	}
	// A malformed message (no request set) every second: the extproc ends
	// that stream with an error, counted in inflight_extproc_stream_errors_total.
	wg.Add(1)
	go func() {
		defer wg.Done()
		cc, err := grpc.NewClient("passthrough:///"+reps[0].grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Error(err)
			return
		}
		defer cc.Close()
		cl := extprocv3.NewExternalProcessorClient(cc)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if s, err := cl.Process(sctx); err == nil && s.Send(&extprocv3.ProcessingRequest{}) == nil {
				_, _ = s.Recv()
			}
			cancel()
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	edgeLoad(ctx, t, reps, &wg)
	go func() { wg.Wait(); _ = c.Close() }()
	return &wg
}

// edgeLoad drives issue 12's holding and shedding so that their series
// exist: gateway requests for Service models/vllm through the control
// filter while a gate table (PUT /v1/gates on every replica, twice a
// second) says the Service has no ready endpoint, with a 1 s hold timeout
// and at most 2 held per replica (more are shed), and one second in three
// one ready endpoint (held requests are released). Some callers give up
// while held (abandoned).
func edgeLoad(ctx context.Context, t *testing.T, reps []extprocReplica, wg *sync.WaitGroup) {
	var addrs []string
	for _, r := range reps {
		addrs = append(addrs, r.grpc)
	}
	c, err := envoy.NewClient(envoy.Config{Profile: envoy.Control, Version: envoy.Envoy137}, addrs...)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 2 * time.Second}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(500 * time.Millisecond)
		defer tk.Stop()
		for i := 0; ; i++ {
			ready := 0
			if i%6 >= 4 {
				ready = 1
			}
			doc := &extproc.GatesDocument{Version: extproc.GatesVersion, Controller: "dashboard-test", ExpiresInSeconds: 5, Share: 1,
				Gates: []extproc.Gate{{Namespace: "models", Service: "vllm", Workload: "vllm", ReadyEndpoints: ready, Hold: true,
					HoldTimeoutSeconds: 1, ReleasePerEndpoint: 8, MaxHeld: 2}}}
			for _, r := range reps {
				if err := extproc.PutGates(ctx, hc, "http://"+r.admin, doc); err != nil && ctx.Err() == nil {
					t.Errorf("PUT /v1/gates: %v", err)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				req := &envoy.Request{
					Attributes: envoy.GatewayAttributes("models", "vllm", 8000),
					Response:   envoy.Response{Body: [][]byte{[]byte("ok")}},
				}
				rctx, cancel := ctx, context.CancelFunc(func() {})
				if (w+i)%5 == 0 {
					rctx, cancel = context.WithTimeout(ctx, 300*time.Millisecond) // gives up while held
				}
				c.Do(rctx, req)
				cancel()
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
	go func() { wg.Wait(); _ = c.Close() }()
}

// controllerUnderTest runs the controller in-process against the test
// control plane, with an annotated Deployment models/vllm, the two extproc
// replicas (and, until the controller has counted a failed fetch, a dead
// one) as EndpointSlices of the extproc Service, and serves its metrics on
// loopback. It returns the metrics address.
func controllerUnderTest(ctx context.Context, t *testing.T, reps []extprocReplica) string {
	cfg := controlplane.Config(t)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opt := kube.DefaultOptions()
	for _, ns := range []string{"models", opt.ExtprocNamespace} {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	lbl := map[string]string{"app": "vllm"}
	_, err = cs.AppsV1().Deployments("models").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "vllm", Namespace: "models", Annotations: map[string]string{
			kube.TargetAnnotation: "1", "inflight.dev/max-replicas": "4", "inflight.dev/window": "10s", "inflight.dev/cold-start": "30s",
		}},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "vllm:test"}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The pods the load names: the controller counts only targets whose
	// pod is a live pod of the Deployment.
	for _, name := range []string{"vllm-7c9d5b6f4-k2x8p", "vllm-7c9d5b6f4-q9z4m"} {
		p, err := cs.CoreV1().Pods("models").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "models", Labels: lbl},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "vllm:test"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
		if _, err := cs.CoreV1().Pods("models").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// EndpointSlices refuse loopback addresses: publish TEST-NET-1
	// addresses with the real ports, and dial 127.0.0.1 with that port.
	slice := func(name, addr string) {
		_, port, _ := net.SplitHostPort(addr)
		host := fmt.Sprintf("192.0.2.%d", len(name))
		var p int32
		fmt.Sscan(port, &p)
		_, err := cs.DiscoveryV1().EndpointSlices(opt.ExtprocNamespace).Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: "extproc-" + name, Namespace: opt.ExtprocNamespace,
				Labels: map[string]string{discoveryv1.LabelServiceName: opt.ExtprocService}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(opt.SnapshotPort), Port: ptr.To(p)}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{host}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: opt.ExtprocNamespace, Name: name}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range reps {
		slice(r.name, r.admin)
	}
	slice("dead", testutil.FreeAddr(t)) // refuses connections: snapshot errors, partial data

	reg := prometheus.NewRegistry()
	m := kube.NewMetrics(reg)
	opt.Identity = "inflight-controller-test"
	opt.SnapshotClient = loopbackClient()
	c, err := kube.New(cs, opt, zap.NewNop(), m)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(cctx) }()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close(); cancel(); <-done })

	// Once a fetch of the dead replica has failed, remove it, so the
	// controller has complete data again and scales.
	go func() {
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-cctx.Done():
				return
			case <-tk.C:
			}
			if counterSum(reg, "inflight_controller_snapshot_errors_total") > 0 {
				_ = cs.DiscoveryV1().EndpointSlices(opt.ExtprocNamespace).Delete(cctx, "extproc-dead", metav1.DeleteOptions{})
				return
			}
		}
	}()
	return l.Addr().String()
}

// loopbackClient dials 127.0.0.1 on the port of whatever address it is asked for.
func loopbackClient() *http.Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return d.DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", port))
		},
	}}
}

func counterSum(g prometheus.Gatherer, name string) float64 {
	mfs, err := g.Gather()
	if err != nil {
		return 0
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// promAPI is a client of a Prometheus HTTP API.
type promAPI struct{ base string }

type promResponse struct {
	Status string          `json:"status"`
	Error  string          `json:"error"`
	Data   json.RawMessage `json:"data"`
}

func (p promAPI) get(path string, q url.Values) (json.RawMessage, error) {
	resp, err := http.Get(p.base + path + "?" + q.Encode())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r promResponse
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("%s: HTTP %d: %w", path, resp.StatusCode, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s", path, r.Error)
	}
	return r.Data, nil
}

// eval returns the number of series (or label values) a query yields.
func (p promAPI) eval(q query) (int, error) {
	if q.label != "" {
		d, err := p.get("/api/v1/label/"+q.label+"/values", url.Values{"match[]": {q.expr}})
		if err != nil {
			return 0, err
		}
		var vals []string
		err = json.Unmarshal(d, &vals)
		return len(vals), err
	}
	d, err := p.get("/api/v1/query", url.Values{"query": {q.expr}})
	if err != nil {
		return 0, err
	}
	var v struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if err := json.Unmarshal(d, &v); err != nil {
		return 0, err
	}
	if v.ResultType != "vector" {
		return 0, fmt.Errorf("result type %s, want vector", v.ResultType)
	}
	// A NaN (e.g. a quantile over an empty window) is no data.
	n := 0
	for _, r := range v.Result {
		if s, _ := r.Value[1].(string); s != "NaN" {
			n++
		}
	}
	return n, nil
}

// substitute replaces the Grafana variables of the dashboards by the values
// of the test's workload.
func substitute(expr string) string {
	return strings.NewReplacer(
		"$__rate_interval", "15s",
		"$__interval", "5s",
		"$namespace", "models",
		"$workload", "vllm",
	).Replace(expr)
}

// TestDashboardQueriesOnRealPrometheus starts two extproc binaries, the
// controller (in-process, on the test control plane) and a real Prometheus
// scraping them every second with the alert rules loaded, drives Envoy-like
// load, then evaluates every dashboard query through the HTTP API (polling,
// bounded) and fails on any that errors or returns no data; it also
// requires every alert rule to evaluate without error. Without the test
// control plane (and without INFLIGHT_REQUIRE_CONTROLPLANE=1) the
// controller's queries are reported unchecked.
func TestDashboardQueriesOnRealPrometheus(t *testing.T) {
	testutil.SkipUnlessLong(t)
	promBin := requireTool(t, "prometheus")
	ds := loadDashboards(t)
	queries := dashboardQueries(t, ds)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	bin := goBuild(t, "./cmd/extproc")
	reps := []extprocReplica{startExtproc(t, bin, "extproc-a"), startExtproc(t, bin, "extproc-b")}
	wg := load(ctx, t, reps)
	defer wg.Wait()
	defer cancel()

	var controllerAddr string
	if _, err := controlplane.BinDir(); err == nil && (controlplane.Required() || controlPlaneUp()) {
		controllerAddr = controllerUnderTest(ctx, t, reps)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), ruleGroups(t), 0o644); err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, r := range reps {
		targets = append(targets, fmt.Sprintf("%q", r.admin))
	}
	conf := fmt.Sprintf(`global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
rule_files: [rules.yaml]
scrape_configs:
  - job_name: inflight-extproc
    honor_labels: true
    static_configs: [{targets: [%s]}]
`, strings.Join(targets, ", "))
	if controllerAddr != "" {
		conf += fmt.Sprintf(`  - job_name: inflight-controller
    honor_labels: true
    static_configs: [{targets: [%q]}]
`, controllerAddr)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	promAddr := testutil.FreeAddr(t)
	startProcess(t, "prometheus", promBin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr, "--log.level=warn")
	waitHTTP(t, "http://"+promAddr+"/-/ready", 60*time.Second)
	api := promAPI{base: "http://" + promAddr}

	isController := func(q query) bool {
		return strings.Contains(q.expr, "inflight_controller_") || strings.Contains(q.expr, "inflight-controller")
	}
	pending := map[int]query{}
	unchecked := 0
	for i, q := range queries {
		q.expr = substitute(q.expr)
		if controllerAddr == "" && isController(q) {
			unchecked++
			continue
		}
		pending[i] = q
	}
	lastErr := map[int]error{}
	checked := len(pending)
	deadline := time.Now().Add(2 * time.Minute)
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	for len(pending) > 0 && time.Now().Before(deadline) {
		<-tk.C
		for i, q := range pending {
			n, err := api.eval(q)
			lastErr[i] = err
			if err == nil && n > 0 {
				delete(pending, i)
			}
		}
	}
	var failed []string
	for i, q := range pending {
		why := "no data"
		if lastErr[i] != nil {
			why = lastErr[i].Error()
		}
		failed = append(failed, fmt.Sprintf("%s: %s\n    %s", q.where, why, q.expr))
	}
	sort.Strings(failed)
	for _, f := range failed {
		t.Errorf("dashboard query failed: %s", f)
	}
	t.Logf("Prometheus evaluated %d dashboard queries: %d with data, %d failed; %d controller queries unchecked",
		checked, checked-len(failed), len(failed), unchecked)
	if unchecked > 0 {
		t.Logf("controller queries unchecked: the test control plane is not available (%s unset)", controlplane.RequireEnv)
	}

	// The check can fail: a misspelt metric has no data, a broken
	// expression is an error.
	if n, err := api.eval(query{expr: "sum(inflight_request_in_flight)"}); err != nil || n != 0 {
		t.Errorf("a misspelt metric returned %d series (err %v), want none", n, err)
	}
	if _, err := api.eval(query{expr: "sum(rate(inflight_requests_started_total[$__rate_interval]))"}); err == nil {
		t.Error("an unsubstituted Grafana variable evaluated without error")
	}

	// Every alert rule has been evaluated without error.
	if err := rulesHealthy(api, deadline.Add(30*time.Second)); err != nil {
		t.Error(err)
	}
}

// controlPlaneUp reports whether controlplane.Main started a control plane
// (Config would skip otherwise).
func controlPlaneUp() bool {
	dir, err := controlplane.BinDir()
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(dir, "kube-apiserver"))
	return err == nil
}

// rulesHealthy polls (bounded) until every loaded rule has been evaluated,
// and returns an error naming any rule whose evaluation failed.
func rulesHealthy(api promAPI, deadline time.Time) error {
	type rule struct {
		Name           string `json:"name"`
		Health         string `json:"health"`
		LastError      string `json:"lastError"`
		LastEvaluation string `json:"lastEvaluation"`
	}
	tk := time.NewTicker(500 * time.Millisecond)
	defer tk.Stop()
	for {
		d, err := api.get("/api/v1/rules", nil)
		if err != nil {
			return err
		}
		var v struct {
			Groups []struct {
				Rules []rule `json:"rules"`
			} `json:"groups"`
		}
		if err := json.Unmarshal(d, &v); err != nil {
			return err
		}
		var bad []string
		n, evaluated := 0, 0
		for _, g := range v.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health == "ok" {
					evaluated++
				} else if r.Health == "err" {
					bad = append(bad, fmt.Sprintf("%s: %s", r.Name, r.LastError))
				}
			}
		}
		switch {
		case len(bad) > 0:
			return fmt.Errorf("alert rules failed to evaluate: %s", strings.Join(bad, "; "))
		case n == 0:
			return errors.New("Prometheus loaded no alert rules")
		case evaluated == n:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("only %d of %d alert rules evaluated by the deadline", evaluated, n)
		}
		<-tk.C
	}
}

package main

import (
	"context"
	"math"
	"runtime/debug"

	"encoding/json"
	"go.uber.org/zap"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/testutil"
)

func TestValidateNamesFlagValueAndRange(t *testing.T) {
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"--grpc-listen=9002"}, []string{`--grpc-listen="9002"`, "host:port"}},
		{[]string{"--grpc-listen=:9090"}, []string{"both", "must differ"}},
		{[]string{"--replica-name="}, []string{"--replica-name is empty"}},
		{[]string{"--max-targets=0"}, []string{"--max-targets=0", "1 to 100000"}},
		{[]string{"--max-targets=5000"}, []string{"--max-targets=5000", "may need", "--memory-limit=256Mi (224 MiB)"}},
		{[]string{"--caller-identity=mtls", "--max-connections=1000"}, []string{"--max-connections=1000 may need"}},
		{[]string{"--memory-limit=lots"}, []string{`--memory-limit="lots"`}},
		{[]string{"--max-targets=100", "--max-targets-per-namespace=101"}, []string{"--max-targets-per-namespace=101", "1 to --max-targets (100)"}},
		{[]string{"--target-idle-ttl=30s"}, []string{"--target-idle-ttl=30s", "1m to 24h"}},
		{[]string{"--max-open-streams=20000"}, []string{"--max-open-streams=20000", "may need"}},
		{[]string{"--max-open-streams=0"}, []string{"--max-open-streams=0", "1 to 100000"}},
		{[]string{"--max-streams-per-connection=0"}, []string{"--max-streams-per-connection=0"}},
		{[]string{"--max-connections=0"}, []string{"--max-connections=0", "1 to 100000"}},
		{[]string{"--max-message-bytes=1024"}, []string{"--max-message-bytes=1024", "64 KiB"}},
		{[]string{"--max-connection-idle=0s"}, []string{"--max-connection-idle=0s"}},
		{[]string{"--max-connection-age=10s"}, []string{"--max-connection-age=10s", "0 (never) or 1m to 24h"}},
		{[]string{"--drain-timeout=-1s"}, []string{"--drain-timeout=-1s", "0s to 1h"}},
		{[]string{"--drain-delay=3m"}, []string{"--drain-delay=3m0s", "0s to 2m"}},
		{[]string{"--log-level=loud"}, []string{`--log-level="loud"`}},
		{[]string{"--caller-identity=none"}, []string{`--caller-identity="none"`, "xfcc, mtls or trust-attributes"}},
		{[]string{"--caller-identity=trust-attributes", "--grpc-listen=:9002"}, []string{`--grpc-listen=":9002"`, "loopback"}},
		{[]string{"--caller-identity=trust-attributes", "--grpc-listen=10.0.0.1:9002"}, []string{"loopback"}},
		{[]string{"--caller-identity=trust-attributes", "--grpc-listen=127.0.0.1:9002", "--gateway-identity=spiffe://cluster.local/ns/gw/sa/gw"},
			[]string{"--gateway-identity needs"}},
		{[]string{"--xfcc-by=inflight-extproc"}, []string{`--xfcc-by="inflight-extproc"`, "spiffe://"}},
		{[]string{"--gateway-identity=istio-ingressgateway"}, []string{"gateway-identity", "not a SPIFFE ID"}},
		{[]string{"--caller-identity=mtls", "--tls-key=", "--tls-reload-interval=0s"}, []string{"--tls-key is empty", "--tls-reload-interval=0s"}},
		{[]string{"--release-delay=2m"}, []string{"--release-delay=2m0s", "0s to 1m"}},
		{[]string{"--max-held=0"}, []string{"--max-held=0", "1 to 100000"}},
		{[]string{"--retry-after=500ms"}, []string{"--retry-after=500ms", "1s to 1h"}},
		// Every error at once.
		{[]string{"--max-targets=0", "--drain-timeout=-1s", "--log-format=xml"},
			[]string{"--max-targets=0", "--drain-timeout=-1s", `--log-format="xml"`}},
	}
	for _, c := range cases {
		err := run(context.Background(), c.args)
		if err == nil {
			t.Errorf("%v: accepted", c.args)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q lacks %q", c.args, err, w)
			}
		}
	}
	o := DefaultOptions()
	o.ReplicaName = "x"
	if err := o.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	// A larger memory limit carries larger bounds.
	o.MaxTargets, o.MemoryLimit = 5000, "512Mi"
	if err := o.Validate(); err != nil {
		t.Fatalf("--max-targets=5000 with --memory-limit=512Mi: %v", err)
	}
	o = DefaultOptions()
	o.ReplicaName = "x"
	if o.CallerIdentity != identityXFCC {
		t.Fatalf("the default must authenticate callers, got --caller-identity=%s", o.CallerIdentity)
	}
	for _, addr := range []string{"127.0.0.1:9002", "[::1]:9002", "localhost:9002"} {
		o.CallerIdentity, o.GRPCListen = identityTrustAttributes, addr
		if err := o.Validate(); err != nil {
			t.Fatalf("trust-attributes on %s: %v", addr, err)
		}
	}
}

// running is run() in this test process, with its addresses.
type running struct {
	grpc, admin string
	cancel      context.CancelFunc // SIGTERM
	done        chan error
}

// startRun runs run() with args plus loopback listeners and waits until
// /readyz answers 200. The test ends it (and checks it returned nil) unless
// it already did.
func startRun(t *testing.T, args ...string) *running {
	t.Helper()
	r := &running{grpc: testutil.FreeAddr(t), admin: testutil.FreeAddr(t), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	args = append([]string{"--grpc-listen", r.grpc, "--admin-listen", r.admin, "--replica-name", "test-0", "--log-level", "error",
		"--drain-delay", "0s", "--drain-timeout", "1s"}, args...)
	go func() { r.done <- run(ctx, args) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("run did not return after its context ended")
		}
	})
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get("http://" + r.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 20s: %v", err)
		}
		select {
		case err := <-r.done:
			r.done <- nil // for the clean-up
			t.Fatalf("run returned early: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// snapshot reads /v1/snapshot.
func (r *running) snapshot(t *testing.T) extproc.Snapshot {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + r.admin + "/v1/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s extproc.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRunServesAndDrains runs the binary's run(): it serves the gRPC health
// service and the admin endpoints, and returns cleanly when its context ends.
func TestRunServesAndDrains(t *testing.T) {
	r := startRun(t, "--drain-timeout", "1s")
	s := r.snapshot(t)
	if s.Version != extproc.SnapshotVersion || s.Replica != "test-0" || len(s.BootID) != 16 {
		t.Fatalf("snapshot %+v", s)
	}
	conn, err := grpc.NewClient(r.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	h, err := healthpb.NewHealthClient(conn).Check(hctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC health: %v, %v", h, err)
	}
}

const extprocID = "spiffe://cluster.local/ns/inflight-system/sa/inflight-extproc"

// countsOf sums started requests per namespace/workload/service/reason.
func countsOf(s extproc.Snapshot) map[string]uint64 {
	out := map[string]uint64{}
	for _, r := range s.Targets {
		out[r.Namespace+"/"+r.Workload+"/"+r.Service+"/"+r.Reason] += r.Started
	}
	return out
}

// TestRunMTLS: with --caller-identity=mtls the binary terminates mTLS with
// istio-agent's files and counts a claim only for the caller's namespace,
// or for a listed gateway's Services.
func TestRunMTLS(t *testing.T) {
	ca := testutil.NewMeshCA(t, "mesh")
	sc, sk, _ := ca.Issue(t, extprocID)
	dir := t.TempDir()
	files := map[string][]byte{"cert-chain.pem": sc, "key.pem": sk, "root-cert.pem": ca.PEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	gw := "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
	r := startRun(t, "--caller-identity", "mtls", "--tls-cert-chain", filepath.Join(dir, "cert-chain.pem"),
		"--tls-key", filepath.Join(dir, "key.pem"), "--tls-root-cert", filepath.Join(dir, "root-cert.pem"),
		"--gateway-identity", gw+"=models")
	send := func(id string, attrs map[string]any) {
		_, _, cert := ca.Issue(t, id)
		c, err := envoy.NewClient(envoy.Config{Profile: envoy.Control, Version: envoy.Envoy137, MessageTimeout: 5 * time.Second,
			TLS: testutil.ProxyTLS(ca.Pool(), &cert, extprocID)}, r.grpc)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if res := c.Do(context.Background(), &envoy.Request{Attributes: attrs}); res.FailOpen {
			t.Fatalf("%s: fail-open: %v", id, res.ProcessorErr)
		}
		c.Wait()
	}
	pod := envoy.InboundAttributes("models", "vllm", "vllm", "vllm-7d9f8b6c5d-x2k9p", "10.0.0.7", 8000)
	send("spiffe://cluster.local/ns/models/sa/vllm", pod)
	send("spiffe://cluster.local/ns/attacker/sa/default", pod)
	send(gw, envoy.GatewayAttributes("models", "vllm", 8000))
	send(gw, envoy.GatewayAttributes("other", "llm", 8000))
	got := countsOf(r.snapshot(t))
	want := map[string]uint64{"models/vllm/vllm/": 1, "models//vllm/": 1, "///unauthorized": 2}
	if len(got) != len(want) {
		t.Fatalf("counts %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("counts %v, want %v", got, want)
		}
	}
}

// TestMaxConnections: beyond --max-connections a new connection is closed
// at once; once one closes, a new one is served.
func TestMaxConnections(t *testing.T) {
	r := startRun(t, "--max-connections", "2", "--caller-identity", "trust-attributes")
	check := func() (*grpc.ClientConn, error) {
		cc, err := grpc.NewClient(r.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return cc, err
	}
	a, err := check()
	if err != nil {
		t.Fatal(err)
	}
	b, err := check()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, err := check()
	c.Close()
	if err == nil {
		t.Fatal("a third connection was served with --max-connections 2")
	}
	a.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		d, err := check()
		d.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one closed: %v", err)
		}
	}
}

// TestSetMemoryLimit: the Go heap limit becomes 7/8 of --memory-limit,
// unless it is already lower.
func TestSetMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(prev)
	o := DefaultOptions()
	o.MemoryLimit = "256Mi"
	debug.SetMemoryLimit(math.MaxInt64)
	setMemoryLimit(o, zap.NewNop())
	if got := debug.SetMemoryLimit(-1); got != 224<<20 {
		t.Fatalf("unset GOMEMLIMIT: limit %d, want 224 MiB", got)
	}
	debug.SetMemoryLimit(256 << 20) // GOMEMLIMIT at 100 % of the container's
	setMemoryLimit(o, zap.NewNop())
	if got := debug.SetMemoryLimit(-1); got != 224<<20 {
		t.Fatalf("GOMEMLIMIT at the container limit: %d, want lowered to 224 MiB", got)
	}
	debug.SetMemoryLimit(100 << 20)
	setMemoryLimit(o, zap.NewNop())
	if got := debug.SetMemoryLimit(-1); got != 100<<20 {
		t.Fatalf("a lower GOMEMLIMIT must be kept: %d", got)
	}
}

// TestRunGates: the binary takes PUT /v1/gates (400 naming the field for a
// bad document), holds a gateway request for a Service at zero (counted in
// flight and held at once), and on SIGTERM keeps it held through the drain
// and releases it before the cut: the request goes on, answered.
func TestRunGates(t *testing.T) {
	r := startRun(t, "--caller-identity", "trust-attributes", "--release-delay", "0s", "--drain-timeout", "1s")
	ctx := context.Background()
	doc := &extproc.GatesDocument{Version: extproc.GatesVersion, Controller: "test", ExpiresInSeconds: 60, Share: 1,
		Gates: []extproc.Gate{{Namespace: "models", Service: "llama", ReadyEndpoints: 0, Hold: true, HoldTimeoutSeconds: 3600, ReleasePerEndpoint: 1}}}
	if err := extproc.PutGates(ctx, http.DefaultClient, "http://"+r.admin, doc); err == nil || !strings.Contains(err.Error(), "400") ||
		!strings.Contains(err.Error(), "gates[0].hold_timeout_seconds=3600: want 1 to 3540") {
		t.Fatalf("hold_timeout_seconds 3600: %v, want 400 naming the field", err)
	}
	doc.Gates[0].HoldTimeoutSeconds = 300
	if err := extproc.PutGates(ctx, http.DefaultClient, "http://"+r.admin, doc); err != nil {
		t.Fatal(err)
	}
	c, err := envoy.NewClient(envoy.Config{Profile: envoy.Control, Version: envoy.Envoy137}, r.grpc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan *envoy.Result, 1)
	go func() {
		res := c.Do(ctx, &envoy.Request{Attributes: envoy.GatewayAttributes("models", "llama", 8000)})
		res.Wait()
		done <- res
	}()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s := r.snapshot(t)
		if len(s.Targets) == 1 && s.Targets[0].Held == 1 {
			if rec := s.Targets[0]; rec.InFlight != 1 || rec.Source != "edge" || rec.Service != "llama" {
				t.Fatalf("held record %+v", rec)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not held within 20 s: %+v", s.Targets)
		}
	}
	r.cancel() // SIGTERM
	select {
	case res := <-done:
		if res.TimeoutOverrides != 1 || res.Outcome != envoy.Completed || res.Status != 200 {
			t.Fatalf("held through the drain: %+v", res)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the held request was not released by the drain")
	}
}

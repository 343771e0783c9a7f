package keda

import (
	"context"
	"fmt"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/inflight-dev/inflight/scaling/collect"
)

// serve starts s on a 127.0.0.1 port and returns a client over a real
// connection.
func serve(t *testing.T, s *Server) pb.ExternalScalerClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterExternalScalerServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return pb.NewExternalScalerClient(cc)
}

var (
	vllm = collect.Workload{Namespace: "models", Name: "vllm"}
	so   = &pb.ScaledObjectRef{Name: "vllm-so", Namespace: "models", ScalerMetadata: map[string]string{KeyWorkload: "vllm", KeyTarget: "4"}}
)

func result(t0 time.Time, ws map[collect.Workload]collect.Sample) collect.Result {
	return collect.Result{Time: t0, Workloads: ws}
}

func TestMetricsFromTheLeadersSums(t *testing.T) {
	now := time.Unix(1000, 0)
	s := New(func() time.Time { return now })
	c := serve(t, s)
	ctx := context.Background()

	if _, err := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: so}); status.Code(err) != codes.Unavailable {
		t.Fatalf("before the first tick: %v, want Unavailable", err)
	}
	spec, err := c.GetMetricSpec(ctx, so)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.MetricSpecs) != 1 || spec.MetricSpecs[0].MetricName != "inflight-models-vllm" || spec.MetricSpecs[0].TargetSizeFloat != 4 || spec.MetricSpecs[0].TargetSize != 4 {
		t.Errorf("metric spec %v", spec)
	}

	t0 := now
	s.Update(result(t0, map[collect.Workload]collect.Sample{vllm: {Concurrency: 13.5, InFlight: 12}}))
	m, err := c.GetMetrics(ctx, &pb.GetMetricsRequest{ScaledObjectRef: so, MetricName: "inflight-models-vllm"})
	if err != nil {
		t.Fatal(err)
	}
	if v := m.MetricValues[0]; v.MetricName != "inflight-models-vllm" || v.MetricValueFloat != 13.5 || v.MetricValue != 14 {
		t.Errorf("metric value %v, want 13.5 (14 rounded up)", v)
	}
	if a, err := c.IsActive(ctx, so); err != nil || !a.Result {
		t.Errorf("IsActive %v %v, want true", a, err)
	}

	// Another workload, or namespace, is not this one's demand.
	other := &pb.ScaledObjectRef{Name: "x", Namespace: "other", ScalerMetadata: map[string]string{KeyWorkload: "vllm", KeyTarget: "4"}}
	if a, err := c.IsActive(ctx, other); err != nil || a.Result {
		t.Errorf("IsActive for other/vllm %v %v, want false", a, err)
	}
	explicit := &pb.ScaledObjectRef{Name: "x", Namespace: "keda", ScalerMetadata: map[string]string{KeyWorkload: "vllm", KeyNamespace: "models", KeyTarget: "4", KeyActivation: "20"}}
	if a, err := c.IsActive(ctx, explicit); err != nil || a.Result {
		t.Errorf("IsActive with activation 20 at 13.5 %v %v, want false", a, err)
	}

	// A replica whose ticks stop (it no longer leads) answers Unavailable
	// once the data is older than MaxAge.
	now = now.Add(MaxAge)
	if _, err := c.IsActive(ctx, so); err != nil {
		t.Errorf("data MaxAge old: %v, want an answer", err)
	}
	now = now.Add(time.Millisecond)
	if _, err := c.IsActive(ctx, so); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "does not lead") {
		t.Errorf("stale data: %v, want Unavailable", err)
	}
}

func TestStreamIsActivePushesChanges(t *testing.T) {
	s := New(nil)
	c := serve(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Unix(1000, 0)
	s.Update(result(t0, nil))
	st, err := c.StreamIsActive(ctx, so)
	if err != nil {
		t.Fatal(err)
	}
	recv := func(want bool) {
		t.Helper()
		m, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.Result != want {
			t.Fatalf("stream sent %v, want %v", m.Result, want)
		}
	}
	recv(false) // the current state, at once
	// The same state again sends nothing; the wake-up is sent on the tick
	// that sees it (a request in flight now, before the mean moves).
	s.Update(result(t0.Add(time.Second), nil))
	s.Update(result(t0.Add(2*time.Second), map[collect.Workload]collect.Sample{vllm: {Concurrency: 0, InFlight: 1}}))
	recv(true)
	s.Update(result(t0.Add(3*time.Second), map[collect.Workload]collect.Sample{vllm: {Concurrency: 0.5, InFlight: 1}}))
	s.Update(result(t0.Add(4*time.Second), nil))
	recv(false)
}

func TestMetadataErrorsNameTheKey(t *testing.T) {
	c := serve(t, New(nil))
	for name, c2 := range map[string]struct {
		md   map[string]string
		want []string
	}{
		"missing":         {map[string]string{}, []string{"workload is missing", "targetInFlight is missing"}},
		"bad target":      {map[string]string{KeyWorkload: "vllm", KeyTarget: "0"}, []string{`targetInFlight="0"`}},
		"nan":             {map[string]string{KeyWorkload: "vllm", KeyTarget: "NaN"}, []string{`targetInFlight="NaN"`}},
		"huge":            {map[string]string{KeyWorkload: "vllm", KeyTarget: "1e9"}, []string{`targetInFlight="1e9"`}},
		"bad activation":  {map[string]string{KeyWorkload: "vllm", KeyTarget: "2", KeyActivation: "-1"}, []string{`activationInFlight="-1"`}},
		"bad name":        {map[string]string{KeyWorkload: "Not_A_Name", KeyTarget: "2"}, []string{`workload="Not_A_Name"`}},
		"bad namespace":   {map[string]string{KeyWorkload: "vllm", KeyTarget: "2", KeyNamespace: "A B"}, []string{`namespace="A B"`}},
		"every error too": {map[string]string{KeyTarget: "x", KeyActivation: "y"}, []string{"workload is missing", `targetInFlight="x"`, `activationInFlight="y"`}},
	} {
		_, err := c.GetMetricSpec(context.Background(), &pb.ScaledObjectRef{Name: "so", Namespace: "models", ScalerMetadata: c2.md})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
			continue
		}
		for _, w := range c2.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v lacks %q", name, err, w)
			}
		}
	}
}

// The numbers at the edges of what targetInFlight ((0, MaxTarget],
// required) and activationInFlight ([0, MaxTarget], default 0) accept:
// strconv.ParseFloat's syntax, no NaN or infinity, nothing out of range.
func TestMetadataNumbers(t *testing.T) {
	const absent = "<absent>"
	negZero := math.Copysign(0, -1)
	for _, c := range []struct {
		target, activation string
		ok                 bool
		wantT, wantA       float64
		wantErr            string // with !ok
	}{
		{"4", absent, true, 4, 0, ""},
		{"1e6", absent, true, 1e6, 0, ""},
		{"1e-300", absent, true, 1e-300, 0, ""},
		{"0x1p2", absent, true, 4, 0, ""},
		{"4.", absent, true, 4, 0, ""},
		{".5", absent, true, 0.5, 0, ""},
		{"+2", absent, true, 2, 0, ""},
		{absent, absent, false, 0, 0, "targetInFlight is missing: want requests in flight per replica, a number in (0, 1e+06]"},
		{"0", absent, false, 0, 0, `targetInFlight="0": want a number in (0, 1e+06]`},
		{"-0", absent, false, 0, 0, `targetInFlight="-0": want a number in (0, 1e+06]`},
		{"1e-400", absent, false, 0, 0, `targetInFlight="1e-400"`}, // underflows to 0
		{"-1", absent, false, 0, 0, `targetInFlight="-1"`},
		{"1000000.1", absent, false, 0, 0, `targetInFlight="1000000.1"`},
		{"Inf", absent, false, 0, 0, `targetInFlight="Inf"`},
		{"-Inf", absent, false, 0, 0, `targetInFlight="-Inf"`},
		{"1e400", absent, false, 0, 0, `targetInFlight="1e400"`}, // out of float64's range
		{"nan", absent, false, 0, 0, `targetInFlight="nan"`},
		{"", absent, false, 0, 0, `targetInFlight="": want a number in (0, 1e+06]`},
		{" 4", absent, false, 0, 0, `targetInFlight=" 4"`},
		{"4 ", absent, false, 0, 0, `targetInFlight="4 "`},
		{"1_000", absent, true, 1000, 0, ""}, // Go's digit separators
		{"1__000", absent, false, 0, 0, `targetInFlight="1__000"`},
		{"4", "0", true, 4, 0, ""},
		{"4", "-0", true, 4, negZero, ""},
		{"4", "1e-400", true, 4, 0, ""},
		{"4", "2.5", true, 4, 2.5, ""},
		{"4", "1e6", true, 4, 1e6, ""},
		{"4", "-1e-300", false, 0, 0, `activationInFlight="-1e-300": want a number in [0, 1e+06]`},
		{"4", "1000001", false, 0, 0, `activationInFlight="1000001"`},
		{"4", "Inf", false, 0, 0, `activationInFlight="Inf"`},
		{"4", "NaN", false, 0, 0, `activationInFlight="NaN"`},
		{"4", "", false, 0, 0, `activationInFlight="": want a number in [0, 1e+06]`},
		{"0", "-1", false, 0, 0, `targetInFlight="0": want a number in (0, 1e+06]; activationInFlight="-1": want a number in [0, 1e+06]`},
	} {
		md := map[string]string{KeyWorkload: "vllm"}
		if c.target != absent {
			md[KeyTarget] = c.target
		}
		if c.activation != absent {
			md[KeyActivation] = c.activation
		}
		r, err := parseRef(&pb.ScaledObjectRef{Name: "so", Namespace: "models", ScalerMetadata: md})
		name := fmt.Sprintf("target %q, activation %q", c.target, c.activation)
		switch {
		case c.ok && err != nil:
			t.Errorf("%s: %v, want accepted", name, err)
		case c.ok && (math.Float64bits(r.target) != math.Float64bits(c.wantT) || math.Float64bits(r.activation) != math.Float64bits(c.wantA)):
			t.Errorf("%s: target %v activation %v, want %v %v", name, r.target, r.activation, c.wantT, c.wantA)
		case !c.ok && (status.Code(err) != codes.InvalidArgument || !strings.Contains(strings.ReplaceAll(err.Error(), "\n", "; "), c.wantErr)):
			t.Errorf("%s: %v, want InvalidArgument with %q", name, err, c.wantErr)
		}
	}
}

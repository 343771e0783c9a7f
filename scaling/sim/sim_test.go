package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/inflight-dev/inflight/scaling"
)

func TestLoadCSV(t *testing.T) {
	tr, err := LoadCSV("t", strings.NewReader("TIMESTAMP,ContextTokens,GeneratedTokens\n"+
		"2023-11-16 18:15:47.5000000,100,10\n2023-11-16 18:15:46.5000000,50,5\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Request{{0, 50, 5}, {1, 100, 10}}
	if !reflect.DeepEqual(tr.Requests, want) || tr.Duration != 2 {
		t.Fatalf("got %+v duration %v", tr.Requests, tr.Duration)
	}
	for _, bad := range []string{
		"",
		"A,B\n",
		"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1\n",
		"TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n",
		"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,-1,2\n",
	} {
		if _, err := LoadCSV("bad", strings.NewReader(bad)); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

// fixed is a trace of n identical requests, one per interval seconds.
func fixed(n int, interval float64, gen int) Trace {
	tr := Trace{Name: "fixed", Duration: float64(n) * interval}
	for i := 0; i < n; i++ {
		tr.Requests = append(tr.Requests, Request{Arrival: float64(i) * interval, Context: 0, Generated: gen})
	}
	return tr
}

func TestEngineStaticAccounting(t *testing.T) {
	m := Model{Batch: 2, PrefillTPS: 1000, SecPerToken: 0.1, ColdStart: 10}
	// 1 request/s of 3 s: 3 in service at once; 2 replicas × 2 slots suffice.
	tr := fixed(600, 1, 30)
	r := Run(m, tr, static(2), 2)
	if s := Summarize(r); s.Requests != 600 {
		t.Fatalf("measured %d requests", s.Requests)
	}
	s := Summarize(r)
	if s.P99 != 0 || r.Served != 600 {
		t.Fatalf("ample capacity should never queue: p99 %v served %d", s.P99, r.Served)
	}
	if math.Abs(r.GPUHours-2*600/3600.0) > 1e-9 {
		t.Fatalf("GPU-hours %v, want %v", r.GPUHours, 2*600/3600.0)
	}
	// One replica (2 slots) for 3 in flight: a queue builds, waits grow.
	s1 := Summarize(Run(m, tr, static(1), 1))
	if s1.P99 < 100 || s1.Over2s < 0.5 {
		t.Fatalf("overload should queue: %+v", s1)
	}
}

// scripted asks for a fixed replica count from a given time.
type scripted struct {
	at   float64
	from int
	to   int
}

func (s scripted) Name() string      { return "scripted" }
func (s scripted) Period() float64   { return 1 }
func (s scripted) Observe(m Metrics) {}
func (s scripted) Decide(now float64, _ Metrics) int {
	if now >= s.at {
		return s.to
	}
	return s.from
}

func TestEngineColdStartAndCharging(t *testing.T) {
	m := Model{Batch: 1, PrefillTPS: 1000, SecPerToken: 1, ColdStart: 30}
	// Requests of 5 s every second need 5 replicas; start with 1, ask for 5 at t=1.
	tr := fixed(200, 1, 5)
	r := Run(m, tr, scripted{at: 1, from: 1, to: 5}, 1)
	if r.Ready[10] != 1 || r.Requested[10] != 5 || r.Ready[40] != 5 {
		t.Fatalf("cold start not modelled: ready@10 %d requested@10 %d ready@40 %d", r.Ready[10], r.Requested[10], r.Ready[40])
	}
	// GPU time counts from the request: 1 × 200 s + 4 × 199 s.
	if want := (200.0 + 4*199) / 3600; math.Abs(r.GPUHours-want) > 1e-9 {
		t.Fatalf("GPU-hours %v, want %v", r.GPUHours, want)
	}
	// Scale-down removes starting replicas first and charges them until then.
	r = Run(m, tr, scripted{at: 10, from: 3, to: 1}, 1)
	if want := (200.0 + 2*9) / 3600; math.Abs(r.GPUHours-want) > 1e-9 {
		t.Fatalf("GPU-hours %v, want %v", r.GPUHours, want)
	}
}

func TestDeterministic(t *testing.T) {
	shape := Shapes()[2] // flash crowd
	shape.Duration = 1500
	a := Synthesize(shape, nil, 7)
	b := Synthesize(shape, nil, 7)
	if !reflect.DeepEqual(a, b) || len(a.Requests) == 0 {
		t.Fatal("same seed, different traces")
	}
	if c := Synthesize(shape, nil, 8); reflect.DeepEqual(a.Requests, c.Requests) {
		t.Fatal("different seeds, same trace")
	}
	m := DefaultModel()
	env := NewEnv(m, a, 100)
	for _, sp := range Specs() {
		p1, i1 := sp.New(env, sp.Default(env))
		p2, i2 := sp.New(env, sp.Default(env))
		r1, r2 := Run(m, a, p1, i1), Run(m, a, p2, i2)
		if fmt.Sprint(r1) != fmt.Sprint(r2) { // %v prints NaN alike; DeepEqual does not
			t.Errorf("%s: two runs differ", sp.Name)
		}
	}
}

// TestPoliciesOnAStep checks each policy's defining behaviour on a step
// from 2 to 8 req/s at t = 600 s.
func TestPoliciesOnAStep(t *testing.T) {
	shape := Shapes()[0]
	shape.Duration = 1500
	shape.Make = func(*rand.Rand, bool) (func(float64) float64, []float64) {
		return func(t float64) float64 {
			if t >= 600 {
				return 8
			}
			return 2
		}, []float64{600}
	}
	tr := Synthesize(shape, nil, 3)
	m := DefaultModel()
	env := NewEnv(m, tr, 100)
	got := map[string]Summary{}
	for _, sp := range Specs() {
		p, init := sp.New(env, sp.Default(env))
		got[sp.Name] = Summarize(Run(m, tr, p, init))
	}
	// inflight reacts within seconds; Cortex's pipeline takes tens of seconds.
	if r := got["inflight"].StepReaction; !(r <= 10) {
		t.Errorf("inflight step reaction %v s, want ≤ 10 s", r)
	}
	if r := got["cortex"].StepReaction; !(r >= 20) {
		t.Errorf("cortex step reaction %v s, want ≥ 20 s (10 s ticks, 10 s lag, 60 s window)", r)
	}
	// The zero-wait clairvoyant never queues, and nothing that keeps every
	// wait at 0 is cheaper.
	cv := got["clairvoyant-zero"]
	if cv.P99 > 0.5 {
		t.Errorf("clairvoyant-zero p99 %v", cv.P99)
	}
	for name, s := range got {
		if name != "clairvoyant-zero" && s.GPUHours < cv.GPUHours && s.P99 <= cv.P99 {
			t.Errorf("%s beats the zero-wait clairvoyant on both cost and wait: %+v vs %+v", name, s, cv)
		}
	}
}

func TestAblationSpecsCoverEveryIngredient(t *testing.T) {
	specs := AblationSpecs()
	if len(specs) < len(scaling.Ingredients()) {
		t.Fatalf("%d ablations for %d ingredients", len(specs), len(scaling.Ingredients()))
	}
	for i, ing := range scaling.Ingredients() {
		if !strings.HasSuffix(specs[i].Name, ing.String()) {
			t.Errorf("ablation %d is %q, want one without %s", i, specs[i].Name, ing)
		}
	}
}

func TestExperimentReport(t *testing.T) {
	shape := Shapes()[3] // on-off
	shape.Duration = 1200
	tr := Synthesize(shape, nil, 1)
	x := Experiment{Model: DefaultModel(), Traces: []Trace{tr}, Specs: Specs(), MaxReplicas: 50, Parallel: 2}
	o := x.Run()
	var b strings.Builder
	if err := o.WriteMarkdown(&b, "cmd"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Cost-vs-wait frontier", "| inflight |", "| clairvoyant |", "on-off",
		"## GPU-hours at p99 queue wait ≤ 10 s", "## Targets of issue 11", "| ray-serve |", "| static |", "| clairvoyant-zero |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	var png strings.Builder
	if err := o.WriteFrontier(&png); err != nil || !strings.HasPrefix(png.String(), "\x89PNG") {
		t.Fatalf("frontier: %v", err)
	}
	png.Reset()
	if err := o.WriteTimelines(&png); err != nil || !strings.HasPrefix(png.String(), "\x89PNG") {
		t.Fatalf("timeline: %v", err)
	}
}

// A target whose policies or families were not part of the run is "not
// measured", never met by default; the scale-events target judges only
// when Cortex ran.
func TestTargetsNeedWhatTheyCompare(t *testing.T) {
	tr := Trace{Name: "conv", Kind: "conversation"}
	inflight := Summary{Policy: "inflight", Default: true, GPUHours: 5, P99: 2, ScaleEvents: 2}
	o := Outcome{Traces: []Trace{tr}, Runs: []map[string][]Summary{{"inflight": {inflight}}}}
	for _, tg := range o.Targets([]int{0}) {
		if tg.Measured || !strings.HasPrefix(tg.Figure, "needs ") {
			t.Errorf("%s: measured=%v figure %q with inflight alone", tg.Name, tg.Measured, tg.Figure)
		}
	}
	o.Runs[0]["cortex"] = []Summary{{Policy: "cortex", Default: true, GPUHours: 5, P99: 3, ScaleEvents: 1}}
	o.Runs[0]["static"] = []Summary{{Policy: "static", Knob: 6, GPUHours: 6, P99: 1}}
	targets := o.Targets([]int{0})
	got := func(prefix string) Target {
		for _, tg := range targets {
			if strings.HasPrefix(tg.Name, prefix) {
				return tg
			}
		}
		t.Fatalf("no target %q", prefix)
		return Target{}
	}
	if tg := got("scale events"); !tg.Measured || tg.Met || tg.Figure != "conv: 2 vs Cortex 1" {
		t.Errorf("scale events: %+v, want measured and missed (2 > 1)", tg)
	}
	if tg := got("≤ 5 %"); !tg.Measured || !tg.Met || tg.Figure != "conv -17 %" {
		t.Errorf("vs static: %+v, want measured and met (5 vs 6 GPU-h)", tg)
	}
	if tg := got("at most 15 %"); tg.Measured {
		t.Errorf("diurnal target measured without a diurnal trace: %+v", tg)
	}
}

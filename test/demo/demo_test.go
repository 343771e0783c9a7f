package main

import (
	"bytes"
	"context"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/sim"
	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/demo/fleet"
	"github.com/inflight-dev/inflight/test/demo/replay"
	"github.com/inflight-dev/inflight/test/demo/stack"
	"github.com/inflight-dev/inflight/test/testutil"
)

// Every speed the flag allows yields annotations the controller accepts,
// with the cold start compressed by the speed.
func TestAnnotationsValidAtEverySpeed(t *testing.T) {
	for _, sp := range []float64{1, 2, 10, 20, 37, 100, 200} {
		d := &demo{opt: DefaultOptions(t.TempDir()), model: sim.DefaultModel()}
		d.opt.Speed = sp
		ann := d.annotations()
		cfg, err := scaling.ParseAnnotations(ann)
		if err != nil {
			t.Errorf("speed %g: %v (annotations %v)", sp, err, ann)
			continue
		}
		if want := time.Duration(120 / sp * float64(time.Second)).Round(time.Millisecond); cfg.ColdStart != want {
			t.Errorf("speed %g: cold-start %v, want %v", sp, cfg.ColdStart, want)
		}
		if cfg.Target != d.opt.Target || cfg.MaxReplicas != int32(d.opt.MaxReplica) {
			t.Errorf("speed %g: %+v", sp, cfg)
		}
	}
}

func writeCSV(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("TIMESTAMP,ContextTokens,GeneratedTokens\n")
	start := time.Date(2023, 11, 16, 18, 15, 0, 0, time.UTC)
	for i := range 600 { // one request per second for ten minutes
		b.WriteString(start.Add(time.Duration(i)*time.Second).Format("2006-01-02 15:04:05.0000000") + ",1000,100\n")
	}
	p := filepath.Join(t.TempDir(), "t.csv")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadTrace(t *testing.T) {
	p := writeCSV(t)
	tr, err := loadTrace(p, "", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Requests) != 120 || tr.Duration != 120 {
		t.Errorf("first 2 minutes: %d requests, duration %g; want 120, 120", len(tr.Requests), tr.Duration)
	}
	tr, err = loadTrace(p, "step", 60)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tr.Name, "step") || len(tr.Requests) < 1000 {
		t.Errorf("step shape: %q with %d requests", tr.Name, len(tr.Requests))
	}
	if _, err := loadTrace(p, "tsunami", 60); err == nil || !strings.Contains(err.Error(), "flash-crowd") {
		t.Errorf("unknown shape: %v", err)
	}
	if _, err := loadTrace(filepath.Join(t.TempDir(), "absent.csv"), "", 60); err == nil || !strings.Contains(err.Error(), "absent.csv") {
		t.Errorf("missing trace: %v", err)
	}
}

func TestWritePNG(t *testing.T) {
	d := &demo{opt: DefaultOptions(t.TempDir()), trace: sim.Trace{Name: "t"}}
	if err := d.writePNG(filepath.Join(t.TempDir(), "x.png")); err == nil {
		t.Error("no samples: want an error")
	}
	for i := range 20 {
		d.samples = append(d.samples, sample{T: time.Duration(i) * 500 * time.Millisecond, MeshInFlight: float64(i * 3),
			Desired: 1 + i/4, Ready: i / 4})
	}
	p := filepath.Join(t.TempDir(), "out", "timeline.png")
	if err := d.writePNG(p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if r := img.Bounds(); r.Dx() < 600 || r.Dy() < 400 {
		t.Errorf("image %v too small", r)
	}
}

func TestValidate(t *testing.T) {
	o := DefaultOptions(t.TempDir())
	if err := o.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, mut := range []func(*Options){
		func(o *Options) { o.Speed = 0.5 },
		func(o *Options) { o.Initial = 0 },
		func(o *Options) { o.Initial = o.MaxReplica + 1 },
		func(o *Options) { o.Target = 0 },
		func(o *Options) { o.Envoy = "1.35" },
		func(o *Options) { o.Minutes = 0 },
		func(o *Options) { o.Tail = -time.Second },
		func(o *Options) { o.MinReplica = -1 },
		func(o *Options) { o.ReleaseDelay = 100 * time.Millisecond },
		func(o *Options) { o.MinReplica = o.MaxReplica + 1 },
	} {
		o := DefaultOptions(t.TempDir())
		mut(&o)
		if err := o.Validate(); err == nil {
			t.Errorf("%+v: want an error", o)
		}
	}
	// Every error at once.
	o = DefaultOptions(t.TempDir())
	o.Speed, o.Target, o.Envoy = 0, 0, "1.35"
	if err := o.Validate(); err == nil || len(strings.Split(err.Error(), "\n")) != 3 {
		t.Errorf("three bad flags: %v", err)
	}
}

func TestPrefixWriter(t *testing.T) {
	var b bytes.Buffer
	w := &prefixWriter{w: &b}
	for _, s := range []string{"a\nb", "c\n", "\nd\n"} {
		if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if got, want := b.String(), "    a\n    bc\n    \n    d\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// make demo's default trace loads from a directory with nothing beside it
// (a clone has no ../shared).
func TestDefaultTraceNeedsNothingOutsideTheRepository(t *testing.T) {
	t.Chdir(t.TempDir())
	tr, err := loadTrace(DefaultOptions(t.TempDir()).Trace, "", 60)
	if err != nil || len(tr.Requests) < 19000 {
		t.Fatalf("default trace: %d requests, %v", len(tr.Requests), err)
	}
}

// writeOnOffCSV writes a trace of bursts of one request per second (1,000
// context and 100 generated tokens: one replica serves it without a
// queue) of burst length, separated by gap-long idle periods.
func writeOnOffCSV(t *testing.T, bursts int, burst, gap time.Duration) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("TIMESTAMP,ContextTokens,GeneratedTokens\n")
	start := time.Date(2023, 11, 16, 18, 15, 0, 0, time.UTC)
	at := start
	for range bursts {
		for i := range int(burst / time.Second) {
			b.WriteString(at.Add(time.Duration(i)*time.Second).Format("2006-01-02 15:04:05.0000000") + ",1000,100\n")
		}
		at = at.Add(burst + gap)
	}
	p := filepath.Join(t.TempDir(), "on-off.csv")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestScaleToZero runs the gateway-only demo (-min-replicas 0) on three
// bursts with idle gaps: the policy learns the first gap, goes to zero in
// the second and the third burst's first requests are held by the
// gateway's extproc until the woken replica is ready, then answered. It
// checks that the model reached 0, woke with held requests that were all
// answered, that no request got a 5xx, and that no count leaked.
func TestScaleToZero(t *testing.T) {
	testutil.SkipUnlessLong(t)
	if dir, err := controlplane.BinDir(); err != nil || !exists(filepath.Join(dir, "kube-apiserver")) || !exists(filepath.Join(dir, "etcd")) {
		if controlplane.Required() {
			t.Fatalf("no kube-apiserver/etcd in %q (%v)", dir, err)
		}
		t.Skipf("no kube-apiserver/etcd in %q (%v)", dir, err)
	}
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	opt := DefaultOptions(root)
	opt.Bin, opt.Dir, opt.PNG = t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "timeline.png")
	var log bytes.Buffer
	if _, err := stack.BuildInto(ctx, root, opt.Bin, &log, false); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	opt.NoBuild, opt.MinReplica, opt.Initial = true, 0, 1
	opt.Trace = writeOnOffCSV(t, 3, time.Minute, 8*time.Minute)
	if err := opt.Validate(); err != nil {
		t.Fatal(err)
	}
	tr, err := loadTrace(opt.Trace, "", opt.Minutes)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	d := &demo{opt: opt, root: root, out: &out, errw: &out, trace: tr, started: time.Now()}
	err = d.run(ctx)
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatal(err) // a 5xx, no wake with held requests, or a leaked count
	}
	z := d.zero
	if z == nil {
		t.Fatal("no gateway summary")
	}
	if z.ToZero < 1 || z.Wakes < 1 {
		t.Errorf("to zero %d, wakes %d: want both ≥ 1", z.ToZero, z.Wakes)
	}
	if z.Held == 0 || len(z.HeldWaits) != z.Held {
		t.Errorf("%d held requests, %d released: want > 0, all", z.Held, len(z.HeldWaits))
	}
	if z.Err5x != 0 || z.HoldTimeouts != 0 || z.NoHealthy != 0 {
		t.Errorf("5xx %d (hold timeouts %d, no healthy upstream %d): want 0", z.Err5x, z.HoldTimeouts, z.NoHealthy)
	}
	if st := d.rp.Stats(); st.Outcomes["completed"] != len(tr.Requests) {
		t.Errorf("outcomes %v: want all %d completed", st.Outcomes, len(tr.Requests))
	}
	// Reported, not asserted (wall-clock lags on a shared machine are
	// multiplied by -speed): the first held request per wake against
	// cold start + 2 s.
	t.Logf("first held request per wake answered after %v s (demo clock; target ≤ %.0f s)", z.FirstHeld, z.Bound)
}

func exists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// The simulator's same-trace figures use the Deployment's configuration
// uncompressed, min-replicas included (which of the two costs less is the
// policy's outcome, not this test's).
func TestSimGPUHours(t *testing.T) {
	d := &demo{opt: DefaultOptions(t.TempDir()), model: sim.DefaultModel()}
	d.opt.Shape, d.opt.MinReplica = "on-off", 0
	tr, err := loadTrace(d.opt.Trace, d.opt.Shape, d.opt.Minutes)
	if err != nil {
		t.Fatal(err)
	}
	d.trace = tr
	h0, err := d.simGPUHours(0)
	if err != nil {
		t.Fatal(err)
	}
	h1, err := d.simGPUHours(1)
	if err != nil {
		t.Fatal(err)
	}
	if !(h0 > 0 && h1 > 0 && h0 != h1) {
		t.Errorf("GPU-hours min 0 %.2f, min 1 %.2f: want both > 0 and different", h0, h1)
	}
	t.Logf("simulator, on-off hour: min 0 %.2f, min 1 %.2f GPU-hours", h0, h1)
}

// A wake's first held request is one that arrived when no earlier held
// request was still waiting; waits and firsts are in demo seconds.
func TestZeroFigures(t *testing.T) {
	d := &demo{opt: DefaultOptions(t.TempDir()), model: sim.DefaultModel()}
	d.opt.MinReplica = 0
	t0 := time.Now()
	s := func(x float64) time.Time { return t0.Add(time.Duration(x / d.opt.Speed * float64(time.Second))) }
	st := replay.Stats{Status: map[int]int{200: 5, 503: 1}, HoldTimeouts: 1, Held: []replay.Held{
		{Arrival: s(0), Routed: s(121), Answered: s(121.5), Status: 200},
		{Arrival: s(10), Routed: s(122), Answered: s(123), Status: 200},
		{Arrival: s(500), Routed: s(620), Answered: s(621), Status: 200},
		{Arrival: s(501), Status: 503}, // a hold timeout
	}}
	fs := fleetSample(10, 0.5, 2, 2)
	t1 := s(1)
	z := d.zeroFigures(fs, st, []fleet.Wake{{Seen: t1, Ready: s(120.5), Published: s(120.6)}})
	if !strings.Contains(z.Steps[0], "scale-up read 1.0, pod ready 120.5, in the EndpointSlice 120.6, released 121.0, answered 121.5") {
		t.Errorf("steps %q", z.Steps)
	}
	if len(z.FirstHeld) != 2 || math.Abs(z.FirstHeld[0]-121.5) > 1e-6 || math.Abs(z.FirstHeld[1]-121) > 1e-6 {
		t.Errorf("first held %v, want [121.5 121]", z.FirstHeld)
	}
	if len(z.HeldWaits) != 3 || math.Abs(z.HeldWaits[2]-121) > 1e-6 {
		t.Errorf("held waits %v, want 3 released, max 121", z.HeldWaits)
	}
	if z.Err5x != 1 || z.Held != 4 || z.MinOneGPUHours != 10.5 || z.Bound != d.model.ColdStart+2 {
		t.Errorf("%+v", z)
	}
}

func fleetSample(gpu, zero float64, toZero, wakes int) fleet.Sample {
	return fleet.Sample{GPUHours: gpu, ZeroHours: zero, ToZero: toZero, Wakes: wakes}
}

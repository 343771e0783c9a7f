package sim

import (
	"math"
	"testing"
)

// recorder observes what a policy is shown and asks for a fixed count.
type recorder struct {
	want  int
	times []float64
	ready []int
}

func (r *recorder) Name() string    { return "recorder" }
func (r *recorder) Period() float64 { return 1 }
func (r *recorder) Observe(m Metrics) {
	r.times = append(r.times, m.Time)
	r.ready = append(r.ready, m.Ready)
}
func (r *recorder) Decide(float64, Metrics) int { return r.want }

// TestWarmup: the warm-up is observed but neither measured nor charged;
// its replicas follow its demand; the trace starts with the shared count.
func TestWarmup(t *testing.T) {
	m := Model{Batch: 1, PrefillTPS: 1000, SecPerToken: 1, ColdStart: 30}
	warm := fixed(1000, 1, 3) // 3 in service: the warm-up provisions 3
	tr := fixed(600, 1, 3)
	p := &recorder{want: 3}
	r := RunWarm(m, warm, tr, p, 3)
	if p.times[0] != -999 || p.times[len(p.times)-1] < 600 {
		t.Fatalf("observed from %v to %v, want from the warm-up's first second", p.times[0], p.times[len(p.times)-1])
	}
	if len(r.Waits) != 600 {
		t.Fatalf("%d waits measured, want the trace's 600 only", len(r.Waits))
	}
	if want := 3 * 600.0 / 3600; math.Abs(r.GPUHours-want) > 1e-6 {
		t.Fatalf("GPU-hours %v, want %v: the warm-up is not charged", r.GPUHours, want)
	}
	if w := Summarize(r); w.P99 > 0 || r.ScaleEvents != 0 {
		t.Fatalf("3 replicas for 3 in service: %+v", w)
	}
	// The warm-up provisions its own demand, so a policy that asks for 1
	// during it changes nothing, and a start count of 1 then queues.
	p = &recorder{want: 1}
	r = RunWarm(m, warm, tr, p, 1)
	if p.ready[500] != 3 {
		t.Fatalf("ready during the warm-up %d, want 3 (its demand)", p.ready[500])
	}
	if Summarize(r).P99 < 100 {
		t.Fatalf("1 replica for 3 in service should queue")
	}
}

// TestQueuePerReplica: with a queue per replica, a request waits behind
// its own replica's work even when another replica frees up first.
func TestQueuePerReplica(t *testing.T) {
	m := Model{Batch: 1, PrefillTPS: 1e9, SecPerToken: 1, ColdStart: 10}
	tr := Trace{Name: "t", Duration: 100, Requests: []Request{
		{Arrival: 0, Generated: 10}, {Arrival: 0.1, Generated: 1}, {Arrival: 0.2, Generated: 1}, {Arrival: 0.3, Generated: 1}}}
	shared := Run(m, tr, static(2), 2)
	m.QueuePerReplica = true
	own := Run(m, tr, static(2), 2)
	// Shared: the 3rd and 4th start on replica 2 at 1.1 and 2.1.
	if w := shared.Waits; math.Abs(w[2]-0.9) > 1e-9 || math.Abs(w[3]-1.8) > 1e-9 {
		t.Fatalf("shared queue waits %v", w)
	}
	// Own queues (join the shortest): the 3rd joins replica 1 (1 running, 0
	// queued ties with replica 2's 1 running) and waits for the 10 s request.
	if w := own.Waits; !(w[2] > 9 || w[3] > 9) {
		t.Fatalf("per-replica queue waits %v, want one request stuck behind the long one", w)
	}
}

// TestSlowdown: with Slowdown 1, two requests sharing a batch of 2 each
// take twice as long.
func TestSlowdown(t *testing.T) {
	m := Model{Batch: 2, PrefillTPS: 1e9, SecPerToken: 1, ColdStart: 10}
	tr := Trace{Name: "t", Duration: 100, Requests: []Request{{Arrival: 0, Generated: 10}, {Arrival: 0, Generated: 10}, {Arrival: 50, Generated: 10}}}
	var ends []float64
	p := &probe{}
	Run(m, tr, p, 1)
	ends = append(ends, p.durSum...)
	m.Slowdown = 1
	p2 := &probe{}
	Run(m, tr, p2, 1)
	// Together: 10 s each without slowdown, 20 s with; alone: 10 s either way.
	if math.Abs(p.total()-30) > 1e-6 || math.Abs(p2.total()-50) > 1e-6 {
		t.Fatalf("durations %v (sum %v) and %v (sum %v), want 30 and 50", ends, p.total(), p2.durSum, p2.total())
	}
}

type probe struct{ durSum []float64 }

func (p *probe) Name() string                { return "probe" }
func (p *probe) Period() float64             { return 1 }
func (p *probe) Observe(m Metrics)           { p.durSum = append(p.durSum, m.DurationSum) }
func (p *probe) Decide(float64, Metrics) int { return 1 }
func (p *probe) total() float64 {
	s := 0.0
	for _, v := range p.durSum {
		s += v
	}
	return s
}

// TestCPUModel: one ready replica running one request for 10 s uses its
// idle share, the engine loop, the prompt's tokenization and the tokens'
// streaming; the CPU does not see requests waiting in the queue.
func TestCPUModel(t *testing.T) {
	m := Model{Batch: 1, PrefillTPS: 1e9, SecPerToken: 1, ColdStart: 10}
	one := Trace{Name: "t", Duration: 20, Requests: []Request{{Arrival: 0, Context: 1000, Generated: 10}}}
	c := &cpu{}
	Run(m, one, c, 1)
	want := CPUIdle*20 + CPULoop*10 + 1000/float64(TokenizeTPS) + 10*CPUPerToken
	if math.Abs(c.sum-want) > 1e-5 {
		t.Fatalf("CPU %v core-s, want %v", c.sum, want)
	}
	// Five more waiting behind it: the same CPU over the first 10 s.
	queued := one
	for i := 0; i < 5; i++ {
		queued.Requests = append(queued.Requests, Request{Arrival: 0.5, Generated: 10})
	}
	queued.Duration = 10
	c2 := &cpu{}
	Run(m, queued, c2, 1)
	if math.Abs(c2.first10-c.first10) > 1e-6 {
		t.Fatalf("CPU over the first 10 s: %v with a queue, %v without", c2.first10, c.first10)
	}
}

type cpu struct{ sum, first10 float64 }

func (c *cpu) Name() string    { return "cpu" }
func (c *cpu) Period() float64 { return 1 }
func (c *cpu) Observe(m Metrics) {
	c.sum += m.CPUSeconds
	if m.Time <= 10 {
		c.first10 += m.CPUSeconds
	}
}
func (c *cpu) Decide(float64, Metrics) int { return 1 }

// TestZeroWaitClairvoyant: it keeps every wait at 0 and is no dearer than
// static provisioning at the peak, the cheapest zero-wait static count.
func TestZeroWaitClairvoyant(t *testing.T) {
	for _, s := range Shapes() {
		s.Duration = 1800
		tr := Synthesize(s, nil, 5)
		m := DefaultModel()
		env := NewEnv(m, tr, 200)
		z := newZeroWait(env)
		r := Summarize(Run(m, tr, z, z.at(0)))
		peak := env.PeakNeed()
		st := Summarize(Run(m, tr, static(peak), peak))
		if r.P99 > 0.01 || r.GPUHours > st.GPUHours+1e-9 {
			t.Errorf("%s: zero-wait clairvoyant %+v vs static %d %+v", s.Name, r, peak, st)
		}
	}
}

// TestStaticSweepsEveryCount: static runs every count from the mean demand
// to the peak need.
func TestStaticSweepsEveryCount(t *testing.T) {
	s := Shapes()[0]
	tr := Synthesize(s, nil, 1)
	env := NewEnv(DefaultModel(), tr, 200)
	var sp Spec
	for _, x := range Specs() {
		if x.Name == "static" {
			sp = x
		}
	}
	g := sp.Knobs(env, DefaultGrid)
	if g[0] > 3 || g[len(g)-1] != float64(env.PeakNeed()) {
		t.Fatalf("static grid %v, peak need %d", g, env.PeakNeed())
	}
	for i := 1; i < len(g); i++ {
		if g[i] != g[i-1]+1 {
			t.Fatalf("static grid %v skips a count", g)
		}
	}
}

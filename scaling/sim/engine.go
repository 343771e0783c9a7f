package sim

import (
	"container/heap"
	"fmt"
	"math"
	"sort"
)

// Model is the GPU replica model every policy is judged on.
//
// A replica serves up to Batch requests at once (continuous batching); a
// request's service time is its prefill at PrefillTPS plus its generated
// tokens at SecPerToken each, independent of how full the batch is (the
// decode step of a batched LLM server is memory-bound, so its time per
// token moves little with the batch size up to the limit). A request goes
// to the ready replica with the fewest running requests if one has a free
// slot, else it waits in one FIFO queue in front of all replicas. A replica
// requested at t is ready at t + ColdStart; GPU time is charged from the
// request until the replica is removed. A replica chosen for removal stops
// taking work and is removed when its running requests finish.
type Model struct {
	Batch       int
	PrefillTPS  float64
	SecPerToken float64
	ColdStart   float64 // seconds
}

// DefaultModel is the model the trace's source describes: prefill at 5,000
// tokens/s and 30 ms per generated token (the order of a 7–13 B model on one
// A100-class GPU), a batch of 8, and a two-minute cold start (pulling and
// loading several GB of weights).
func DefaultModel() Model {
	return Model{Batch: 8, PrefillTPS: 5000, SecPerToken: 0.030, ColdStart: 120}
}

// Service returns the service time of r in seconds.
func (m Model) Service(r Request) float64 {
	return float64(r.Context)/m.PrefillTPS + float64(r.Generated)*m.SecPerToken
}

// Validate checks the model.
func (m Model) Validate() error {
	if m.Batch < 1 || m.PrefillTPS <= 0 || m.SecPerToken < 0 || m.ColdStart < 0 ||
		math.IsNaN(m.PrefillTPS+m.SecPerToken+m.ColdStart) {
		return fmt.Errorf("invalid model %+v", m)
	}
	return nil
}

// Metrics is what can be measured of the system over one 1 s tick; each
// policy derives its own signal from it (in-flight, CPU-like utilization…).
type Metrics struct {
	Time        float64 // end of the tick (s)
	Dt          float64
	BusySeconds float64 // ∫ in-flight (queued + running) dt over the tick
	RunSeconds  float64 // ∫ running dt over the tick (a CPU-like busy signal)
	InFlight    int     // queued + running at Time
	Running     int
	Queued      int
	Arrivals    int
	Completions int
	DurationSum float64 // of the completions (arrival → end)
	Ready       int
	Starting    int
	Requested   int
	ColdStart   float64 // mean observed start-up so far (0: none seen)
	Batch       int
}

// Policy decides replica counts. Observe is called after every 1 s tick;
// Decide every Period seconds (a multiple of 1 s) right after Observe.
// Implementations keep their own state; one Policy value runs one
// simulation.
type Policy interface {
	Name() string
	Period() float64
	Observe(m Metrics)
	Decide(now float64, m Metrics) int
}

// Result is the outcome of one simulation.
type Result struct {
	Policy, Trace string
	Knob          float64
	GPUHours      float64
	Waits         []float64 // per request, arrival → start of service (s)
	ScaleEvents   int       // changes of the requested replica count
	Reversals     int       // up after down or down after up (flapping)
	// StepReaction is, per step of the trace, the time from the step to the
	// first scale-up decision after it (NaN: none within 10 minutes).
	StepReaction []float64
	// Timeline per second: requested and ready replicas.
	Requested, Ready []int
	Served           int
}

type replica struct {
	requested float64
	ready     bool
	draining  bool
	removed   bool
	running   int
}

type event struct {
	t    float64
	kind int // evDone or evReady
	id   int // replica
	req  int // request (evDone)
	seq  int
}

const (
	evDone = iota
	evReady
)

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if h[i].t != h[j].t {
		return h[i].t < h[j].t
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// engine is the state of one simulation run.
type engine struct {
	m        Model
	tr       Trace
	service  []float64
	replicas []replica
	events   eventHeap
	seq      int
	queue    []int // request indices
	qhead    int
	start    []float64 // per request start of service, NaN until started

	now               float64
	lastT             float64
	inFlight, running int
	busy, run         float64
	arrivals, comps   int
	durSum            float64
	gpuSeconds        float64
	coldSum           float64
	coldN             int
}

// Run replays tr through policy p on model m, starting with initial
// replicas ready at t = 0, and returns the result.
func Run(m Model, tr Trace, p Policy, initial int) Result {
	e := &engine{m: m, tr: tr, service: make([]float64, len(tr.Requests)), start: make([]float64, len(tr.Requests))}
	for i, r := range tr.Requests {
		e.service[i] = m.Service(r)
		e.start[i] = math.NaN()
	}
	for i := 0; i < initial; i++ {
		e.replicas = append(e.replicas, replica{ready: true})
	}
	res := Result{Policy: p.Name(), Trace: tr.Name}
	res.StepReaction = make([]float64, len(tr.Steps))
	for i := range res.StepReaction {
		res.StepReaction[i] = math.NaN()
	}
	period := max(1, int(math.Round(p.Period())))
	next := 0 // next arrival
	lastDir := 0
	tick := 0
	for {
		tick++
		tEnd := float64(tick)
		// Process every event up to the end of this tick.
		for {
			tArr := math.Inf(1)
			if next < len(tr.Requests) {
				tArr = tr.Requests[next].Arrival
			}
			tEv := math.Inf(1)
			if len(e.events) > 0 {
				tEv = e.events[0].t
			}
			if math.Min(tArr, tEv) > tEnd {
				break
			}
			if tEv <= tArr {
				ev := heap.Pop(&e.events).(event)
				e.advance(ev.t)
				switch ev.kind {
				case evDone:
					e.done(ev.id, ev.req)
				case evReady:
					e.ready(ev.id)
				}
			} else {
				e.advance(tArr)
				e.arrive(next)
				next++
			}
		}
		e.advance(tEnd)
		mt := e.metrics(tEnd)
		p.Observe(mt)
		if tick%period == 0 && tEnd <= tr.Duration {
			cur := mt.Requested
			want := max(0, p.Decide(tEnd, mt))
			if want != cur {
				res.ScaleEvents++
				dir := 1
				if want < cur {
					dir = -1
				}
				if lastDir != 0 && dir != lastDir {
					res.Reversals++
				}
				lastDir = dir
				if dir > 0 {
					for i, s := range tr.Steps {
						if math.IsNaN(res.StepReaction[i]) && tEnd >= s && tEnd-s <= 600 {
							res.StepReaction[i] = tEnd - s
						}
					}
				}
				e.scale(want)
			}
		}
		if tEnd <= tr.Duration {
			req, ready := e.counts()
			res.Requested = append(res.Requested, req)
			res.Ready = append(res.Ready, ready)
		}
		if tEnd >= tr.Duration && next >= len(tr.Requests) && e.inFlight == 0 {
			break
		}
		if tEnd > tr.Duration+24*3600 {
			break // a policy that never serves the backlog: stop, count the waits so far
		}
	}
	// Charge replicas still present up to the horizon.
	for i := range e.replicas {
		r := &e.replicas[i]
		if !r.removed {
			e.gpuSeconds += math.Max(0, tr.Duration-r.requested)
		}
	}
	res.GPUHours = e.gpuSeconds / 3600
	res.Waits = make([]float64, 0, len(tr.Requests))
	for i, s := range e.start {
		if math.IsNaN(s) {
			s = e.now // never served: count the wait so far
		} else {
			res.Served++
		}
		res.Waits = append(res.Waits, s-tr.Requests[i].Arrival)
	}
	return res
}

func (e *engine) advance(t float64) {
	if t > e.lastT {
		dt := t - e.lastT
		e.busy += float64(e.inFlight) * dt
		e.run += float64(e.running) * dt
		e.lastT = t
	}
	e.now = t
}

func (e *engine) push(t float64, kind, id int) {
	e.seq++
	heap.Push(&e.events, event{t: t, kind: kind, id: id, seq: e.seq})
}

func (e *engine) arrive(i int) {
	e.inFlight++
	e.arrivals++
	best := -1
	for j := range e.replicas {
		r := &e.replicas[j]
		if r.ready && !r.draining && !r.removed && r.running < e.m.Batch &&
			(best < 0 || r.running < e.replicas[best].running) {
			best = j
		}
	}
	if best < 0 {
		e.queue = append(e.queue, i)
		return
	}
	e.startOn(best, i)
}

func (e *engine) startOn(j, i int) {
	e.replicas[j].running++
	e.running++
	e.start[i] = e.now
	e.seq++
	heap.Push(&e.events, event{t: e.now + e.service[i], kind: evDone, id: j, req: i, seq: e.seq})
}

func (e *engine) done(j, i int) {
	r := &e.replicas[j]
	r.running--
	e.running--
	e.inFlight--
	e.comps++
	e.durSum += e.now - e.tr.Requests[i].Arrival
	if r.draining && r.running == 0 {
		e.remove(j)
		return
	}
	e.pull(j)
}

func (e *engine) pull(j int) {
	r := &e.replicas[j]
	for r.ready && !r.draining && !r.removed && r.running < e.m.Batch && e.qhead < len(e.queue) {
		i := e.queue[e.qhead]
		e.qhead++
		e.startOn(j, i)
	}
	if e.qhead > 4096 && e.qhead*2 > len(e.queue) {
		e.queue = append(e.queue[:0], e.queue[e.qhead:]...)
		e.qhead = 0
	}
}

func (e *engine) ready(j int) {
	r := &e.replicas[j]
	if r.removed {
		return
	}
	r.ready = true
	e.coldSum += e.now - r.requested
	e.coldN++
	e.pull(j)
}

func (e *engine) remove(j int) {
	r := &e.replicas[j]
	r.removed = true
	e.gpuSeconds += math.Max(0, math.Min(e.now, e.tr.Duration)-r.requested)
}

// counts returns the requested (not removed, not draining) and ready replicas.
func (e *engine) counts() (requested, ready int) {
	for i := range e.replicas {
		r := &e.replicas[i]
		if r.removed || r.draining {
			continue
		}
		requested++
		if r.ready {
			ready++
		}
	}
	return
}

func (e *engine) metrics(t float64) Metrics {
	req, ready := e.counts()
	m := Metrics{Time: t, Dt: 1, BusySeconds: e.busy, RunSeconds: e.run, InFlight: e.inFlight,
		Running: e.running, Queued: len(e.queue) - e.qhead, Arrivals: e.arrivals, Completions: e.comps,
		DurationSum: e.durSum, Ready: ready, Starting: req - ready, Requested: req, Batch: e.m.Batch}
	if e.coldN > 0 {
		m.ColdStart = e.coldSum / float64(e.coldN)
	}
	e.busy, e.run, e.arrivals, e.comps, e.durSum = 0, 0, 0, 0, 0
	return m
}

// scale moves the requested replica count to want: new replicas start
// their cold start now; removals take starting replicas first (newest
// first), then idle ready ones, then drain the least busy.
func (e *engine) scale(want int) {
	req, _ := e.counts()
	for ; req < want; req++ {
		e.replicas = append(e.replicas, replica{requested: e.now})
		e.push(e.now+e.m.ColdStart, evReady, len(e.replicas)-1)
	}
	if req <= want {
		return
	}
	var live []int
	for i := range e.replicas {
		if r := &e.replicas[i]; !r.removed && !r.draining {
			live = append(live, i)
		}
	}
	sort.SliceStable(live, func(a, b int) bool {
		ra, rb := &e.replicas[live[a]], &e.replicas[live[b]]
		if ra.ready != rb.ready {
			return !ra.ready // starting ones first
		}
		if !ra.ready {
			return ra.requested > rb.requested // newest first
		}
		return ra.running < rb.running
	})
	for _, j := range live[:req-want] {
		r := &e.replicas[j]
		if r.running == 0 {
			e.remove(j)
		} else {
			r.draining = true
		}
	}
}

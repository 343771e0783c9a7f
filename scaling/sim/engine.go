package sim

import (
	"container/heap"
	"fmt"
	"math"
	"sort"
)

// Model is the GPU replica model every policy is judged on.
//
// A replica serves up to Batch requests at once (continuous batching). A
// request's work is its prefill at PrefillTPS plus its generated tokens at
// SecPerToken each; with Slowdown 0 that is its service time whatever the
// batch holds (the decode step of a batched LLM server is memory-bound, so
// its time per token moves little with the batch size up to the limit).
// With Slowdown s > 0 a replica running n requests progresses each of them
// at 1/(1 + s·(n−1)/(Batch−1)) of that speed: a full batch is 1+s times
// slower per request.
//
// Routing: with one shared queue (the default), a request goes to the
// ready replica with the fewest running requests if one has a free slot,
// else it waits in one FIFO queue in front of all replicas. With
// QueuePerReplica, it joins the ready replica with the fewest running plus
// queued requests and waits in that replica's own FIFO (what a model server
// with its own scheduler queue does); a replica that is scaled down
// finishes its own queue. Requests that arrive while no replica is ready
// wait in front of all replicas either way (held at the edge) and count as
// in flight.
//
// A replica requested at t is ready at t + ColdStart; GPU time is charged
// from the request until the replica is removed. A replica chosen for
// removal stops taking work and is removed when its work is done.
//
// CPU (for HPA on CPU): a replica uses CPUIdle cores while ready, one more
// core while it runs any request (the serving engine's loop), prompt
// tokenization at TokenizeTPS tokens per core-second when a request
// starts, and CPUPerToken core-seconds per generated token streamed; HPA
// divides by CPURequest cores per replica. The CPU therefore follows the
// arrivals and the tokens, never the queue.
type Model struct {
	Batch           int
	PrefillTPS      float64
	SecPerToken     float64
	ColdStart       float64 // seconds
	QueuePerReplica bool
	Slowdown        float64
}

// The CPU model of a GPU inference server (see Model).
const (
	CPUIdle     = 0.05   // cores per ready replica
	CPULoop     = 1.0    // cores while a replica runs anything
	TokenizeTPS = 100000 // prompt tokens per core-second
	CPUPerToken = 1e-4   // core-seconds per generated token
	CPURequest  = 2.0    // cores requested per replica
)

// DefaultModel is the model the trace's source describes: prefill at 5,000
// tokens/s and 30 ms per generated token (the order of a 7–13 B model on one
// A100-class GPU), a batch of 8, and a two-minute cold start (pulling and
// loading several GB of weights); one shared queue, no slowdown.
func DefaultModel() Model {
	return Model{Batch: 8, PrefillTPS: 5000, SecPerToken: 0.030, ColdStart: 120}
}

// Service returns the service time of r in seconds at Slowdown 0.
func (m Model) Service(r Request) float64 {
	return float64(r.Context)/m.PrefillTPS + float64(r.Generated)*m.SecPerToken
}

// Validate checks the model.
func (m Model) Validate() error {
	if m.Batch < 1 || m.PrefillTPS <= 0 || m.SecPerToken < 0 || m.ColdStart < 0 || m.Slowdown < 0 ||
		math.IsNaN(m.PrefillTPS+m.SecPerToken+m.ColdStart+m.Slowdown) {
		return fmt.Errorf("invalid model %+v", m)
	}
	return nil
}

// speed is the progress per second of each of n running requests.
func (m Model) speed(n int) float64 {
	if m.Slowdown == 0 || m.Batch < 2 || n < 2 {
		return 1
	}
	return 1 / (1 + m.Slowdown*float64(n-1)/float64(m.Batch-1))
}

// Metrics is what can be measured of the system over one 1 s tick; each
// policy derives its own signal from it (in-flight, CPU, occupancy…).
type Metrics struct {
	Time        float64 // end of the tick (s); negative during the warm-up
	Dt          float64
	BusySeconds float64 // ∫ in-flight (queued + running) dt over the tick
	RunSeconds  float64 // ∫ running dt over the tick (occupied batch slots)
	CPUSeconds  float64 // core-seconds of the ready replicas (the CPU model)
	InFlight    int     // queued + running at Time
	Running     int
	Queued      int
	Arrivals    int
	Completions int
	DurationSum float64 // of the completions (arrival → end)
	Ready       int
	Starting    int
	Requested   int
	ColdStart   float64 // mean observed start-up (the model's until one is seen)
	Batch       int
}

// Policy decides replica counts. Observe is called after every 1 s tick;
// Decide every Period seconds (a multiple of 1 s) right after Observe, also
// during the warm-up, where its answer is ignored. Implementations keep
// their own state; one Policy value runs one simulation.
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
	Waits         []float64 // per measured request, arrival → start of service (s)
	ScaleEvents   int       // changes of the requested replica count
	Reversals     int       // up after down or down after up (flapping)
	// StepReaction is, per step of the trace, the time from the step to the
	// first scale-up decision after it (NaN: none within 10 minutes).
	StepReaction []float64
	// Timeline per second of the measured trace.
	Requested, Ready, InFlight, Queued []int
	Served                             int
}

type replica struct {
	requested float64 // internal time of the scale-up
	ready     bool
	draining  bool
	removed   bool
	running   int
	queue     []int // own FIFO (QueuePerReplica)
	qhead     int
	v, vAt    float64 // work done per running request, as of vAt
	fin       finHeap // running requests by the work at which they finish
	epoch     int     // a done event of an older epoch is stale
}

func (r *replica) queued() int { return len(r.queue) - r.qhead }
func (r *replica) live() bool  { return !r.removed && !r.draining }

type fin struct {
	v   float64
	req int
}

type finHeap []fin

func (h finHeap) Len() int { return len(h) }
func (h finHeap) Less(i, j int) bool {
	return h[i].v < h[j].v || (h[i].v == h[j].v && h[i].req < h[j].req)
}
func (h finHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *finHeap) Push(x any)   { *h = append(*h, x.(fin)) }
func (h *finHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

type event struct {
	t     float64
	kind  int // evDone or evReady
	id    int // replica
	epoch int
	seq   int
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

// WarmupSettle is how long, at the end of the warm-up, the replicas are held
// at the shared starting count before the measured trace begins.
const WarmupSettle = 300.0

// engine is the state of one simulation run. Internal time runs from 0
// (start of the warm-up) to offset + Duration; the measured trace starts at
// offset.
type engine struct {
	m        Model
	reqs     []Request // warm-up then measured, arrival in internal time
	measured int       // index of the first measured request
	offset   float64
	horizon  float64 // internal end of charging
	work     []float64
	replicas []replica
	events   eventHeap
	seq      int
	queue    []int // shared FIFO, or held while no replica is ready
	qhead    int
	start    []float64 // per request start of service, NaN until started

	now               float64
	lastT             float64
	inFlight, running int
	nBusy, nReady     int
	busy, run, cpu    float64
	arrivals, comps   int
	durSum            float64
	gpuSeconds        float64
	coldSum           float64
	coldN             int
}

// Run replays tr through policy p on model m, with no warm-up, starting
// with initial replicas ready at t = 0. See RunWarm.
func Run(m Model, tr Trace, p Policy, initial int) Result {
	return RunWarm(m, Trace{}, tr, p, initial)
}

// RunWarm replays warm and then tr through policy p on model m. During the
// warm-up (warm's duration) the policy observes and decides, but its
// decisions are ignored and nothing is measured or charged: the replicas
// follow the warm-up's demand at once (ready, no cold start) until the last
// WarmupSettle seconds, which are held at initial. At the start of tr the
// policy takes over with initial ready replicas and whatever is in flight.
func RunWarm(m Model, warm, tr Trace, p Policy, initial int) Result {
	return runWarm(m, warm, nil, tr, p, initial)
}

// run is RunWarm of e's warm-up and trace on e's model, with the warm-up's
// need WithWarmup computed.
func (e Env) run(p Policy, initial int) Result {
	return runWarm(e.Model, e.Warmup, e.warmNeed, e.Trace, p, initial)
}

// warmNeeds is, per second of a warm-up whose offered peaks are peak, the
// replicas the busiest of the 30 seconds from it needs at the batch limit,
// at least 1.
func warmNeeds(m Model, peak []float64) []int {
	need := make([]int, len(peak))
	for t := range need {
		hi := 0.0
		for s := t; s < t+30 && s < len(peak); s++ {
			hi = math.Max(hi, peak[s])
		}
		need[t] = max(1, m.replicas(hi))
	}
	return need
}

// runWarm is RunWarm with the warm-up's warmNeeds (nil: computed here).
func runWarm(m Model, warm Trace, warmNeed []int, tr Trace, p Policy, initial int) Result {
	e := &engine{m: m, offset: math.Ceil(warm.Duration)}
	e.horizon = e.offset + tr.Duration
	for _, r := range warm.Requests {
		if r.Arrival < warm.Duration {
			e.reqs = append(e.reqs, r)
		}
	}
	e.measured = len(e.reqs)
	for _, r := range tr.Requests {
		r.Arrival += e.offset
		e.reqs = append(e.reqs, r)
	}
	e.work = make([]float64, len(e.reqs))
	e.start = make([]float64, len(e.reqs))
	for i, r := range e.reqs {
		e.work[i] = m.Service(r)
		e.start[i] = math.NaN()
	}
	if e.offset > 0 {
		if warmNeed == nil {
			_, peak := offered(m, warm)
			warmNeed = warmNeeds(m, peak)
		}
		e.setReady(warmNeed[0])
	} else {
		e.setReady(initial)
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
		for {
			tArr := math.Inf(1)
			if next < len(e.reqs) {
				tArr = e.reqs[next].Arrival
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
					e.done(ev.id, ev.epoch)
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
		warming := tEnd < e.offset
		if tEnd == e.offset {
			e.setReady(initial) // the shared starting count, all ready, charged from now
			req, ready := e.counts()
			mt.Requested, mt.Ready, mt.Starting = req, ready, req-ready
		} else if warming {
			want := warmNeed[int(tEnd)]
			if tEnd >= e.offset-WarmupSettle {
				want = initial
			}
			e.setReady(want)
		}
		if tick%period == 0 && tEnd <= e.horizon {
			want := max(0, p.Decide(tEnd-e.offset, mt))
			if cur := mt.Requested; !warming && want != cur {
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
						t := tEnd - e.offset
						if math.IsNaN(res.StepReaction[i]) && t >= s && t-s <= 600 {
							res.StepReaction[i] = t - s
						}
					}
				}
				e.scale(want)
			}
		}
		if tEnd > e.offset && tEnd <= e.horizon {
			req, ready := e.counts()
			res.Requested = append(res.Requested, req)
			res.Ready = append(res.Ready, ready)
			res.InFlight = append(res.InFlight, e.inFlight)
			res.Queued = append(res.Queued, e.queuedTotal())
		}
		if tEnd >= e.horizon && next >= len(e.reqs) && e.inFlight == 0 {
			break
		}
		if tEnd > e.horizon+24*3600 {
			break // a policy that never serves the backlog: stop, count the waits so far
		}
	}
	for i := range e.replicas {
		if r := &e.replicas[i]; !r.removed {
			e.gpuSeconds += math.Max(0, e.horizon-math.Max(r.requested, e.offset))
		}
	}
	res.GPUHours = e.gpuSeconds / 3600
	res.Waits = make([]float64, 0, len(e.reqs)-e.measured)
	for i := e.measured; i < len(e.reqs); i++ {
		s := e.start[i]
		if math.IsNaN(s) {
			s = e.now // never served: count the wait so far
		} else {
			res.Served++
		}
		res.Waits = append(res.Waits, s-e.reqs[i].Arrival)
	}
	return res
}

// setReady moves the replicas to n at once, all ready (the warm-up's
// provisioning); those present are charged from now.
func (e *engine) setReady(n int) {
	live := 0
	for i := range e.replicas {
		if r := &e.replicas[i]; r.live() {
			live++
			if !r.ready {
				r.ready = true
				e.nReady++
			}
			r.requested = e.now
		}
	}
	for ; live < n; live++ {
		e.replicas = append(e.replicas, replica{requested: e.now, ready: true, vAt: e.now})
		e.nReady++
	}
	if live > n {
		e.scale(n)
	}
	if e.m.QueuePerReplica {
		e.spreadHeld()
	}
	for j := range e.replicas {
		e.pull(j)
	}
}

func (e *engine) advance(t float64) {
	if t > e.lastT {
		dt := t - e.lastT
		e.busy += float64(e.inFlight) * dt
		e.run += float64(e.running) * dt
		e.cpu += (CPUIdle*float64(e.nReady) + CPULoop*float64(e.nBusy)) * dt
		e.cpu += float64(e.running) * dt * CPUPerToken / math.Max(e.m.SecPerToken, 1e-6)
		e.lastT = t
	}
	e.now = t
}

func (e *engine) push(t float64, kind, id, epoch int) {
	e.seq++
	heap.Push(&e.events, event{t: t, kind: kind, id: id, epoch: epoch, seq: e.seq})
}

// accepting reports whether replica j takes new work.
func (e *engine) accepting(j int) bool {
	r := &e.replicas[j]
	return r.ready && r.live()
}

func (e *engine) arrive(i int) {
	e.inFlight++
	e.arrivals++
	best := -1
	for j := range e.replicas {
		if !e.accepting(j) {
			continue
		}
		r := &e.replicas[j]
		if e.m.QueuePerReplica {
			if best < 0 || r.running+r.queued() < e.replicas[best].running+e.replicas[best].queued() {
				best = j
			}
		} else if r.running < e.m.Batch && (best < 0 || r.running < e.replicas[best].running) {
			best = j
		}
	}
	switch {
	case best < 0:
		e.queue = append(e.queue, i)
	case e.replicas[best].running < e.m.Batch && e.replicas[best].queued() == 0:
		e.startOn(best, i)
	default:
		e.replicas[best].queue = append(e.replicas[best].queue, i)
	}
}

// progress brings replica j's work counter to now.
func (e *engine) progress(j int) {
	r := &e.replicas[j]
	r.v += (e.now - r.vAt) * e.m.speed(r.running)
	r.vAt = e.now
}

// reschedule plans replica j's next completion.
func (e *engine) reschedule(j int) {
	r := &e.replicas[j]
	r.epoch++
	if r.running > 0 {
		dt := math.Max(0, r.fin[0].v-r.v) / e.m.speed(r.running)
		e.push(e.now+dt, evDone, j, r.epoch)
	}
}

func (e *engine) startOn(j, i int) {
	e.progress(j)
	r := &e.replicas[j]
	if r.running == 0 {
		e.nBusy++
	}
	r.running++
	e.running++
	e.start[i] = e.now
	e.cpu += float64(e.reqs[i].Context) / TokenizeTPS
	heap.Push(&r.fin, fin{v: r.v + e.work[i], req: i})
	e.reschedule(j)
}

func (e *engine) done(j, epoch int) {
	r := &e.replicas[j]
	if epoch != r.epoch || r.removed {
		return
	}
	e.progress(j)
	for r.fin.Len() > 0 && r.fin[0].v <= r.v+1e-9*math.Max(1, math.Abs(r.v)) {
		f := heap.Pop(&r.fin).(fin)
		r.running--
		e.running--
		e.inFlight--
		e.comps++
		e.durSum += e.now - e.reqs[f.req].Arrival
	}
	if r.running == 0 {
		e.nBusy--
	}
	if r.draining && r.running == 0 && r.queued() == 0 {
		e.remove(j)
		return
	}
	e.pull(j)
	e.reschedule(j)
}

// pull starts queued work on replica j while it has free slots: its own
// queue first, then the shared one.
func (e *engine) pull(j int) {
	r := &e.replicas[j]
	for r.ready && !r.removed && r.running < e.m.Batch {
		switch {
		case r.queued() > 0:
			i := r.queue[r.qhead]
			r.qhead++
			e.startOn(j, i)
		case r.live() && !e.m.QueuePerReplica && e.qhead < len(e.queue):
			i := e.queue[e.qhead]
			e.qhead++
			e.startOn(j, i)
		default:
			e.compact(r)
			return
		}
		r = &e.replicas[j]
	}
	e.compact(r)
}

func (e *engine) compact(r *replica) {
	if r.qhead > 256 && r.qhead*2 > len(r.queue) {
		r.queue = append(r.queue[:0], r.queue[r.qhead:]...)
		r.qhead = 0
	}
	if e.qhead > 4096 && e.qhead*2 > len(e.queue) {
		e.queue = append(e.queue[:0], e.queue[e.qhead:]...)
		e.qhead = 0
	}
}

func (e *engine) ready(j int) {
	r := &e.replicas[j]
	if r.removed || r.ready {
		return
	}
	r.ready = true
	r.vAt = e.now
	e.nReady++
	e.coldSum += e.now - r.requested
	e.coldN++
	if e.m.QueuePerReplica {
		e.spreadHeld()
	}
	e.pull(j)
}

// spreadHeld moves the requests held while no replica was ready onto the
// ready replicas' own queues, shortest first.
func (e *engine) spreadHeld() {
	held := e.queue[e.qhead:]
	e.queue, e.qhead = nil, 0
	for _, i := range held {
		e.inFlight-- // arrive counts it again
		e.arrivals--
		e.arrive(i)
	}
}

func (e *engine) remove(j int) {
	r := &e.replicas[j]
	r.removed = true
	if r.ready {
		e.nReady--
	}
	e.gpuSeconds += math.Max(0, math.Min(e.now, e.horizon)-math.Max(r.requested, e.offset))
}

// counts returns the requested (not removed, not draining) and ready replicas.
func (e *engine) counts() (requested, ready int) {
	for i := range e.replicas {
		r := &e.replicas[i]
		if !r.live() {
			continue
		}
		requested++
		if r.ready {
			ready++
		}
	}
	return
}

func (e *engine) queuedTotal() int {
	n := len(e.queue) - e.qhead
	for i := range e.replicas {
		n += e.replicas[i].queued()
	}
	return n
}

func (e *engine) metrics(t float64) Metrics {
	req, ready := e.counts()
	m := Metrics{Time: t - e.offset, Dt: 1, BusySeconds: e.busy, RunSeconds: e.run, CPUSeconds: e.cpu,
		InFlight: e.inFlight, Running: e.running, Queued: e.queuedTotal(), Arrivals: e.arrivals,
		Completions: e.comps, DurationSum: e.durSum, Ready: ready, Starting: req - ready, Requested: req,
		Batch: e.m.Batch, ColdStart: e.m.ColdStart}
	if e.coldN > 0 {
		m.ColdStart = e.coldSum / float64(e.coldN)
	}
	e.busy, e.run, e.cpu, e.arrivals, e.comps, e.durSum = 0, 0, 0, 0, 0, 0
	return m
}

// scale moves the requested replica count to want: new replicas start
// their cold start now; removals take starting replicas first (newest
// first), then idle ready ones, then drain the least busy.
func (e *engine) scale(want int) {
	req, _ := e.counts()
	for ; req < want; req++ {
		e.replicas = append(e.replicas, replica{requested: e.now, vAt: e.now})
		e.push(e.now+e.m.ColdStart, evReady, len(e.replicas)-1, 0)
	}
	if req <= want {
		return
	}
	var live []int
	for i := range e.replicas {
		if e.replicas[i].live() {
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
		return ra.running+ra.queued() < rb.running+rb.queued()
	})
	for _, j := range live[:req-want] {
		r := &e.replicas[j]
		if r.running == 0 && r.queued() == 0 {
			e.remove(j)
		} else {
			r.draining = true
		}
	}
}

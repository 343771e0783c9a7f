package extproc

import (
	"cmp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/inflight-dev/inflight/mesh"
)

// DefaultDurationBuckets are the request-duration histogram bounds in
// seconds, spanning a short classification call to a long generation.
var DefaultDurationBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300}

// Defaults of TrackerOptions.
const (
	DefaultMaxTargets = 1000
	DefaultIdleTTL    = 5 * time.Minute
)

// TrackerOptions configures a Tracker. The zero value is usable.
type TrackerOptions struct {
	// MaxTargets bounds the number of distinct targets; requests for new
	// targets beyond it are counted under the overflow target. 0 means
	// DefaultMaxTargets.
	MaxTargets int
	// MaxTargetsPerNamespace bounds the distinct targets of one namespace,
	// so that one tenant cannot push the others into overflow; beyond it a
	// namespace's new targets count under its namespace_overflow record.
	// 0 means a quarter of MaxTargets (at least 1); at most MaxTargets.
	MaxTargetsPerNamespace int
	// IdleTTL is how long a target with nothing in flight and no change is
	// kept before Sweep evicts it. 0 means DefaultIdleTTL.
	IdleTTL time.Duration
	// Now is the clock; nil means time.Now. It must be monotonic (values from
	// time.Now carry a monotonic reading).
	Now func() time.Time
	// Buckets are the duration histogram bounds; nil means DefaultDurationBuckets.
	Buckets []float64
}

// Tracker counts requests in flight per target.
//
// The set of targets is bounded and evicted when idle. Starting or ending a
// request on a known target takes only that target's lock. Creating a target
// (and Sweep) takes the tracker's lock, which also guards the per-namespace
// counts, so the bounds are exact.
type Tracker struct {
	now      func() time.Time
	epoch    time.Time
	max      int
	maxPerNS int
	ttl      int64
	buckets  []float64

	targets sync.Map // key -> *target

	mu    sync.Mutex     // guards n, perNS and the insertion of targets
	n     int            // targets that count toward max
	perNS map[string]int // identified targets per namespace
}

type key struct {
	target mesh.Target
	reason mesh.Reason
}

// bounded reports whether a target of this key counts toward the bounds:
// identified targets and per-namespace overflow records (one per namespace).
// The other reasons are a small fixed set.
func (k key) bounded() bool {
	return k.reason == mesh.ReasonNone || k.reason == mesh.ReasonNamespaceOverflow
}

// target holds one target's counters. Times are nanoseconds since the
// tracker's epoch on the monotonic clock.
type target struct {
	key     key
	created int64

	mu        sync.Mutex
	evicted   bool // removed from the tracker: a Start that raced must retry
	inFlight  int64
	started   uint64
	completed uint64
	untracked uint64
	// The hold (scale from zero) and shedding counters: held is the part
	// of inFlight waiting in a hold queue; every held request leaves it
	// once, released, timed out or abandoned. shed counts requests
	// answered at once over a limit, in no other counter.
	held         int64
	heldTotal    uint64
	released     uint64
	holdTimeouts uint64
	abandoned    uint64
	shed         uint64
	busy         seconds // integral of inFlight up to last
	last         int64   // time up to which busy is integrated
	changed      int64   // time of the last start, end or untracked arrival
	dur          seconds // sum of completed requests' durations
	counts       []uint64
}

// seconds is an exact sum of nanoseconds that does not overflow for the life
// of a process (int64 nanoseconds would after 292 request-years, which 1,000
// requests in flight reach in about 107 days).
type seconds struct{ sec, ns int64 }

func (s *seconds) add(n, times int64) {
	s.sec += times * (n / 1e9)
	s.ns += times * (n % 1e9)
	s.sec += s.ns / 1e9
	s.ns %= 1e9
}

func (s seconds) float() float64 { return float64(s.sec) + float64(s.ns)/1e9 }

// NewTracker returns an empty Tracker.
func NewTracker(o TrackerOptions) *Tracker {
	maxTargets := cmp.Or(o.MaxTargets, DefaultMaxTargets)
	tr := &Tracker{
		now:      o.Now,
		max:      maxTargets,
		maxPerNS: cmp.Or(o.MaxTargetsPerNamespace, max(1, maxTargets/4)),
		ttl:      int64(cmp.Or(o.IdleTTL, DefaultIdleTTL)),
		buckets:  o.Buckets,
		perNS:    map[string]int{},
	}
	tr.maxPerNS = min(tr.maxPerNS, tr.max)
	if tr.buckets == nil {
		tr.buckets = DefaultDurationBuckets
	}
	if tr.now == nil {
		tr.now = time.Now
	}
	tr.epoch = tr.now()
	return tr
}

func (tr *Tracker) nanos() int64 { return int64(tr.now().Sub(tr.epoch)) }

// Request is one counted request. The zero Request is not started; End on it
// does nothing. A Request must be ended by the goroutine that started it.
type Request struct {
	t     *target
	start int64
	held  bool // counted in its target's held gauge
}

// Started reports whether the request is counted and not yet ended.
func (r *Request) Started() bool { return r.t != nil }

// Start counts a new request in flight for the target (or, when reason is
// not empty, for the unknown target of that reason).
func (tr *Tracker) Start(t mesh.Target, reason mesh.Reason) Request {
	return tr.start(t, reason, false)
}

// StartHeld is Start for a request that waits in a hold queue: it is in
// flight at once (held requests are demand) and in its target's held gauge
// until Released, HoldTimedOut or End.
func (tr *Tracker) StartHeld(t mesh.Target, reason mesh.Reason) Request {
	return tr.start(t, reason, true)
}

func (tr *Tracker) start(t mesh.Target, reason mesh.Reason, held bool) Request {
	tg := tr.liveLocked(t, reason)
	// The clock is read under the lock, so that one target's events are
	// integrated in the order of their timestamps and busy-seconds equals
	// the sum of the durations exactly.
	now := tr.nanos()
	tg.advance(now)
	tg.inFlight++
	tg.started++
	if held {
		tg.held++
		tg.heldTotal++
	}
	tg.changed = now
	tg.mu.Unlock()
	return Request{t: tg, start: now, held: held}
}

// liveLocked returns the record of the target (or of the reason), locked
// and not evicted: Sweep may remove a record between lookup and Lock, and
// then the fresh one is taken.
func (tr *Tracker) liveLocked(t mesh.Target, reason mesh.Reason) *target {
	for {
		tg := tr.lookup(t, reason)
		tg.mu.Lock()
		if !tg.evicted {
			return tg
		}
		tg.mu.Unlock()
	}
}

// Released moves a held request out of the held gauge into released_total:
// it was let through (CONTINUE) and stays in flight until End. It does
// nothing for a request that is not held.
func (tr *Tracker) Released(r *Request) { tr.unhold(r, func(t *target) { t.released++ }) }

// HoldTimedOut moves a held request out of the held gauge into
// hold_timeouts_total: it was answered locally at its hold timeout; End
// follows.
func (tr *Tracker) HoldTimedOut(r *Request) { tr.unhold(r, func(t *target) { t.holdTimeouts++ }) }

func (tr *Tracker) unhold(r *Request, count func(*target)) {
	if r.t == nil || !r.held {
		return
	}
	r.held = false
	r.t.mu.Lock()
	r.t.held--
	count(r.t)
	r.t.changed = tr.nanos()
	r.t.mu.Unlock()
}

// Shed counts a request answered at once over a limit (load shedding): it
// appears in the target's shed_total only, never in in_flight, started or
// completed.
func (tr *Tracker) Shed(t mesh.Target, reason mesh.Reason) {
	tg := tr.liveLocked(t, reason)
	tg.shed++
	tg.changed = tr.nanos()
	tg.mu.Unlock()
}

// Untracked counts the arrival of a request that is not tracked in flight
// (the server's open-stream cap was reached): it appears in the target's
// untracked_total only, never in in_flight, started or completed.
func (tr *Tracker) Untracked(t mesh.Target, reason mesh.Reason) {
	tg := tr.liveLocked(t, reason)
	tg.untracked++
	tg.changed = tr.nanos()
	tg.mu.Unlock()
}

// End releases the request and returns its duration. It is idempotent: only
// the first call on a started request counts. A request still held when it
// ends (its client went away) leaves the held gauge into
// hold_abandoned_total. A target with a request in flight is never evicted,
// so End always finds it in the tracker.
func (tr *Tracker) End(r *Request) time.Duration {
	tg := r.t
	if tg == nil {
		return 0
	}
	r.t = nil
	tg.mu.Lock()
	now := tr.nanos()
	d := now - r.start
	b := sort.SearchFloat64s(tr.buckets, time.Duration(d).Seconds())
	tg.advance(now)
	tg.inFlight--
	tg.completed++
	if r.held {
		r.held = false
		tg.held--
		tg.abandoned++
	}
	tg.changed = now
	tg.dur.add(d, 1)
	tg.counts[b]++
	tg.mu.Unlock()
	return time.Duration(d)
}

// advance integrates inFlight up to now. Callers hold t.mu.
func (t *target) advance(now int64) {
	if now > t.last {
		t.busy.add(now-t.last, t.inFlight)
		t.last = now
	}
}

// lookup returns the live target record for a request: its own, or the
// overflow record it falls into when a bound is reached. A request with a
// reason counts under the reason alone: the target it claims is dropped
// here, for every caller.
func (tr *Tracker) lookup(t mesh.Target, reason mesh.Reason) *target {
	k := key{t, reason}
	if reason != mesh.ReasonNone {
		k.target = mesh.Target{}
	}
	if v, ok := tr.targets.Load(k); ok {
		return v.(*target)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if v, ok := tr.targets.Load(k); ok {
		return v.(*target)
	}
	if k.reason == mesh.ReasonNone {
		switch {
		case tr.n >= tr.max:
			k = key{reason: mesh.ReasonOverflow}
		case tr.perNS[k.target.Namespace] >= tr.maxPerNS:
			k = key{target: mesh.Target{Namespace: k.target.Namespace}, reason: mesh.ReasonNamespaceOverflow}
		}
		if v, ok := tr.targets.Load(k); ok {
			return v.(*target)
		}
	}
	// A new record. Its names are copied: they are substrings of the
	// request's attribute values, which must not stay reachable.
	k.target = mesh.Target{Namespace: strings.Clone(k.target.Namespace), Workload: strings.Clone(k.target.Workload),
		Service: strings.Clone(k.target.Service), Pod: strings.Clone(k.target.Pod)}
	now := tr.nanos()
	fresh := &target{key: k, created: now, counts: make([]uint64, len(tr.buckets)+1), last: now, changed: now}
	tr.targets.Store(k, fresh)
	if k.bounded() {
		tr.n++
	}
	if k.reason == mesh.ReasonNone {
		tr.perNS[k.target.Namespace]++
	}
	return fresh
}

// Sweep evicts every target that has had nothing in flight and no change
// for IdleTTL, and returns how many it evicted. The controller reads every
// replica every tick, so by then it has read the target's final counters
// many times; a later request for the same key starts a new record (a new
// created_uptime_seconds, counters from 0). Sweep is called periodically by
// the binary; it takes the tracker's lock, never a request's path.
func (tr *Tracker) Sweep() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	now := tr.nanos()
	evicted := 0
	tr.targets.Range(func(k, v any) bool {
		t := v.(*target)
		t.mu.Lock()
		if t.inFlight == 0 && now-t.changed >= tr.ttl {
			t.evicted = true
			tr.targets.Delete(k)
			evicted++
			if t.key.bounded() {
				tr.n--
			}
			if t.key.reason == mesh.ReasonNone {
				ns := t.key.target.Namespace
				if tr.perNS[ns]--; tr.perNS[ns] <= 0 {
					delete(tr.perNS, ns)
				}
			}
		}
		t.mu.Unlock()
		return true
	})
	return evicted
}

// size returns the number of target records, and how many of them count
// toward MaxTargets.
func (tr *Tracker) size() (records, bounded int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.targets.Range(func(_, _ any) bool { records++; return true })
	return records, tr.n
}

// Record is one target's counters read at one instant, with its duration
// histogram (non-cumulative counts per bucket of Tracker's bounds, the last
// one being +Inf).
type Record struct {
	TargetRecord
	BucketCounts []uint64
}

// Records reads every target, sorted. The reads of different targets are not
// simultaneous; each one is consistent in itself.
func (tr *Tracker) Records() []Record {
	var out []Record
	tr.targets.Range(func(_, v any) bool {
		t := v.(*target)
		t.mu.Lock()
		t.advance(tr.nanos())
		r := Record{
			TargetRecord: TargetRecord{
				Namespace: t.key.target.Namespace, Workload: t.key.target.Workload,
				Service: t.key.target.Service, Pod: t.key.target.Pod, Reason: string(t.key.reason),
				Source:   string(t.key.target.Source()),
				InFlight: t.inFlight, Started: t.started, Completed: t.completed, Untracked: t.untracked,
				Held: t.held, HeldTotal: t.heldTotal, Released: t.released, HoldTimeouts: t.holdTimeouts,
				HoldAbandoned: t.abandoned, Shed: t.shed,
				BusySeconds:          t.busy.float(),
				DurationSecondsSum:   t.dur.float(),
				CreatedUptimeSeconds: time.Duration(t.created).Seconds(),
			},
			BucketCounts: append([]uint64(nil), t.counts...),
		}
		t.mu.Unlock()
		out = append(out, r)
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].less(&out[j].TargetRecord) })
	return out
}

func (a *TargetRecord) less(b *TargetRecord) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	if a.Workload != b.Workload {
		return a.Workload < b.Workload
	}
	if a.Service != b.Service {
		return a.Service < b.Service
	}
	if a.Pod != b.Pod {
		return a.Pod < b.Pod
	}
	return a.Reason < b.Reason
}

// Buckets returns the duration histogram bounds in seconds.
func (tr *Tracker) Buckets() []float64 { return tr.buckets }

// Uptime is the time since the tracker was created, on its clock.
func (tr *Tracker) Uptime() time.Duration { return time.Duration(tr.nanos()) }

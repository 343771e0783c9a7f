package extproc

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/inflight-dev/inflight/mesh"
)

// DefaultDurationBuckets are the request-duration histogram bounds in
// seconds, spanning a short classification call to a long generation.
var DefaultDurationBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300}

// TrackerOptions configures a Tracker. The zero value is usable.
type TrackerOptions struct {
	// MaxTargets bounds the number of distinct targets; requests for new
	// targets beyond it are counted under the overflow target. 0 means 1000.
	MaxTargets int
	// Now is the clock; nil means time.Now. It must be monotonic (values from
	// time.Now carry a monotonic reading).
	Now func() time.Time
	// Buckets are the duration histogram bounds; nil means DefaultDurationBuckets.
	Buckets []float64
}

// Tracker counts requests in flight per target.
type Tracker struct {
	now     func() time.Time
	epoch   time.Time
	max     int64
	buckets []float64

	targets sync.Map // key -> *target
	n       atomic.Int64
}

type key struct {
	target mesh.Target
	reason mesh.Reason
}

// target holds one target's counters. Times are nanoseconds since the
// tracker's epoch on the monotonic clock.
type target struct {
	key key

	mu        sync.Mutex
	inFlight  int64
	started   uint64
	completed uint64
	busy      seconds // integral of inFlight up to last
	last      int64   // time of the last change of inFlight
	dur       seconds // sum of completed requests' durations
	counts    []uint64
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
	tr := &Tracker{now: o.Now, max: int64(o.MaxTargets), buckets: o.Buckets}
	if tr.now == nil {
		tr.now = time.Now
	}
	if tr.max <= 0 {
		tr.max = 1000
	}
	if tr.buckets == nil {
		tr.buckets = DefaultDurationBuckets
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
}

// Started reports whether the request is counted and not yet ended.
func (r *Request) Started() bool { return r.t != nil }

// Start counts a new request in flight for the target (or, when reason is
// not empty, for the unknown target of that reason).
func (tr *Tracker) Start(t mesh.Target, reason mesh.Reason) Request {
	if reason != mesh.ReasonNone {
		t = mesh.Target{}
	}
	tg := tr.lookup(key{t, reason})
	// The clock is read under the lock, so that one target's events are
	// integrated in the order of their timestamps and busy-seconds equals
	// the sum of the durations exactly.
	tg.mu.Lock()
	now := tr.nanos()
	tg.advance(now)
	tg.inFlight++
	tg.started++
	tg.mu.Unlock()
	return Request{t: tg, start: now}
}

// End releases the request and returns its duration. It is idempotent: only
// the first call on a started request counts.
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

func (tr *Tracker) lookup(k key) *target {
	if v, ok := tr.targets.Load(k); ok {
		return v.(*target)
	}
	if k.reason == mesh.ReasonNone && tr.n.Load() >= tr.max {
		k = key{reason: mesh.ReasonOverflow}
		if v, ok := tr.targets.Load(k); ok {
			return v.(*target)
		}
	}
	fresh := &target{key: k, counts: make([]uint64, len(tr.buckets)+1), last: tr.nanos()}
	v, loaded := tr.targets.LoadOrStore(k, fresh)
	if !loaded && k.reason == mesh.ReasonNone {
		tr.n.Add(1)
	}
	return v.(*target)
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
				InFlight: t.inFlight, Started: t.started, Completed: t.completed,
				BusySeconds:        t.busy.float(),
				DurationSecondsSum: t.dur.float(),
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

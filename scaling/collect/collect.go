// Package collect owns the controller's view of demand: every tick it fetches
// GET /v1/snapshot from every ready extproc replica in parallel, decodes the
// versioned extproc.Snapshot contract, and sums the counters per workload
// (namespace/workload) into what the policy observes: the exact mean
// concurrency over the interval (from busy-seconds deltas per replica and
// boot id), in-flight now, arrivals, completions and mean duration.
//
// A replica that does not answer (error, timeout, wrong version) makes the
// tick Partial for every workload; its last values keep counting for at most
// Options.Expire and are then forgotten. A new boot id is a counter reset:
// that replica contributes its in-flight now and no delta for one tick,
// never a negative or bogus one.
//
// It imports no Kubernetes client: endpoints come in as plain values.
//
// Concurrency: a Collector belongs to one goroutine (the controller's tick
// loop): Tick fetches in parallel and merges after every fetch has
// returned; nothing else reads its state, so it has no lock.
package collect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	jsoniter "github.com/json-iterator/go"
	"k8s.io/utils/clock"

	"github.com/inflight-dev/inflight/extproc"
)

var jsonAPI = jsoniter.ConfigCompatibleWithStandardLibrary

// Endpoint is one ready extproc replica.
type Endpoint struct {
	// Key identifies the replica across ticks (its pod name, or its address).
	Key string
	// URL is the full snapshot URL, e.g. http://10.0.0.7:9090/v1/snapshot.
	URL string
}

// Workload names a scaled workload.
type Workload struct {
	Namespace, Name string
}

func (w Workload) String() string { return w.Namespace + "/" + w.Name }

// Sample is one workload's demand over one tick, summed over the replicas.
type Sample struct {
	// Concurrency is the mean requests in flight over the interval.
	Concurrency float64
	// InFlight is the requests in flight at the end of the interval.
	InFlight float64
	// Arrivals and Completions are the requests started and completed in
	// the interval.
	Arrivals, Completions float64
	// MeanDuration is the mean duration of the requests completed in the
	// interval, or the last known one when none completed (0: unknown).
	MeanDuration time.Duration
}

// Result is one tick's collection.
type Result struct {
	Time time.Time
	// Workloads holds every workload that any replica reported (now or
	// through still-valid last values). A workload absent here had no
	// request in flight and none in the interval.
	Workloads map[Workload]Sample
	// Partial is set when some endpoint did not answer, or when there was
	// no endpoint at all: counts are then a lower bound.
	Partial bool
	// Endpoints, Answered, Resets: how many were asked, answered, and came
	// back with a new boot id.
	Endpoints, Answered, Resets int
	// Errors lists the replicas that did not answer and why.
	Errors []FetchError
}

// FetchError is one failed snapshot fetch.
type FetchError struct {
	Endpoint Endpoint
	// Kind is a bounded label: "timeout", "connect", "http-status",
	// "decode", "version".
	Kind     string
	Err      error
	Duration time.Duration
}

func (e FetchError) Error() string {
	return fmt.Sprintf("snapshot %s (%s): %s: %v", e.Endpoint.Key, e.Endpoint.URL, e.Kind, e.Err)
}

// Observer receives per-fetch outcomes, e.g. for metrics. Implementations
// must be safe for concurrent use (fetches run in parallel).
type Observer interface {
	// Fetched is called once per endpoint per tick; kind is "" on success.
	Fetched(kind string, d time.Duration)
}

// Doer is the HTTP client the collector needs.
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

var _ Doer = (*http.Client)(nil)

// Options configure a Collector.
type Options struct {
	// Timeout bounds one snapshot fetch (default 500ms).
	Timeout time.Duration
	// Expire is how long a silent replica's last values keep counting
	// (default 10s). The tick stays Partial while it is listed and silent.
	Expire time.Duration
	// MaxBytes bounds one snapshot body (default 64 MiB).
	MaxBytes int64
	// Client does the requests (default: a dedicated http.Client).
	Client Doer
	// Observer, if set, is told about every fetch.
	Observer Observer
	// Clock is the collector's clock (nil: the real clock).
	Clock clock.PassiveClock
}

func (o *Options) defaults() {
	if o.Timeout <= 0 {
		o.Timeout = 500 * time.Millisecond
	}
	if o.Expire <= 0 {
		o.Expire = 10 * time.Second
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 64 << 20
	}
	if o.Client == nil {
		o.Client = &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  false,
		}}
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
}

// counters are one replica's counters of one workload, summed over its
// targets (services, pods).
type counters struct {
	inFlight           int64
	started, completed uint64
	busy, durSum       float64
}

// replica is what is kept of one endpoint between ticks.
type replica struct {
	bootID   string
	at       time.Time // the snapshot's own time
	seen     time.Time // our clock when it last answered
	counts   map[Workload]counters
	lastConc map[Workload]float64 // mean concurrency of its last interval
}

// Collector keeps the previous snapshot of every replica. Create it with New.
type Collector struct {
	opt Options

	replicas map[string]*replica
	meanDur  map[Workload]time.Duration
}

// New returns a Collector.
func New(opt Options) *Collector {
	opt.defaults()
	return &Collector{opt: opt, replicas: map[string]*replica{}, meanDur: map[Workload]time.Duration{}}
}

type fetched struct {
	ep     Endpoint
	snap   *extproc.Snapshot
	counts map[Workload]counters
	err    *FetchError
}

// Tick fetches every endpoint in parallel and returns the summed demand per
// workload. Call it once per tick from one goroutine.
func (c *Collector) Tick(ctx context.Context, endpoints []Endpoint) Result {
	out := make([]fetched, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = c.fetch(ctx, ep)
		}()
	}
	wg.Wait()
	return c.merge(out)
}

func (c *Collector) fetch(ctx context.Context, ep Endpoint) fetched {
	start := time.Now()
	snap, kind, err := c.get(ctx, ep.URL)
	d := time.Since(start)
	if c.opt.Observer != nil {
		c.opt.Observer.Fetched(kind, d)
	}
	if err != nil {
		return fetched{ep: ep, err: &FetchError{Endpoint: ep, Kind: kind, Err: err, Duration: d}}
	}
	return fetched{ep: ep, snap: snap, counts: sumByWorkload(snap)}
}

func (c *Collector) get(ctx context.Context, url string) (*extproc.Snapshot, string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opt.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, "connect", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.opt.Client.Do(req)
	if err != nil {
		return nil, errKind(ctx, err, "connect"), err
	}
	defer func() {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		_ = resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		return nil, "http-status", fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	var s extproc.Snapshot
	// jsoniter (already in the build through client-go) decodes this
	// schema about twice as fast as encoding/json; it is the tick's main cost.
	dec := jsonAPI.NewDecoder(io.LimitReader(resp.Body, c.opt.MaxBytes))
	if err := dec.Decode(&s); err != nil {
		return nil, errKind(ctx, err, "decode"), err
	}
	if s.Version != extproc.SnapshotVersion {
		return nil, "version", fmt.Errorf("version %q, want %q", s.Version, extproc.SnapshotVersion)
	}
	if s.BootID == "" {
		return nil, "decode", errors.New("empty boot_id")
	}
	return &s, "", nil
}

func errKind(ctx context.Context, err error, otherwise string) string {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return otherwise
}

// sumByWorkload adds up the records of one snapshot per workload. Records
// without a workload, or with a Reason (unknown, overflow), belong to no
// workload and are skipped.
func sumByWorkload(s *extproc.Snapshot) map[Workload]counters {
	m := make(map[Workload]counters, len(s.Targets))
	for i := range s.Targets {
		t := &s.Targets[i]
		if t.Reason != "" || t.Workload == "" || t.Namespace == "" {
			continue
		}
		w := Workload{t.Namespace, t.Workload}
		c := m[w]
		c.inFlight += t.InFlight
		c.started += t.Started
		c.completed += t.Completed
		c.busy += t.BusySeconds
		c.durSum += t.DurationSecondsSum
		m[w] = c
	}
	return m
}

// merge folds one tick's fetches into the kept state and sums per workload.
func (c *Collector) merge(out []fetched) Result {
	now := c.opt.Clock.Now()
	res := Result{Time: now, Workloads: map[Workload]Sample{}, Endpoints: len(out)}
	if len(out) == 0 {
		res.Partial = true
	}
	listed := make(map[string]bool, len(out))
	ok := make(map[string]bool, len(out))
	durs := map[Workload][2]float64{} // completed, duration sum in the interval
	for _, f := range out {
		listed[f.ep.Key] = true
		if f.err != nil {
			res.Partial = true
			res.Errors = append(res.Errors, *f.err)
			continue
		}
		res.Answered++
		ok[f.ep.Key] = true
		prev := c.replicas[f.ep.Key]
		reset := prev != nil && prev.bootID != f.snap.BootID
		if reset {
			res.Resets++
		}
		usable := prev != nil && !reset && f.snap.Time.After(prev.at)
		dt := 0.0
		if usable {
			dt = f.snap.Time.Sub(prev.at).Seconds()
		}
		r := &replica{bootID: f.snap.BootID, at: f.snap.Time, seen: now, counts: f.counts,
			lastConc: make(map[Workload]float64, len(f.counts))}
		for w, cur := range f.counts {
			s := res.Workloads[w]
			s.InFlight += float64(cur.inFlight)
			conc := float64(max(cur.inFlight, 0))
			if usable {
				p, had := prev.counts[w]
				if !had {
					// New target on a known replica: it began within the
					// interval, so its counters are all interval.
					p = counters{}
				}
				if cur.busy >= p.busy && cur.started >= p.started && cur.completed >= p.completed {
					conc = (cur.busy - p.busy) / dt
					s.Arrivals += float64(cur.started - p.started)
					s.Completions += float64(cur.completed - p.completed)
					dd := durs[w]
					dd[0] += float64(cur.completed - p.completed)
					dd[1] += cur.durSum - p.durSum
					durs[w] = dd
				}
				// A counter that went down without a new boot id breaks the
				// contract: use the point value, no delta.
			}
			s.Concurrency += conc
			r.lastConc[w] = conc
			res.Workloads[w] = s
		}
		// Workloads this replica reported before but not now: it forgot them
		// (no traffic); they contribute nothing.
		c.replicas[f.ep.Key] = r
	}
	// Silent or unlisted replicas.
	for key, r := range c.replicas {
		switch {
		case !listed[key]:
			// Not listed any more (scaled down, not ready): forget it.
			delete(c.replicas, key)
		case ok[key]:
			// Answered this tick.
		case now.Sub(r.seen) > c.opt.Expire:
			// Silent for too long: its last values no longer count (the
			// tick stays Partial while it is listed).
			delete(c.replicas, key)
		default:
			// Listed, silent, within Expire: its last values still count.
			for w, cur := range r.counts {
				s := res.Workloads[w]
				s.InFlight += float64(cur.inFlight)
				s.Concurrency += r.lastConc[w]
				res.Workloads[w] = s
			}
		}
	}
	for w, s := range res.Workloads {
		if dd := durs[w]; dd[0] > 0 && dd[1] >= 0 {
			c.meanDur[w] = time.Duration(dd[1] / dd[0] * float64(time.Second))
		}
		s.MeanDuration = c.meanDur[w]
		res.Workloads[w] = s
	}
	for w := range c.meanDur {
		if _, ok := res.Workloads[w]; !ok && len(c.meanDur) > 4*len(res.Workloads)+64 {
			delete(c.meanDur, w)
		}
	}
	sort.Slice(res.Errors, func(i, j int) bool { return res.Errors[i].Endpoint.Key < res.Errors[j].Endpoint.Key })
	return res
}

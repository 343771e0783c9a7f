// Package collect owns the controller's view of demand: every tick it fetches
// GET /v1/snapshot from every extproc replica in parallel, decodes the
// versioned extproc.Snapshot contract, checks it, and sums the counters per
// workload into what the policy observes: the exact mean concurrency over
// the interval (busy-seconds deltas per target, replica and boot id, divided
// by the replica's own uptime_seconds delta), in-flight now, arrivals,
// completions and mean duration.
//
// What is summed is checked, never trusted:
//
//   - Attribution: an inbound target counts for the workload the caller's
//     Attribution names (the controller: only targets whose pod is a live
//     pod of that Deployment); others are counted as unattributed. An
//     edge target (a Service) counts for the workloads the caller's
//     EdgeMap gives it to, in its shares; a request seen at both places
//     counts once (see Sample).
//   - Impossible numbers reject the whole snapshot (FetchError kind
//     "invalid", the tick is partial): a negative or non-finite counter;
//     completed > started or in_flight > started − completed; held
//     outside 0 to in_flight; a counter that
//     went down without a new boot id (a target whose
//     created_uptime_seconds changed, or whose started went down, was
//     evicted and re-created and starts from zero); a creation time beyond
//     the uptime; busy-seconds growth
//     beyond what the in-flight requests could accrue (Bound); a duration
//     sum growth beyond completed × uptime; uptime_seconds that does not
//     advance with this collector's clock (within the two fetches' round
//     trips); a wall-clock time that does not advance with uptime_seconds
//     (within ClockSkew).
//   - A catch-all record that may hide demand makes the tick partial for
//     what it may hide: "overflow" (the extproc's global bound on targets)
//     for every workload, "namespace_overflow" for its namespace, whenever
//     it has requests in flight or started any in the interval; so does a
//     growing untracked_total (requests the extproc answered without
//     tracking them) for the workload, namespace or everything it names.
//
// A replica that does not answer, answers with a rejected snapshot, or
// vanishes from the endpoint list makes the tick partial; its last accepted
// values keep counting for at most Options.Expire after its last accepted
// snapshot, and it is then forgotten. A new boot id is a counter reset:
// that replica contributes its in-flight now and no delta for one tick.
//
// It imports no Kubernetes client: endpoints and the attribution come in as
// plain values.
//
// Concurrency: a Collector belongs to one goroutine (the controller's tick
// loop): Tick fetches in parallel and merges after every fetch has
// returned; nothing else reads its state, so it has no lock.
package collect

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	jsoniter "github.com/json-iterator/go"
	"k8s.io/utils/clock"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/mesh"
)

// jsonAPI decodes snapshots. jsoniter (already in the build through
// client-go) decodes this schema several times faster than encoding/json;
// ObjectFieldMustBeSimpleString lets it match the field names of a record
// (more than ten, past its specialised decoders) without allocating a
// string per field: the contract's names are plain ASCII, never escaped.
var jsonAPI = jsoniter.Config{EscapeHTML: true, SortMapKeys: true, ValidateJsonRawMessage: true,
	ObjectFieldMustBeSimpleString: true}.Froze()

// record and snapshot are the contract's types.
type (
	record   = extproc.TargetRecord
	snapshot = extproc.Snapshot
)

// isEdge reports whether r is an edge record (a Service seen at a gateway
// or an outbound sidecar, with no workload or pod): its source says so,
// or, from an extproc that does not say, it names a Service and no
// workload.
func isEdge(r *record) bool {
	return r.Source == SourceEdge || r.Source == "" && r.Workload == "" && r.Service != ""
}

// Record sources (the snapshot's "source"), and Sample.Source.
const (
	SourceInbound = string(mesh.SourceInbound)
	SourceEdge    = string(mesh.SourceEdge)
	// SourceBoth (Sample.Source only): the workload's inbound sidecars
	// count it, and an edge sees requests for its Services too.
	SourceBoth = "both"
)

// Endpoint is one extproc replica.
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

// Target names one record of a snapshot.
type Target struct {
	Namespace, Workload, Service, Pod, Reason string
}

// Share is the part of an edge Service's demand that is one workload's.
type Share struct {
	Workload Workload
	// Fraction is in (0, 1]; the shares of one Service sum to 1.
	Fraction float64
}

// EdgeMap maps an edge target, a Service, to the workloads whose demand
// it is (the Deployments its selector selects) and the share of each;
// none: the Service is nobody's. The collector calls it at most once per
// Service and tick.
type EdgeMap func(namespace, service string) []Share

// Attribution maps a counted target (Reason "") to the workload whose
// demand it is; ok is false when it is nobody's.
type Attribution func(Target) (w Workload, ok bool)

// ByName attributes a target to the workload its record names: trust in
// the extproc's attribution, for tests and tools. The controller passes an
// Attribution that also checks the pod.
func ByName(t Target) (Workload, bool) {
	return Workload{t.Namespace, t.Workload}, t.Namespace != "" && t.Workload != ""
}

// Sample is one workload's demand over one tick, summed over the replicas.
//
// A request seen both at the edge and at the workload's inbound sidecar is
// counted once: when an inbound record of the workload was seen within
// Options.Expire (its pods are counted by a sidecar filter), the sample is
// the inbound demand plus the edge's held requests only (a held request
// cannot have reached a pod; a released one is counted by the sidecar);
// otherwise (a gateway-only or ambient install, or a workload at zero
// since longer than Expire) it is the edge's demand, all of it.
type Sample struct {
	// Concurrency is the mean requests in flight over the interval.
	Concurrency float64
	// InFlight is the requests in flight at the end of the interval, held
	// ones included.
	InFlight float64
	// Held is the part of InFlight held at the edge: requests waiting for
	// the workload to have a ready endpoint (scale from zero).
	Held float64
	// Source says where the demand was seen: SourceInbound, SourceEdge or
	// SourceBoth (see Sample).
	Source string
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
	// Partial is set when counts are a lower bound for every workload:
	// some listed endpoint did not answer or was rejected, a replica
	// vanished within Expire, the global overflow target is active, or
	// there was no endpoint at all.
	Partial bool
	// PartialNamespaces are namespaces whose counts are a lower bound (an
	// active namespace_overflow target, or requests the extproc could not
	// track for a target it gave to nobody); PartialWorkloads likewise for
	// one workload (requests it could not track). See PartialFor.
	PartialNamespaces map[string]bool
	PartialWorkloads  map[Workload]bool
	// Endpoints, Answered, Resets: how many were asked, answered with an
	// accepted snapshot, and came back with a new boot id.
	Endpoints, Answered, Resets int
	// Vanished counts replicas no longer listed whose last values still
	// count (and keep the tick partial).
	Vanished int
	// Overflow is set when a global overflow target was active.
	Overflow bool
	// Unattributed is the in-flight count of targets that named a workload
	// but that the Attribution gave to nobody; UnattributedTargets counts
	// those targets.
	Unattributed        float64
	UnattributedTargets int
	// Unmapped is the in-flight count of edge targets whose Service the
	// EdgeMap gave to nobody (it selects no Deployment).
	Unmapped float64
	// Errors lists the replicas that did not answer, or whose snapshot was
	// rejected, and why.
	Errors []FetchError
}

// PartialFor reports whether the counts of workload w are a lower bound
// this tick.
func (r *Result) PartialFor(w Workload) bool {
	return r.Partial || r.PartialNamespaces[w.Namespace] || r.PartialWorkloads[w]
}

// FetchError is one failed or rejected snapshot.
type FetchError struct {
	Endpoint Endpoint
	// Kind is a bounded label: "timeout", "connect", "http-status",
	// "decode", "version" (the fetch failed) or "invalid" (the snapshot
	// held impossible numbers and was rejected).
	Kind     string
	Err      error
	Duration time.Duration
}

func (e FetchError) Error() string {
	return fmt.Sprintf("snapshot %s (%s): %s: %v", e.Endpoint.Key, e.Endpoint.URL, e.Kind, e.Err)
}

// KindInvalid is the FetchError kind of a rejected snapshot.
const KindInvalid = "invalid"

// Observer receives per-fetch outcomes, e.g. for metrics. Implementations
// must be safe for concurrent use (fetches run in parallel).
type Observer interface {
	// Fetched is called once per endpoint per tick; kind is "" when the
	// fetch succeeded (its snapshot may still be rejected: see Result).
	Fetched(kind string, d time.Duration)
}

// Doer is the HTTP client the collector needs.
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

var _ Doer = (*http.Client)(nil)

// ClockSkew bounds how far a snapshot's wall-clock time may move apart from
// its uptime_seconds between two snapshots: 50 ms plus 1 % of the
// interval. NTP slews a clock by at most 0.05 %, far inside it; a step
// (ntpd and chrony step only offsets beyond 128 ms) or a forged clock
// rejects the snapshot once, and the next one is checked against it.
const ClockSkew = 50 * time.Millisecond

// Options configure a Collector.
type Options struct {
	// Timeout bounds one snapshot fetch (default 500ms).
	Timeout time.Duration
	// Expire is how long a silent, rejected or vanished replica's last
	// accepted values keep counting (default 10s). The tick stays Partial
	// meanwhile.
	Expire time.Duration
	// MaxBytes bounds one snapshot body (default 64 MiB).
	MaxBytes int64
	// Client does the requests (default: a dedicated http.Client).
	Client Doer
	// Observer, if set, is told about every fetch.
	Observer Observer
	// Clock is the collector's clock (nil: the real clock). Fetch start and
	// end times come from it.
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
		}}
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
}

// baseline is the last snapshot received from a replica, accepted or not:
// the next one is checked and differenced against it. targets is the
// snapshot's own record slice, sorted by key (the contract's order).
type baseline struct {
	bootID     string
	uptime     float64
	wall       time.Time
	begin, end time.Time // this collector's clock around the fetch
	targets    []record
}

// replica is what is kept of one endpoint between ticks.
type replica struct {
	base baseline
	// The last accepted snapshot's records and the mean concurrency each
	// contributed, and when it was accepted (this collector's clock):
	// silent, rejected or vanished, the replica keeps contributing these
	// until Expire.
	seen     time.Time
	accepted []record
	conc     []float64
}

// Collector keeps the previous snapshot of every replica. Create it with New.
type Collector struct {
	opt      Options
	replicas map[string]*replica
	meanDur  map[Workload]time.Duration
	// inbound is when an inbound record of each workload was last summed
	// (the demand rule of Sample).
	inbound map[Workload]time.Time
}

// New returns a Collector.
func New(opt Options) *Collector {
	opt.defaults()
	return &Collector{opt: opt, replicas: map[string]*replica{}, meanDur: map[Workload]time.Duration{},
		inbound: map[Workload]time.Time{}}
}

type fetched struct {
	ep         Endpoint
	snap       *snapshot
	begin, end time.Time
	err        *FetchError
}

// Tick fetches every endpoint in parallel and returns the checked demand per
// workload, attributing each counted inbound target with attr (nil:
// ByName) and each edge target with edges (nil: nobody's). Call it once
// per tick from one goroutine.
func (c *Collector) Tick(ctx context.Context, endpoints []Endpoint, attr Attribution, edges EdgeMap) Result {
	if attr == nil {
		attr = ByName
	}
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
	return c.merge(out, attr, edges)
}

func (c *Collector) fetch(ctx context.Context, ep Endpoint) fetched {
	begin := c.opt.Clock.Now()
	start := time.Now()
	snap, kind, err := c.get(ctx, ep.URL)
	d := time.Since(start)
	end := c.opt.Clock.Now()
	if c.opt.Observer != nil {
		c.opt.Observer.Fetched(kind, d)
	}
	if err != nil {
		return fetched{ep: ep, begin: begin, end: end, err: &FetchError{Endpoint: ep, Kind: kind, Err: err, Duration: d}}
	}
	return fetched{ep: ep, snap: snap, begin: begin, end: end}
}

func (c *Collector) get(ctx context.Context, url string) (*snapshot, string, error) {
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
	var s snapshot
	// Decoding is the tick's main cost (see jsonAPI).
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

// Bound is the most busy-seconds a target can accrue between two reads of
// it: every request in flight at any instant of the interval was either in
// flight at the first read or started within the interval, so in-flight
// never exceeds prevInFlight + started; and the interval between the two
// reads of a record is at most dUptime + fetch, the uptime_seconds delta
// plus the duration of the second fetch (each record is read while its
// request is served, after the snapshot's uptime). A relative 1e-9 and an
// absolute 1e-6 request-seconds absorb float rounding.
func Bound(prevInFlight int64, started uint64, dUptime, fetch float64) float64 {
	return (float64(max(prevInFlight, 0))+float64(started))*(dUptime+fetch)*(1+1e-9) + 1e-6
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

func key(r *record) Target {
	return Target{r.Namespace, r.Workload, r.Service, r.Pod, r.Reason}
}

// compare orders records by (namespace, workload, service, pod, reason),
// the order of the snapshot contract.
func compare(a, b *record) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Workload, b.Workload),
		strings.Compare(a.Service, b.Service), strings.Compare(a.Pod, b.Pod), strings.Compare(a.Reason, b.Reason))
}

// sorted returns the snapshot's records in contract order (sorting them in
// place when a replica did not), or an error for a target listed twice.
func sorted(ts []record) error {
	for i := 1; i < len(ts); i++ {
		if compare(&ts[i-1], &ts[i]) >= 0 {
			slices.SortFunc(ts, func(a, b record) int { return compare(&a, &b) })
			break
		}
	}
	for i := 1; i < len(ts); i++ {
		if compare(&ts[i-1], &ts[i]) == 0 {
			return fmt.Errorf("target %v: listed twice", key(&ts[i]))
		}
	}
	return nil
}

// delta is one record of a checked snapshot and the index of its previous
// counters in the baseline (-1: none, because it is new, was evicted and
// re-created, or there is no baseline: its previous counters are zero).
type delta struct {
	r    *record
	prev int
}

var zero record

// previous returns d's previous counters in base.
func (d delta) previous(base *baseline) *record {
	if d.prev < 0 {
		return &zero
	}
	return &base.targets[d.prev]
}

// check validates a snapshot against the replica's baseline (nil: none, or
// another boot) and returns each record with its previous counters, and
// the interval in seconds (0: no usable interval, point values only).
func (c *Collector) check(f *fetched, prev *baseline) ([]delta, float64, error) {
	s := f.snap
	// Sorted first: even a rejected snapshot becomes the next baseline.
	if err := sorted(s.Targets); err != nil {
		return nil, 0, err
	}
	if !finite(s.UptimeSeconds) || s.UptimeSeconds < 0 {
		return nil, 0, fmt.Errorf("uptime_seconds %v: want a finite value ≥ 0", s.UptimeSeconds)
	}
	fetch := f.end.Sub(f.begin).Seconds()
	dt := 0.0
	if prev != nil {
		du := s.UptimeSeconds - prev.uptime
		// The snapshot's uptime was read during its fetch, the previous
		// one during the previous fetch: du must lie between the gap of
		// the two fetches and their span (1 ms and 0.1 % of slack).
		lo, hi := f.begin.Sub(prev.end).Seconds(), f.end.Sub(prev.begin).Seconds()
		slack := 1e-3 + 1e-3*hi
		if du < lo-slack || du > hi+slack {
			return nil, 0, fmt.Errorf("uptime_seconds advanced %.6fs while %.6fs to %.6fs passed here: its clock is out of line", du, lo, hi)
		}
		dw := s.Time.Sub(prev.wall).Seconds()
		if tol := ClockSkew.Seconds() + 0.01*math.Abs(du); math.Abs(dw-du) > tol {
			return nil, 0, fmt.Errorf("time advanced %.3fs while uptime_seconds advanced %.3fs: its wall clock is out of line (tolerance %.3fs)", dw, du, tol)
		}
		dt = max(du, 0)
	}
	out := make([]delta, len(s.Targets))
	j := 0 // merge join with the baseline's records, both sorted
	for i := range s.Targets {
		n := &s.Targets[i]
		d := delta{r: n, prev: -1}
		switch {
		case n.InFlight < 0:
			return nil, 0, fmt.Errorf("target %v: in_flight %d < 0", key(n), n.InFlight)
		case n.Held < 0 || n.Held > n.InFlight:
			return nil, 0, fmt.Errorf("target %v: held %d: want 0 to in_flight %d (held requests are in flight)", key(n), n.Held, n.InFlight)
		case !finite(n.BusySeconds) || n.BusySeconds < 0 || !finite(n.DurationSecondsSum) || n.DurationSecondsSum < 0:
			return nil, 0, fmt.Errorf("target %v: busy_seconds_total %v, duration_seconds_sum %v: want finite values ≥ 0",
				key(n), n.BusySeconds, n.DurationSecondsSum)
		case n.Completed > n.Started || uint64(n.InFlight) > n.Started-n.Completed:
			return nil, 0, fmt.Errorf("target %v: in_flight %d, started %d, completed %d: want completed ≤ started and in_flight ≤ started − completed",
				key(n), n.InFlight, n.Started, n.Completed)
		}
		created := n.CreatedUptimeSeconds
		if !finite(created) || created < 0 || created > s.UptimeSeconds+1e-6 {
			return nil, 0, fmt.Errorf("target %v: created_uptime_seconds %v: want 0 to uptime_seconds %v", key(n), created, s.UptimeSeconds)
		}
		// The previous counters of this record: none on a first snapshot
		// (everything since its creation), zero for a target that is new or
		// was evicted and re-created (another created_uptime_seconds, or,
		// from an extproc that does not say, started went down): everything
		// since its creation, which is after the previous snapshot.
		span := s.UptimeSeconds - created + fetch
		if prev != nil {
			span = min(dt, s.UptimeSeconds-created) + fetch
			for j < len(prev.targets) && compare(&prev.targets[j], n) < 0 {
				j++
			}
			if j < len(prev.targets) && compare(&prev.targets[j], n) == 0 {
				q := &prev.targets[j]
				if math.Abs(q.CreatedUptimeSeconds-created) <= 1e-9 && n.Started >= q.Started {
					d.prev, span = j, dt+fetch
				}
			}
		}
		p := d.previous(prev)
		if n.Completed < p.Completed || n.Untracked < p.Untracked || n.BusySeconds < p.BusySeconds-1e-6 || n.DurationSecondsSum < p.DurationSecondsSum-1e-6 {
			return nil, 0, fmt.Errorf("target %v: a counter went down without a new boot id (completed %d→%d, untracked_total %d→%d, busy_seconds_total %v→%v, duration_seconds_sum %v→%v)",
				key(n), p.Completed, n.Completed, p.Untracked, n.Untracked, p.BusySeconds, n.BusySeconds, p.DurationSecondsSum, n.DurationSecondsSum)
		}
		if b := Bound(p.InFlight, n.Started-p.Started, span, 0); n.BusySeconds-p.BusySeconds > b {
			return nil, 0, fmt.Errorf("target %v: busy_seconds_total grew %v in %.3fs; at most %v with %d in flight before and %d started",
				key(n), n.BusySeconds-p.BusySeconds, span, b, p.InFlight, n.Started-p.Started)
		}
		if b := float64(n.Completed-p.Completed)*(s.UptimeSeconds+fetch)*(1+1e-9) + 1e-6; n.DurationSecondsSum-p.DurationSecondsSum > b {
			return nil, 0, fmt.Errorf("target %v: duration_seconds_sum grew %v for %d completions; at most %v (each shorter than the uptime)",
				key(n), n.DurationSecondsSum-p.DurationSecondsSum, n.Completed-p.Completed, b)
		}
		out[i] = d
	}
	return out, dt, nil
}

// sums accumulates one side's demand (inbound or edge) per workload.
type sums struct {
	s    Sample
	durs [2]float64 // completed, duration sum in the interval
}

// merge checks one tick's fetches, folds them into the kept state and sums
// per workload.
func (c *Collector) merge(out []fetched, attr Attribution, edges EdgeMap) Result {
	now := c.opt.Clock.Now()
	res := Result{Time: now, Workloads: map[Workload]Sample{}, PartialNamespaces: map[string]bool{},
		PartialWorkloads: map[Workload]bool{}, Endpoints: len(out)}
	if len(out) == 0 {
		res.Partial = true
	}
	ok := make(map[string]bool, len(out))
	listed := make(map[string]bool, len(out))
	inbound, edge := map[Workload]*sums{}, map[Workload]*sums{}
	at := func(m map[Workload]*sums, w Workload) *sums {
		s := m[w]
		if s == nil {
			s = &sums{}
			m[w] = s
		}
		return s
	}
	type svc struct{ namespace, name string }
	mapped := map[svc][]Share{}
	shares := func(r *record) []Share {
		k := svc{r.Namespace, r.Service}
		sh, seen := mapped[k]
		if !seen {
			if edges != nil {
				sh = edges(r.Namespace, r.Service)
			}
			mapped[k] = sh
		}
		return sh
	}
	// add counts a counted record's in-flight and concurrency, and with
	// interval (p: its previous counters) its arrivals, completions and
	// durations, for the workloads it is demand of.
	add := func(r *record, conc float64, p *record) {
		one := func(s *sums, f float64) {
			s.s.InFlight += f * float64(r.InFlight)
			s.s.Held += f * float64(r.Held)
			s.s.Concurrency += f * conc
			if p == nil {
				return
			}
			s.s.Arrivals += f * float64(r.Started-p.Started)
			s.s.Completions += f * float64(r.Completed-p.Completed)
			s.durs[0] += f * float64(r.Completed-p.Completed)
			s.durs[1] += f * (r.DurationSecondsSum - p.DurationSecondsSum)
		}
		if isEdge(r) {
			sh := shares(r)
			if len(sh) == 0 {
				res.Unmapped += float64(r.InFlight)
			}
			for _, x := range sh {
				one(at(edge, x.Workload), x.Fraction)
			}
			return
		}
		w, yes := attr(key(r))
		if !yes {
			if r.Workload != "" {
				res.Unattributed += float64(r.InFlight)
				res.UnattributedTargets++
			}
			return
		}
		c.inbound[w] = now
		one(at(inbound, w), 1)
	}
	for i := range out {
		f := &out[i]
		listed[f.ep.Key] = true
		if f.err != nil {
			res.Partial = true
			res.Errors = append(res.Errors, *f.err)
			continue
		}
		r := c.replicas[f.ep.Key]
		var prev *baseline
		reset := r != nil && r.base.bootID != f.snap.BootID
		if r != nil && !reset {
			prev = &r.base
		}
		base := baseline{bootID: f.snap.BootID, uptime: f.snap.UptimeSeconds, wall: f.snap.Time,
			begin: f.begin, end: f.end, targets: f.snap.Targets}
		ds, dt, err := c.check(f, prev)
		if err != nil {
			res.Partial = true
			res.Errors = append(res.Errors, FetchError{Endpoint: f.ep, Kind: KindInvalid, Err: err, Duration: f.end.Sub(f.begin)})
			if prev != nil {
				// The next snapshot is checked against this one, so a
				// single bad one (or a clock step) costs one tick.
				r.base = base
			}
			continue
		}
		res.Answered++
		ok[f.ep.Key] = true
		if reset {
			res.Resets++
		}
		nr := &replica{base: base, seen: now, accepted: f.snap.Targets, conc: make([]float64, len(ds))}
		for k, d := range ds {
			n, p := d.r, d.previous(prev)
			if n.Untracked > p.Untracked {
				// Requests the extproc answered without tracking (its
				// open-stream cap): their time in flight is unknown, so
				// the counts of whoever they were for are a lower bound.
				w, yes := attr(key(n))
				switch {
				case n.Reason == "" && !isEdge(n) && yes:
					res.PartialWorkloads[w] = true
				case n.Reason == "" && isEdge(n) && len(shares(n)) > 0:
					for _, x := range shares(n) {
						res.PartialWorkloads[x.Workload] = true
					}
				case n.Namespace != "":
					res.PartialNamespaces[n.Namespace] = true
				default:
					res.Partial = true
				}
			}
			if n.Reason != "" {
				// A catch-all record: nobody's demand, but the overflow
				// ones may hide some while active.
				if n.InFlight > 0 || n.Started > p.Started || prev != nil && d.prev < 0 {
					switch mesh.Reason(n.Reason) {
					case mesh.ReasonOverflow:
						res.Partial, res.Overflow = true, true
					case mesh.ReasonNamespaceOverflow:
						res.PartialNamespaces[n.Namespace] = true
					}
				}
				continue
			}
			conc := float64(n.InFlight) // no interval: the point value
			if dt > 0 {
				conc = max(n.BusySeconds-p.BusySeconds, 0) / dt
			} else {
				p = nil
			}
			nr.conc[k] = conc
			add(n, conc, p)
		}
		c.replicas[f.ep.Key] = nr
	}
	// Silent, rejected or vanished replicas: their last accepted values
	// count until Expire, and the tick is partial while any is kept.
	for k, r := range c.replicas {
		if ok[k] {
			continue
		}
		if now.Sub(r.seen) > c.opt.Expire {
			delete(c.replicas, k)
			continue
		}
		res.Partial = true
		if !listed[k] {
			res.Vanished++
		}
		for i := range r.accepted {
			if r.accepted[i].Reason == "" {
				add(&r.accepted[i], r.conc[i], nil)
			}
		}
	}
	c.combine(&res, inbound, edge)
	sort.Slice(res.Errors, func(i, j int) bool { return res.Errors[i].Endpoint.Key < res.Errors[j].Endpoint.Key })
	return res
}

// combine applies the demand rule of Sample to each workload's inbound and
// edge sums, and the mean durations.
func (c *Collector) combine(res *Result, inbound, edge map[Workload]*sums) {
	now := res.Time
	for w, t := range c.inbound {
		if now.Sub(t) > c.opt.Expire {
			delete(c.inbound, w)
		}
	}
	for w, in := range inbound {
		s, durs := in.s, in.durs
		s.Source = SourceInbound
		if e := edge[w]; e != nil {
			s.Source = SourceBoth
			s.InFlight += e.s.Held
			s.Concurrency += e.s.Held // waiting the whole interval, as far as is known
			s.Held += e.s.Held
		}
		c.sample(res, w, s, durs)
	}
	for w, e := range edge {
		if _, done := inbound[w]; done {
			continue
		}
		if _, counted := c.inbound[w]; counted {
			// Counted by its sidecars within Expire, none of them now:
			// only the held requests are not theirs.
			c.sample(res, w, Sample{InFlight: e.s.Held, Concurrency: e.s.Held, Held: e.s.Held, Source: SourceBoth}, [2]float64{})
			continue
		}
		s := e.s
		s.Source = SourceEdge
		c.sample(res, w, s, e.durs)
	}
	for w := range c.meanDur {
		if _, ok := res.Workloads[w]; !ok && len(c.meanDur) > 4*len(res.Workloads)+64 {
			delete(c.meanDur, w)
		}
	}
}

// sample records one workload's sample with its mean duration.
func (c *Collector) sample(res *Result, w Workload, s Sample, durs [2]float64) {
	if durs[0] > 0 && durs[1] >= 0 {
		c.meanDur[w] = time.Duration(durs[1] / durs[0] * float64(time.Second))
	}
	s.MeanDuration = c.meanDur[w]
	res.Workloads[w] = s
}

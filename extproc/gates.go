package extproc

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/inflight-dev/inflight/mesh"
)

// This file holds the gate table (ISSUE12.md): what the leading controller
// sends every extproc with PUT /v1/gates, once per tick and at once when a
// Service's ready endpoints go from 0 to more, and the per-gate state it
// drives — the hold queues of edge requests for a workload with no ready
// endpoint, and the admitted-request counts that shedding compares with
// the limits.
//
// Concurrency: the table is swapped whole through an atomic pointer, so a
// request that no gate concerns pays one atomic load; an edge or inbound
// request pays one map lookup more. Each gate's state survives table swaps
// (its counts and queue are per Service or workload, not per document) and
// has its own mutex, taken only by requests that are held or may be (a gate
// that says hold while its Service is at zero, warming up or draining its
// queue) and by the requests released from a queue when they end; the
// others update one atomic counter when they start and end. Gates.mu
// serializes Apply, expiry and Close and guards the set of states; it is
// never taken on a request's path. Accuracy: a state with nothing counted
// is forgotten when a table stops naming it; a request that read the old
// table an instant before counts in the forgotten state, so if a later
// table names the gate again its limit may be off by such requests (a
// window of microseconds, only when a gate disappears and comes back).
// Counting in flight (the Tracker) is exact regardless.

// GatesVersion names the JSON contract of PUT /v1/gates.
const GatesVersion = "inflight.dev/gates/v1"

// Bounds on a gate document: a buggy or hostile controller cannot make the
// extproc hold more than this (README, Security → Limits).
const (
	// MaxGates bounds the entries of one document.
	MaxGates = 10000
	// MaxGatesBytes bounds the body of PUT /v1/gates.
	MaxGatesBytes = 4 << 20
	// MaxGatesExpiresIn bounds expires_in_seconds: how long a document
	// stays in force without a newer one (the controller sends one per tick).
	MaxGatesExpiresIn = 300
	// MaxHoldTimeoutSeconds is the longest hold_timeout_seconds accepted:
	// 59 min, the inflight.dev/hold-timeout annotation's bound
	// (scaling.MaxHoldTimeout), so that the override hold_timeout + 1 s is
	// at most max_message_timeout, which Envoy caps at 1 h.
	MaxHoldTimeoutSeconds = 3540
	maxReadyEndpoints     = 100000
	maxReleasePerEndpoint = 10000
	maxGateLimit          = 1e7
	// maxGateErrors bounds the problems one 400 answer lists.
	maxGateErrors = 20
)

// maxOverride is the longest override_message_timeout Envoy honours: it
// ignores one above max_message_timeout, which is at most 1 h. A hold
// therefore lasts at most maxOverride − 1 s, so that the extproc's own 503
// comes before Envoy's timer (ENVOY.md §5).
const maxOverride = time.Hour

// Defaults of GatesOptions.
const (
	// DefaultReleaseDelay is how long a Service's gate must report ready
	// endpoints, after reporting none, before its held requests are
	// released: the margin for the endpoint to reach the proxy (pod Ready →
	// EndpointSlice → istiod's debounce, 100 ms at least → push → Envoy).
	// A request released before its proxy has the endpoint gets 503
	// no_healthy_upstream at once, with no retry (ENVOY.md §5).
	DefaultReleaseDelay = time.Second
	// DefaultMaxHeld bounds the requests held at once on one replica,
	// whatever the gates say.
	DefaultMaxHeld = 5000
)

// GatesDocument is the body of PUT /v1/gates (ISSUE12.md). Unknown fields
// are ignored, so that fields can be added within a version.
type GatesDocument struct {
	Version string `json:"version"`
	// Controller names the sender (the leading controller's pod), for logs.
	Controller string `json:"controller"`
	// ExpiresInSeconds: the document is in force for this long after the
	// extproc received it (its own monotonic clock: no clock skew). Then
	// every held request is released and nothing is shed (fail-open).
	ExpiresInSeconds float64 `json:"expires_in_seconds"`
	// Share is this replica's share of the workload limits: 1 / the number
	// of ready extproc replicas.
	Share float64  `json:"share"`
	Gates GateList `json:"gates"`
}

// Gate is one Service's or workload's entry.
//
// An entry with a Service is the gate of edge requests for that Service
// (unique per namespace); one with a Workload is also (or only, without a
// Service) the gate of inbound requests to that workload. A workload named
// by several entries gets the largest max_in_flight of them, or none if
// one of them has none.
type Gate struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service,omitempty"`
	Workload  string `json:"workload,omitempty"`
	// ReadyEndpoints is the Service's ready endpoint count.
	ReadyEndpoints int `json:"ready_endpoints"`
	// Hold: edge requests for the Service are held while it has no ready
	// endpoint (scale from zero), for at most HoldTimeoutSeconds, then
	// released ReleasePerEndpoint per ready endpoint at a time.
	Hold               bool    `json:"hold"`
	HoldTimeoutSeconds float64 `json:"hold_timeout_seconds,omitempty"`
	ReleasePerEndpoint float64 `json:"release_per_endpoint,omitempty"`
	// MaxInFlight bounds the requests in flight (held ones included) for the
	// whole workload, MaxHeld the held ones; 0 is no bound (MaxHeld: the
	// extproc's own). Each replica enforces its Share, rounded up.
	MaxInFlight float64 `json:"max_in_flight"`
	MaxHeld     float64 `json:"max_held"`
}

// GateList is a document's entries. It decodes at most MaxGates of them, so
// a huge document costs its bytes and no more.
type GateList []Gate

// UnmarshalJSON implements json.Unmarshaler.
func (l *GateList) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		*l = nil
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return gatesFieldError("gates: want an array")
	}
	out := GateList{}
	for dec.More() {
		if len(out) == MaxGates {
			return gatesFieldError(fmt.Sprintf("gates: more than %d entries", MaxGates))
		}
		var g Gate
		if err := dec.Decode(&g); err != nil {
			var typeErr *json.UnmarshalTypeError
			if errors.As(err, &typeErr) {
				return gatesFieldError(fmt.Sprintf("gates[%d].%s: want a JSON %s, got %s", len(out), typeErr.Field, typeErr.Type, typeErr.Value))
			}
			return gatesFieldError(fmt.Sprintf("gates[%d]: %v", len(out), err))
		}
		out = append(out, g)
	}
	*l = out
	return nil
}

// gatesFieldError is a decoding error that names its field.
type gatesFieldError string

func (e gatesFieldError) Error() string { return string(e) }

// Validate reports what is wrong with the document, naming each field with
// its value and what is allowed (at most maxGateErrors problems).
func (d *GatesDocument) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		if len(errs) < maxGateErrors {
			errs = append(errs, fmt.Errorf(format, a...))
		}
	}
	if d.Version != GatesVersion {
		bad("version=%s: want %q", quote(d.Version), GatesVersion)
	}
	if d.Controller == "" || len(d.Controller) > 253 {
		bad("controller=%s: want a name of 1 to 253 characters", quote(d.Controller))
	}
	if !(d.ExpiresInSeconds >= 1 && d.ExpiresInSeconds <= MaxGatesExpiresIn) {
		bad("expires_in_seconds=%v: want 1 to %d", d.ExpiresInSeconds, MaxGatesExpiresIn)
	}
	if !(d.Share > 0 && d.Share <= 1) {
		bad("share=%v: want more than 0 and at most 1 (1 / ready extproc replicas)", d.Share)
	}
	if len(d.Gates) > MaxGates {
		bad("gates: %d entries, want at most %d", len(d.Gates), MaxGates)
		return errors.Join(errs...)
	}
	services := make(map[[2]string]int, len(d.Gates))
	for i := range d.Gates {
		g := &d.Gates[i]
		f := func(field string) string { return "gates[" + strconv.Itoa(i) + "]." + field }
		if !mesh.IsDNSLabel(g.Namespace) {
			bad("%s=%s: want a namespace name (RFC 1123 label)", f("namespace"), quote(g.Namespace))
		}
		if g.Service != "" && !mesh.IsDNSLabel(g.Service) {
			bad("%s=%s: want a Service name (RFC 1123 label)", f("service"), quote(g.Service))
		}
		if g.Workload != "" && !mesh.IsDNSSubdomain(g.Workload) {
			bad("%s=%s: want a Deployment name (RFC 1123 subdomain)", f("workload"), quote(g.Workload))
		}
		if g.Service == "" && g.Workload == "" {
			bad("%s and %s are both empty: want a Service, a workload or both", f("service"), f("workload"))
		}
		if g.Service != "" {
			k := [2]string{g.Namespace, g.Service}
			if j, dup := services[k]; dup {
				bad("%s=%s: gates[%d] already names this Service in namespace %s", f("service"), quote(g.Service), j, quote(g.Namespace))
			} else {
				services[k] = i
			}
		}
		if g.ReadyEndpoints < 0 || g.ReadyEndpoints > maxReadyEndpoints {
			bad("%s=%d: want 0 to %d", f("ready_endpoints"), g.ReadyEndpoints, maxReadyEndpoints)
		}
		if g.Hold {
			if g.Service == "" {
				bad("%s=true without %s: only edge requests (for a Service) are held", f("hold"), f("service"))
			}
			if !(g.HoldTimeoutSeconds >= 1 && g.HoldTimeoutSeconds <= MaxHoldTimeoutSeconds) {
				bad("%s=%v: want 1 to %d when hold is true", f("hold_timeout_seconds"), g.HoldTimeoutSeconds, MaxHoldTimeoutSeconds)
			}
			if !(g.ReleasePerEndpoint > 0 && g.ReleasePerEndpoint <= maxReleasePerEndpoint) {
				bad("%s=%v: want more than 0 and at most %d when hold is true", f("release_per_endpoint"), g.ReleasePerEndpoint, maxReleasePerEndpoint)
			}
		} else {
			if !(g.HoldTimeoutSeconds >= 0 && g.HoldTimeoutSeconds <= MaxHoldTimeoutSeconds) {
				bad("%s=%v: want 0 to %d", f("hold_timeout_seconds"), g.HoldTimeoutSeconds, MaxHoldTimeoutSeconds)
			}
			if !(g.ReleasePerEndpoint >= 0 && g.ReleasePerEndpoint <= maxReleasePerEndpoint) {
				bad("%s=%v: want 0 to %d", f("release_per_endpoint"), g.ReleasePerEndpoint, maxReleasePerEndpoint)
			}
		}
		for _, l := range []struct {
			field string
			v     float64
		}{{"max_in_flight", g.MaxInFlight}, {"max_held", g.MaxHeld}} {
			if !(l.v >= 0 && l.v <= maxGateLimit) {
				bad("%s=%v: want 0 (no bound) to %g", f(l.field), l.v, float64(maxGateLimit))
			}
		}
	}
	return errors.Join(errs...)
}

// quote quotes a value for an error message, cut to 64 bytes: messages
// echo the document, which must not make them large.
func quote(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "…"
	}
	return strconv.Quote(s)
}

// GatesOptions configures Gates. The zero value is usable.
type GatesOptions struct {
	// ReleaseDelay: DefaultReleaseDelay when 0; negative means none.
	ReleaseDelay time.Duration
	// MaxHeld bounds the requests held at once (DefaultMaxHeld when 0).
	// Beyond it a request that would be held is let through if its Service
	// has ready endpoints, else shed.
	MaxHeld int
	// Metrics and Log may be nil.
	Metrics *Metrics
	Log     *zap.Logger
}

// ErrGatesClosed is Apply's error once Close was called (the replica is
// shutting down).
var ErrGatesClosed = errors.New("gates closed: the extproc is shutting down")

// Gates is the gate table in force and the state of each gate. Its
// methods are safe for concurrent use.
type Gates struct {
	delay   int64 // ReleaseDelay, ns
	maxHeld int64
	metrics *Metrics
	log     *zap.Logger
	epoch   time.Time

	table atomic.Pointer[gateTable] // nil: no gates in force
	held  *atomic.Int64             // requests in a hold queue, all gates (in metrics)

	mu      sync.Mutex // guards what follows
	states  map[gateKey]*gateState
	gen     uint64 // Apply and expiry generation
	expiry  *time.Timer
	closed  bool
	current *GatesDocument // the document in force (nil: none); when it was received: metrics.gatesAt

	wakeMu  sync.Mutex    // guards wakeSeq and wakeCh; taken after a gateState's mu
	wakeSeq uint64        // wakes so far
	wakeCh  chan struct{} // closed and replaced at each wake
	waitEnd chan struct{} // closed once, by EndWakeWaits
	endOnce sync.Once
	waiters atomic.Int64 // WaitWake calls waiting now
}

// gateTable is one document's gates, immutable once published.
type gateTable struct {
	states map[gateKey]*gateState
}

type gateKind uint8

const (
	gateEdge    gateKind = iota // by (namespace, Service)
	gateInbound                 // by (namespace, workload)
)

type gateKey struct {
	kind            gateKind
	namespace, name string
}

// gateConfig is one gate's settings for this replica, derived from a
// document; immutable.
type gateConfig struct {
	ready       int
	hold        bool
	holdTimeout time.Duration
	// Per-replica limits (the whole's share, rounded up; 0: none).
	inFlightLimit int64
	heldLimit     int64
	releaseLimit  int64
}

// gateState is one gate's state across documents.
type gateState struct {
	g *Gates

	cfg    atomic.Pointer[gateConfig] // nil: no gate in force
	open   atomic.Bool                // edge: requests continue without taking mu
	active atomic.Int64               // admitted and not ended (held ones included)

	mu         sync.Mutex // guards what follows
	head, tail *holdTicket
	queued     int64
	released   int64 // released from the queue and not ended
	zeroSeen   bool  // the last gate reported no ready endpoint
	readyAt    int64 // release allowed from (after zeroSeen turned false)
	timer      *time.Timer
	gen        uint64 // the last generation that named this gate
}

// A holdTicket is one held request's place in its gate's queue.
type holdTicket struct {
	prev, next *holdTicket
	state      ticketState
	timeout    time.Duration
	released   chan struct{} // closed on release
}

type ticketState uint8

const (
	ticketQueued ticketState = iota
	ticketReleased
	ticketRemoved // timed out, or left the queue when its request ended
)

// Why held requests were released. Values index Metrics.releases.
type releaseCause uint8

const (
	releaseReady    releaseCause = iota // the gate reports ready endpoints (paced)
	releaseExpired                      // the gate table expired
	releaseNoGate                       // the gate was removed or stopped holding
	releaseShutdown                     // Close
	numReleaseCauses
)

var releaseCauseNames = [numReleaseCauses]string{"ready", "expired", "no_gate", "shutdown"}

// Which limit a request was shed by. Values index Metrics.shedBy.
type shedLimit uint8

const (
	shedMaxInFlight shedLimit = iota
	shedMaxHeld
	shedExtprocMaxHeld
	numShedLimits
)

var shedLimitNames = [numShedLimits]string{"max_in_flight", "max_held", "extproc_max_held"}

// NewGates returns Gates with no table in force: nothing is held or shed
// until the first Apply.
func NewGates(o GatesOptions) *Gates {
	g := &Gates{delay: int64(max(cmp.Or(o.ReleaseDelay, DefaultReleaseDelay), 0)), maxHeld: int64(cmp.Or(o.MaxHeld, DefaultMaxHeld)),
		metrics: o.Metrics, log: o.Log, epoch: time.Now(), states: map[gateKey]*gateState{},
		wakeCh: make(chan struct{}), waitEnd: make(chan struct{})}
	if g.metrics == nil {
		g.metrics = newMetrics()
	}
	if g.log == nil {
		g.log = zap.NewNop()
	}
	g.held = &g.metrics.held
	g.metrics.maxHeld.Store(g.maxHeld)
	return g
}

func (g *Gates) now() int64 { return int64(time.Since(g.epoch)) }

// Apply validates doc and, if it is valid, puts it in force in place of the
// previous one, atomically: a request sees either table whole.
func (g *Gates) Apply(doc *GatesDocument) error {
	if err := doc.Validate(); err != nil {
		g.metrics.gatesRejected.Inc()
		return err
	}
	cfgs := configs(doc)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrGatesClosed
	}
	now := g.now()
	g.gen++
	tab := &gateTable{states: make(map[gateKey]*gateState, len(cfgs))}
	for k, c := range cfgs {
		st := g.states[k]
		if st == nil {
			st = &gateState{g: g}
			st.open.Store(true)
			g.states[k] = st
		}
		st.gen = g.gen
		tab.states[k] = st
		st.mu.Lock()
		st.set(c, now, releaseNoGate)
		st.mu.Unlock()
	}
	g.retire(now, releaseNoGate)
	g.table.Store(tab)
	if g.current == nil || g.current.Controller != doc.Controller {
		g.log.Info("gates: document accepted", zap.String("controller", doc.Controller), zap.Int("gates", len(doc.Gates)))
	}
	g.current = doc
	if g.expiry != nil {
		g.expiry.Stop()
	}
	gen := g.gen
	g.expiry = time.AfterFunc(time.Duration(doc.ExpiresInSeconds*float64(time.Second)), func() { g.expire(gen) })
	at := time.Now()
	g.metrics.gatesAt.Store(&at)
	g.metrics.gatesEntries.Store(int64(len(doc.Gates)))
	return nil
}

// configs derives each gate's per-replica settings from a valid document.
func configs(doc *GatesDocument) map[gateKey]*gateConfig {
	out := make(map[gateKey]*gateConfig, len(doc.Gates))
	for i := range doc.Gates {
		e := &doc.Gates[i]
		inFlight := perReplica(e.MaxInFlight, doc.Share)
		if e.Service != "" {
			c := &gateConfig{ready: e.ReadyEndpoints, hold: e.Hold, inFlightLimit: inFlight,
				heldLimit: perReplica(e.MaxHeld, doc.Share)}
			if e.Hold {
				c.holdTimeout = min(time.Duration(e.HoldTimeoutSeconds*float64(time.Second)), maxOverride-time.Second)
				c.releaseLimit = perReplica(float64(e.ReadyEndpoints)*e.ReleasePerEndpoint, doc.Share)
			}
			out[gateKey{gateEdge, e.Namespace, e.Service}] = c
		}
		if e.Workload != "" {
			k := gateKey{gateInbound, e.Namespace, e.Workload}
			if prev, ok := out[k]; ok && (prev.inFlightLimit == 0 || inFlight == 0) {
				inFlight = 0
			} else if ok {
				inFlight = max(inFlight, prev.inFlightLimit)
			}
			out[k] = &gateConfig{ready: e.ReadyEndpoints, inFlightLimit: inFlight}
		}
	}
	return out
}

// perReplica is a replica's share of a whole-workload bound, rounded up
// (so the replicas together never bound below the whole), at least 1; 0
// (no bound) stays 0.
func perReplica(whole, share float64) int64 {
	if whole <= 0 {
		return 0
	}
	return max(1, int64(math.Ceil(whole*share-1e-9)))
}

// retire ends the gates the current generation does not name (their held
// requests are released for cause) and forgets those with nothing left.
// Callers hold g.mu.
func (g *Gates) retire(now int64, cause releaseCause) {
	for k, st := range g.states {
		if st.gen == g.gen {
			continue
		}
		st.mu.Lock()
		st.set(nil, now, cause)
		if st.active.Load() == 0 && st.head == nil {
			if st.timer != nil {
				st.timer.Stop()
			}
			delete(g.states, k)
		}
		st.mu.Unlock()
	}
}

// expire is the expiry timer of generation gen: without a newer document
// the table goes, every held request is released and nothing is shed.
func (g *Gates) expire(gen uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gen != g.gen || g.closed {
		return
	}
	g.log.Warn("gates: expired without a newer document; releasing every held request (fail-open)",
		zap.Int64("held", g.held.Load()))
	g.metrics.gatesExpired.Inc()
	g.clear(releaseExpired)
}

// clear drops the table and releases every held request. Callers hold g.mu.
func (g *Gates) clear(cause releaseCause) {
	g.gen++
	g.table.Store(nil)
	g.current = nil
	g.metrics.gatesEntries.Store(0)
	g.retire(g.now(), cause)
}

// Close releases every held request (CONTINUE) and stops holding and
// shedding for good: the replica is shutting down.
func (g *Gates) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.closed = true
	if g.expiry != nil {
		g.expiry.Stop()
	}
	g.clear(releaseShutdown)
}

// Held is the number of requests in a hold queue now.
func (g *Gates) Held() int64 { return g.held.Load() }

// wake records that a gate with no ready endpoint holds its first
// request: the controller's WaitWake returns, so that it wakes the
// workload at once instead of at its next tick.
func (g *Gates) wake() {
	g.wakeMu.Lock()
	g.wakeSeq++
	close(g.wakeCh)
	g.wakeCh = make(chan struct{})
	g.wakeMu.Unlock()
}

// WaitWake returns the number of wakes so far (a request held first at a
// gate with no ready endpoint) once it is above after, or when ctx is
// done, whichever comes first.
func (g *Gates) WaitWake(ctx context.Context, after uint64) uint64 {
	g.wakeMu.Lock()
	seq, ch := g.wakeSeq, g.wakeCh
	g.wakeMu.Unlock()
	if seq > after {
		return seq
	}
	g.waiters.Add(1)
	defer g.waiters.Add(-1)
	select {
	case <-ctx.Done():
	case <-ch:
	case <-g.waitEnd:
	}
	g.wakeMu.Lock()
	defer g.wakeMu.Unlock()
	return g.wakeSeq
}

// EndWakeWaits answers every WaitWake, now and later, at once: the admin
// server is shutting down and must not wait for them.
func (g *Gates) EndWakeWaits() { g.endOnce.Do(func() { close(g.waitEnd) }) }

// GatesStatus is what GET /v1/gates answers: the document in force, if
// any, and how old it is.
type GatesStatus struct {
	InForce    bool    `json:"in_force"`
	AgeSeconds float64 `json:"age_seconds,omitempty"`
	Held       int64   `json:"held"`
	// WakeWaiters is how many GET /v1/gates/wake waits are open (the
	// leading controller keeps one).
	WakeWaiters int64          `json:"wake_waiters"`
	Document    *GatesDocument `json:"document,omitempty"`
}

// Status returns the document in force and its age.
func (g *Gates) Status() GatesStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := GatesStatus{InForce: g.current != nil, Held: g.held.Load(), WakeWaiters: g.waiters.Load(), Document: g.current}
	if g.current != nil {
		s.AgeSeconds = g.metrics.gatesAgeSeconds()
	}
	return s
}

// set puts c in force for the gate (nil: none) and releases what it
// allows. Callers hold st.mu (or own st alone).
func (st *gateState) set(c *gateConfig, now int64, cause releaseCause) {
	switch {
	case c == nil:
	case c.ready == 0:
		st.zeroSeen = true
	case st.zeroSeen:
		// 0 → ready: release once the endpoint can have reached the proxies.
		st.zeroSeen = false
		st.readyAt = now + st.g.delay
	}
	st.cfg.Store(c)
	st.pump(now, cause)
}

// pump releases the held requests the gate allows now: all of them (cause)
// when no gate holds any more, else, once it has reported ready endpoints
// for the release delay, in arrival order while the requests released from
// the queue and still in flight are fewer than releaseLimit. It then
// decides whether requests may continue without taking the lock. Callers
// hold st.mu.
func (st *gateState) pump(now int64, cause releaseCause) {
	c := st.cfg.Load()
	switch {
	case c == nil || !c.hold:
		for st.head != nil {
			st.release(st.head, cause)
		}
	case c.ready == 0:
	case now < st.readyAt:
		d := time.Duration(st.readyAt - now)
		if st.timer == nil {
			st.timer = time.AfterFunc(d, st.onTimer)
		} else {
			st.timer.Reset(d)
		}
	default:
		for st.head != nil && st.released < c.releaseLimit {
			st.release(st.head, releaseReady)
		}
	}
	st.open.Store(c == nil || !c.hold || (c.ready > 0 && now >= st.readyAt && st.head == nil))
}

func (st *gateState) onTimer() {
	st.mu.Lock()
	st.pump(st.g.now(), releaseNoGate)
	st.mu.Unlock()
}

func (st *gateState) release(h *holdTicket, cause releaseCause) {
	st.unlink(h)
	h.state = ticketReleased
	st.released++
	close(h.released)
	st.g.metrics.releases[cause].Inc()
}

func (st *gateState) push(h *holdTicket) {
	h.prev = st.tail
	if st.tail != nil {
		st.tail.next = h
	} else {
		st.head = h
	}
	st.tail = h
	st.queued++
	st.g.held.Add(1)
}

func (st *gateState) unlink(h *holdTicket) {
	if h.prev != nil {
		h.prev.next = h.next
	} else {
		st.head = h.next
	}
	if h.next != nil {
		h.next.prev = h.prev
	} else {
		st.tail = h.prev
	}
	h.prev, h.next = nil, nil
	st.queued--
	st.g.held.Add(-1)
}

// verdict is what the gates decide for a request.
type verdict uint8

const (
	admitContinue verdict = iota // answer at once (CONTINUE)
	admitHold                    // hold: admission.ticket is queued
	admitShed                    // answer locally over a limit
)

// admission is a request's place in its gate's counts, released once by
// leave.
type admission struct {
	st     *gateState
	ticket *holdTicket
}

// admit decides a control-mode request: continue, hold or shed. Only
// requests attributed to a target may be held or shed (a refused claim is
// let through, counted under its reason).
func (g *Gates) admit(t mesh.Target, reason mesh.Reason) (admission, verdict) {
	tab := g.table.Load()
	if tab == nil || reason != mesh.ReasonNone {
		return admission{}, admitContinue
	}
	var k gateKey
	switch t.Source() {
	case mesh.SourceInbound:
		k = gateKey{gateInbound, t.Namespace, t.Workload}
	case mesh.SourceEdge:
		k = gateKey{gateEdge, t.Namespace, t.Service}
	default:
		return admission{}, admitContinue
	}
	st := tab.states[k]
	if st == nil {
		return admission{}, admitContinue
	}
	c := st.cfg.Load()
	if c == nil {
		return admission{}, admitContinue
	}
	if c.hold && !st.open.Load() {
		return st.admitSlow()
	}
	return st.enter(c.inFlightLimit)
}

// enter counts a request that continues at once, unless the gate's
// in-flight limit is reached on this replica. The count is taken before the
// check, so concurrent arrivals never pass the limit together.
func (st *gateState) enter(limit int64) (admission, verdict) {
	if n := st.active.Add(1); limit > 0 && n > limit {
		st.active.Add(-1)
		st.g.metrics.shedBy[shedMaxInFlight].Inc()
		return admission{}, admitShed
	}
	return admission{st: st}, admitContinue
}

// admitSlow decides under the gate's lock for a gate that may hold.
func (st *gateState) admitSlow() (admission, verdict) {
	g := st.g
	st.mu.Lock()
	defer st.mu.Unlock()
	now := g.now()
	c := st.cfg.Load()
	if c == nil || !c.hold || st.open.Load() {
		var limit int64
		if c != nil {
			limit = c.inFlightLimit
		}
		return st.enter(limit)
	}
	shed := func(l shedLimit) (admission, verdict) {
		g.metrics.shedBy[l].Inc()
		return admission{}, admitShed
	}
	if c.inFlightLimit > 0 && st.active.Load() >= c.inFlightLimit {
		return shed(shedMaxInFlight)
	}
	if c.heldLimit > 0 && st.queued >= c.heldLimit {
		return shed(shedMaxHeld)
	}
	if g.held.Load() >= g.maxHeld {
		if c.ready > 0 {
			return st.enter(c.inFlightLimit) // endpoints exist: let it try
		}
		return shed(shedExtprocMaxHeld)
	}
	h := &holdTicket{timeout: c.holdTimeout, released: make(chan struct{})}
	st.push(h)
	if c.ready == 0 && st.queued == 1 {
		g.wake()
	}
	st.active.Add(1)
	st.pump(now, releaseNoGate)
	return admission{st: st, ticket: h}, admitHold
}

// timeOut takes a held request out of its queue at its hold timeout. It
// reports false if the request was released first (it then continues).
func (a *admission) timeOut() bool {
	st, h := a.st, a.ticket
	st.mu.Lock()
	defer st.mu.Unlock()
	if h.state != ticketQueued {
		return false
	}
	st.unlink(h)
	h.state = ticketRemoved
	st.pump(st.g.now(), releaseNoGate)
	return true
}

// leave ends the request's admission: it leaves the queue if still there,
// its released place frees room for the next held request, and it no
// longer counts toward the in-flight limit. Only the first call counts.
func (a *admission) leave() {
	st := a.st
	if st == nil {
		return
	}
	a.st = nil
	h := a.ticket
	if h == nil {
		st.active.Add(-1)
		return
	}
	a.ticket = nil
	st.mu.Lock()
	switch h.state {
	case ticketQueued:
		st.unlink(h)
	case ticketReleased:
		st.released--
	}
	h.state = ticketRemoved
	st.active.Add(-1)
	st.pump(st.g.now(), releaseNoGate)
	st.mu.Unlock()
}

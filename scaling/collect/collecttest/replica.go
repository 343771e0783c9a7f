// Package collecttest serves fake extproc snapshots on loopback for tests
// and benchmarks of the collector and the controller: real HTTP servers on
// 127.0.0.1 whose counters the test controls, following the extproc
// contract (busy-seconds is the exact integral of in-flight over the
// replica's clock).
//
// Concurrency: every method of Replica is safe for concurrent use with the
// server's handler.
package collecttest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"

	"github.com/inflight-dev/inflight/extproc"
)

var boots atomic.Int64

// Replica is one fake extproc replica.
type Replica struct {
	Name string
	srv  *httptest.Server

	mu      sync.Mutex
	now     func() time.Time
	booted  time.Time // uptime_seconds counts from here
	mutate  func(*extproc.Snapshot)
	bootID  string
	targets map[key]*target
	status  int    // 0: serve; else reply with this HTTP status
	version string // served version
	served  int
}

type key struct{ ns, wl, svc, pod string }

// inbound is the key of an inbound target (its Service named like its
// workload), edge the key of an edge target (a Service only).
func inbound(ns, wl, pod string) key { return key{ns, wl, wl, pod} }
func edge(ns, svc string) key        { return key{ns: ns, svc: svc} }

type target struct {
	held               int64 // part of inFlight
	inFlight           int64
	started, completed uint64
	busy, durSum       float64
	since              time.Time // of the last in-flight change
	created            time.Time
}

// NewReplica starts a replica on 127.0.0.1. clk is its clock (nil: the
// real clock). Close it when done.
func NewReplica(name string, clk clock.PassiveClock) *Replica {
	if clk == nil {
		clk = clock.RealClock{}
	}
	r := &Replica{Name: name, now: clk.Now, booted: clk.Now(), targets: map[key]*target{}, version: extproc.SnapshotVersion}
	r.bootID = fmt.Sprintf("boot-%d", boots.Add(1))
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	return r
}

// URL is the snapshot URL.
func (r *Replica) URL() string { return r.srv.URL + "/v1/snapshot" }

// Close stops the server: connections are refused from then on.
func (r *Replica) Close() { r.srv.Close() }

// Served is the number of snapshots served.
func (r *Replica) Served() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.served
}

// SetStatus makes the replica answer with an HTTP status (0: normal).
func (r *Replica) SetStatus(code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = code
}

// SetVersion changes the served contract version.
func (r *Replica) SetVersion(v string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.version = v
}

// Restart simulates a process restart: a new boot id and zero counters.
func (r *Replica) Restart() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bootID = fmt.Sprintf("boot-%d", boots.Add(1))
	r.booted = r.now()
	r.targets = map[key]*target{}
}

// Mutate makes the replica pass every snapshot it serves through m before
// encoding it (nil: serve it as counted): tests forge impossible numbers
// with it.
func (r *Replica) Mutate(m func(*extproc.Snapshot)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mutate = m
}

func (r *Replica) get(k key) *target {
	t := r.targets[k]
	if t == nil {
		now := r.now()
		t = &target{since: now, created: now}
		r.targets[k] = t
	}
	return t
}

func (t *target) settle(now time.Time) {
	if d := now.Sub(t.since).Seconds(); d > 0 {
		t.busy += float64(t.inFlight) * d
	}
	t.since = now
}

// Start begins n requests of workload ns/wl on pod.
func (r *Replica) Start(ns, wl, pod string, n int) { r.start(inbound(ns, wl, pod), n, 0) }

// StartEdge begins n requests for Service ns/svc seen at the edge, of
// which held are held (scale from zero).
func (r *Replica) StartEdge(ns, svc string, n, held int) { r.start(edge(ns, svc), n, held) }

// ReleaseEdge lets n held requests for ns/svc through (they stay in
// flight).
func (r *Replica) ReleaseEdge(ns, svc string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.get(edge(ns, svc))
	t.held -= min(int64(n), t.held)
}

// CompleteEdge ends n requests for ns/svc seen at the edge (released ones
// first), each having taken d.
func (r *Replica) CompleteEdge(ns, svc string, n int, d time.Duration) {
	r.complete(edge(ns, svc), n, d)
}

func (r *Replica) start(k key, n, held int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.get(k)
	t.settle(r.now())
	t.inFlight += int64(n)
	t.held += int64(held)
	t.started += uint64(n)
}

// Complete ends n requests of ns/wl on pod, each having taken d (at most
// the replica's uptime: a real replica cannot have counted longer).
func (r *Replica) Complete(ns, wl, pod string, n int, d time.Duration) {
	r.complete(inbound(ns, wl, pod), n, d)
}

func (r *Replica) complete(k key, n int, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.get(k)
	now := r.now()
	t.settle(now)
	d = min(d, now.Sub(r.booted))
	n = min(n, int(t.inFlight))
	t.inFlight -= int64(n)
	t.held = min(t.held, t.inFlight)
	t.completed += uint64(n)
	t.durSum += float64(n) * d.Seconds()
}

// SetInFlight sets the in-flight count of ns/wl on pod to n by starting or
// completing requests (completions with duration d).
func (r *Replica) SetInFlight(ns, wl, pod string, n int, d time.Duration) {
	r.mu.Lock()
	t := r.get(inbound(ns, wl, pod))
	cur := int(t.inFlight)
	r.mu.Unlock()
	if n > cur {
		r.Start(ns, wl, pod, n-cur)
	} else if n < cur {
		r.Complete(ns, wl, pod, cur-n, d)
	}
}

// Snapshot returns the document the replica would serve now.
func (r *Replica) Snapshot() extproc.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapshotLocked()
}

func (r *Replica) snapshotLocked() extproc.Snapshot {
	now := r.now()
	s := extproc.Snapshot{Version: r.version, Replica: r.Name, BootID: r.bootID, Time: now,
		UptimeSeconds: now.Sub(r.booted).Seconds(),
		Targets:       make([]extproc.TargetRecord, 0, len(r.targets))}
	for k, t := range r.targets {
		t.settle(now)
		s.Targets = append(s.Targets, extproc.TargetRecord{
			Namespace: k.ns, Workload: k.wl, Service: k.svc, Pod: k.pod,
			InFlight: t.inFlight, Started: t.started, Completed: t.completed,
			BusySeconds: t.busy, DurationSecondsSum: t.durSum,
			CreatedUptimeSeconds: max(t.created.Sub(r.booted).Seconds(), 0),
		})
	}
	for i := range s.Targets {
		t := &s.Targets[i]
		t.Source = "inbound"
		if t.Workload == "" {
			t.Source = "edge"
		}
		t.Held = r.targets[key{t.Namespace, t.Workload, t.Service, t.Pod}].held
	}
	sort.Slice(s.Targets, func(i, j int) bool {
		a, b := s.Targets[i], s.Targets[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Workload != b.Workload {
			return a.Workload < b.Workload
		}
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		return a.Pod < b.Pod
	})
	if r.mutate != nil {
		r.mutate(&s)
	}
	return s
}

func (r *Replica) serve(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != "/v1/snapshot" {
		http.NotFound(w, req)
		return
	}
	r.mu.Lock()
	status := r.status
	var body []byte
	var err error
	if status == 0 {
		body, err = json.Marshal(r.snapshotLocked())
		r.served++
	}
	r.mu.Unlock()
	if status != 0 {
		http.Error(w, http.StatusText(status), status)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// Static serves fixed counters, pre-encoded (for benchmarks, where encoding
// on every request would measure the fake rather than the reader). Only
// time and uptime_seconds are stamped per request: the snapshot's
// UptimeSeconds plus the real time since Set, so that a reader sees a
// replica that is up and idle. The counters must be consistent with that
// (in_flight 0 for a steady state).
type Static struct {
	srv  *httptest.Server
	body atomic.Pointer[staticBody]
}

type staticBody struct {
	head    []byte // {"version":…,"replica":…,"boot_id":…,
	targets []byte // ,"targets":[…]}
	uptime  float64
	set     time.Time
}

// NewStatic starts a server on 127.0.0.1 serving s.
func NewStatic(s extproc.Snapshot) (*Static, error) {
	st := &Static{}
	if err := st.Set(s); err != nil {
		return nil, err
	}
	st.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b := st.body.Load()
		now := time.Now()
		out := make([]byte, 0, len(b.head)+len(b.targets)+80)
		out = append(out, b.head...)
		out = append(out, `"time":"`...)
		out = now.UTC().AppendFormat(out, time.RFC3339Nano)
		out = append(out, `","uptime_seconds":`...)
		out = strconv.AppendFloat(out, b.uptime+now.Sub(b.set).Seconds(), 'f', -1, 64)
		out = append(out, b.targets...)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	}))
	return st, nil
}

// Set replaces the served snapshot.
func (s *Static) Set(snap extproc.Snapshot) error {
	head, err := json.Marshal(struct {
		Version string `json:"version"`
		Replica string `json:"replica"`
		BootID  string `json:"boot_id"`
	}{snap.Version, snap.Replica, snap.BootID})
	if err != nil {
		return err
	}
	targets, err := json.Marshal(snap.Targets)
	if err != nil {
		return err
	}
	b := &staticBody{uptime: snap.UptimeSeconds, set: time.Now()}
	b.head = append(head[:len(head)-1], ',')
	b.targets = append(append([]byte(`,"targets":`), targets...), '}')
	s.body.Store(b)
	return nil
}

// URL is the snapshot URL.
func (s *Static) URL() string { return s.srv.URL + "/v1/snapshot" }

// Close stops the server.
func (s *Static) Close() { s.srv.Close() }

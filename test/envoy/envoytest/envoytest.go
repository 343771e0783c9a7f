// Package envoytest runs real inflight extproc servers (extproc.Server with
// its own Tracker and Prometheus registry) on loopback ports for the
// harness-driven tests, and checks their counters. Each Replica is
// independent; its methods are safe for concurrent use. No global state.
package envoytest

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/test/envoy"
)

// Replica is one extproc server: a grpc.Server on its own 127.0.0.1 port.
type Replica struct {
	Tracker  *extproc.Tracker
	Registry *prometheus.Registry
	Server   *grpc.Server
	Addr     string
	// Gates hold and shed this replica's control-mode requests (StartGated
	// only; nil otherwise).
	Gates *extproc.Gates

	undelivered sync.Map // harness stream tag → struct{}
}

// Undelivered reports whether grpc-go handed the server's handler nothing
// at all on the harness stream tag before its end. grpc-go can deliver the
// cancellation first when a stream's messages and its RST_STREAM are all
// buffered before the handler's first read (ENVOY.md §2): a start the
// server never saw, which only a server stall longer than the request
// (plus any deferred close) causes. Checks may excuse such a start but must
// report it; a stream whose handler did receive a message must be counted.
func (r *Replica) Undelivered(tag uint64) bool {
	_, ok := r.undelivered.Load(tag)
	return ok
}

// observe records undelivered streams; it changes nothing.
func (r *Replica) observe(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	var tag uint64
	if md, ok := metadata.FromIncomingContext(ss.Context()); ok {
		if v := md.Get(envoy.StreamTagHeader); len(v) == 1 {
			tag, _ = strconv.ParseUint(v[0], 10, 64)
		}
	}
	return h(srv, &firstRecv{ServerStream: ss, onFirst: func(err error) {
		if err != nil {
			r.undelivered.Store(tag, struct{}{})
		}
	}})
}

type firstRecv struct {
	grpc.ServerStream
	onFirst func(error)
	done    bool
}

func (s *firstRecv) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if !s.done {
		s.done = true
		s.onFirst(err)
	}
	return err
}

// Start starts n replicas, stopped at the end of the test. opts are extra
// grpc.ServerOptions (e.g. an interceptor making the server slow); each
// replica also chains an interceptor that only records Undelivered streams.
func Start(t testing.TB, n int, opts ...grpc.ServerOption) []*Replica {
	t.Helper()
	return start(t, n, nil, opts)
}

// RetryAfter is the Retry-After of gated replicas' local replies.
const RetryAfter = time.Second

// StartGated is Start with each replica's own extproc.Gates (go), closed at
// the end of the test: nothing is held or shed until a table is applied
// (Replica.Gates.Apply, as PUT /v1/gates does).
func StartGated(t testing.TB, n int, gopts extproc.GatesOptions, opts ...grpc.ServerOption) []*Replica {
	t.Helper()
	return start(t, n, &gopts, opts)
}

func start(t testing.TB, n int, gopts *extproc.GatesOptions, opts []grpc.ServerOption) []*Replica {
	t.Helper()
	reps := make([]*Replica, n)
	for i := range reps {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tr := extproc.NewTracker(extproc.TrackerOptions{})
		reg := prometheus.NewRegistry()
		m, err := extproc.NewMetrics(reg, tr)
		if err != nil {
			t.Fatal(err)
		}
		rep := &Replica{Tracker: tr, Registry: reg, Addr: lis.Addr().String()}
		so := extproc.ServerOptions{Metrics: m}
		if gopts != nil {
			o := *gopts
			o.Metrics = m
			rep.Gates = extproc.NewGates(o)
			t.Cleanup(rep.Gates.Close)
			so.Gates, so.RetryAfter = rep.Gates, RetryAfter
		}
		gs := grpc.NewServer(append(slices.Clone(opts), grpc.ChainStreamInterceptor(rep.observe))...)
		extprocv3.RegisterExternalProcessorServer(gs, extproc.NewServer(tr, so))
		rep.Server = gs
		go func() { _ = gs.Serve(lis) }()
		t.Cleanup(gs.Stop)
		reps[i] = rep
	}
	return reps
}

// Addrs returns the replicas' addresses.
func Addrs(reps []*Replica) []string {
	out := make([]string, len(reps))
	for i, r := range reps {
		out[i] = r.Addr
	}
	return out
}

// Totals are counters summed over targets (and replicas).
type Totals struct {
	InFlight            int64
	Started, Completed  uint64
	Busy, DurationSum   float64
	Targets             int
	IdentifiedTargets   int // targets with an empty Reason
	UnattributedStarted uint64
	// Holding and shedding (gated replicas).
	Held                                             int64
	HeldTotal, Released, HoldTimeouts, HoldAbandoned uint64
	Shed                                             uint64
}

// Sum reads every replica's tracker once and sums.
func Sum(reps []*Replica) Totals {
	var s Totals
	for _, r := range reps {
		for _, rec := range r.Tracker.Records() {
			s.InFlight += rec.InFlight
			s.Started += rec.Started
			s.Completed += rec.Completed
			s.Busy += rec.BusySeconds
			s.DurationSum += rec.DurationSecondsSum
			s.Held += rec.Held
			s.HeldTotal += rec.HeldTotal
			s.Released += rec.Released
			s.HoldTimeouts += rec.HoldTimeouts
			s.HoldAbandoned += rec.HoldAbandoned
			s.Shed += rec.Shed
			s.Targets++
			if rec.Reason == "" {
				s.IdentifiedTargets++
			} else {
				s.UnattributedStarted += rec.Started
			}
		}
	}
	return s
}

// Drained polls (bounded by timeout) until every target on every replica
// has in_flight = 0 and started = completed, and fails the test otherwise.
// It returns the final totals.
func Drained(t testing.TB, reps []*Replica, timeout time.Duration) Totals {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		bad := Violations(reps)
		if bad == "" {
			return Sum(reps)
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("not drained after %v: %s", timeout, bad)
			return Totals{}
		}
	}
}

// Violations describes every target whose in_flight ≠ 0 or started ≠
// completed, or with a request still held or one that left the hold other
// than once (held_total ≠ released + hold timeouts + abandoned), and every
// replica whose gates still hold a request; or returns "".
func Violations(reps []*Replica) string {
	var b strings.Builder
	bad := 0
	for i, r := range reps {
		for _, rec := range r.Tracker.Records() {
			if rec.InFlight != 0 || rec.Started != rec.Completed || rec.Held != 0 ||
				rec.HeldTotal != rec.Released+rec.HoldTimeouts+rec.HoldAbandoned {
				if bad++; bad > 8 {
					continue
				}
				fmt.Fprintf(&b, "replica %d target %s/%s/%s/%s%s: in_flight=%d started=%d completed=%d held=%d held_total=%d released=%d hold_timeouts=%d abandoned=%d; ",
					i, rec.Namespace, rec.Workload, rec.Service, rec.Pod, rec.Reason, rec.InFlight, rec.Started, rec.Completed,
					rec.Held, rec.HeldTotal, rec.Released, rec.HoldTimeouts, rec.HoldAbandoned)
			}
		}
		if r.Gates != nil && r.Gates.Held() != 0 {
			bad++
			fmt.Fprintf(&b, "replica %d: its gates still hold %d requests; ", i, r.Gates.Held())
		}
	}
	if bad > 8 {
		fmt.Fprintf(&b, "and %d more targets", bad-8)
	}
	return b.String()
}

// EndCount returns the replica's inflight_extproc_request_ends_total for
// cause (e.g. "stream_eof", "stream_canceled", "response_body_eos").
func (r *Replica) EndCount(t testing.TB, cause string) float64 {
	t.Helper()
	return r.CounterSum(t, "inflight_extproc_request_ends_total", "cause", cause)
}

// CounterSum returns the sum of the replica's counter name over the series
// whose labels include every label=value pair given (none: all series).
func (r *Replica) CounterSum(t testing.TB, name string, labelValues ...string) float64 {
	t.Helper()
	mfs, err := r.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labelValues); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == labelValues[i] && l.GetValue() == labelValues[i+1])
				}
				if !found {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// WaitInFlight polls (bounded by timeout) until the replicas together count
// n requests in flight, and fails the test otherwise.
func WaitInFlight(t testing.TB, reps []*Replica, n int64, timeout time.Duration) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		got := Sum(reps).InFlight
		if got == n {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("in flight %d after %v, want %d", got, timeout, n)
		}
	}
}

// Package keda serves KEDA's external scaler gRPC API
// (externalscaler.ExternalScaler, KEDA's own generated types) from the
// per-workload sums the leading inflight controller computes every tick, so
// a ScaledObject with an `external-push` (or `external`) trigger scales a
// Deployment on inflight's count:
//
//	triggers:
//	  - type: external-push
//	    metadata:
//	      scalerAddress: inflight-controller-keda.inflight-system.svc:9003
//	      workload: vllm            # the Deployment whose requests inflight counts
//	      targetInFlight: "4"       # requests in flight per replica
//	      namespace: models         # default: the ScaledObject's namespace
//	      activationInFlight: "0"   # active above this (default 0)
//
// GetMetricSpec names one metric per ScaledObject with the target;
// GetMetrics returns the workload's mean requests in flight over the last
// tick (from the busy-time integral, summed over the extproc replicas);
// IsActive is that value (or the requests in flight now) above the
// activation threshold; StreamIsActive sends the current state when opened
// and then every change as soon as a tick sees it, so a 0 → 1 wake-up
// reaches KEDA within one tick. A ScaledObject's metadata is validated on
// every call: an invalid key is an InvalidArgument error naming the key,
// the value and the range.
//
// Only the leader ticks, so only the leader has sums: data older than
// MaxAge (a follower, or a leader whose ticks stopped) is refused with
// Unavailable, and KEDA keeps its last state and retries.
//
// Concurrency: Update is called by the controller's tick loop; the gRPC
// methods run concurrently with it and with each other. State is one
// immutable snapshot swapped under a mutex; streams wait on a channel that
// each Update closes, or for the data to age out.
package keda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/inflight-dev/inflight/scaling/collect"
)

// The ScaledObject trigger metadata keys.
const (
	KeyWorkload   = "workload"
	KeyNamespace  = "namespace"
	KeyTarget     = "targetInFlight"
	KeyActivation = "activationInFlight"
)

// MaxTarget bounds targetInFlight and activationInFlight.
const MaxTarget = 1e6

// MaxAge is how long a tick's sums are served: a few ticks of 1 s.
const MaxAge = 5 * time.Second

// Server implements externalscaler.ExternalScaler.
type Server struct {
	pb.UnimplementedExternalScalerServer

	now func() time.Time

	mu      sync.Mutex
	snap    *snapshot
	changed chan struct{} // closed and replaced by every Update
}

var _ pb.ExternalScalerServer = (*Server)(nil)

// snapshot is one tick's view; never modified after it is published.
type snapshot struct {
	received  time.Time // zero: no tick yet
	workloads map[collect.Workload]collect.Sample
}

// New returns a Server with no data yet (every call answers Unavailable
// until the first Update). now is the clock that ages the data (nil: the
// real one).
func New(now func() time.Time) *Server {
	if now == nil {
		now = time.Now
	}
	return &Server{now: now, snap: &snapshot{}, changed: make(chan struct{})}
}

// Update publishes a leader tick's result (kube.Options.OnTick).
func (s *Server) Update(res collect.Result) {
	ws := make(map[collect.Workload]collect.Sample, len(res.Workloads))
	for w, v := range res.Workloads {
		ws[w] = v
	}
	s.mu.Lock()
	s.snap = &snapshot{received: s.now(), workloads: ws}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

func (s *Server) current() (*snapshot, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap, s.changed
}

// ref is a ScaledObject's validated trigger metadata.
type ref struct {
	w          collect.Workload
	target     float64
	activation float64
	metric     string
}

// parseRef validates a ScaledObjectRef's metadata, reporting every error.
func parseRef(r *pb.ScaledObjectRef) (ref, error) {
	if r == nil {
		return ref{}, status.Error(codes.InvalidArgument, "no ScaledObjectRef")
	}
	md := r.GetScalerMetadata()
	var errs []error
	out := ref{w: collect.Workload{Namespace: md[KeyNamespace], Name: md[KeyWorkload]}}
	if out.w.Namespace == "" {
		out.w.Namespace = r.GetNamespace()
	}
	if e := validation.IsDNS1123Label(out.w.Namespace); len(e) > 0 {
		errs = append(errs, fmt.Errorf("%s=%q (or the ScaledObject's namespace): %v", KeyNamespace, out.w.Namespace, e))
	}
	if out.w.Name == "" {
		errs = append(errs, fmt.Errorf("%s is missing: want the name of the Deployment whose requests inflight counts", KeyWorkload))
	} else if e := validation.IsDNS1123Subdomain(out.w.Name); len(e) > 0 {
		errs = append(errs, fmt.Errorf("%s=%q: %v", KeyWorkload, out.w.Name, e))
	}
	// num parses key's value v, a number in (0, MaxTarget], or in
	// [0, MaxTarget] with zeroOK (NaN fails every comparison).
	num := func(key, v string, zeroOK bool) float64 {
		f, err := strconv.ParseFloat(v, 64)
		if err == nil && f >= 0 && f <= MaxTarget && (f > 0 || zeroOK) {
			return f
		}
		lo := "(0"
		if zeroOK {
			lo = "[0"
		}
		errs = append(errs, fmt.Errorf("%s=%q: want a number in %s, %g]", key, v, lo, MaxTarget))
		return 0
	}
	if v, ok := md[KeyTarget]; ok {
		out.target = num(KeyTarget, v, false)
	} else {
		errs = append(errs, fmt.Errorf("%s is missing: want requests in flight per replica, a number in (0, %g]", KeyTarget, MaxTarget))
	}
	if v, ok := md[KeyActivation]; ok {
		out.activation = num(KeyActivation, v, true)
	}
	if err := errors.Join(errs...); err != nil {
		return ref{}, status.Errorf(codes.InvalidArgument, "ScaledObject %s/%s trigger metadata: %v", r.GetNamespace(), r.GetName(), err)
	}
	out.metric = "inflight-" + out.w.Namespace + "-" + out.w.Name
	return out, nil
}

// value is the workload's demand in the snapshot: the mean requests in
// flight over the last tick, and whether it is active (mean or current
// requests in flight above the activation threshold).
func (sn *snapshot) value(r ref, now time.Time) (mean float64, active bool, err error) {
	if sn.received.IsZero() {
		return 0, false, status.Error(codes.Unavailable, "no tick yet: is this inflight controller replica the leader?")
	}
	if age := now.Sub(sn.received); age > MaxAge {
		return 0, false, status.Errorf(codes.Unavailable, "the last tick is %s old: this inflight controller replica does not lead (any more)", age.Round(time.Millisecond))
	}
	smp := sn.workloads[r.w] // absent: nothing in flight, none in the interval
	return smp.Concurrency, smp.Concurrency > r.activation || smp.InFlight > r.activation, nil
}

// IsActive reports whether the workload has demand above the activation
// threshold.
func (s *Server) IsActive(_ context.Context, in *pb.ScaledObjectRef) (*pb.IsActiveResponse, error) {
	r, err := parseRef(in)
	if err != nil {
		return nil, err
	}
	sn, _ := s.current()
	_, active, err := sn.value(r, s.now())
	if err != nil {
		return nil, err
	}
	return &pb.IsActiveResponse{Result: active}, nil
}

// StreamIsActive sends the current state at once, then each change as the
// ticks see it, until the client goes away.
func (s *Server) StreamIsActive(in *pb.ScaledObjectRef, stream pb.ExternalScaler_StreamIsActiveServer) error {
	r, err := parseRef(in)
	if err != nil {
		return err
	}
	var last *bool
	for {
		sn, changed := s.current()
		if _, active, err := sn.value(r, s.now()); err == nil && (last == nil || *last != active) {
			if err := stream.Send(&pb.IsActiveResponse{Result: active}); err != nil {
				return err
			}
			last = &active
		}
		// Without a tick for MaxAge (lease lost) the stream ends, so KEDA
		// reconnects — to the new leader when its Service selects only
		// ready replicas, else it retries here.
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		case <-time.After(MaxAge):
			if _, _, err := sn.value(r, s.now()); err != nil {
				return err
			}
		}
	}
}

// GetMetricSpec names the ScaledObject's metric and its target per replica.
func (s *Server) GetMetricSpec(_ context.Context, in *pb.ScaledObjectRef) (*pb.GetMetricSpecResponse, error) {
	r, err := parseRef(in)
	if err != nil {
		return nil, err
	}
	return &pb.GetMetricSpecResponse{MetricSpecs: []*pb.MetricSpec{{
		MetricName:      r.metric,
		TargetSize:      int64(math.Ceil(r.target)),
		TargetSizeFloat: r.target,
	}}}, nil
}

// GetMetrics returns the workload's mean requests in flight over the last
// tick.
func (s *Server) GetMetrics(_ context.Context, in *pb.GetMetricsRequest) (*pb.GetMetricsResponse, error) {
	r, err := parseRef(in.GetScaledObjectRef())
	if err != nil {
		return nil, err
	}
	sn, _ := s.current()
	mean, _, err := sn.value(r, s.now())
	if err != nil {
		return nil, err
	}
	return &pb.GetMetricsResponse{MetricValues: []*pb.MetricValue{{
		MetricName:       r.metric,
		MetricValue:      int64(math.Ceil(mean)),
		MetricValueFloat: mean,
	}}}, nil
}

// Package e2e is inflight's end-to-end test: the demo's loop in a short
// profile, with every real part — kube-apiserver and etcd (the cached test
// control plane), two extproc processes, two controller processes electing
// a leader through a Lease — plus the demo's simulated GPU fleet and the
// Envoy-faithful harness as the mesh.
//
// It skips with a message when the control plane binaries are missing and
// fails instead when INFLIGHT_REQUIRE_CONTROLPLANE=1 (as `make test` sets).
// Synchronisation is bounded polling only; the only time limits are the
// functional deadlines the scenario promises (scale-up within a few
// controller ticks of the load reaching the mesh, takeover within the lease
// timing, scale-down not before scale-down-delay).
package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/sim"
	"github.com/inflight-dev/inflight/test/controlplane"
	"github.com/inflight-dev/inflight/test/demo/fleet"
	"github.com/inflight-dev/inflight/test/demo/replay"
	"github.com/inflight-dev/inflight/test/demo/stack"
	"github.com/inflight-dev/inflight/test/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Main(m)) }

// The short profile.
const (
	ns        = "e2e-models"
	model     = "chat"
	target    = 2.0
	maxRep    = 8
	tick      = 250 * time.Millisecond
	sdDelay   = 5 * time.Second
	window    = 6 * time.Second
	leaseDur  = 3 * time.Second
	renewDL   = 2 * time.Second
	retryPer  = 500 * time.Millisecond
	promised  = 20 // ticks from load visible at the mesh to the scale-up
	stepOne   = 8  // concurrent clients in the first step: 8/2 → 4 replicas
	stepTwo   = 16 // after the leader is killed: 16/2 → 8 replicas
	generated = 100
)

func TestEndToEnd(t *testing.T) {
	testutil.SkipUnlessLong(t)
	cfg := controlplane.Config(t) // skips or fails when the binaries are missing
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bins := build(ctx, t)
	dir := t.TempDir()
	st, err := stack.Start(stack.Options{Bins: bins, Dir: dir, Config: cfg, Tick: tick,
		LeaseDuration: leaseDur, RenewDeadline: renewDL, RetryPeriod: retryPer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
		for _, p := range st.Procs() {
			if !p.GroupGone() {
				t.Errorf("%s (pgid %d) left behind", p.Name, p.Pid())
			}
		}
		if t.Failed() {
			dumpLogs(t, st)
		}
	})
	for i := range 2 {
		if _, err := st.StartExtproc(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		if _, err := st.StartController(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := stack.EnsureNamespace(ctx, st.Client, ns); err != nil {
		t.Fatal(err)
	}
	createModel(ctx, t, st)

	m := sim.Model{Batch: 4, PrefillTPS: 5000, SecPerToken: 0.01, ColdStart: 1} // 1 s per request
	fl, err := fleet.New(st.Client, fleet.Options{Namespace: ns, Deployment: model, Model: m, Speed: 1, WarmStart: true})
	if err != nil {
		t.Fatal(err)
	}
	fctx, stopFleet := context.WithCancel(ctx)
	fleetErr := make(chan error, 1)
	go func() { fleetErr <- fl.Run(fctx) }()
	t.Cleanup(func() {
		stopFleet()
		if err := <-fleetErr; err != nil {
			t.Errorf("fleet: %v", err)
		}
	})
	waitFleet(ctx, t, fl, 30*time.Second, "the first replica ready", func(s fleet.Sample) bool { return s.Ready == 1 })

	leader := waitLeader(ctx, t, st, nil, 30*time.Second)
	t.Logf("%s leads", leader.Identity)

	var grpc []string
	for _, e := range st.Extprocs {
		grpc = append(grpc, e.GRPC)
	}
	rp, err := replay.New(fl, replay.Options{Namespace: ns, Workload: model, Service: model, Extprocs: grpc})
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	load := newLoad(rp)

	// Step 1: 8 clients in a closed loop → in-flight 8 ≥ panic threshold
	// (2 × 1 ready × target 2): the policy scales up within one tick of
	// seeing it; we allow `promised` ticks after the mesh shows the load.
	load.add(ctx, stepOne)
	visible := waitMesh(ctx, t, st, 30*time.Second, func(inf int64) bool { return inf >= stepOne/2 })
	up1 := waitFleet(ctx, t, fl, time.Until(visible.Add(promised*tick)), "the first scale-up",
		func(s fleet.Sample) bool { return s.Desired > 1 })
	t.Logf("step 1: load visible at the mesh, scaled to %d after %v", up1.Desired, up1.Time.Sub(visible).Round(time.Millisecond))
	waitFleet(ctx, t, fl, 30*time.Second, "4 replicas ready", func(s fleet.Sample) bool { return s.Desired >= 4 && s.Ready >= 4 })
	waitEvent(ctx, t, st, 15*time.Second, scalingReason("ScaledUp"), leader.Identity)

	// Kill the leader (SIGKILL: no Lease release); the other takes over
	// after the lease expires and must make the next scale-up.
	leader.Kill()
	killed := time.Now()
	next := waitLeader(ctx, t, st, leader, leaseDur+renewDL+15*time.Second)
	t.Logf("%s took over %v after the leader was killed", next.Identity, time.Since(killed).Round(time.Millisecond))
	load.add(ctx, stepTwo-stepOne)
	waitFleet(ctx, t, fl, 30*time.Second, "the new leader's scale-up to ≥ 6", func(s fleet.Sample) bool { return s.Desired >= 6 })
	waitEvent(ctx, t, st, 15*time.Second, scalingReason("ScaledUp"), next.Identity)

	// Remove the load: no scale-down before scale-down-delay, then down to 1.
	waitFleet(ctx, t, fl, 30*time.Second, "the fleet to serve the second step", func(s fleet.Sample) bool { return s.Ready >= 6 })
	peak := fl.Snapshot(time.Now()).Desired
	removed := time.Now() // demand starts falling only after this: no request starts later
	load.stop()
	down := waitFleet(ctx, t, fl, sdDelay+window+60*time.Second, "a scale-down", func(s fleet.Sample) bool { return s.Desired < peak })
	if early := down.Time.Sub(removed); early < sdDelay {
		t.Errorf("scaled down %v after the load was removed, before scale-down-delay %v", early, sdDelay)
	}
	waitFleet(ctx, t, fl, 60*time.Second, "the scale-down to 1 replica", func(s fleet.Sample) bool { return s.Desired == 1 && s.Live == 1 })
	waitEvent(ctx, t, st, 15*time.Second, scalingReason("ScaledDown"), next.Identity)
	rp.Wait()

	// Every extproc counter back to zero, started = completed on every target.
	var last string
	err = stack.Poll(ctx, 15*time.Second, 50*time.Millisecond, func() bool {
		last = ""
		for _, e := range st.Extprocs {
			s, err := stack.Snapshot(ctx, e.Admin)
			if err != nil {
				last += fmt.Sprintf("%s: %v; ", e.Name, err)
				continue
			}
			for _, r := range s.Targets {
				if r.InFlight != 0 || r.Started != r.Completed {
					last += fmt.Sprintf("%s %s/%s/%s: in_flight %d started %d completed %d; ", s.Replica, r.Namespace, r.Workload, r.Pod, r.InFlight, r.Started, r.Completed)
				}
			}
			if len(s.Targets) == 0 {
				last += s.Replica + ": no target counted; "
			}
		}
		return last == ""
	})
	if err != nil {
		t.Errorf("extproc counters did not return to zero: %s", last)
	}
	// Every client of both steps completes at least one request (a stopped
	// client finishes the one it runs); more depends on how fast the
	// fleet scaled on this machine, so no more is asked.
	if sent := load.sent(); sent < stepTwo {
		t.Errorf("only %d requests sent by %d clients", sent, stepTwo)
	}
	if st := rp.Stats(); st.NoReplica != 0 || st.Outcomes["completed"] != int(st.Sent) {
		t.Errorf("replay stats %+v: want every request completed", st)
	}
}

func createModel(ctx context.Context, t *testing.T, st *stack.Stack) {
	t.Helper()
	p := scaling.AnnotationPrefix
	one := int32(1)
	labels := map[string]string{"app": model}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: model, Namespace: ns, Annotations: map[string]string{
			p + scaling.AnnTarget: fmt.Sprint(target), p + scaling.AnnMinReplicas: "1", p + scaling.AnnMaxReplicas: fmt.Sprint(maxRep),
			p + scaling.AnnWindow: window.String(), p + scaling.AnnPanicWindow: "1s",
			p + scaling.AnnScaleDownDelay: sdDelay.String(), p + scaling.AnnColdStart: "1s",
		}},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "example.invalid/model:e2e"}}}}},
	}
	if _, err := st.Client.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// load is a closed-loop client population: each client sends one request
// (1 s of service) after the other until stopped.
type load struct {
	rp     *replay.Replayer
	mu     sync.Mutex
	cancel []context.CancelFunc
	wg     sync.WaitGroup
	count  int64
	cmu    sync.Mutex
}

func newLoad(rp *replay.Replayer) *load { return &load{rp: rp} }

func (l *load) add(ctx context.Context, clients int) {
	for range clients {
		cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		l.mu.Lock()
		l.cancel = append(l.cancel, cancel)
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for cctx.Err() == nil && ctx.Err() == nil {
				// The request runs to its end even after stop: a client
				// population going away, not aborting.
				if _, err := l.rp.Send(context.WithoutCancel(ctx), sim.Request{Generated: generated}); err != nil {
					return
				}
				l.cmu.Lock()
				l.count++
				l.cmu.Unlock()
			}
		}()
	}
}

func (l *load) stop() {
	l.mu.Lock()
	for _, c := range l.cancel {
		c()
	}
	l.mu.Unlock()
	l.wg.Wait()
}

func (l *load) sent() int64 {
	l.cmu.Lock()
	defer l.cmu.Unlock()
	return l.count
}

func waitFleet(ctx context.Context, t *testing.T, fl *fleet.Fleet, timeout time.Duration, what string, cond func(fleet.Sample) bool) fleet.Sample {
	t.Helper()
	var s fleet.Sample
	if err := stack.Poll(ctx, timeout, 50*time.Millisecond, func() bool { s = fl.Snapshot(time.Now()); return cond(s) }); err != nil {
		t.Fatalf("waited %v for %s: last state %+v", timeout, what, s)
	}
	return s
}

// waitMesh waits until the extprocs' summed in-flight for the model
// satisfies cond and returns when it first did.
func waitMesh(ctx context.Context, t *testing.T, st *stack.Stack, timeout time.Duration, cond func(int64) bool) time.Time {
	t.Helper()
	var sum int64
	err := stack.Poll(ctx, timeout, 50*time.Millisecond, func() bool {
		var ok bool
		sum, ok = stack.InFlight(ctx, st.Extprocs, ns, model)
		return ok && cond(sum)
	})
	if err != nil {
		t.Fatalf("waited %v for the load at the mesh: in-flight %d", timeout, sum)
	}
	return time.Now()
}

// waitLeader waits for a live controller other than not to report leading.
func waitLeader(ctx context.Context, t *testing.T, st *stack.Stack, not *stack.Controller, timeout time.Duration) *stack.Controller {
	t.Helper()
	var got *stack.Controller
	if err := stack.Poll(ctx, timeout, 50*time.Millisecond, func() bool {
		got = st.Leader(ctx)
		return got != nil && got != not
	}); err != nil {
		t.Fatalf("no controller took the lead within %v", timeout)
	}
	return got
}

func scalingReason(r string) func(corev1.Event) bool {
	return func(e corev1.Event) bool { return e.Reason == r }
}

// waitEvent waits for an Event on the model Deployment matching match and
// reported by the controller replica identity.
func waitEvent(ctx context.Context, t *testing.T, st *stack.Stack, timeout time.Duration, match func(corev1.Event) bool, identity string) corev1.Event {
	t.Helper()
	sel := fields.AndSelectors(fields.OneTermEqualSelector("involvedObject.name", model),
		fields.OneTermEqualSelector("involvedObject.kind", "Deployment")).String()
	var found corev1.Event
	var seen []string
	err := stack.Poll(ctx, timeout, 50*time.Millisecond, func() bool {
		list, err := st.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			return false
		}
		seen = seen[:0]
		for _, e := range list.Items {
			src := e.Source.Host
			if src == "" {
				src = e.ReportingInstance
			}
			seen = append(seen, fmt.Sprintf("%s %s [%s]", e.Reason, e.Message, src))
			if match(e) && src == identity {
				found = e
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatalf("no matching Event from %s within %v; Events: %q", identity, timeout, seen)
	}
	t.Logf("Event %s: %s", found.Reason, found.Message)
	return found
}

// build builds the binaries the stack runs (cached by the go build cache).
func build(ctx context.Context, t *testing.T) stack.Bins {
	t.Helper()
	root, err := controlplane.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	bins, err := stack.Build(ctx, root, &log, false)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	return bins
}

func dumpLogs(t *testing.T, st *stack.Stack) {
	for _, p := range st.Procs() {
		b, err := os.ReadFile(p.LogPath)
		if err != nil {
			continue
		}
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("--- tail of %s ---\n%s", p.LogPath, b)
	}
}

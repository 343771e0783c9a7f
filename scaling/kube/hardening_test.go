package kube

import (
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling/collect"
	"github.com/inflight-dev/inflight/test/testutil"
)

// holds checks, for d, that name stays at want replicas (bounded: the
// caller picks d to span many ticks).
func (e *env) holds(name string, want int32, d time.Duration) {
	e.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if n := e.replicas(name); n != want {
			e.t.Fatalf("%s scaled to %d, want it held at %d", name, n, want)
		}
	}
}

// Issue 10.2: demand counts only from targets whose pod is a live pod of
// the Deployment the record names. Claims for a victim from a made-up pod,
// from another Deployment's pod and from the victim's pod name in another
// namespace move nothing; the same load on the victim's own pod does.
func TestDemandOnlyFromLivePodsOfTheDeployment(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("victim", fastAnn("inflight.dev/max-replicas", "40"), 1)
	e.pod("victim", "victim-1")
	e.deployment("other", fastAnn(), 1)
	e.pod("other", "other-1")
	e.deployment("plain", nil, 1) // not managed: its sums still reach OnTick (KEDA)
	e.pod("plain", "plain-1")
	a := e.replica("a")
	o := e.fastOptions("c1")
	var mu sync.Mutex
	var last collect.Result
	o.OnTick = func(res collect.Result) { mu.Lock(); last = res; mu.Unlock() }
	r := e.start(e.cfg, o, nil)
	eventually(t, 30*time.Second, "leadership", r.c.Leading)
	a.SetInFlight(e.ns, "plain", "plain-1", 2, time.Second)
	a.SetInFlight(e.ns, "plain", "ghost-3", 50, time.Second)
	eventually(t, 30*time.Second, "the unmanaged Deployment's live pod summed for OnTick, the ghost set aside", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return last.Workloads[collect.Workload{Namespace: e.ns, Name: "plain"}].InFlight == 2 && last.Unattributed == 50
	})

	a.SetInFlight(e.ns, "victim", "ghost-7", 40, time.Second)               // no such pod
	a.SetInFlight(e.ns, "victim", "other-1", 40, time.Second)               // another Deployment's pod
	a.SetInFlight("elsewhere-"+e.ns, "victim", "victim-1", 40, time.Second) // the victim's pod name, another namespace
	eventually(t, 30*time.Second, "the forged claims seen and set aside", func() bool {
		return r.metric(t, "inflight_controller_unattributed_in_flight", nil) >= 130
	})
	e.holds("victim", 1, 3*time.Second)
	if w := r.workload(e.ns, "victim"); w == nil || w.Last == nil || w.Last.InFlight != 0 {
		t.Errorf("victim's observed in-flight = %+v, want 0", w)
	}

	a.SetInFlight(e.ns, "victim", "victim-1", 3, time.Second) // its own pod: counts
	eventually(t, 30*time.Second, "scale-up to 3 on the victim's own pod", func() bool { return e.replicas("victim") == 3 })
}

// Issue 10.2: snapshots with impossible numbers are rejected and make the
// tick partial; none of them moves a replica. Each forgery alone would have
// taken the workload to max-replicas in one write.
func TestImpossibleSnapshotsAreRejected(t *testing.T) {
	testutil.SkipUnlessLong(t)
	for _, tc := range []struct {
		name  string
		forge func(s *extproc.Snapshot, n int)
	}{
		{"busy-seconds jump with nothing in flight", func(s *extproc.Snapshot, n int) {
			for i := range s.Targets {
				s.Targets[i].BusySeconds += 1e6 * float64(n)
			}
		}},
		{"uptime advancing 1ms per tick", func(s *extproc.Snapshot, n int) { s.UptimeSeconds = 50 + float64(n)/1000 }},
		{"wall clock 1ms per tick", func(s *extproc.Snapshot, n int) {
			s.Time = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(n) * time.Millisecond)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.deployment("llama", fastAnn("inflight.dev/max-replicas", "40"), 1)
			e.pod("llama", "llama-1")
			a := e.replica("a")
			a.SetInFlight(e.ns, "llama", "llama-1", 1, time.Second)
			r := e.start(e.cfg, e.fastOptions("c1"), nil)
			eventually(t, 30*time.Second, "a complete tick", func() bool {
				s := r.c.Status()
				return s.Leader && !s.Partial && s.ExtprocAnswered == 1
			})
			n := 0
			a.Mutate(func(s *extproc.Snapshot) { n++; tc.forge(s, n) })
			eventually(t, 30*time.Second, "the forged snapshots rejected", func() bool {
				return r.metric(t, "inflight_controller_snapshot_errors_total", map[string]string{"kind": "invalid"}) >= 5
			})
			if s := r.c.Status(); !s.Partial {
				t.Error("status not partial while every snapshot is rejected")
			}
			e.holds("llama", 1, 2*time.Second)
		})
	}
}

// Issue 10.4: a terminating but serving extproc endpoint is still fetched
// (its counts are real until it exits); one that leaves the slice keeps its
// last values and the tick partial for --expire: no 17 → 8 drop.
func TestExtprocRolloutKeepsItsCounts(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("llama", fastAnn("inflight.dev/max-replicas", "20", "inflight.dev/scale-down-delay", "0s"), 1)
	e.kubelet("llama")
	a := e.replica("a")
	b := e.replica("b")
	o := e.fastOptions("c1")
	o.Expire = 4 * time.Second
	r := e.start(e.cfg, o, nil)
	a.SetInFlight(e.ns, "llama", "llama-1", 8, time.Second)
	b.SetInFlight(e.ns, "llama", "llama-1", 9, time.Second)
	eventually(t, 30*time.Second, "scale-up to 17", func() bool { return e.replicas("llama") == 17 })

	// b terminates, still serving: fetched as before.
	s, err := e.cs.DiscoveryV1().EndpointSlices(e.sysNS).Get(e.ctx(), "extproc-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
	if _, err := e.cs.DiscoveryV1().EndpointSlices(e.sysNS).Update(e.ctx(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	served := b.Served()
	eventually(t, 30*time.Second, "the terminating replica fetched", func() bool { return b.Served() > served+5 })
	if st := r.c.Status(); st.Partial || st.ExtprocAnswered != 2 {
		t.Errorf("with b terminating but serving: partial %v, answered %d; want complete, 2", st.Partial, st.ExtprocAnswered)
	}

	// b leaves the slice with its 9 requests: they vanish from the sum,
	// but not at once.
	e.unslice(b)
	gone := time.Now()
	for e.replicas("llama") == 17 && time.Since(gone) < 30*time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	if d := time.Since(gone); d < o.Expire {
		t.Errorf("scaled down %v after b vanished, before --expire %v", d, o.Expire)
	}
	if got := r.metric(t, "inflight_controller_decisions_total", map[string]string{"reason": "partial"}); got < 1 {
		t.Errorf("decisions_total{reason=partial} = %v, want ≥ 1 (the vanished replica held scale-down)", got)
	}
}

// Issue 10.3: an active overflow target may hide any workload's demand:
// no scale-down while it lasts. A namespace_overflow hides only its
// namespace's.
func TestOverflowHoldsScaleDown(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("llama", fastAnn("inflight.dev/scale-down-delay", "0s"), 1)
	e.kubelet("llama")
	a := e.replica("a")
	r := e.start(e.cfg, e.fastOptions("c1"), nil)
	a.SetInFlight(e.ns, "llama", "llama-1", 4, time.Second)
	eventually(t, 30*time.Second, "scale-up to 4", func() bool { return e.replicas("llama") == 4 })

	// Another namespace's overflow: scale-down proceeds.
	overflow := []extproc.TargetRecord{{Namespace: "elsewhere", Reason: "namespace_overflow", InFlight: 5, Started: 5}}
	a.Mutate(func(s *extproc.Snapshot) { s.Targets = append(s.Targets, overflow...) })
	a.SetInFlight(e.ns, "llama", "llama-1", 2, time.Second)
	eventually(t, 60*time.Second, "a scale-down despite another namespace's overflow", func() bool { return e.replicas("llama") < 4 })
	a.SetInFlight(e.ns, "llama", "llama-1", 3, time.Second)
	time.Sleep(time.Second)
	held := e.replicas("llama")

	// This namespace's overflow, then the global one: held.
	for _, o := range []extproc.TargetRecord{
		{Namespace: e.ns, Reason: "namespace_overflow", InFlight: 5, Started: 5},
		{Reason: "overflow", InFlight: 5, Started: 5},
	} {
		overflow = []extproc.TargetRecord{o}
		a.SetInFlight(e.ns, "llama", "llama-1", 0, time.Second)
		e.holds("llama", held, 8*time.Second) // more than a window (6s) with scale-down-delay 0s
		w := r.workload(e.ns, "llama")
		if w == nil || w.Last == nil || !w.Last.Partial {
			t.Errorf("%s: last decision %+v, want partial", o.Reason, w)
		}
	}
	a.Mutate(nil)
	eventually(t, 60*time.Second, "scale-down once the overflow is gone", func() bool { return e.replicas("llama") < held })
}

// Issue 10.6: inflight.dev/ annotations without inflight.dev/target (a
// typo of the required key, or a removed target) give a Warning Event
// naming each, and the Deployment is not scaled.
func TestStrayAnnotationsWarn(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("typo", map[string]string{"inflight.dev/targt": "1", "inflight.dev/max-replicas": "8"}, 1)
	e.pod("typo", "typo-1")
	e.deployment("llama", fastAnn(), 1)
	e.pod("llama", "llama-1")
	// slo-wait alone enables inflight (issue 11): managed, not a stray.
	slo := fastAnn()
	delete(slo, "inflight.dev/target")
	slo["inflight.dev/slo-wait"] = "10s"
	e.deployment("slo", slo, 1)
	e.pod("slo", "slo-1")
	a := e.replica("a")
	a.SetInFlight(e.ns, "typo", "typo-1", 6, time.Second)
	r := e.start(e.cfg, e.fastOptions("c1"), nil)
	eventually(t, 30*time.Second, "the slo-wait-only Deployment managed", func() bool {
		for _, w := range r.c.Status().Workloads {
			if w.Workload == "slo" {
				return true
			}
		}
		return false
	})

	eventually(t, 30*time.Second, "Warning Events for the typo and the missing target", func() bool {
		evs := e.events("typo")
		return findEvent(evs, ReasonInvalidConfig, "inflight.dev/targt", "inflight does not manage this Deployment") != nil &&
			findEvent(evs, ReasonInvalidConfig, "inflight.dev/target", "missing") != nil
	})
	if got := r.metric(t, "inflight_controller_config_invalid", map[string]string{"workload": "typo"}); got != 1 {
		t.Errorf("config_invalid{workload=typo} = %v, want 1", got)
	}
	e.holds("typo", 1, 2*time.Second)

	// Removing the target of a managed Deployment: no longer managed, and
	// said so.
	e.annotate("llama", map[string]string{"inflight.dev/max-replicas": "8"})
	eventually(t, 30*time.Second, "a Warning Event for the removed target", func() bool {
		return findEvent(e.events("llama"), ReasonInvalidConfig, "inflight.dev/target", "inflight does not manage") != nil
	})
	a.SetInFlight(e.ns, "llama", "llama-1", 6, time.Second)
	e.holds("llama", 1, 2*time.Second)
	for _, w := range r.c.Status().Workloads {
		if strings.HasPrefix(w.Workload, "typo") || w.Workload == "llama" {
			t.Errorf("unmanaged Deployment in status: %+v", w)
		}
	}
	if ev := findEvent(e.events("slo"), ReasonInvalidConfig); ev != nil {
		t.Errorf("slo-wait-only Deployment reported invalid: %s", ev.Message)
	}
}

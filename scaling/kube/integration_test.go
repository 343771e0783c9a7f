package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/test/testutil"
)

// Short but valid annotation values (window ≥ 6s is the policy's floor).
func fastAnn(extra ...string) map[string]string {
	a := map[string]string{
		"inflight.dev/target":           "1",
		"inflight.dev/window":           "6s",
		"inflight.dev/panic-window":     "1s",
		"inflight.dev/scale-down-delay": "2s",
		"inflight.dev/max-replicas":     "8",
		"inflight.dev/cold-start":       "1s",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		a[extra[i]] = extra[i+1]
	}
	return a
}

// An annotated Deployment scales up under load and back down after
// scale-down-delay; an un-annotated one under the same load is never touched.
func TestScaleUpUnderLoadAndDownAfterDelay(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("llama", fastAnn(), 1)
	plain := e.deployment("plain", nil, 1)
	e.kubelet("llama")
	a := e.replica("a")
	b := e.replica("b")
	r := e.start(e.cfg, e.fastOptions("c1"), nil)

	eventually(t, 30*time.Second, "leadership", r.c.Leading)
	a.SetInFlight(e.ns, "llama", "llama-1", 3, time.Second)
	b.SetInFlight(e.ns, "llama", "llama-1", 2, time.Second)
	a.SetInFlight(e.ns, "plain", "plain-1", 40, time.Second)

	eventually(t, 30*time.Second, "scale-up of llama to 5", func() bool { return e.replicas("llama") >= 5 })
	eventually(t, 30*time.Second, "a ScaledUp Event with the numbers", func() bool {
		return findEvent(e.events("llama"), ReasonScaledUp, "scaled 1 → ", "target 1 per replica", "in-flight now 5.0") != nil
	})
	if got := r.metric(t, "inflight_controller_decisions_total", map[string]string{"direction": "up"}); got < 1 {
		t.Errorf("decisions_total{direction=up} = %v, want ≥ 1", got)
	}

	// Load off: it must wait scale-down-delay, then come back to 1.
	loadOff := time.Now()
	a.SetInFlight(e.ns, "llama", "llama-1", 0, time.Second)
	b.SetInFlight(e.ns, "llama", "llama-1", 0, time.Second)
	var firstDown time.Time
	eventually(t, 60*time.Second, "scale-down of llama to 1", func() bool {
		n := e.replicas("llama")
		if n < 5 && firstDown.IsZero() {
			firstDown = time.Now()
		}
		return n == 1
	})
	if d := firstDown.Sub(loadOff); d < 2*time.Second {
		t.Errorf("first scale-down %v after the load stopped, before scale-down-delay 2s", d)
	}
	eventually(t, 30*time.Second, "a ScaledDown Event", func() bool {
		return findEvent(e.events("llama"), ReasonScaledDown, " → 1") != nil
	})

	p, err := e.cs.AppsV1().Deployments(e.ns).Get(e.ctx(), "plain", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.ResourceVersion != plain.ResourceVersion || *p.Spec.Replicas != 1 {
		t.Errorf("un-annotated Deployment touched: rv %s → %s, replicas %d", plain.ResourceVersion, p.ResourceVersion, *p.Spec.Replicas)
	}
	if evs := e.events("plain"); len(evs) != 0 {
		t.Errorf("events on the un-annotated Deployment: %+v", evs)
	}
	if w := r.workload(e.ns, "plain"); w != nil {
		t.Errorf("un-annotated Deployment in status: %+v", w)
	}
	w := r.workload(e.ns, "llama")
	if w == nil || w.LastChange == nil || w.LastChange.Direction != "down" || w.Target != 1 {
		t.Errorf("status of llama = %+v", w)
	}
}

// Invalid annotations: a Warning Event naming the annotation, its value and
// the allowed range; never a scale on them; the last valid configuration
// stays in force.
func TestInvalidAnnotationsWarnAndNeverScale(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("bad", fastAnn("inflight.dev/target", "lots"), 1)
	e.pod("bad", "bad-1")
	a := e.replica("a")
	r := e.start(e.cfg, e.fastOptions("c1"), nil)
	a.SetInFlight(e.ns, "bad", "bad-1", 6, time.Second)

	eventually(t, 30*time.Second, "Warning Event for inflight.dev/target", func() bool {
		return findEvent(e.events("bad"), ReasonInvalidConfig, "inflight.dev/target", `"lots"`, "a number between 0.01 and 1e6") != nil
	})
	if ev := findEvent(e.events("bad"), ReasonInvalidConfig); ev.Type != "Warning" {
		t.Errorf("event type = %s, want Warning", ev.Type)
	}
	// Many ticks with load 6× the (would-be) target: no write.
	start := time.Now()
	eventually(t, 30*time.Second, "20 ticks after the warning", func() bool {
		w := r.workload(e.ns, "bad")
		return w != nil && w.ConfigError != "" && r.c.Status().Time.After(start.Add(2*time.Second))
	})
	if n := e.replicas("bad"); n != 1 {
		t.Fatalf("scaled to %d on an invalid configuration", n)
	}
	if got := r.metric(t, "inflight_controller_config_invalid", map[string]string{"workload": "bad"}); got != 1 {
		t.Errorf("config_invalid = %v, want 1", got)
	}

	// Two invalid annotations at once: a Warning for each.
	e.annotate("bad", fastAnn("inflight.dev/target", "lots", "inflight.dev/max-replicas", "0"))
	eventually(t, 30*time.Second, "a Warning Event per invalid annotation", func() bool {
		evs := e.events("bad")
		return findEvent(evs, ReasonInvalidConfig, "inflight.dev/max-replicas", `"0"`, "between 1 and") != nil &&
			findEvent(evs, ReasonInvalidConfig, "inflight.dev/target", `"lots"`, "not scaling it") != nil
	})

	// Fix it: now it scales.
	e.annotate("bad", fastAnn())
	eventually(t, 30*time.Second, "scale-up once valid", func() bool { return e.replicas("bad") >= 6 })

	// Break another annotation: Warning, last valid configuration kept
	// (still managed, still scaling up on it).
	e.annotate("bad", fastAnn("inflight.dev/window", "1ms", "inflight.dev/max-replicas", "8"))
	eventually(t, 30*time.Second, "Warning Event for inflight.dev/window", func() bool {
		return findEvent(e.events("bad"), ReasonInvalidConfig, "inflight.dev/window", `"1ms"`, "keeping the last valid configuration") != nil
	})
	a.SetInFlight(e.ns, "bad", "bad-1", 8, time.Second)
	eventually(t, 30*time.Second, "scale-up on the last valid configuration", func() bool { return e.replicas("bad") == 8 })
	if got := r.metric(t, "inflight_controller_invalid_configs_total", nil); got != 3 {
		t.Errorf("invalid_configs_total = %v, want 3 (distinct invalid sets)", got)
	}
}

// An extproc replica stopped mid-run: the data is partial and nothing scales
// down, however long it lasts; once it is unlisted, scale-down resumes.
func TestStoppedExtprocReplicaBlocksScaleDown(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("llama", fastAnn(), 1)
	e.pod("llama", "p")
	a := e.replica("a")
	b := e.replica("b")
	r := e.start(e.cfg, e.fastOptions("c1"), nil)
	a.SetInFlight(e.ns, "llama", "p", 2, time.Second)
	b.SetInFlight(e.ns, "llama", "p", 2, time.Second)
	eventually(t, 30*time.Second, "scale-up to 4", func() bool { return e.replicas("llama") == 4 })

	b.Close() // stopped mid-run, still listed
	a.SetInFlight(e.ns, "llama", "p", 0, time.Second)
	stopped := time.Now()
	// Window (6s) + scale-down-delay (2s) + expiry (2s) + margin: a complete
	// data set would have scaled down long before.
	eventually(t, 60*time.Second, "15s of partial ticks", func() bool {
		if n := e.replicas("llama"); n != 4 {
			t.Fatalf("scaled %d → %d while data was partial", 4, n)
		}
		s := r.c.Status()
		return s.Partial && s.Time.Sub(stopped) > 15*time.Second
	})
	if got := r.metric(t, "inflight_controller_snapshot_errors_total", map[string]string{"kind": "connect"}); got < 1 {
		t.Errorf("snapshot_errors_total{kind=connect} = %v, want ≥ 1", got)
	}
	if got := r.metric(t, "inflight_controller_data_partial", nil); got != 1 {
		t.Errorf("data_partial = %v, want 1", got)
	}
	w := r.workload(e.ns, "llama")
	if w == nil || w.Last == nil || !w.Last.Partial || !strings.Contains(w.Last.Reason, "partial") {
		t.Errorf("last decision = %+v, want a partial-data hold", w.Last)
	}

	e.unslice(b) // gone for good: the remaining data is complete
	eventually(t, 60*time.Second, "scale-down once complete", func() bool { return e.replicas("llama") == 1 })
}

// Two controllers: only the leader writes; stopping the leader hands over
// within the lease duration and the new leader makes the next decision.
func TestLeaderElectionHandover(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("llama", fastAnn(), 1)
	e.pod("llama", "p")
	a := e.replica("a")
	r1 := e.start(e.cfg, e.fastOptions("c1"), nil)
	r2 := e.start(e.cfg, e.fastOptions("c2"), nil)
	eventually(t, 30*time.Second, "a leader", func() bool { return r1.c.Leading() || r2.c.Leading() })
	leader, follower := r1, r2
	if r2.c.Leading() {
		leader, follower = r2, r1
	}
	if follower.c.Leading() {
		t.Fatal("both controllers lead")
	}
	a.SetInFlight(e.ns, "llama", "p", 3, time.Second)
	eventually(t, 30*time.Second, "scale-up to 3", func() bool { return e.replicas("llama") == 3 })
	if got := follower.metric(t, "inflight_controller_scale_writes_total", nil); got != 0 {
		t.Errorf("follower wrote %v times", got)
	}
	if got := leader.metric(t, "inflight_controller_scale_writes_total", map[string]string{"result": "ok"}); got < 1 {
		t.Errorf("leader wrote %v times", got)
	}
	eventually(t, 30*time.Second, "the leader's ScaledUp Event", func() bool {
		return findEvent(e.events("llama"), ReasonScaledUp) != nil
	})
	for _, ev := range e.events("llama") {
		if ev.Source.Host != leader.c.opt.Identity {
			t.Errorf("Event from %s, want only the leader %s: %s", ev.Source.Host, leader.c.opt.Identity, ev.Message)
		}
	}
	if s := follower.c.Status(); s.Leader || len(s.Workloads) != 0 {
		t.Errorf("follower status = %+v", s)
	}

	stopped := time.Now()
	leader.stop(t)
	eventually(t, leader.c.opt.LeaseDuration+2*time.Second, "takeover within the lease duration", follower.c.Leading)
	t.Logf("takeover after %v", time.Since(stopped))
	a.SetInFlight(e.ns, "llama", "p", 6, time.Second)
	eventually(t, 30*time.Second, "new leader scales to 6", func() bool { return e.replicas("llama") == 6 })
	eventually(t, 30*time.Second, "the new leader's ScaledUp 3 → 6 Event", func() bool {
		ev := findEvent(e.events("llama"), ReasonScaledUp, "scaled 3 → 6")
		return ev != nil && ev.Source.Host == follower.c.opt.Identity
	})
}

// A concurrent update of the Deployment between our GET and UPDATE of
// /scale: the apiserver answers Conflict, the write is retried, and neither
// change is lost.
func TestConflictingUpdateIsRetried(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("llama", fastAnn(), 1)
	e.pod("llama", "p")
	a := e.replica("a")
	var fired atomic.Int32
	r := e.start(e.cfg, e.fastOptions("c1"), func(c *Controller) {
		c.beforeScaleUpdate = func(ns, name string) {
			if fired.Add(1) != 1 {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			d, err := e.cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Errorf("concurrent get: %v", err)
				return
			}
			d.Labels = map[string]string{"team": "search"}
			if _, err := e.cs.AppsV1().Deployments(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
				t.Errorf("concurrent update: %v", err)
			}
		}
	})
	a.SetInFlight(e.ns, "llama", "p", 4, time.Second)
	eventually(t, 30*time.Second, "scale-up to 4", func() bool { return e.replicas("llama") == 4 })
	d, err := e.cs.AppsV1().Deployments(e.ns).Get(e.ctx(), "llama", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Labels["team"] != "search" {
		t.Errorf("the concurrent update was lost: labels %v", d.Labels)
	}
	if got := r.metric(t, "inflight_controller_scale_conflicts_total", nil); got < 1 {
		t.Errorf("scale_conflicts_total = %v, want ≥ 1 (no real Conflict happened)", got)
	}
	if got := r.metric(t, "inflight_controller_scale_writes_total", map[string]string{"result": "error"}); got != 0 {
		t.Errorf("failed writes = %v, want 0", got)
	}
}

// partition fails every API request of one controller while it is closed.
type partition struct {
	rt     http.RoundTripper
	closed atomic.Bool
}

func (p *partition) RoundTrip(r *http.Request) (*http.Response, error) {
	if p.closed.Load() {
		return nil, errors.New("partitioned from the apiserver")
	}
	return p.rt.RoundTrip(r)
}

// A leader that dies without releasing the Lease (here: cut off from the
// apiserver) is replaced within the lease duration, and the new leader
// makes the next decision.
func TestLeaderLostTakeoverWithinLeaseDuration(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("llama", fastAnn(), 1)
	e.pod("llama", "p")
	a := e.replica("a")
	p := &partition{}
	cut := rest.CopyConfig(e.cfg)
	cut.Wrap(func(rt http.RoundTripper) http.RoundTripper { p.rt = rt; return p })
	r1 := e.start(cut, e.fastOptions("c1"), nil)
	eventually(t, 30*time.Second, "c1 leads", r1.c.Leading)
	r2 := e.start(e.cfg, e.fastOptions("c2"), nil)
	a.SetInFlight(e.ns, "llama", "p", 2, time.Second)
	eventually(t, 30*time.Second, "scale-up to 2 by c1", func() bool { return e.replicas("llama") == 2 })
	if r2.c.Leading() {
		t.Fatal("c2 leads while c1 holds the Lease")
	}

	p.closed.Store(true)
	cutAt := time.Now()
	lease := r1.c.opt.LeaseDuration
	// The protocol bound is lease + retry period; the slack is for a loaded CI box.
	eventually(t, lease+r1.c.opt.RetryPeriod+4*time.Second, "c2 takes over", r2.c.Leading)
	t.Logf("takeover %v after the leader was cut off (lease %v)", time.Since(cutAt), lease)
	eventually(t, 30*time.Second, "c1 notices it lost the Lease", func() bool { return !r1.c.Leading() })

	a.SetInFlight(e.ns, "llama", "p", 5, time.Second)
	eventually(t, 30*time.Second, "c2 scales to 5", func() bool { return e.replicas("llama") == 5 })
	eventually(t, 30*time.Second, "c2's ScaledUp Event", func() bool {
		ev := findEvent(e.events("llama"), ReasonScaledUp, "scaled 2 → 5")
		return ev != nil && ev.Source.Host == "c2"
	})
}

// A new leader starts conservatively: even with the load gone and a short
// scale-down-delay, it does not scale down before a full window (6s) of its
// own data.
func TestNewLeaderWaitsAFullWindowBeforeScaleDown(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("llama", fastAnn(), 1)
	e.kubelet("llama") // pods become Ready, so no burst mode holds the count
	a := e.replica("a")
	r1 := e.start(e.cfg, e.fastOptions("c1"), nil)
	eventually(t, 30*time.Second, "c1 leads", r1.c.Leading)
	r2 := e.start(e.cfg, e.fastOptions("c2"), nil)
	a.SetInFlight(e.ns, "llama", "llama-1", 4, time.Second)
	eventually(t, 30*time.Second, "scale-up to 4", func() bool { return e.replicas("llama") == 4 })

	a.SetInFlight(e.ns, "llama", "llama-1", 0, time.Second)
	r1.stop(t)
	eventually(t, 10*time.Second, "c2 takes over", r2.c.Leading)
	took := time.Now()
	var firstDown time.Time
	eventually(t, 60*time.Second, "c2 scales down", func() bool {
		if e.replicas("llama") < 4 {
			firstDown = time.Now()
			return true
		}
		return false
	})
	if d := firstDown.Sub(took); d < 6*time.Second {
		t.Errorf("new leader scaled down %v after taking over, before one window (6s) of its own data", d)
	}
	if got := r2.metric(t, "inflight_controller_decisions_total", map[string]string{"reason": scaling.CauseWarmingUp.String()}); got < 1 {
		t.Errorf("decisions_total{reason=warming_up} = %v on the new leader, want ≥ 1", got)
	}
}

// Many workloads scale in the same tick: the writes run in parallel, never
// more than --write-workers at once, and every one lands.
func TestWritesRunInParallelWithinTheLimit(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	const n = 6
	for i := range n {
		e.deployment(fmt.Sprintf("m%d", i), fastAnn(), 1)
		e.pod(fmt.Sprintf("m%d", i), fmt.Sprintf("m%d-p", i))
	}
	a := e.replica("a")
	o := e.fastOptions("c1")
	o.WriteWorkers = 3
	var cur, peak atomic.Int32
	r := e.start(e.cfg, o, func(c *Controller) {
		c.beforeScaleUpdate = func(string, string) {
			now := cur.Add(1)
			defer cur.Add(-1)
			for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
			}
			time.Sleep(50 * time.Millisecond) // hold the slot so that overlaps show
		}
	})
	eventually(t, 30*time.Second, "leadership", r.c.Leading)
	for i := range n {
		a.SetInFlight(e.ns, fmt.Sprintf("m%d", i), fmt.Sprintf("m%d-p", i), 4, time.Second)
	}
	eventually(t, 30*time.Second, "every workload at 4", func() bool {
		for i := range n {
			if e.replicas(fmt.Sprintf("m%d", i)) != 4 {
				return false
			}
		}
		return true
	})
	if p := peak.Load(); p < 2 || p > int32(o.WriteWorkers) {
		t.Errorf("peak concurrent writes %d, want 2..%d (parallel, within --write-workers)", p, o.WriteWorkers)
	}
}

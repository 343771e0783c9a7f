package kube

import (
	"context"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// term is the state of one leadership term, owned by the tick goroutine. A
// new term starts from nothing: no snapshot baselines from an earlier term
// (they would make one tick's delta span the whole gap) and fresh
// autoscalers.
type term struct {
	coll      *collect.Collector
	workloads map[collect.Workload]*wstate
	// stray holds the fingerprint of the inflight.dev/ annotations of each
	// Deployment that has some but no inflight.dev/target, as last warned
	// about.
	stray map[collect.Workload]string
	// share is the last tick's share of the gate limits per extproc.
	share float64
}

func (c *Controller) newTerm() *term {
	return &term{coll: collect.New(c.collOpt), workloads: map[collect.Workload]*wstate{}, stray: map[collect.Workload]string{}, share: 1}
}

// wstate is the state of one workload within a term.
type wstate struct {
	fp       string // fingerprint of the inflight.dev/ annotations last parsed
	cfg      *scaling.Config
	cfgErr   error
	as       *scaling.Autoscaler
	seen     map[string]bool // pod UIDs whose start-up was recorded
	starts   []time.Duration // last observed cold starts
	written  int32
	writtenT time.Time
	last     *DecisionStatus
	change   *DecisionStatus
	source   string // where the last tick saw its demand (collect.Sample.Source)
}

func (w *wstate) coldStart() time.Duration {
	if len(w.starts) == 0 {
		return 0
	}
	var s time.Duration
	for _, d := range w.starts {
		s += d
	}
	return s / time.Duration(len(w.starts))
}

// tick runs one round: read the cluster (view), fetch the snapshots and
// sum what each workload's live pods report (collect), decide per workload
// (policy), write what changed (/scale), publish the status.
func (c *Controller) tick(ctx context.Context, t *term) {
	begin := time.Now()
	now := c.opt.Clock.Now()
	v, ok := c.view()
	if !ok {
		c.log.Error("read the Deployments from the informer cache")
		return
	}
	eps := c.endpoints()
	res := c.fetch(ctx, t, v, eps)
	if c.opt.OnTick != nil {
		c.opt.OnTick(res) // the KEDA external scaler's sums (scaling/keda)
	}
	writes := c.decide(t, v, res, now)
	c.runWrites(ctx, writes)
	for _, wr := range writes {
		c.finish(wr, now)
	}
	// The gates (issue 12) after the writes: a workload woken from zero
	// this tick is pushed with the replicas just written. Each extproc
	// enforces 1 / (the replicas that answered) of each limit.
	t.share = 1 / float64(max(1, res.Answered))
	c.pushGates(ctx, t, v, eps, t.share)
	c.publish(t, res, now)
	c.m.tickDuration.Observe(time.Since(begin).Seconds())
}

// fetch collects every extproc replica's snapshot and sums, per managed
// workload, what its live pods report.
func (c *Controller) fetch(ctx context.Context, t *term, v *view, eps []collect.Endpoint) collect.Result {
	res := t.coll.Tick(ctx, eps, v.attribute, v.edges)
	c.m.endpoints.WithLabelValues("answered").Set(float64(res.Answered))
	c.m.endpoints.WithLabelValues("failed").Set(float64(res.Endpoints - res.Answered))
	c.m.endpoints.WithLabelValues("vanished").Set(float64(res.Vanished))
	c.m.unattributed.Set(res.Unattributed)
	c.m.unmapped.Set(res.Unmapped)
	if res.Partial {
		c.m.partial.Set(1)
	} else {
		c.m.partial.Set(0)
	}
	for _, e := range res.Errors {
		if e.Kind == collect.KindInvalid {
			c.m.scrapeErrors.WithLabelValues(e.Kind).Inc()
			c.log.Warn("snapshot rejected", zap.String("replica", e.Endpoint.Key), zap.Error(e.Err))
			continue
		}
		c.log.Debug("snapshot failed", zap.String("replica", e.Endpoint.Key), zap.String("kind", e.Kind), zap.Error(e.Err))
	}
	return res
}

// decide observes and decides for every managed Deployment and returns the
// writes to make; it warns about the stray ones.
func (c *Controller) decide(t *term, v *view, res collect.Result, now time.Time) (writes []*write) {
	present := map[collect.Workload]bool{}
	skip := c.hpaScaled(v.managed) // hpa.go
	for _, dep := range v.managed {
		w := collect.Workload{Namespace: dep.Namespace, Name: dep.Name}
		if skip[w] {
			continue // an HPA scales it: not present, its state and metrics go
		}
		present[w] = true
		st := t.workloads[w]
		if st == nil {
			st = &wstate{seen: map[string]bool{}}
			t.workloads[w] = st
		}
		c.configure(w, dep, st, now)
		if st.cfg == nil {
			continue // never scale on an invalid configuration
		}
		if wr := c.decideOne(w, dep, v.pods[w], st, res, now); wr != nil {
			writes = append(writes, wr)
		}
	}
	for w := range t.workloads {
		if !present[w] {
			delete(t.workloads, w)
			c.m.forget(w)
		}
	}
	c.strays(t, v.stray)
	return writes
}

// decideOne observes one workload and decides; it returns the write to
// make, or nil.
func (c *Controller) decideOne(w collect.Workload, dep *appsv1.Deployment, pods []*corev1.Pod, st *wstate, res collect.Result, now time.Time) *write {
	ready, starting := countPods(pods, st)
	requested := c.requested(dep, st, now)
	s := res.Workloads[w]
	// The collector's in-flight includes the held requests; the policy
	// takes them apart.
	obs := scaling.Observation{Time: now, Concurrency: s.Concurrency, InFlight: s.InFlight - s.Held, Held: s.Held,
		Arrivals: s.Arrivals, Completions: s.Completions, MeanDuration: s.MeanDuration,
		Ready: ready, Starting: starting, Requested: requested, Partial: res.PartialFor(w),
		ColdStart: st.coldStart()}
	st.as.Observe(obs)
	d := st.as.Decide(now)
	c.m.workload(w, st.as.Config(), obs, d)
	st.last = decisionStatus(d, obs, false)
	st.source = s.Source
	if d.Direction == scaling.Hold || d.Desired == requested {
		return nil
	}
	return &write{w: w, dep: dep, st: st, obs: obs, d: d, from: requested, to: d.Desired}
}

// requested is the workload's spec.replicas as the informer has it (1 when
// unset), or our own last write while the informer may not have caught up
// with it (5 ticks + 5 s). After that the informer's value stands, so a
// scale made by someone else counts.
func (c *Controller) requested(dep *appsv1.Deployment, st *wstate, now time.Time) int32 {
	requested := int32(1)
	if dep.Spec.Replicas != nil {
		requested = *dep.Spec.Replicas
	}
	if !st.writtenT.IsZero() && requested != st.written && now.Sub(st.writtenT) < 5*c.opt.Tick+5*time.Second {
		requested = st.written
	}
	return requested
}

// pushGatesNow pushes the gates between ticks, when a model Service's ready
// endpoints went from 0 to more: its held requests are released as soon as
// the extproc knows, not a tick later.
func (c *Controller) pushGatesNow(ctx context.Context, t *term) {
	v, ok := c.view()
	if !ok || len(t.workloads) == 0 {
		return // before the term's first tick: nothing known to gate yet
	}
	c.m.gatesImmediate.Inc()
	c.pushGates(ctx, t, v, c.endpoints(), t.share)
}

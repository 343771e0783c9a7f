package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// TargetAnnotation enables inflight on a Deployment.
const TargetAnnotation = scaling.AnnotationPrefix + scaling.AnnTarget

// FieldManager is the field manager of the controller's writes.
const FieldManager = "inflight-controller"

// Event reasons.
const (
	ReasonScaledUp      = "ScaledUp"
	ReasonScaledDown    = "ScaledDown"
	ReasonInvalidConfig = "InvalidConfiguration"
	ReasonScaleFailed   = "ScaleFailed"
)

// Controller is one controller replica. Create it with New, then Run.
type Controller struct {
	opt Options
	cs  kubernetes.Interface
	log *zap.Logger
	m   *Metrics
	// collOpt configures each term's collector; the HTTP client (and its
	// idle connections) is shared across terms.
	collOpt collect.Options

	factory, epFactory informers.SharedInformerFactory
	deploys            appslisters.DeploymentLister
	pods               corelisters.PodLister
	podIndex           cache.Indexer
	slices             discoverylisters.EndpointSliceLister
	synced             []cache.InformerSynced

	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder

	started atomic.Bool
	leading atomic.Bool

	statusMu sync.Mutex
	status   Status

	// beforeScaleUpdate, if set, runs between the GET and the UPDATE of a
	// scale write (tests use it to provoke a real Conflict).
	beforeScaleUpdate func(namespace, name string)
}

// New wires a Controller. reg receives the metrics.
func New(cs kubernetes.Interface, opt Options, log *zap.Logger, m *Metrics) (*Controller, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	if opt.Clock == nil {
		opt.Clock = clock.RealClock{}
	}
	if log == nil {
		log = zap.NewNop()
	}
	c := &Controller{opt: opt, cs: cs, log: log, m: m}
	c.collOpt = collect.Options{Timeout: opt.FetchTimeout, Expire: opt.Expire, Observer: m, Client: opt.SnapshotClient, Clock: opt.Clock}
	if c.collOpt.Client == nil {
		c.collOpt.Client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}}
	}

	c.factory = informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(opt.Namespace))
	dInf := c.factory.Apps().V1().Deployments()
	pInf := c.factory.Core().V1().Pods()
	if err := pInf.Informer().SetTransform(slimPod); err != nil {
		return nil, err
	}
	if err := pInf.Informer().AddIndexers(cache.Indexers{podLabelIndex: podLabelKeys}); err != nil {
		return nil, err
	}
	c.podIndex = pInf.Informer().GetIndexer()
	c.epFactory = informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithNamespace(opt.ExtprocNamespace),
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.LabelSelector = discoveryv1.LabelServiceName + "=" + opt.ExtprocService
		}))
	sInf := c.epFactory.Discovery().V1().EndpointSlices()
	c.deploys, c.pods, c.slices = dInf.Lister(), pInf.Lister(), sInf.Lister()
	c.synced = []cache.InformerSynced{dInf.Informer().HasSynced, pInf.Informer().HasSynced, sInf.Informer().HasSynced}

	c.broadcaster = record.NewBroadcaster(record.WithCorrelatorOptions(record.CorrelatorOptions{BurstSize: 100, QPS: 1}))
	c.recorder = c.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: FieldManager, Host: opt.Identity})
	c.status = Status{Identity: opt.Identity}
	return c, nil
}

// podLabelIndex indexes pods by "namespace/key=value" of each label, so a
// Deployment's pods are found from one of its matchLabels pairs instead of a
// scan of the namespace.
const podLabelIndex = "inflight-label"

func podLabelKeys(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	keys := make([]string, 0, len(p.Labels))
	for k, v := range p.Labels {
		keys = append(keys, p.Namespace+"/"+k+"="+v)
	}
	return keys, nil
}

// selectPods returns the pods of ns matching sel, through the label index
// when the selector has matchLabels.
func (c *Controller) selectPods(ns string, ls *metav1.LabelSelector, sel labels.Selector) []*corev1.Pod {
	if len(ls.MatchLabels) == 0 {
		pods, _ := c.pods.Pods(ns).List(sel)
		return pods
	}
	keys := make([]string, 0, len(ls.MatchLabels))
	for k, v := range ls.MatchLabels {
		keys = append(keys, k+"="+v)
	}
	sort.Strings(keys)
	objs, err := c.podIndex.ByIndex(podLabelIndex, ns+"/"+keys[0])
	if err != nil {
		pods, _ := c.pods.Pods(ns).List(sel)
		return pods
	}
	out := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok && sel.Matches(labels.Set(p.Labels)) {
			out = append(out, p)
		}
	}
	return out
}

// slimPod keeps only what the controller reads of a pod.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, Labels: p.Labels,
			ResourceVersion: p.ResourceVersion, CreationTimestamp: p.CreationTimestamp, DeletionTimestamp: p.DeletionTimestamp},
		Status: corev1.PodStatus{Phase: p.Status.Phase, Conditions: p.Status.Conditions},
	}, nil
}

// Ready reports whether the informer caches have synced.
func (c *Controller) Ready() bool {
	if !c.started.Load() {
		return false
	}
	for _, s := range c.synced {
		if !s() {
			return false
		}
	}
	return true
}

// Leading reports whether this replica holds the Lease.
func (c *Controller) Leading() bool { return c.leading.Load() }

// Run starts the informers and takes part in the leader election until ctx
// is done. On return the leader's tick loop has stopped and the Lease has
// been released.
func (c *Controller) Run(ctx context.Context) error {
	c.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.cs.CoreV1().Events("")})
	defer c.broadcaster.Shutdown()
	c.factory.Start(ctx.Done())
	c.epFactory.Start(ctx.Done())
	defer c.factory.Shutdown()
	defer c.epFactory.Shutdown()
	c.started.Store(true)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("kube: caches did not sync: %w", context.Cause(ctx))
	}
	c.log.Info("caches synced")

	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: c.opt.LeaseNamespace, Name: c.opt.LeaseName},
		Client:     c.cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: c.opt.Identity},
	}
	// The election outlives ctx until the tick loop has stopped, so the
	// Lease is released only after the last write.
	electCtx, cancelElect := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelElect()
	var (
		mu       sync.Mutex
		stopping bool
		work     sync.WaitGroup // the tick loop, while leading
	)
	go func() {
		<-ctx.Done()
		mu.Lock()
		stopping = true // no new term starts from here on
		mu.Unlock()
		work.Wait()
		cancelElect()
	}()
	for electCtx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			Name:            c.opt.LeaseName,
			LeaseDuration:   c.opt.LeaseDuration,
			RenewDeadline:   c.opt.RenewDeadline,
			RetryPeriod:     c.opt.RetryPeriod,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					mu.Lock()
					if stopping {
						mu.Unlock()
						return
					}
					work.Add(1)
					mu.Unlock()
					defer work.Done()
					c.lead(ctx, lctx)
				},
				OnStoppedLeading: func() {
					c.leading.Store(false)
					c.m.leader.Set(0)
				},
				OnNewLeader: func(id string) {
					c.log.Info("leader", zap.String("identity", id), zap.Bool("self", id == c.opt.Identity))
				},
			},
		})
		if err != nil {
			return err
		}
		le.Run(electCtx)
		if ctx.Err() != nil {
			break
		}
	}
	// Wait for the release of the lease (Run returned) before returning.
	work.Wait()
	return nil
}

// lead runs the tick loop while this replica leads. A new term starts with
// fresh per-workload state: no scale-down before a full window of its own data.
func (c *Controller) lead(ctx, lctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	c.leading.Store(true)
	c.m.leader.Set(1)
	c.log.Info("started leading")
	defer c.log.Info("stopped leading")
	t := c.newTerm()
	tk := c.opt.Clock.NewTicker(c.opt.Tick)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lctx.Done():
			return
		case <-tk.C():
			c.tick(lctx, t)
		}
	}
}

// term is the state of one leadership term, owned by the tick goroutine. A
// new term starts from nothing: no snapshot baselines from an earlier term
// (they would make one tick's delta span the whole gap) and fresh
// autoscalers.
type term struct {
	coll      *collect.Collector
	workloads map[collect.Workload]*wstate
}

func (c *Controller) newTerm() *term {
	return &term{coll: collect.New(c.collOpt), workloads: map[collect.Workload]*wstate{}}
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

// endpoints lists the ready extproc endpoints from the EndpointSlices.
func (c *Controller) endpoints() []collect.Endpoint {
	slices, err := c.slices.EndpointSlices(c.opt.ExtprocNamespace).List(labels.Everything())
	if err != nil {
		return nil
	}
	var out []collect.Endpoint
	seen := map[string]bool{}
	for _, s := range slices {
		port := int32(0)
		if n, err := strconv.Atoi(c.opt.SnapshotPort); err == nil {
			port = int32(n)
		} else {
			for _, p := range s.Ports {
				if p.Name != nil && *p.Name == c.opt.SnapshotPort && p.Port != nil {
					port = *p.Port
				}
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			if e.Conditions.Terminating != nil && *e.Conditions.Terminating {
				continue
			}
			if len(e.Addresses) == 0 {
				continue
			}
			addr := net.JoinHostPort(e.Addresses[0], strconv.Itoa(int(port)))
			key := addr
			if e.TargetRef != nil && e.TargetRef.Name != "" {
				key = e.TargetRef.Name
			}
			if seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, collect.Endpoint{Key: key, URL: "http://" + addr + c.opt.SnapshotPath})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// fingerprint is the sorted inflight.dev/ annotations of a Deployment.
func fingerprint(ann map[string]string) string {
	var kv []string
	for k, v := range ann {
		if strings.HasPrefix(k, scaling.AnnotationPrefix) {
			kv = append(kv, k+"="+v)
		}
	}
	sort.Strings(kv)
	return strings.Join(kv, "\x00")
}

type write struct {
	w        collect.Workload
	dep      *appsv1.Deployment
	st       *wstate
	obs      scaling.Observation
	d        scaling.Decision
	from, to int32 // from: spec.replicas found by the write (== to: nothing written)
	err      error
}

// tick runs one collect → decide → write round.
func (c *Controller) tick(ctx context.Context, t *term) {
	begin := time.Now()
	now := c.opt.Clock.Now()
	res := t.coll.Tick(ctx, c.endpoints())
	c.m.endpoints.WithLabelValues("answered").Set(float64(res.Answered))
	c.m.endpoints.WithLabelValues("failed").Set(float64(res.Endpoints - res.Answered))
	if res.Partial {
		c.m.partial.Set(1)
	} else {
		c.m.partial.Set(0)
	}
	for _, e := range res.Errors {
		c.log.Debug("snapshot failed", zap.String("replica", e.Endpoint.Key), zap.String("kind", e.Kind), zap.Error(e.Err))
	}

	deps, err := c.deploys.List(labels.Everything())
	if err != nil {
		c.log.Error("list deployments", zap.Error(err))
		return
	}
	present := map[collect.Workload]bool{}
	var writes []*write
	for _, dep := range deps {
		if _, ok := dep.Annotations[TargetAnnotation]; !ok {
			continue
		}
		w := collect.Workload{Namespace: dep.Namespace, Name: dep.Name}
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
		ready, starting := c.countPods(dep, st)
		requested := int32(1)
		if dep.Spec.Replicas != nil {
			requested = *dep.Spec.Replicas
		}
		if !st.writtenT.IsZero() && requested != st.written && now.Sub(st.writtenT) < 5*c.opt.Tick+5*time.Second {
			requested = st.written // the informer has not caught up with our write yet
		}
		s := res.Workloads[w]
		obs := scaling.Observation{Time: now, Concurrency: s.Concurrency, InFlight: s.InFlight,
			Arrivals: s.Arrivals, Completions: s.Completions, MeanDuration: s.MeanDuration,
			Ready: ready, Starting: starting, Requested: requested, Partial: res.Partial,
			ColdStart: st.coldStart()}
		st.as.Observe(obs)
		d := st.as.Decide(now)
		c.m.workload(w, st.as.Config(), obs, d)
		st.last = decisionStatus(d, obs, false)
		if d.Direction != scaling.Hold && d.Desired != requested {
			writes = append(writes, &write{w: w, dep: dep, st: st, obs: obs, d: d, from: requested, to: d.Desired})
		}
	}
	for w := range t.workloads {
		if !present[w] {
			delete(t.workloads, w)
			c.m.forget(w)
		}
	}
	c.runWrites(ctx, writes)
	for _, wr := range writes {
		c.finish(wr, now)
	}
	c.publish(t, res, now)
	c.m.tickDuration.Observe(time.Since(begin).Seconds())
}

// configure parses the annotations when they changed; an invalid set is
// reported once (Warning Event, log, metric) and the last valid
// configuration stays in force.
func (c *Controller) configure(w collect.Workload, dep *appsv1.Deployment, st *wstate, now time.Time) {
	fp := fingerprint(dep.Annotations)
	if fp == st.fp {
		return
	}
	st.fp = fp
	cfg, err := scaling.ParseAnnotations(dep.Annotations)
	if err != nil {
		st.cfgErr = err
		keep := "not scaling it until the annotations are valid"
		if st.cfg != nil {
			keep = "keeping the last valid configuration"
		}
		// One Warning per invalid annotation, naming it, its value and
		// what is allowed.
		var ce *scaling.ConfigError
		if errors.As(err, &ce) && len(ce.Fields) > 0 {
			for _, f := range ce.Fields {
				c.recorder.Eventf(dep, corev1.EventTypeWarning, ReasonInvalidConfig, "invalid annotation %v; %s", f, keep)
			}
		} else {
			c.recorder.Eventf(dep, corev1.EventTypeWarning, ReasonInvalidConfig, "%v; %s", err, keep)
		}
		c.log.Warn("invalid configuration", zap.String("workload", w.String()), zap.Error(err), zap.Bool("kept_previous", st.cfg != nil))
		c.m.invalidConfigs.Inc()
		c.m.setInvalid(w, true)
		return
	}
	st.cfgErr = nil
	c.m.setInvalid(w, false)
	st.cfg = &cfg
	if st.as == nil {
		st.as = scaling.NewAutoscaler(cfg, scaling.Features{}, now)
	} else {
		st.as.SetConfig(cfg)
	}
	c.log.Info("configuration", zap.String("workload", w.String()), zap.Float64("target", cfg.Target),
		zap.Int32("min", cfg.MinReplicas), zap.Int32("max", cfg.MaxReplicas))
}

// countPods counts the Deployment's ready and starting pods and records the
// observed start-up time (created → Ready) of pods not seen ready before.
func (c *Controller) countPods(dep *appsv1.Deployment, st *wstate) (ready, starting int32) {
	if dep.Spec.Selector == nil {
		return 0, 0
	}
	sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if err != nil || sel.Empty() {
		return 0, 0
	}
	pods := c.selectPods(dep.Namespace, dep.Spec.Selector, sel)
	live := make(map[string]bool, len(pods))
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		uid := string(p.UID)
		live[uid] = true
		rc := readyCondition(p)
		if rc == nil {
			starting++
			continue
		}
		ready++
		if !st.seen[uid] {
			st.seen[uid] = true
			if d := rc.LastTransitionTime.Sub(p.CreationTimestamp.Time); d >= 0 && d <= time.Hour {
				st.starts = append(st.starts, d)
				if len(st.starts) > 8 {
					st.starts = st.starts[1:]
				}
			}
		}
	}
	for uid := range st.seen {
		if !live[uid] {
			delete(st.seen, uid)
		}
	}
	return ready, starting
}

func readyCondition(p *corev1.Pod) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if c := &p.Status.Conditions[i]; c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return c
		}
	}
	return nil
}

// runWrites performs the tick's /scale writes on a bounded pool.
func (c *Controller) runWrites(ctx context.Context, writes []*write) {
	if len(writes) == 0 {
		return
	}
	ch := make(chan *write)
	var wg sync.WaitGroup
	for range min(c.opt.WriteWorkers, len(writes)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for wr := range ch {
				wr.from, wr.err = c.scale(ctx, wr.w, wr.to)
			}
		}()
	}
	for _, wr := range writes {
		ch <- wr
	}
	close(ch)
	wg.Wait()
}

// scale writes spec.replicas through the scale subresource, retrying on
// Conflict. It returns the replicas it found: from == want means there was
// nothing to write.
func (c *Controller) scale(ctx context.Context, w collect.Workload, want int32) (from int32, err error) {
	api := c.cs.AppsV1().Deployments(w.Namespace)
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sc, err := api.GetScale(ctx, w.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		from = sc.Spec.Replicas
		if from == want {
			return nil
		}
		if c.beforeScaleUpdate != nil {
			c.beforeScaleUpdate(w.Namespace, w.Name)
		}
		sc.Spec.Replicas = want
		_, err = api.UpdateScale(ctx, w.Name, sc, metav1.UpdateOptions{FieldManager: FieldManager})
		if apierrors.IsConflict(err) {
			c.m.scaleConflicts.Inc()
		}
		return err
	})
	return from, err
}

// finish records the outcome of one write: Event, log, metrics, status.
func (c *Controller) finish(wr *write, now time.Time) {
	w, d := wr.w, wr.d
	if wr.err != nil {
		c.m.scaleWrites.WithLabelValues("error").Inc()
		c.log.Error("scale write failed", zap.String("workload", w.String()), zap.Int32("to", wr.to), zap.Error(wr.err))
		if !errors.Is(wr.err, context.Canceled) {
			c.recorder.Eventf(wr.dep, corev1.EventTypeWarning, ReasonScaleFailed, "could not scale to %d: %v", wr.to, wr.err)
		}
		return
	}
	wr.st.written, wr.st.writtenT = wr.to, now
	if wr.from == wr.to {
		return // already there: nothing was written
	}
	c.m.scaleWrites.WithLabelValues("ok").Inc()
	c.m.current.WithLabelValues(w.Namespace, w.Name).Set(float64(wr.to))
	reason := ReasonScaledUp
	if wr.to < wr.from {
		reason = ReasonScaledDown
	}
	msg := fmt.Sprintf("scaled %d → %d: %s; in-flight now %.1f, ready %d, starting %d",
		wr.from, wr.to, trimArrow(d.Reason), wr.obs.InFlight, wr.obs.Ready, wr.obs.Starting)
	c.recorder.Event(wr.dep, corev1.EventTypeNormal, reason, msg)
	c.log.Info("scaled", zap.String("workload", w.String()), zap.Int32("from", wr.from), zap.Int32("to", wr.to),
		zap.String("reason", d.Reason), zap.Float64("stable_demand", d.StableDemand),
		zap.Float64("panic_demand", d.PanicDemand), zap.Float64("trend", d.Trend), zap.Bool("panic", d.Panicking))
	ds := decisionStatus(d, wr.obs, true)
	ds.From = wr.from
	wr.st.last, wr.st.change = ds, ds
}

// trimArrow drops the policy's trailing ": a → b" (the Event says it first).
func trimArrow(reason string) string {
	if i := strings.LastIndex(reason, ": "); i >= 0 && strings.Contains(reason[i:], "→") {
		return reason[:i]
	}
	return reason
}

// reasonLabels map the policy's reason text to bounded metric labels, in
// order of precedence (a panic decision is "panic" unless a data problem
// held it).
var reasonLabels = []struct{ substr, label string }{
	{"no observation", "no-data"},
	{"data stale", "stale-data"},
	{"partial data", "partial-data"},
	{"less than one window", "warming-up"},
	{"", "panic"}, // empty: decided by Decision.Panicking
	{"starting: capped", "cold-start"},
	{"scale-down-delay", "scale-down-delay"},
	{"max-scale-", "rate-cap"},
	{"falling", "falling"},
	{"rising", "rising"},
}

// reasonLabel maps a decision to a bounded reason label for metrics.
func reasonLabel(d scaling.Decision) string {
	for _, l := range reasonLabels {
		if l.substr == "" {
			if d.Panicking {
				return l.label
			}
			continue
		}
		if strings.Contains(d.Reason, l.substr) {
			return l.label
		}
	}
	return "demand"
}

// Package fleet is the demo's simulated GPU fleet: it makes a Deployment on
// a bare API server (no kube-controller-manager, scheduler or kubelet) behave
// as if its pods were real GPU model servers. It follows the Deployment's
// spec.replicas in real time, creating Pod objects (labels from the
// selector, owned by the Deployment) that become Ready after the cold start
// and deleting surplus ones, keeps the Deployment's status (replicas,
// readyReplicas, availableReplicas) true, and serves requests with the
// replica model of scaling/sim (batch limit, token-based service time, cold
// start), time-compressed by Options.Speed.
//
// Serving: Route assigns a request to the least-loaded ready pod; the pod
// serves up to Batch requests at once and queues the rest FIFO, so the
// start of service is known at routing time (service times are fixed): the
// caller (the mesh replay) replays the response with that timing. A pod
// chosen for removal takes no new work, is deleted from the API at once
// and finishes what it holds; its GPU time runs from its request (creation)
// to its last request's end.
//
// Concurrency: Route, Snapshot and the accessors may be called from any
// goroutine; Run is the one reconcile loop, and it never holds the fleet's
// mutex across an API call. There is no package-level mutable state.
package fleet

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/inflight-dev/inflight/scaling/sim"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// Options configure a Fleet.
type Options struct {
	Namespace, Deployment string
	// Model is the replica model in uncompressed seconds (sim.DefaultModel).
	Model sim.Model
	// Speed compresses time: a service time or cold start of s seconds takes
	// s/Speed of wall time. Default 1.
	Speed float64
	// Resync is the reconcile period (default 50 ms).
	Resync time.Duration
	// Port is the model server's container port (default 8000).
	Port int
	// WarmStart makes the pods created on the first reconcile ready at
	// once (the fleet's state before the demo starts).
	WarmStart bool
	// Service, if set, makes the fleet also play the EndpointSlice
	// controller for that Service (there is no kube-controller-manager):
	// it keeps one EndpointSlice labelled with the Service's name whose
	// endpoints are the ready pods not being removed (endpoints.go).
	Service string
}

// Fleet is one simulated GPU Deployment.
type Fleet struct {
	cs  kubernetes.Interface
	opt Options

	mu      sync.Mutex
	pods    []*pod // every pod ever created, in creation order
	seq     int
	desired int32 // last spec.replicas seen
	changes int   // changes of spec.replicas seen
	waits   []float64
	served  int
	first   bool
	born    time.Time // first reconcile
	toZero  int       // spec.replicas changes to 0
	wakes   []Wake    // spec.replicas changes from 0
	slice   []string  // the EndpointSlice's addresses last written
}

type pod struct {
	name, ip string
	inAPI    bool // created in the API
	index    int
	created  time.Time
	readyAt  time.Time
	ready    bool // Ready written to the API
	draining bool
	removeAt time.Time // when it was chosen for removal
	deleted  bool      // deleted from the API
	slots    slotHeap
	ends     []time.Time // ends of the requests assigned, pruned lazily
	lastEnd  time.Time
}

// Assignment is where and when a request is served (wall clock).
type Assignment struct {
	Pod, IP string
	// Index is the pod's creation index (stable per pod).
	Index int
	// Arrival, Start and End are wall-clock times: Start − Arrival is the
	// queueing wait, End − Start the compressed service time.
	Arrival, Start, End time.Time
}

// Sample is the fleet's state at one moment.
type Sample struct {
	Time      time.Time
	Desired   int32 // spec.replicas
	Live      int   // pods not being removed
	Ready     int   // ready, not being removed
	Starting  int
	InFlight  int // requests queued or running in the pods
	Queued    int
	Served    int // requests routed so far
	P50, P99  float64
	GPUHours  float64 // uncompressed
	Changes   int     // changes of spec.replicas seen
	Draining  int
	Completed int
	// ZeroHours is the time (uncompressed) since the first reconcile
	// during which the Deployment had no pod at all, not even one
	// finishing its work; ToZero and Wakes count the changes of
	// spec.replicas to 0 and from 0.
	ZeroHours     float64
	ToZero, Wakes int
}

// New returns a fleet for the Deployment; call Run to make it follow it.
func New(cs kubernetes.Interface, opt Options) (*Fleet, error) {
	if opt.Speed == 0 {
		opt.Speed = 1
	}
	if opt.Resync == 0 {
		opt.Resync = 50 * time.Millisecond
	}
	if opt.Port == 0 {
		opt.Port = 8000
	}
	if err := opt.Model.Validate(); err != nil {
		return nil, err
	}
	if opt.Speed < 1 || opt.Speed > 1000 {
		return nil, fmt.Errorf("fleet: Speed %g; want between 1 and 1000", opt.Speed)
	}
	if opt.Namespace == "" || opt.Deployment == "" {
		return nil, errors.New("fleet: Namespace and Deployment are required")
	}
	return &Fleet{cs: cs, opt: opt, first: true, desired: -1}, nil
}

// Compress converts uncompressed seconds to wall time.
func (f *Fleet) Compress(sec float64) time.Duration {
	return time.Duration(sec / f.opt.Speed * float64(time.Second))
}

// ServiceTime is r's compressed service time and its prefill part.
func (f *Fleet) ServiceTime(r sim.Request) (total, prefill time.Duration) {
	return f.Compress(f.opt.Model.Service(r)), f.Compress(float64(r.Context) / f.opt.Model.PrefillTPS)
}

// ErrNoReplica is returned by Route when the Deployment has no pod at all.
var ErrNoReplica = errors.New("fleet: no replica")

// Route assigns a request arriving at now with compressed service time svc
// to the least-loaded ready pod (ties: the oldest); with none ready, to the
// pod that will be ready first. The request waits in the pod while its
// batch is full.
func (f *Fleet) Route(now time.Time, svc time.Duration) (Assignment, error) {
	return f.route(now, svc, func(p *pod) bool { return !p.draining && !p.deleted && p.inAPI },
		func(p *pod, load int, best *pod, bestLoad int) bool {
			switch {
			case p.ready != best.ready:
				return p.ready
			case p.ready:
				return load < bestLoad
			}
			return p.readyAt.Before(best.readyAt)
		})
}

// RouteAmong is Route for a proxy that knows only the endpoints hosts
// reports (its EDS view, by pod IP): the least-loaded ready pod among them
// that is not being removed, else the least-loaded one among them that is
// being removed (a terminating pod still serves during its grace period:
// the request extends its GPU time). ErrNoReplica if none of them exists.
func (f *Fleet) RouteAmong(now time.Time, svc time.Duration, hosts func(ip string) bool) (Assignment, error) {
	return f.route(now, svc, func(p *pod) bool { return p.ready && hosts(p.ip) },
		func(p *pod, load int, best *pod, bestLoad int) bool {
			if p.draining != best.draining {
				return !p.draining
			}
			return load < bestLoad
		})
}

// route assigns the request to the eligible pod that no other one beats
// (better reports whether p, with load, beats the best so far; the first
// of equals wins), or returns ErrNoReplica when none is eligible.
func (f *Fleet) route(now time.Time, svc time.Duration, eligible func(*pod) bool, better func(p *pod, load int, best *pod, bestLoad int) bool) (Assignment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var best *pod
	bestLoad := 0
	for _, p := range f.pods {
		if !eligible(p) {
			continue
		}
		if load := p.load(now); best == nil || better(p, load, best, bestLoad) {
			best, bestLoad = p, load
		}
	}
	if best == nil {
		return Assignment{}, ErrNoReplica
	}
	return f.assignLocked(best, now, svc), nil
}

func (f *Fleet) assignLocked(best *pod, now time.Time, svc time.Duration) Assignment {
	start := best.slots[0]
	if start.Before(now) {
		start = now
	}
	end := start.Add(svc)
	best.slots[0] = end
	heap.Fix(&best.slots, 0)
	best.ends = append(best.ends, end)
	if end.After(best.lastEnd) {
		best.lastEnd = end
	}
	f.waits = append(f.waits, start.Sub(now).Seconds()*f.opt.Speed)
	f.served++
	return Assignment{Pod: best.name, IP: best.ip, Index: best.index, Arrival: now, Start: start, End: end}
}

// load is the number of requests queued or running in p at now.
func (p *pod) load(now time.Time) int {
	k := 0
	for _, e := range p.ends {
		if e.After(now) {
			p.ends[k] = e
			k++
		}
	}
	p.ends = p.ends[:k]
	return k
}

func (p *pod) queued(now time.Time) int {
	running := 0
	for _, s := range p.slots {
		if s.After(now) {
			running++
		}
	}
	return max(0, len(p.ends)-running)
}

// Snapshot returns the fleet's state at now.
func (f *Fleet) Snapshot(now time.Time) Sample {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Sample{Time: now, Desired: f.desired, Served: f.served, Changes: f.changes, ToZero: f.toZero, Wakes: len(f.wakes)}
	gpu := 0.0
	lives := make([][2]time.Time, 0, len(f.pods))
	for _, p := range f.pods {
		end := now
		if p.draining {
			if e := maxTime(p.lastEnd, p.removeAt); !e.After(now) {
				end = e
			}
		}
		gpu += end.Sub(p.created).Seconds()
		lives = append(lives, [2]time.Time{p.created, end})
		load := p.load(now)
		s.InFlight += load
		s.Queued += p.queued(now)
		if p.deleted || p.draining {
			if load > 0 {
				s.Draining++
			}
			continue
		}
		s.Live++
		if p.ready {
			s.Ready++
		} else {
			s.Starting++
		}
	}
	s.Completed = s.Served - s.InFlight
	s.GPUHours = gpu * f.opt.Speed / 3600
	if !f.born.IsZero() {
		s.ZeroHours = zeroTime(f.born, now, lives).Seconds() * f.opt.Speed / 3600
	}
	if len(f.waits) > 0 {
		w := slices.Clone(f.waits)
		slices.Sort(w)
		s.P50, s.P99 = sim.Quantile(w, 0.50), sim.Quantile(w, 0.99)
	}
	return s
}

// Waits returns a copy of every routed request's wait (uncompressed s).
func (f *Fleet) Waits() []float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]float64(nil), f.waits...)
}

// Run reconciles every Resync until ctx is done; it returns the first
// persistent API error, or nil when ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	t := time.NewTicker(f.opt.Resync)
	defer t.Stop()
	failures := 0
	for {
		if err := f.Reconcile(ctx); err != nil && ctx.Err() == nil {
			failures++
			if failures >= 50 {
				return fmt.Errorf("fleet: %w", err)
			}
		} else {
			failures = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Reconcile makes one pass: pods to spec.replicas, readiness, status.
func (f *Fleet) Reconcile(ctx context.Context) error {
	dep, err := f.cs.AppsV1().Deployments(f.opt.Namespace).Get(ctx, f.opt.Deployment, metav1.GetOptions{})
	if err != nil {
		return err
	}
	want := int32(1)
	if dep.Spec.Replicas != nil {
		want = *dep.Spec.Replicas
	}
	now := time.Now()

	// Decide under the lock, act without it.
	var create []*pod
	var remove []*pod
	f.mu.Lock()
	if f.born.IsZero() {
		f.born = now
	}
	if f.desired >= 0 && want != f.desired {
		f.changes++
		if want == 0 {
			f.toZero++
		} else if f.desired == 0 {
			f.wakes = append(f.wakes, Wake{Seen: now})
		}
	}
	f.desired = want
	var live []*pod
	for _, p := range f.pods {
		if !p.draining && !p.deleted {
			live = append(live, p)
		}
	}
	for n := len(live); n < int(want); n++ {
		p := f.newPodLocked(now)
		create = append(create, p)
	}
	if extra := len(live) - int(want); extra > 0 {
		// Starting pods first (newest first), then the least loaded.
		sort.SliceStable(live, func(i, j int) bool {
			a, b := live[i], live[j]
			if a.ready != b.ready {
				return !a.ready
			}
			if !a.ready {
				return a.index > b.index
			}
			return a.load(now) < b.load(now)
		})
		for _, p := range live[:extra] {
			p.draining, p.removeAt = true, now
			remove = append(remove, p)
		}
	}
	var markReady []*pod
	for _, p := range f.pods {
		if !p.ready && !p.draining && !p.deleted && p.inAPI && !p.readyAt.After(now) {
			markReady = append(markReady, p)
		}
	}
	f.first = false
	f.mu.Unlock()

	var errs []error
	for _, p := range create {
		errs = append(errs, f.createPod(ctx, dep, p))
	}
	for _, p := range remove {
		err := f.cs.CoreV1().Pods(f.opt.Namespace).Delete(ctx, p.name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
			continue
		}
		f.mu.Lock()
		p.deleted = true
		f.mu.Unlock()
	}
	for i, p := range markReady {
		errs = append(errs, f.setReady(ctx, p, now))
		if i == 0 && len(markReady) > 1 && f.opt.Service != "" {
			// As the EndpointSlice controller reacts to each pod: the
			// first ready pod is an endpoint before the others' writes.
			errs = append(errs, f.syncEndpoints(ctx))
		}
	}
	errs = append(errs, f.writeStatus(ctx, dep))
	if f.opt.Service != "" {
		errs = append(errs, f.syncEndpoints(ctx))
	}
	return errors.Join(errs...)
}

func (f *Fleet) newPodLocked(now time.Time) *pod {
	f.seq++
	cold := f.Compress(f.opt.Model.ColdStart)
	if f.first && f.opt.WarmStart {
		cold = 0
	}
	p := &pod{
		name:    fmt.Sprintf("%s-gpu-%d", f.opt.Deployment, f.seq),
		ip:      fmt.Sprintf("10.244.%d.%d", f.seq/250, f.seq%250+2),
		index:   f.seq,
		created: now,
		readyAt: now.Add(cold),
		slots:   make(slotHeap, f.opt.Model.Batch),
	}
	for i := range p.slots {
		p.slots[i] = p.readyAt
	}
	// Not routable until created in the API (inAPI).
	f.pods = append(f.pods, p)
	return p
}

func (f *Fleet) createPod(ctx context.Context, dep *appsv1.Deployment, p *pod) error {
	labels := map[string]string{}
	if dep.Spec.Selector != nil {
		for k, v := range dep.Spec.Selector.MatchLabels {
			labels[k] = v
		}
	}
	ctrl := true
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.name, Namespace: f.opt.Namespace, Labels: labels,
			Annotations: map[string]string{"inflight.dev/simulated": "gpu fleet of test/demo"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment",
				Name: dep.Name, UID: dep.UID, Controller: &ctrl}},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "model", Image: "example.invalid/model-server:demo",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(f.opt.Port)}},
		}}},
	}
	_, err := f.cs.CoreV1().Pods(f.opt.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		// Forget it: the next pass creates another.
		f.mu.Lock()
		p.deleted, p.draining, p.removeAt = true, true, p.created
		f.mu.Unlock()
		return err
	}
	f.mu.Lock()
	p.inAPI = true
	f.mu.Unlock()
	return nil
}

func (f *Fleet) setReady(ctx context.Context, p *pod, now time.Time) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := f.cs.CoreV1().Pods(f.opt.Namespace).Get(ctx, p.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		t := metav1.NewTime(now)
		cur.Status.Phase = corev1.PodRunning
		cur.Status.PodIP = p.ip
		cur.Status.PodIPs = []corev1.PodIP{{IP: p.ip}}
		cur.Status.StartTime = &cur.CreationTimestamp
		cur.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: cur.CreationTimestamp},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: t},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: t},
		}
		_, err = f.cs.CoreV1().Pods(f.opt.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err == nil {
		f.mu.Lock()
		p.ready = true
		if n := len(f.wakes); n > 0 && f.wakes[n-1].Ready.IsZero() {
			f.wakes[n-1].Ready = time.Now()
		}
		f.mu.Unlock()
	}
	return err
}

// Wake is one change of spec.replicas from 0, as the fleet saw it: when
// its reconcile read it, when the first pod's Ready condition was written
// and when the EndpointSlice listing it was (Options.Service).
type Wake struct{ Seen, Ready, Published time.Time }

// Wakes returns the changes of spec.replicas from 0 so far.
func (f *Fleet) Wakes() []Wake {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Wake(nil), f.wakes...)
}

func (f *Fleet) writeStatus(ctx context.Context, dep *appsv1.Deployment) error {
	s := f.Snapshot(time.Now())
	want := appsv1.DeploymentStatus{
		ObservedGeneration: dep.Generation,
		Replicas:           int32(s.Live), UpdatedReplicas: int32(s.Live),
		ReadyReplicas: int32(s.Ready), AvailableReplicas: int32(s.Ready),
		UnavailableReplicas: int32(s.Starting),
	}
	cur := dep.Status
	if cur.ObservedGeneration == want.ObservedGeneration && cur.Replicas == want.Replicas &&
		cur.ReadyReplicas == want.ReadyReplicas && cur.AvailableReplicas == want.AvailableReplicas &&
		cur.UpdatedReplicas == want.UpdatedReplicas && cur.UnavailableReplicas == want.UnavailableReplicas {
		return nil
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := f.cs.AppsV1().Deployments(f.opt.Namespace).Get(ctx, f.opt.Deployment, metav1.GetOptions{})
		if err != nil {
			return err
		}
		want.ObservedGeneration = d.Generation
		want.Conditions = d.Status.Conditions
		d.Status = want
		_, err = f.cs.AppsV1().Deployments(f.opt.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{})
		return err
	})
}

// zeroTime is how much of [from, to) no interval of lives covers.
func zeroTime(from, to time.Time, lives [][2]time.Time) time.Duration {
	sort.Slice(lives, func(i, j int) bool { return lives[i][0].Before(lives[j][0]) })
	zero, at := time.Duration(0), from
	for _, l := range lives {
		if !l[0].Before(to) {
			break
		}
		if !l[1].After(at) {
			continue
		}
		if l[0].After(at) {
			zero += l[0].Sub(at)
		}
		at = l[1]
		if !at.Before(to) {
			return zero
		}
	}
	return zero + to.Sub(at)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// slotHeap is a min-heap of the times a pod's batch slots become free.
type slotHeap []time.Time

func (h slotHeap) Len() int           { return len(h) }
func (h slotHeap) Less(i, j int) bool { return h[i].Before(h[j]) }
func (h slotHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *slotHeap) Push(x any)        { *h = append(*h, x.(time.Time)) }
func (h *slotHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

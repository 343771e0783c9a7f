package kube

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/inflight-dev/inflight/scaling/collect/collecttest"
	"github.com/inflight-dev/inflight/test/controlplane"
)

func TestMain(m *testing.M) { os.Exit(controlplane.Main(m)) }

var nsSeq atomic.Int64

// env is one test's slice of the shared control plane: its own namespaces
// (workloads, extproc + lease), an admin client.
type env struct {
	t       *testing.T
	cfg     *rest.Config
	cs      kubernetes.Interface
	ns      string // workloads
	sysNS   string // extproc service + lease
	service string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cfg := controlplane.Config(t)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := nsSeq.Add(1)
	e := &env{t: t, cfg: cfg, cs: cs, ns: fmt.Sprintf("wl-%d", n), sysNS: fmt.Sprintf("sys-%d", n), service: "inflight-extproc"}
	e.namespace(e.ns)
	e.namespace(e.sysNS)
	return e
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e.t.Cleanup(cancel)
	return ctx
}

func (e *env) namespace(name string) {
	e.t.Helper()
	_, err := e.cs.CoreV1().Namespaces().Create(e.ctx(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatal(err)
	}
}

// deployment creates a Deployment with selector app=name.
func (e *env) deployment(name string, ann map[string]string, replicas int32) *appsv1.Deployment {
	e.t.Helper()
	lbl := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns, Annotations: ann},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "model:1"}}},
			},
		},
	}
	d, err := e.cs.AppsV1().Deployments(e.ns).Create(e.ctx(), d, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	// envtest has no namespace controller: delete what a test made, so a
	// later controller watching all namespaces does not see it.
	e.t.Cleanup(func() { e.remove(e.cs.AppsV1().Deployments(e.ns).Delete, name) })
	return d
}

func (e *env) replicas(name string) int32 {
	e.t.Helper()
	d, err := e.cs.AppsV1().Deployments(e.ns).Get(e.ctx(), name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return *d.Spec.Replicas
}

func (e *env) annotate(name string, ann map[string]string) {
	e.t.Helper()
	// The controller writes /scale concurrently: retry on Conflict.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := e.cs.AppsV1().Deployments(e.ns).Get(e.ctx(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		d.Annotations = ann
		_, err = e.cs.AppsV1().Deployments(e.ns).Update(e.ctx(), d, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// slice publishes a fake extproc replica as one EndpointSlice of the
// extproc Service (one slice per replica: each listens on its own port).
func (e *env) slice(r *collecttest.Replica) {
	e.t.Helper()
	e.sliceURL(r.Name, r.URL())
}

// sliceURL publishes the extproc replica name serving snapshotURL (on
// loopback) as one EndpointSlice of the extproc Service.
func (e *env) sliceURL(name, snapshotURL string) {
	e.t.Helper()
	u, err := url.Parse(snapshotURL)
	if err != nil {
		e.t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "extproc-" + name, Namespace: e.sysNS,
			Labels: map[string]string{discoveryv1.LabelServiceName: e.service}},
		// The apiserver refuses loopback IPs in EndpointSlices: an FQDN slice
		// under the reserved .test TLD (never resolved) is accepted, and
		// loopbackClient dials 127.0.0.1 for it.
		AddressType: discoveryv1.AddressTypeFQDN,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("admin"), Port: ptr.To(int32(port))}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{name + ".extproc.test"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: e.sysNS, Name: name}}},
	}
	if _, err := e.cs.DiscoveryV1().EndpointSlices(e.sysNS).Create(e.ctx(), s, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { e.remove(e.cs.DiscoveryV1().EndpointSlices(e.sysNS).Delete, s.Name) })
}

// remove deletes an object at cleanup; already gone is fine.
func (e *env) remove(del func(context.Context, string, metav1.DeleteOptions) error, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := del(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		e.t.Errorf("cleanup of %s: %v", name, err)
	}
}

func (e *env) unslice(r *collecttest.Replica) {
	e.t.Helper()
	if err := e.cs.DiscoveryV1().EndpointSlices(e.sysNS).Delete(e.ctx(), "extproc-"+r.Name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// replica starts a fake extproc replica on loopback, listed in the slices.
func (e *env) replica(name string) *collecttest.Replica {
	r := collecttest.NewReplica(name, nil)
	e.t.Cleanup(r.Close)
	e.slice(r)
	return r
}

// events lists the Events about a Deployment.
func (e *env) events(name string) []corev1.Event {
	e.t.Helper()
	l, err := e.cs.CoreV1().Events(e.ns).List(e.ctx(), metav1.ListOptions{
		FieldSelector: fields.AndSelectors(fields.OneTermEqualSelector("involvedObject.name", name),
			fields.OneTermEqualSelector("involvedObject.kind", "Deployment")).String()})
	if err != nil {
		e.t.Fatal(err)
	}
	return l.Items
}

func findEvent(evs []corev1.Event, reason string, contains ...string) *corev1.Event {
next:
	for i := range evs {
		if evs[i].Reason != reason {
			continue
		}
		for _, c := range contains {
			if !strings.Contains(evs[i].Message, c) {
				continue next
			}
		}
		return &evs[i]
	}
	return nil
}

// eventually polls cond every 50ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// fastOptions are short, real timings for tests.
func (e *env) fastOptions(identity string) Options {
	o := DefaultOptions()
	o.Namespace = e.ns // only this test's workloads
	o.ExtprocNamespace, o.ExtprocService = e.sysNS, e.service
	o.LeaseNamespace, o.Identity = e.sysNS, identity
	o.Tick = 100 * time.Millisecond
	o.FetchTimeout = 300 * time.Millisecond
	o.Expire = 2 * time.Second
	o.LeaseDuration, o.RenewDeadline, o.RetryPeriod = 2*time.Second, 1500*time.Millisecond, 200*time.Millisecond
	o.SnapshotClient = loopbackClient()
	return o
}

// loopbackClient dials 127.0.0.1 only, whatever host a URL names.
func loopbackClient() *http.Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return d.DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", port))
		},
	}}
}

// running is a started Controller.
type running struct {
	c      *Controller
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("controller did not stop within 30s")
		}
	})
}

func (e *env) start(cfg *rest.Config, o Options, hook func(c *Controller)) *running {
	e.t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	log := zaptest.NewLogger(e.t, zaptest.Level(zap.InfoLevel)).With(zap.String("id", o.Identity))
	c, err := New(cs, o, log, NewMetrics(reg))
	if err != nil {
		e.t.Fatal(err)
	}
	if hook != nil {
		hook(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: c, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

// counter reads a counter or gauge value from a controller's registry.
func (r *running) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

// workload returns the leader's status of one workload.
func (r *running) workload(ns, name string) *WorkloadStatus {
	for _, w := range r.c.Status().Workloads {
		if w.Namespace == ns && w.Workload == name {
			return &w
		}
	}
	return nil
}

// pod creates a Running, Ready pod of the Deployment name (labels
// app=name), removed at cleanup. Snapshots count only for live pods of the
// Deployment they name, so a test's fake extproc reports pods that exist.
func (e *env) pod(deployment, name string) {
	e.t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns, Labels: map[string]string{"app": deployment}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "model", Image: "model:1"}}}}
	p, err := e.cs.CoreV1().Pods(e.ns).Create(e.ctx(), p, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		e.remove(func(ctx context.Context, n string, o metav1.DeleteOptions) error {
			o.GracePeriodSeconds = ptr.To(int64(0))
			return e.cs.CoreV1().Pods(e.ns).Delete(ctx, n, o)
		}, name)
	})
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	if _, err := e.cs.CoreV1().Pods(e.ns).UpdateStatus(e.ctx(), p, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// kubelet plays the missing kube-controller-manager and kubelet for one
// Deployment: it keeps as many pods as spec.replicas, Ready at once, until
// the test ends. Bounded: one reconcile per 100ms.
func (e *env) kubelet(name string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	e.t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		seq := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			d, err := e.cs.AppsV1().Deployments(e.ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				continue
			}
			pods, err := e.cs.CoreV1().Pods(e.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
			if err != nil {
				continue
			}
			want := int(*d.Spec.Replicas)
			for i := len(pods.Items); i < want; i++ {
				seq++
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", name, seq), Namespace: e.ns,
					Labels: map[string]string{"app": name}}, Spec: d.Spec.Template.Spec}
				p, err := e.cs.CoreV1().Pods(e.ns).Create(ctx, p, metav1.CreateOptions{})
				if err != nil {
					continue
				}
				p.Status.Phase = corev1.PodRunning
				p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue,
					LastTransitionTime: metav1.Now()}}
				_, _ = e.cs.CoreV1().Pods(e.ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			}
			for i := want; i < len(pods.Items); i++ {
				_ = e.cs.CoreV1().Pods(e.ns).Delete(ctx, pods.Items[i].Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
			}
		}
	}()
}

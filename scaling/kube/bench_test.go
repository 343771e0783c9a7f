package kube

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling/collect/collecttest"
)

// BenchmarkTick is one controller tick (collect from 20 extproc replicas on
// loopback, check and attribute 40,000 target records to the live pods of
// 1,000 annotated workloads, sum, decide) in steady state. The informers
// read from a fake clientset (reads only: the workloads are idle at
// min-replicas, so nothing is written), so the number is the controller's
// own cost. Target: ≤ 100 ms.
func BenchmarkTick(b *testing.B) {
	const workloads, replicas, ns = 1000, 20, "ml"
	var objs []runtime.Object
	var targets []extproc.TargetRecord
	for i := range workloads {
		name := fmt.Sprintf("model-%04d", i)
		lbl := map[string]string{"app": name}
		objs = append(objs, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{TargetAnnotation: "4"}},
			Spec:       appsv1.DeploymentSpec{Replicas: ptr.To(int32(1)), Selector: &metav1.LabelSelector{MatchLabels: lbl}},
		})
		for p := range 2 {
			objs = append(objs, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", name, p), Namespace: ns, Labels: lbl, UID: types.UID("u-" + name + strconv.Itoa(p))},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
			})
			targets = append(targets, extproc.TargetRecord{Namespace: ns, Workload: name, Service: name,
				Pod: fmt.Sprintf("%s-%d", name, p), Started: 1000, Completed: 1000, BusySeconds: 5000, DurationSecondsSum: 4900})
		}
	}
	busy := make([]extproc.TargetRecord, len(targets))
	for i, t := range targets {
		t.InFlight, t.Completed = 1, t.Started-1
		busy[i] = t
	}
	for r := range replicas {
		// One replica sees 1 in flight on each pod: 2 per workload, under
		// one replica's target of 4, so nothing is written.
		recs := targets
		if r == 0 {
			recs = busy
		}
		st, err := collecttest.NewStatic(extproc.Snapshot{Version: extproc.SnapshotVersion, Replica: fmt.Sprint(r),
			BootID: "b", UptimeSeconds: 3600, Targets: recs})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(st.Close)
		u, _ := url.Parse(st.URL())
		port, _ := strconv.Atoi(u.Port())
		objs = append(objs, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ep-%d", r), Namespace: "inflight-system",
				Labels: map[string]string{discoveryv1.LabelServiceName: "inflight-extproc"}},
			Ports:     []discoveryv1.EndpointPort{{Name: ptr.To("admin"), Port: ptr.To(int32(port))}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"127.0.0.1"}, TargetRef: &corev1.ObjectReference{Name: fmt.Sprintf("extproc-%d", r)}}},
		})
	}
	o := DefaultOptions()
	o.Identity = "bench"
	o.FetchTimeout = 5 * time.Second // a loaded machine must not turn a slow fetch into a partial tick
	c, err := New(fake.NewClientset(objs...), o, nil, NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.factory.Start(ctx.Done())
	c.epFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		b.Fatal("caches did not sync")
	}
	t := c.newTerm()
	c.tick(ctx, t) // warm: connections, autoscalers
	if len(t.workloads) != workloads {
		b.Fatalf("managed %d workloads, want %d", len(t.workloads), workloads)
	}
	if s := c.Status(); s.ExtprocAnswered != replicas || s.Partial {
		b.Fatalf("answered %d of %d, partial %v", s.ExtprocAnswered, replicas, s.Partial)
	}
	if u := testutil.ToFloat64(c.m.unattributed); u != 0 {
		b.Fatalf("unattributed in-flight %v: the targets' pods are the workloads' live pods", u)
	}
	for _, w := range c.Status().Workloads {
		if w.Last == nil || w.Last.InFlight != 2 {
			b.Fatalf("workload %s: last decision %+v, want 2 in flight attributed", w.Workload, w.Last)
		}
	}
	if w := c.m.scaleWrites.WithLabelValues("ok"); testutilValue(w) != 0 {
		b.Fatal("steady state wrote to /scale")
	}
	b.ResetTimer()
	for b.Loop() {
		c.tick(ctx, t)
	}
}

func testutilValue(c prometheus.Counter) float64 { return testutil.ToFloat64(c) }

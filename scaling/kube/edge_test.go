package kube

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/inflight-dev/inflight/scaling/collect"
	"github.com/inflight-dev/inflight/test/testutil"
)

// svc creates a Service selecting app=deployment, removed at cleanup.
func (e *env) svc(name, deployment string) {
	e.t.Helper()
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": deployment},
			Ports: []corev1.ServicePort{{Name: "http", Port: 8000}}}}
	if _, err := e.cs.CoreV1().Services(e.ns).Create(e.ctx(), s, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { e.remove(e.cs.CoreV1().Services(e.ns).Delete, name) })
}

// Issue 12.1 on the real API server: edge targets (a Service, no workload
// or pod) scale the Deployment the Service selects, and a request seen at
// both places counts once. Three Deployments, each with target 1:
//   - edge: traffic through a gateway only (no sidecar): 5 in flight at the
//     edge, 2 of them held → 5 replicas, source edge;
//   - mesh: in-mesh callers only: 3 at its pod's sidecar → 3, inbound;
//   - both: 4 at its pod's sidecar, 3 of which came through the edge, which
//     holds 2 more → 4 + 2 = 6 (not 4 + 5 = 9, nor 5), source both.
func TestEdgeDemandScalesTheSelectedDeployment(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	for _, n := range []string{"edge", "mesh", "both"} {
		e.deployment(n, fastAnn(), 1)
		e.pod(n, n+"-1")
		e.svc(n+"-svc", n)
	}
	e.svc("nobody", "no-such-app")
	a := e.replica("a")
	o := e.fastOptions("c1")
	var last collect.Result
	results := make(chan collect.Result, 1)
	o.OnTick = func(r collect.Result) {
		select {
		case <-results:
		default:
		}
		results <- r
	}
	r := e.start(e.cfg, o, nil)
	eventually(t, 30*time.Second, "leadership", r.c.Leading)

	a.StartEdge(e.ns, "edge-svc", 5, 2)
	a.SetInFlight(e.ns, "mesh", "mesh-1", 3, time.Second)
	a.SetInFlight(e.ns, "both", "both-1", 4, time.Second)
	a.StartEdge(e.ns, "both-svc", 5, 2)
	a.StartEdge(e.ns, "nobody", 7, 0)

	want := map[string]struct {
		replicas int32
		source   string
	}{"edge": {5, collect.SourceEdge}, "mesh": {3, collect.SourceInbound}, "both": {6, collect.SourceBoth}}
	eventually(t, 30*time.Second, "edge 5, mesh 3, both 6", func() bool {
		for n, w := range want {
			if e.replicas(n) != w.replicas {
				return false
			}
		}
		return true
	})
	// The status is published at the end of the tick that wrote the
	// replicas: wait for it.
	eventually(t, 30*time.Second, "the status of the three", func() bool {
		for n := range want {
			if ws := r.workload(e.ns, n); ws == nil || ws.Last == nil {
				return false
			}
		}
		return true
	})
	for n, w := range want {
		ws := r.workload(e.ns, n)
		if ws == nil || ws.Source != w.source {
			t.Errorf("%s: status %+v, want source %s", n, ws, w.source)
		}
	}
	if ws := r.workload(e.ns, "edge"); ws == nil || ws.Last == nil || ws.Last.Held != 2 || ws.Last.InFlight != 5 {
		t.Errorf("edge: last decision %+v, want 5 in flight, 2 held", ws)
	}
	last = <-results
	if last.Unmapped != 7 {
		t.Errorf("unmapped edge in-flight = %v, want 7 (the Service that selects no Deployment)", last.Unmapped)
	}
	if got := r.metric(t, "inflight_controller_unmapped_edge_in_flight", nil); got != 7 {
		t.Errorf("unmapped_edge_in_flight = %v, want 7", got)
	}
	// Stays: no double count creeps in over more ticks.
	e.holds("both", 6, time.Second)
}

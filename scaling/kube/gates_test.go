package kube

import (
	"net/http/httptest"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/mesh"
	"github.com/inflight-dev/inflight/scaling/collect/collecttest"
	"github.com/inflight-dev/inflight/test/testutil"
)

// modelSlice creates (ready: with one ready endpoint) or updates the
// EndpointSlice of the model Service svc.
func (e *env) modelSlice(svc string, ready bool) {
	e.t.Helper()
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc + "-x1", Namespace: e.ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8000))}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.5"},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}},
	}
	api := e.cs.DiscoveryV1().EndpointSlices(e.ns)
	if old, err := api.Get(e.ctx(), s.Name, metav1.GetOptions{}); err == nil {
		s.ResourceVersion = old.ResourceVersion
		if _, err := api.Update(e.ctx(), s, metav1.UpdateOptions{}); err != nil {
			e.t.Fatal(err)
		}
		return
	}
	if _, err := api.Create(e.ctx(), s, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { e.remove(api.Delete, s.Name) })
}

// Issue 12.3 on the real API server with the real extproc admin handler:
// the leader PUTs the gate table to every extproc replica each tick (one
// replica refuses it: counted, not fatal, and the share is 1/2 of the two
// that answered snapshots); an edge request for a workload at zero wakes it
// (cause wake); and when the Service's ready endpoints go 0 → 1 the table is
// pushed at once, between ticks. The controller's clock is a fake one
// stepped by the test, so a table that arrives without a step came from the
// immediate push.
func TestGatesPushedToEveryExtproc(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("llama", fastAnn("inflight.dev/min-replicas", "0", "inflight.dev/max-queue", "2",
		"inflight.dev/hold-timeout", "30s"), 0)
	e.svc("llama", "llama")
	e.svc("plain", "plain") // selects no managed Deployment: no gate
	e.modelSlice("llama", false)

	clk := testingclock.NewFakeClock(time.Now())
	tr := extproc.NewTracker(extproc.TrackerOptions{Now: clk.Now})
	gates := extproc.NewGates(extproc.GatesOptions{})
	t.Cleanup(gates.Close)
	srv := httptest.NewServer((&extproc.Admin{Tracker: tr, Replica: "real", BootID: extproc.NewBootID(),
		Wall: clk.Now, Gates: gates}).Handler())
	t.Cleanup(srv.Close)
	e.sliceURL("real", srv.URL+"/v1/snapshot")
	old := collecttest.NewReplica("old", clk) // serves snapshots, has no /v1/gates
	t.Cleanup(old.Close)
	e.slice(old)

	o := e.fastOptions("c1")
	o.Clock = clk
	r := e.start(e.cfg, o, nil)
	eventually(t, 30*time.Second, "leadership", r.c.Leading)
	// step runs a tick (the loop's ticker is on clk) before checking cond.
	step := func(cond func() bool) func() bool {
		return func() bool { clk.Step(o.Tick); return cond() }
	}
	var doc *extproc.GatesDocument
	inForce := func() bool { doc = gates.Status().Document; return doc != nil }
	eventually(t, 30*time.Second, "a gate table on the real extproc", step(func() bool { return inForce() && len(doc.Gates) == 1 }))
	want := extproc.Gate{Namespace: e.ns, Service: "llama", Workload: "llama", ReadyEndpoints: 0, Hold: true,
		HoldTimeoutSeconds: 30, ReleasePerEndpoint: 1, MaxInFlight: 0, MaxHeld: 2}
	if g := doc.Gates[0]; g != want {
		t.Errorf("gate %+v, want %+v", g, want)
	}
	if doc.Share != 0.5 || doc.Controller != "c1" || doc.ExpiresInSeconds != 1 || doc.Version != extproc.GatesVersion {
		t.Errorf("table share %v controller %q expires %v version %q, want 0.5 (two replicas answered), c1, 1 (5 ticks, at least 1 s), %s",
			doc.Share, doc.Controller, doc.ExpiresInSeconds, doc.Version, extproc.GatesVersion)
	}
	if got := r.metric(t, "inflight_controller_gates_pushes_total", map[string]string{"result": "http-status"}); got < 1 {
		t.Errorf("gates_pushes_total{result=http-status} = %v, want ≥ 1 (the replica without /v1/gates)", got)
	}

	// An edge request for the Service at zero wakes the workload.
	req := tr.Start(mesh.Target{Namespace: e.ns, Service: "llama"}, mesh.ReasonNone)
	defer tr.End(&req)
	eventually(t, 30*time.Second, "woken to 1 replica", step(func() bool { return e.replicas("llama") == 1 }))
	if got := r.metric(t, "inflight_controller_decisions_total", map[string]string{"reason": "wake"}); got < 1 {
		t.Errorf("decisions_total{reason=wake} = %v, want ≥ 1", got)
	}

	// Ready endpoints 0 → 1: pushed without a tick.
	e.modelSlice("llama", true)
	eventually(t, 30*time.Second, "ready endpoints pushed between ticks", func() bool {
		return inForce() && len(doc.Gates) == 1 && doc.Gates[0].ReadyEndpoints == 1
	})
	if got := r.metric(t, "inflight_controller_gates_immediate_total", nil); got < 1 {
		t.Errorf("gates_immediate_total = %v, want ≥ 1", got)
	}
}

// The gate table and the tick read a workload's requested replicas by one
// rule: our own last write while the informer may lag (5 ticks + 5 s), then
// the informer's spec.replicas, so a scale made by someone else (kubectl
// scale to 0) counts in the gate too (it used to trust our write forever).
func TestRequestedReplicasRule(t *testing.T) {
	c := &Controller{opt: Options{Tick: time.Second}}
	dep := func(r *int32) *appsv1.Deployment { return &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Replicas: r}} }
	now := time.Now()
	cases := []struct {
		name    string
		spec    *int32
		written int32
		ago     time.Duration // since our write; 0: never written
		want    int32
	}{
		{"unset spec.replicas is 1", nil, 0, 0, 1},
		{"never written: the informer's", ptr.To(int32(3)), 0, 0, 3},
		{"our write, informer behind", ptr.To(int32(0)), 2, 9 * time.Second, 2},
		{"our write, informer caught up", ptr.To(int32(2)), 2, time.Second, 2},
		{"after 5 ticks + 5 s the informer's (scaled by someone else)", ptr.To(int32(0)), 2, 11 * time.Second, 0},
	}
	for _, tc := range cases {
		st := &wstate{written: tc.written}
		if tc.ago > 0 {
			st.writtenT = now.Add(-tc.ago)
		}
		if got := c.requested(dep(tc.spec), st, now); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

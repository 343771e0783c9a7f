package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/scaling/sim"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The fleet's own logic (routing, batching, the pod lifecycle it writes) is
// under test here; the API server's behaviour is exercised by test/e2e.
func newTestFleet(t *testing.T, replicas int32, m sim.Model, warm bool) (*Fleet, *fake.Clientset) {
	t.Helper()
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "llm", Namespace: "models", UID: "dep-uid"},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "llm"}}},
	}
	cs := fake.NewClientset(dep)
	f, err := New(cs, Options{Namespace: "models", Deployment: "llm", Model: m, Speed: 1, WarmStart: warm})
	if err != nil {
		t.Fatal(err)
	}
	return f, cs
}

func setReplicas(t *testing.T, cs *fake.Clientset, n int32) {
	t.Helper()
	d, err := cs.AppsV1().Deployments("models").Get(context.Background(), "llm", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Spec.Replicas = &n
	if _, err := cs.AppsV1().Deployments("models").Update(context.Background(), d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestBatchQueueAndLeastLoaded(t *testing.T) {
	m := sim.Model{Batch: 2, PrefillTPS: 1000, SecPerToken: 0.01, ColdStart: 60}
	f, cs := newTestFleet(t, 2, m, true)
	ctx := context.Background()
	if err := f.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.Reconcile(ctx); err != nil { // marks the warm pods Ready
		t.Fatal(err)
	}
	pods, err := cs.CoreV1().Pods("models").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 2 {
		t.Fatalf("%d pods, want 2", len(pods.Items))
	}
	for _, p := range pods.Items {
		if p.Labels["app"] != "llm" || len(p.OwnerReferences) != 1 || p.OwnerReferences[0].UID != "dep-uid" {
			t.Errorf("pod %s: labels %v owners %v", p.Name, p.Labels, p.OwnerReferences)
		}
		if !isReady(&p) {
			t.Errorf("warm pod %s not Ready", p.Name)
		}
	}
	d, _ := cs.AppsV1().Deployments("models").Get(ctx, "llm", metav1.GetOptions{})
	if d.Status.Replicas != 2 || d.Status.ReadyReplicas != 2 || d.Status.AvailableReplicas != 2 {
		t.Errorf("deployment status %+v, want 2/2/2", d.Status)
	}

	now := time.Now()
	svc := 10 * time.Second
	var got []Assignment
	for range 6 {
		a, err := f.Route(now, svc)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a)
	}
	perPod := map[string]int{}
	for _, a := range got {
		perPod[a.Pod]++
	}
	for p, n := range perPod {
		if n != 3 {
			t.Errorf("pod %s got %d requests, want 3 (least-loaded)", p, n)
		}
	}
	// Two pods × batch 2 start at once; the 5th and 6th queue one service time.
	waiting := 0
	for _, a := range got {
		switch w := a.Start.Sub(a.Arrival); w {
		case 0:
		case svc:
			waiting++
		default:
			t.Errorf("wait %v, want 0 or %v", w, svc)
		}
	}
	if waiting != 2 {
		t.Errorf("%d requests waited, want 2", waiting)
	}
	s := f.Snapshot(now.Add(time.Second))
	if s.InFlight != 6 || s.Queued != 2 || s.Ready != 2 {
		t.Errorf("snapshot %+v: want in-flight 6, queued 2, ready 2", s)
	}
	if s := f.Snapshot(now.Add(2*svc + time.Second)); s.InFlight != 0 {
		t.Errorf("after the work: in-flight %d", s.InFlight)
	}
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func TestScaleUpColdStartAndDown(t *testing.T) {
	m := sim.Model{Batch: 1, PrefillTPS: 1000, SecPerToken: 0.01, ColdStart: 3600} // never ready in this test
	f, cs := newTestFleet(t, 1, m, true)
	ctx := context.Background()
	for range 2 {
		if err := f.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	setReplicas(t, cs, 3)
	if err := f.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s := f.Snapshot(now)
	if s.Live != 3 || s.Ready != 1 || s.Starting != 2 || s.Desired != 3 || s.Changes != 1 {
		t.Fatalf("after scale-up: %+v", s)
	}
	// Starting pods take no work while one is ready.
	for range 3 {
		a, err := f.Route(now, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if a.Index != 1 {
			t.Errorf("routed to starting pod %s", a.Pod)
		}
	}
	setReplicas(t, cs, 1)
	if err := f.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	pods, _ := cs.CoreV1().Pods("models").List(ctx, metav1.ListOptions{})
	if len(pods.Items) != 1 || !isReady(&pods.Items[0]) {
		t.Errorf("after scale-down: %d pods, want the 1 ready one (starting pods go first)", len(pods.Items))
	}
	if s := f.Snapshot(time.Now()); s.Live != 1 || s.Changes != 2 {
		t.Errorf("after scale-down: %+v", s)
	}
}

func TestNoReplica(t *testing.T) {
	f, _ := newTestFleet(t, 0, sim.DefaultModel(), true)
	if err := f.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Route(time.Now(), time.Second); err != ErrNoReplica {
		t.Errorf("Route with no pod: %v, want ErrNoReplica", err)
	}
}

func TestZeroTime(t *testing.T) {
	t0 := time.Now()
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	for _, c := range []struct {
		lives [][2]time.Time
		want  int
	}{
		{nil, 100},
		{[][2]time.Time{{at(0), at(100)}}, 0},
		{[][2]time.Time{{at(10), at(20)}, {at(15), at(30)}, {at(50), at(60)}}, 10 + 20 + 40},
		{[][2]time.Time{{at(50), at(60)}, {at(0), at(5)}, {at(90), at(200)}}, 45 + 30},
		{[][2]time.Time{{at(-10), at(5)}, {at(120), at(130)}}, 95},
	} {
		if got := zeroTime(at(0), at(100), c.lives); got != time.Duration(c.want)*time.Second {
			t.Errorf("%v: %v, want %ds", c.lives, got, c.want)
		}
	}
}

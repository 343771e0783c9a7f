package kube

import (
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/inflight-dev/inflight/test/testutil"
)

// kedaHPA creates the HPA the KEDA operator (v2.21, controllers/keda/hpa.go)
// creates for a ScaledObject named so that targets the Deployment target:
// keda-hpa-<so>, labelled managed-by keda-operator, owned (controller) by
// the ScaledObject, one External metric per trigger. envtest runs no
// garbage collector, so the owner need not exist.
func (e *env) kedaHPA(so, target string) string {
	e.t.Helper()
	name := "keda-hpa-" + so
	h := &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns,
			Labels: map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/version": "2.21.0",
				"app.kubernetes.io/part-of": so, "app.kubernetes.io/managed-by": "keda-operator"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "keda.sh/v1alpha1", Kind: "ScaledObject", Name: so,
				UID: types.UID("6b1f4c2e-0000-4000-8000-00000000beef"), Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: target},
			MinReplicas:    ptr.To(int32(1)), MaxReplicas: 8,
			Metrics: []autoscalingv2.MetricSpec{{Type: autoscalingv2.ExternalMetricSourceType, External: &autoscalingv2.ExternalMetricSource{
				Metric: autoscalingv2.MetricIdentifier{Name: "s0-inflight-" + e.ns + "-" + target,
					Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"scaledobject.keda.sh/name": so}}},
				Target: autoscalingv2.MetricTarget{Type: autoscalingv2.AverageValueMetricType, AverageValue: resource.NewQuantity(4, resource.DecimalSI)},
			}}},
		},
	}
	e.hpa(h)
	return name
}

func (e *env) hpa(h *autoscalingv2.HorizontalPodAutoscaler) {
	e.t.Helper()
	api := e.cs.AutoscalingV2().HorizontalPodAutoscalers(e.ns)
	if _, err := api.Create(e.ctx(), h, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { e.remove(api.Delete, h.Name) })
}

// Issue 14: a Deployment with inflight.dev/target that KEDA (through its
// HPA) or any other HPA scales is never scaled by inflight; a Warning
// Event names the HPA and the ScaledObject, inflight_controller_skipped is
// 1; once the HPA is gone inflight scales it again.
func TestDeploymentScaledByHPAIsSkipped(t *testing.T) {
	testutil.SkipUnlessLong(t)
	e := newEnv(t)
	e.deployment("vllm", fastAnn(), 1)
	e.kubelet("vllm")
	e.deployment("plain", fastAnn(), 1)
	e.kubelet("plain")
	hpaName := e.kedaHPA("vllm", "vllm")
	e.hpa(&autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: "plain-cpu", Namespace: e.ns},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "plain"},
			MaxReplicas:    4,
		},
	})
	// An HPA of a Deployment of the same name in another API group does
	// not count.
	e.hpa(&autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: "other-group", Namespace: e.ns},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "example.com/v1", Kind: "Deployment", Name: "vllm"},
			MaxReplicas:    4,
		},
	})
	a := e.replica("a")
	r := e.start(e.cfg, e.fastOptions("c1"), nil)
	eventually(t, 30*time.Second, "leadership", r.c.Leading)
	a.SetInFlight(e.ns, "vllm", "vllm-1", 6, time.Second)
	a.SetInFlight(e.ns, "plain", "plain-1", 6, time.Second)

	eventually(t, 30*time.Second, "Warning Events naming the HPAs", func() bool {
		return findEvent(e.events("vllm"), ReasonScaledByHPA, "HorizontalPodAutoscaler "+hpaName+" (KEDA ScaledObject vllm)",
			"inflight does not scale this Deployment") != nil &&
			findEvent(e.events("plain"), ReasonScaledByHPA, "HorizontalPodAutoscaler plain-cpu scales it") != nil
	})
	for _, w := range []string{"vllm", "plain"} {
		if got := r.metric(t, "inflight_controller_skipped", map[string]string{"workload": w, "reason": "hpa"}); got != 1 {
			t.Errorf("skipped{workload=%s,reason=hpa} = %v, want 1", w, got)
		}
	}
	// Six in flight at target 1 would scale both to 6 within a tick or two.
	e.holds("vllm", 1, 3*time.Second)
	e.holds("plain", 1, 200*time.Millisecond)
	if ev := findEvent(e.events("vllm"), ReasonScaledByHPA); ev != nil && ev.Count != 1 {
		t.Errorf("%d ScaledByHPA Events for one HPA, want 1", ev.Count)
	}

	// KEDA's ScaledObject is deleted (and with it, by garbage collection,
	// its HPA): inflight scales the Deployment again.
	e.remove(e.cs.AutoscalingV2().HorizontalPodAutoscalers(e.ns).Delete, hpaName)
	eventually(t, 30*time.Second, "scale-up of vllm once its HPA is gone", func() bool { return e.replicas("vllm") >= 6 })
	eventually(t, 10*time.Second, "skipped{workload=vllm} removed", func() bool {
		return r.metric(t, "inflight_controller_skipped", map[string]string{"workload": "vllm", "reason": "hpa"}) == 0
	})
	e.holds("plain", 1, 200*time.Millisecond)
}

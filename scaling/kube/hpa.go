package kube

import (
	"fmt"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"

	"github.com/inflight-dev/inflight/scaling/collect"
)

// A Deployment that a HorizontalPodAutoscaler scales is not scaled by
// inflight, even with inflight.dev/target: two writers of spec.replicas
// would fight, each undoing the other every few seconds. KEDA scales a
// ScaledObject's target through an HPA it creates (keda-hpa-<name>,
// labelled app.kubernetes.io/managed-by=keda-operator, owned by the
// ScaledObject), so the HPA is what tells that KEDA manages it; any other
// HPA on the Deployment fights just the same and is treated alike.
//
// Such a Deployment gets one Warning Event (ReasonScaledByHPA) naming the
// HPA — again only when the set of HPAs changes — and
// inflight_controller_skipped{reason="hpa"} is 1 while it lasts. Its
// per-workload state is dropped, so when the HPA goes away inflight starts
// afresh (a full window of its own data before any scale-down).

// ReasonScaledByHPA is the Warning Event of a managed Deployment that a
// HorizontalPodAutoscaler (KEDA's, or any) scales.
const ReasonScaledByHPA = "ScaledByHPA"

// kedaManagedBy is the app.kubernetes.io/managed-by label KEDA puts on the
// HPA of a ScaledObject.
const kedaManagedBy = "keda-operator"

// hpaTargetIndex indexes HPAs by the Deployment they scale:
// "namespace/name".
const hpaTargetIndex = "inflight-hpa-target"

// hpaGuard is the controller's view of the HPAs; warned is owned by the
// tick goroutine.
type hpaGuard struct {
	index  cache.Indexer
	warned map[collect.Workload]string // the HPAs last warned about
}

// watchHPAs adds the HorizontalPodAutoscaler informer (autoscaling/v2, the
// watched namespaces) to the controller's factory.
func (c *Controller) watchHPAs() error {
	inf := c.factory.Autoscaling().V2().HorizontalPodAutoscalers().Informer()
	if err := inf.SetTransform(slimHPA); err != nil {
		return err
	}
	if err := inf.AddIndexers(cache.Indexers{hpaTargetIndex: hpaTargetKeys}); err != nil {
		return err
	}
	c.hpa = hpaGuard{index: inf.GetIndexer(), warned: map[collect.Workload]string{}}
	c.synced = append(c.synced, inf.HasSynced)
	return nil
}

// hpaTargetKeys is the index function: the Deployment an HPA scales, if it
// scales one (scaleTargetRef apps/*, kind Deployment).
func hpaTargetKeys(obj any) ([]string, error) {
	h, ok := obj.(*autoscalingv2.HorizontalPodAutoscaler)
	if !ok {
		return nil, nil
	}
	ref := h.Spec.ScaleTargetRef
	gv, err := schema.ParseGroupVersion(ref.APIVersion)
	if err != nil || gv.Group != appsv1.GroupName || ref.Kind != "Deployment" || ref.Name == "" {
		return nil, nil
	}
	return []string{h.Namespace + "/" + ref.Name}, nil
}

// slimHPA keeps what the guard reads: identity, the managed-by label, the
// owners and the scale target.
func slimHPA(obj any) (any, error) {
	h, ok := obj.(*autoscalingv2.HorizontalPodAutoscaler)
	if !ok {
		return obj, nil
	}
	var lbl map[string]string
	if v, ok := h.Labels["app.kubernetes.io/managed-by"]; ok {
		lbl = map[string]string{"app.kubernetes.io/managed-by": v}
	}
	return &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: h.Name, Namespace: h.Namespace, UID: h.UID,
			ResourceVersion: h.ResourceVersion, Labels: lbl, OwnerReferences: h.OwnerReferences},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{ScaleTargetRef: h.Spec.ScaleTargetRef},
	}, nil
}

// describeHPA names an HPA, and the KEDA ScaledObject behind it if any.
func describeHPA(h *autoscalingv2.HorizontalPodAutoscaler) string {
	for _, o := range h.OwnerReferences {
		if o.Kind == "ScaledObject" && strings.HasPrefix(o.APIVersion, "keda.sh/") {
			return fmt.Sprintf("HorizontalPodAutoscaler %s (KEDA ScaledObject %s)", h.Name, o.Name)
		}
	}
	if h.Labels["app.kubernetes.io/managed-by"] == kedaManagedBy {
		return fmt.Sprintf("HorizontalPodAutoscaler %s (KEDA)", h.Name)
	}
	return "HorizontalPodAutoscaler " + h.Name
}

// hpaScaled returns the managed Deployments that an HPA scales: the tick
// skips them. It warns once per Deployment and set of HPAs, and keeps
// inflight_controller_skipped{reason="hpa"} up to date.
func (c *Controller) hpaScaled(managed []*appsv1.Deployment) map[collect.Workload]bool {
	skip := map[collect.Workload]bool{}
	for _, dep := range managed {
		objs, err := c.hpa.index.ByIndex(hpaTargetIndex, dep.Namespace+"/"+dep.Name)
		if err != nil || len(objs) == 0 {
			continue
		}
		var names []string
		for _, o := range objs {
			if h, ok := o.(*autoscalingv2.HorizontalPodAutoscaler); ok {
				names = append(names, describeHPA(h))
			}
		}
		slices.Sort(names)
		desc := strings.Join(names, ", ")
		w := collect.Workload{Namespace: dep.Namespace, Name: dep.Name}
		skip[w] = true
		if c.hpa.warned[w] == desc {
			continue
		}
		c.hpa.warned[w] = desc
		c.m.skipped.WithLabelValues(w.Namespace, w.Name, "hpa").Set(1)
		c.log.Warn("not scaling a Deployment that an HPA scales", zap.String("workload", w.String()), zap.String("hpa", desc))
		c.recorder.Eventf(dep, corev1.EventTypeWarning, ReasonScaledByHPA,
			"inflight does not scale this Deployment: %s scales it, and two writers of spec.replicas would fight. "+
				"Either let KEDA scale it on inflight's count (external-push trigger; remove %s) or remove the HPA/ScaledObject.",
			desc, TargetAnnotation)
	}
	for w := range c.hpa.warned {
		if !skip[w] {
			delete(c.hpa.warned, w)
			c.m.skipped.DeleteLabelValues(w.Namespace, w.Name, "hpa")
			c.log.Info("no HPA scales the Deployment any more: inflight scales it", zap.String("workload", w.String()))
		}
	}
	return skip
}

// skippedMetric is inflight_controller_skipped, registered on reg.
func skippedMetric(reg prometheus.Registerer) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "inflight", Subsystem: "controller", Name: "skipped",
		Help: "1 while an annotated workload is not scaled by inflight, by reason (hpa: a HorizontalPodAutoscaler, e.g. KEDA's, scales it)."},
		[]string{"namespace", "workload", "reason"})
	reg.MustRegister(g)
	return g
}

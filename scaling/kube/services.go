package kube

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/inflight-dev/inflight/scaling/collect"
)

// slimService keeps only what the controller reads of a Service: its
// identity and selector.
func slimService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, UID: s.UID, ResourceVersion: s.ResourceVersion},
		Spec:       corev1.ServiceSpec{Selector: s.Spec.Selector},
	}, nil
}

// backend is one Deployment a Service selects.
type backend struct {
	dep   *appsv1.Deployment
	ready int32
}

// backends returns the Deployments of the Service's namespace whose pod
// template its selector matches, with their ready pods (none for a
// missing Service or one without a selector). Cached for the tick.
func (v *view) backends(namespace, service string) []backend {
	k := svcKey{namespace, service}
	if b, ok := v.svcBackends[k]; ok {
		return b
	}
	var out []backend
	if svc, err := v.c.services.Services(namespace).Get(service); err == nil && len(svc.Spec.Selector) > 0 {
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		objs, _ := v.c.deployIndexer.ByIndex(cache.NamespaceIndex, namespace)
		for _, o := range objs {
			dep, ok := o.(*appsv1.Deployment)
			if !ok || len(dep.Spec.Template.Labels) == 0 || !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
				continue
			}
			w := collect.Workload{Namespace: dep.Namespace, Name: dep.Name}
			pods, managed := v.pods[w]
			if !managed {
				pods = v.c.podsOf(dep)
			}
			out = append(out, backend{dep: dep, ready: readyPods(pods)})
		}
	}
	v.svcBackends[k] = out
	return out
}

type svcKey struct{ namespace, name string }

// edges is the tick's collect.EdgeMap: a Service's edge demand goes to the
// Deployments it selects, in proportion to their ready replicas, equally
// when none is ready.
func (v *view) edges(namespace, service string) []collect.Share {
	bs := v.backends(namespace, service)
	if len(bs) == 0 {
		return nil
	}
	var total int32
	for _, b := range bs {
		total += b.ready
	}
	out := make([]collect.Share, 0, len(bs))
	for _, b := range bs {
		f := 1 / float64(len(bs))
		if total > 0 {
			f = float64(b.ready) / float64(total)
		}
		if f > 0 {
			out = append(out, collect.Share{Workload: collect.Workload{Namespace: b.dep.Namespace, Name: b.dep.Name}, Fraction: f})
		}
	}
	return out
}

// readyPods counts the ready pods that are not being deleted.
func readyPods(pods []*corev1.Pod) int32 {
	var n int32
	for _, p := range pods {
		if p.DeletionTimestamp == nil && readyCondition(p) != nil {
			n++
		}
	}
	return n
}

package kube

import (
	"cmp"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// deployIndex indexes the Deployments that carry any inflight.dev/
// annotation under annotatedKey, so that a tick reads those and not every
// Deployment of the cluster.
const (
	deployIndex  = "inflight-annotated"
	annotatedKey = "annotated"
)

func deployIndexKeys(obj any) ([]string, error) {
	d, ok := obj.(*appsv1.Deployment)
	if !ok || !scaling.HasAnnotations(d.Annotations) {
		return nil, nil
	}
	return []string{annotatedKey}, nil
}

// slimDeployment keeps only what the controller reads of a Deployment: its
// identity, its inflight.dev/ annotations (not, say, a kubectl
// last-applied-configuration), replicas, selector and pod template labels.
// Every Deployment of the watched namespaces is cached, so this bounds the
// informer's memory by the number of Deployments, not their size.
func slimDeployment(obj any) (any, error) {
	d, ok := obj.(*appsv1.Deployment)
	if !ok {
		return obj, nil
	}
	var ann map[string]string
	if scaling.HasAnnotations(d.Annotations) {
		ann = make(map[string]string)
		for k, v := range d.Annotations {
			if strings.HasPrefix(k, scaling.AnnotationPrefix) {
				ann[k] = v
			}
		}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: d.Name, Namespace: d.Namespace, UID: d.UID,
			ResourceVersion: d.ResourceVersion, Generation: d.Generation, Annotations: ann},
		Spec: appsv1.DeploymentSpec{Replicas: d.Spec.Replicas, Selector: d.Spec.Selector,
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: d.Spec.Template.Labels}}},
	}, nil
}

// view is what one tick reads of the cluster, once, before it fetches: the
// Deployments with inflight.dev/ annotations (managed: with
// inflight.dev/target or inflight.dev/slo-wait; stray: without) and the live pods of each managed
// one, which decide what a snapshot's targets count for.
type view struct {
	c              *Controller
	managed, stray []*appsv1.Deployment
	pods           map[collect.Workload][]*corev1.Pod
	live           map[liveKey]struct{}
	// other caches, for this tick, the answers about Deployments inflight
	// does not manage (their sums feed Options.OnTick, e.g. KEDA's
	// external scaler): the selector of each (nil: no such Deployment),
	// and whether a pod is a live pod of it.
	other     map[collect.Workload]labels.Selector
	otherLive map[liveKey]bool
	// svcBackends caches, for this tick, the Deployments each Service
	// selects (services.go).
	svcBackends map[svcKey][]backend
}

type liveKey struct{ namespace, workload, pod string }

// attribute counts a target for the Deployment its record names only if
// its pod is a live pod of that Deployment: a claim for another
// Deployment's or a made-up pod counts for nobody.
func (v *view) attribute(t collect.Target) (collect.Workload, bool) {
	w := collect.Workload{Namespace: t.Namespace, Name: t.Workload}
	k := liveKey{t.Namespace, t.Workload, t.Pod}
	if _, ok := v.live[k]; ok {
		return w, true
	}
	if _, managed := v.pods[w]; managed || t.Namespace == "" || t.Workload == "" || t.Pod == "" {
		return w, false
	}
	if ok, seen := v.otherLive[k]; seen {
		return w, ok
	}
	ok := v.c.isLivePodOf(v, w, t.Pod)
	v.otherLive[k] = ok
	return w, ok
}

// isLivePodOf reports whether pod is a live pod of the Deployment w, which
// inflight does not manage, from the informer caches.
func (c *Controller) isLivePodOf(v *view, w collect.Workload, pod string) bool {
	sel, seen := v.other[w]
	if !seen {
		if o, ok, err := c.deployIndexer.GetByKey(w.Namespace + "/" + w.Name); err == nil && ok {
			if d, ok := o.(*appsv1.Deployment); ok {
				sel = selectorOf(d)
			}
		}
		v.other[w] = sel
	}
	if sel == nil {
		return false
	}
	p, err := c.pods.Pods(w.Namespace).Get(pod)
	return err == nil && sel.Matches(labels.Set(p.Labels)) &&
		p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// view reads the annotated Deployments and their pods from the informer
// caches; ok is false when the cache could not be read.
func (c *Controller) view() (v *view, ok bool) {
	objs, err := c.deployIndexer.ByIndex(deployIndex, annotatedKey)
	if err != nil {
		return nil, false
	}
	v = &view{c: c, pods: map[collect.Workload][]*corev1.Pod{}, live: map[liveKey]struct{}{},
		other: map[collect.Workload]labels.Selector{}, otherLive: map[liveKey]bool{}, svcBackends: map[svcKey][]backend{}}
	for _, o := range objs {
		dep, ok := o.(*appsv1.Deployment)
		if !ok {
			continue
		}
		if !scaling.Enabled(dep.Annotations) {
			v.stray = append(v.stray, dep)
			continue
		}
		v.managed = append(v.managed, dep)
		w := collect.Workload{Namespace: dep.Namespace, Name: dep.Name}
		pods := c.podsOf(dep)
		v.pods[w] = pods
		for _, p := range pods {
			if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				// Terminating pods are live: their requests are real
				// until they end.
				v.live[liveKey{dep.Namespace, dep.Name, p.Name}] = struct{}{}
			}
		}
	}
	byName := func(a, b *appsv1.Deployment) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	}
	slices.SortFunc(v.managed, byName)
	slices.SortFunc(v.stray, byName)
	return v, true
}

package kube

import (
	"sort"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// podLabelIndex indexes pods by "namespace/key=value" of each label, so a
// Deployment's pods are found from one of its matchLabels pairs instead of a
// scan of the namespace.
const podLabelIndex = "inflight-label"

func podLabelKeys(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	keys := make([]string, 0, len(p.Labels))
	for k, v := range p.Labels {
		keys = append(keys, p.Namespace+"/"+k+"="+v)
	}
	return keys, nil
}

// slimPod keeps only what the controller reads of a pod.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, Labels: p.Labels,
			ResourceVersion: p.ResourceVersion, CreationTimestamp: p.CreationTimestamp, DeletionTimestamp: p.DeletionTimestamp},
		Status: corev1.PodStatus{Phase: p.Status.Phase, Conditions: p.Status.Conditions},
	}, nil
}

// selectPods returns the pods of ns matching sel, through the label index
// when the selector has matchLabels.
func (c *Controller) selectPods(ns string, ls *metav1.LabelSelector, sel labels.Selector) []*corev1.Pod {
	if len(ls.MatchLabels) == 0 {
		pods, _ := c.pods.Pods(ns).List(sel)
		return pods
	}
	keys := make([]string, 0, len(ls.MatchLabels))
	for k, v := range ls.MatchLabels {
		keys = append(keys, k+"="+v)
	}
	sort.Strings(keys)
	objs, err := c.podIndex.ByIndex(podLabelIndex, ns+"/"+keys[0])
	if err != nil {
		pods, _ := c.pods.Pods(ns).List(sel)
		return pods
	}
	out := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok && sel.Matches(labels.Set(p.Labels)) {
			out = append(out, p)
		}
	}
	return out
}

// selectorOf returns the Deployment's pod selector, or nil for a missing,
// invalid or empty one (which selects no pod here).
func selectorOf(dep *appsv1.Deployment) labels.Selector {
	if dep.Spec.Selector == nil {
		return nil
	}
	sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if err != nil || sel.Empty() {
		return nil
	}
	return sel
}

// podsOf returns the pods the Deployment's selector matches (none for a
// missing, invalid or empty selector).
func (c *Controller) podsOf(dep *appsv1.Deployment) []*corev1.Pod {
	sel := selectorOf(dep)
	if sel == nil {
		return nil
	}
	return c.selectPods(dep.Namespace, dep.Spec.Selector, sel)
}

// countPods counts a Deployment's ready and starting pods and records the
// observed start-up time (created → Ready) of pods not seen ready before.
func countPods(pods []*corev1.Pod, st *wstate) (ready, starting int32) {
	live := make(map[string]bool, len(pods))
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		uid := string(p.UID)
		live[uid] = true
		rc := readyCondition(p)
		if rc == nil {
			starting++
			continue
		}
		ready++
		if !st.seen[uid] {
			st.seen[uid] = true
			if d := rc.LastTransitionTime.Sub(p.CreationTimestamp.Time); d >= 0 && d <= time.Hour {
				st.starts = append(st.starts, d)
				if len(st.starts) > 8 {
					st.starts = st.starts[1:]
				}
			}
		}
	}
	for uid := range st.seen {
		if !live[uid] {
			delete(st.seen, uid)
		}
	}
	return ready, starting
}

func readyCondition(p *corev1.Pod) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if c := &p.Status.Conditions[i]; c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return c
		}
	}
	return nil
}

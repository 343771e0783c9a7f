package fleet

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// SliceName is the name of the EndpointSlice the fleet keeps for Service.
func SliceName(service string) string { return service + "-fleet" }

// syncEndpoints plays the EndpointSlice controller for Options.Service: one
// slice, labelled kubernetes.io/service-name, listing the pods whose Ready
// condition the fleet wrote and that are not being removed (a pod chosen
// for removal is deleted from the API at once, so the real controller
// drops it too). It writes only when the set changed. An empty slice
// stays (with no endpoint), as the real controller keeps one.
func (f *Fleet) syncEndpoints(ctx context.Context) error {
	f.mu.Lock()
	var ips []string
	names := map[string]string{}
	for _, p := range f.pods {
		if p.ready && !p.draining && !p.deleted {
			ips = append(ips, p.ip)
			names[p.ip] = p.name
		}
	}
	slices.Sort(ips)
	same := f.slice != nil && slices.Equal(ips, f.slice)
	f.mu.Unlock()
	if same {
		return nil
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: SliceName(f.opt.Service), Namespace: f.opt.Namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: f.opt.Service,
				discoveryv1.LabelManagedBy: "fleet.test-demo.inflight.dev"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(f.opt.Port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: f.opt.Namespace, Name: names[ip]}})
	}
	api := f.cs.DiscoveryV1().EndpointSlices(f.opt.Namespace)
	cur, err := api.Get(ctx, es.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = api.Create(ctx, es, metav1.CreateOptions{})
	case err == nil:
		es.ResourceVersion = cur.ResourceVersion
		_, err = api.Update(ctx, es, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("EndpointSlice %s/%s: %w", f.opt.Namespace, es.Name, err)
	}
	f.mu.Lock()
	f.slice = append([]string{}, ips...)
	if n := len(f.wakes); n > 0 && len(ips) > 0 && f.wakes[n-1].Published.IsZero() {
		f.wakes[n-1].Published = time.Now()
	}
	f.mu.Unlock()
	return nil
}

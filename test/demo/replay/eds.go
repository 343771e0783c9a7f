package replay

import (
	"context"
	"fmt"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// EDS is the gateway's view of one Service's endpoints, learnt from the
// API server as Istio's EDS would: it lists and watches the Service's
// EndpointSlices and applies every change Delay after the API server
// announced it (istiod's debounce and the xDS push). Only ready endpoints
// are hosts.
//
// Concurrency: Run is the one goroutine that watches; Has and Count may be
// called from any goroutine.
type EDS struct {
	cs                 kubernetes.Interface
	namespace, service string
	delay              time.Duration

	mu      sync.Mutex
	slices  map[string][]string // slice name → ready addresses (watch order)
	seq     uint64              // changes seen
	applied uint64              // the change in force
	hosts   map[string]bool     // in force
}

// NewEDS returns the view of namespace/service; call Run.
func NewEDS(cs kubernetes.Interface, namespace, service string, delay time.Duration) *EDS {
	return &EDS{cs: cs, namespace: namespace, service: service, delay: delay,
		slices: map[string][]string{}, hosts: map[string]bool{}}
}

// Has reports whether ip is a host of the view in force.
func (e *EDS) Has(ip string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.hosts[ip]
}

// Count is the number of hosts in force.
func (e *EDS) Count() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.hosts)
}

// Run lists and watches until ctx ends (re-listing when a watch closes);
// it returns nil then, or an error if the API cannot be listed for 10 s.
func (e *EDS) Run(ctx context.Context) error {
	sel := discoveryv1.LabelServiceName + "=" + e.service
	api := e.cs.DiscoveryV1().EndpointSlices(e.namespace)
	var lastErr error
	failedSince := time.Time{}
	for ctx.Err() == nil {
		list, err := api.List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err == nil {
			e.mu.Lock()
			clear(e.slices)
			for i := range list.Items {
				e.slices[list.Items[i].Name] = readyAddresses(&list.Items[i])
			}
			e.changedLocked()
			e.mu.Unlock()
			var w watch.Interface
			w, err = api.Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: list.ResourceVersion})
			if err == nil {
				failedSince = time.Time{}
				e.follow(ctx, w)
				continue
			}
		}
		if ctx.Err() != nil {
			break
		}
		lastErr = err
		if failedSince.IsZero() {
			failedSince = time.Now()
		} else if time.Since(failedSince) > 10*time.Second {
			return fmt.Errorf("EDS of %s/%s: %w", e.namespace, e.service, lastErr)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

func (e *EDS) follow(ctx context.Context, w watch.Interface) {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.ResultChan():
			if !ok {
				return
			}
			s, isSlice := ev.Object.(*discoveryv1.EndpointSlice)
			if !isSlice {
				return // an error event: re-list
			}
			e.mu.Lock()
			switch ev.Type {
			case watch.Deleted:
				delete(e.slices, s.Name)
			case watch.Added, watch.Modified:
				e.slices[s.Name] = readyAddresses(s)
			}
			e.changedLocked()
			e.mu.Unlock()
		}
	}
}

// changedLocked schedules the current slices to be in force after the
// delay; a later change supersedes an earlier one still pending.
func (e *EDS) changedLocked() {
	e.seq++
	seq := e.seq
	hosts := map[string]bool{}
	for _, addrs := range e.slices {
		for _, a := range addrs {
			hosts[a] = true
		}
	}
	time.AfterFunc(e.delay, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if seq > e.applied {
			e.applied, e.hosts = seq, hosts
		}
	})
}

func readyAddresses(s *discoveryv1.EndpointSlice) []string {
	var out []string
	for _, ep := range s.Endpoints {
		if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
			continue
		}
		out = append(out, ep.Addresses...)
	}
	return out
}

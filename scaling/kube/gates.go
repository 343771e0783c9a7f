package kube

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// This file holds the gates (ISSUE12.md): the table the leader sends every
// extproc replica with PUT /v1/gates once per tick, and at once when a
// model Service's ready endpoints go from 0 to more, so that the extproc
// holds edge requests for a workload at zero and releases them when it has
// a ready endpoint, and sheds beyond max-queue.

// gatesExpiry is how long a table stays in force without a newer one: five
// ticks (a leader that missed four pushes still holds), within the
// contract's 1 s to 300 s.
func (c *Controller) gatesExpiry() float64 {
	return math.Min(math.Max(5*c.opt.Tick.Seconds(), 1), 300)
}

// releasePerEndpoint is how many held requests one ready endpoint is given
// at a time: the replica's batch (inflight.dev/concurrency) if set, else
// its target rounded up (what the policy sizes one replica for), else 1.
func releasePerEndpoint(st *wstate) float64 {
	if st.cfg.Concurrency > 0 {
		return float64(st.cfg.Concurrency)
	}
	return math.Max(1, math.Ceil(st.cfg.Target))
}

// gates builds the table from the tick's view and the term's per-workload
// state. A Service's entry exists when a managed Deployment it selects
// holds (min-replicas 0, or at 0 replicas) or has max-queue; a managed
// Deployment with max-queue that no Service entry names gets an entry of
// its own (inbound shedding). A Service that also selects a Deployment
// inflight does not manage is never held: that one may serve it.
func (c *Controller) gates(t *term, v *view) []extproc.Gate {
	var out []extproc.Gate
	now := c.opt.Clock.Now()
	named := map[collect.Workload]bool{}
	type nsKey = string
	svcs := map[nsKey][]*corev1.Service{}
	for _, dep := range v.managed {
		if _, done := svcs[dep.Namespace]; done {
			continue
		}
		l, _ := c.services.Services(dep.Namespace).List(labels.Everything())
		sort.Slice(l, func(i, j int) bool { return l[i].Name < l[j].Name })
		svcs[dep.Namespace] = l
	}
	nss := make([]string, 0, len(svcs))
	for ns := range svcs {
		nss = append(nss, ns)
	}
	sort.Strings(nss)
	for _, ns := range nss {
		for _, svc := range svcs[ns] {
			g, ok := c.serviceGate(t, v, svc, now)
			if !ok {
				continue
			}
			if g.Workload != "" {
				named[collect.Workload{Namespace: ns, Name: g.Workload}] = true
			}
			out = append(out, g)
		}
	}
	for _, dep := range v.managed {
		w := collect.Workload{Namespace: dep.Namespace, Name: dep.Name}
		st := t.workloads[w]
		if named[w] || st == nil || st.cfg == nil || st.cfg.MaxQueue <= 0 {
			continue
		}
		ready := readyPods(v.pods[w])
		out = append(out, extproc.Gate{Namespace: w.Namespace, Workload: w.Name, ReadyEndpoints: int(ready),
			MaxInFlight: st.cfg.MaxQueue * float64(ready)})
	}
	return out
}

// serviceGate is one Service's entry; ok is false when it needs none.
func (c *Controller) serviceGate(t *term, v *view, svc *corev1.Service, now time.Time) (extproc.Gate, bool) {
	g := extproc.Gate{Namespace: svc.Namespace, Service: svc.Name}
	var managed []collect.Workload
	unmanaged, shed := false, true
	for _, b := range v.backends(svc.Namespace, svc.Name) {
		w := collect.Workload{Namespace: b.dep.Namespace, Name: b.dep.Name}
		st := t.workloads[w]
		if st == nil || st.cfg == nil {
			unmanaged = true
			continue
		}
		managed = append(managed, w)
		requested := c.requested(b.dep, st, now)
		if st.cfg.MinReplicas == 0 || requested == 0 {
			g.Hold = true
		}
		g.HoldTimeoutSeconds = math.Max(g.HoldTimeoutSeconds, st.cfg.HoldTimeout.Seconds())
		g.ReleasePerEndpoint = math.Max(g.ReleasePerEndpoint, releasePerEndpoint(st))
		if st.cfg.MaxQueue > 0 {
			g.MaxInFlight += st.cfg.MaxQueue * float64(b.ready)
			g.MaxHeld += st.cfg.MaxQueue * float64(max(1, requested))
		} else {
			shed = false
		}
	}
	if len(managed) == 0 {
		return g, false
	}
	if unmanaged {
		g.Hold = false
	}
	if !shed || unmanaged {
		g.MaxInFlight, g.MaxHeld = 0, 0
	}
	if !g.Hold && g.MaxInFlight == 0 && g.MaxHeld == 0 {
		return g, false
	}
	if !g.Hold {
		g.HoldTimeoutSeconds, g.ReleasePerEndpoint = 0, 0
	}
	if len(managed) == 1 && !unmanaged {
		g.Workload = managed[0].Name
	}
	g.ReadyEndpoints = c.readyEndpoints(svc.Namespace, svc.Name)
	return g, true
}

// slimModelSlice keeps only what the controller reads of a model Service's
// EndpointSlice: its identity, Service label, and each endpoint's first
// address and conditions.
func slimModelSlice(obj any) (any, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	out := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, UID: s.UID, ResourceVersion: s.ResourceVersion,
			Labels: map[string]string{discoveryv1.LabelServiceName: s.Labels[discoveryv1.LabelServiceName]}},
		AddressType: s.AddressType,
		Endpoints:   make([]discoveryv1.Endpoint, 0, len(s.Endpoints)),
	}
	for _, e := range s.Endpoints {
		se := discoveryv1.Endpoint{Conditions: e.Conditions}
		if len(e.Addresses) > 0 {
			se.Addresses = e.Addresses[:1]
		}
		out.Endpoints = append(out.Endpoints, se)
	}
	return out, nil
}

// readyEndpoints counts the distinct ready addresses of a Service's
// EndpointSlices (the model Services' informer).
func (c *Controller) readyEndpoints(namespace, service string) int {
	l, err := c.modelSlices.EndpointSlices(namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service}))
	if err != nil {
		return 0
	}
	seen := map[string]bool{}
	for _, s := range l {
		for _, e := range s.Endpoints {
			if (e.Conditions.Ready == nil || *e.Conditions.Ready) && len(e.Addresses) > 0 {
				seen[e.Addresses[0]] = true
			}
		}
	}
	return len(seen)
}

// sliceChanged is the model EndpointSlice informer's handler: when a
// Service's ready endpoints go from 0 to more it asks the tick loop to push
// the gates at once (a held request waits for that, not for the next tick).
// It runs on the informer's goroutine.
func (c *Controller) sliceChanged(obj any) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	svc := s.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return
	}
	n := c.readyEndpoints(s.Namespace, svc)
	k := svcKey{s.Namespace, svc}
	c.atZeroMu.Lock()
	_, wasZero := c.atZero[k]
	if n == 0 {
		c.atZero[k] = struct{}{}
	} else {
		delete(c.atZero, k)
	}
	c.atZeroMu.Unlock()
	if n > 0 && wasZero {
		select {
		case c.gatesNow <- struct{}{}:
		default:
		}
	}
}

// pushGates sends the table to every extproc replica in parallel, each
// bounded by --fetch-timeout. A failure is counted and logged, never
// fatal: the extproc fails open when its table expires.
func (c *Controller) pushGates(ctx context.Context, t *term, v *view, eps []collect.Endpoint, share float64) {
	if len(eps) == 0 {
		return
	}
	doc := extproc.GatesDocument{Version: extproc.GatesVersion, Controller: c.opt.Identity, ExpiresInSeconds: c.gatesExpiry(),
		Share: share, Gates: c.gates(t, v)}
	if doc.Gates == nil {
		doc.Gates = []extproc.Gate{}
	}
	if err := doc.Validate(); err != nil {
		// A bug here, never the cluster's: say so, send nothing (the
		// extproc fails open when the last table expires).
		c.m.gatesPushes.WithLabelValues("invalid").Add(float64(len(eps)))
		c.log.Error("gate table invalid: not sent", zap.Error(err))
		return
	}
	body, err := json.Marshal(doc)
	if err != nil {
		c.log.Error("encode gates", zap.Error(err))
		return
	}
	c.m.gates.Set(float64(len(doc.Gates)))
	var wg sync.WaitGroup
	for _, ep := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kind, err := c.putGates(ctx, gatesURL(ep.URL, c.opt.SnapshotPath), body)
			c.m.gatesPushes.WithLabelValues(cmp.Or(kind, "ok")).Inc()
			if err != nil {
				c.log.Debug("gates push failed", zap.String("replica", ep.Key), zap.String("kind", kind), zap.Error(err))
			}
		}()
	}
	wg.Wait()
}

// gatesURL is the PUT /v1/gates URL of the replica whose snapshot URL is
// snapshot.
func gatesURL(snapshot, path string) string {
	return strings.TrimSuffix(snapshot, path) + "/v1/gates"
}

// putGates sends one table; kind is "" on success, else a bounded label.
func (c *Controller) putGates(ctx context.Context, url string, body []byte) (kind string, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.opt.FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, bytes.NewReader(body))
	if err != nil {
		return "connect", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.collOpt.Client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "timeout", err
		}
		return "connect", err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<12))
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		return "http-status", fmt.Errorf("PUT %s: %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	}
	return "", nil
}

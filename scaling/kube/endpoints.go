package kube

import (
	"net"
	"sort"
	"strconv"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/inflight-dev/inflight/scaling/collect"
)

// endpoints lists the extproc replicas to fetch from the EndpointSlices:
// every endpoint that is ready, serving or terminating. A terminating
// replica (a rolling restart, a scale-down) still counts the requests it
// holds until it exits, so it is fetched until it leaves the slice (and
// for --expire after that, the collector keeps its last values and the
// tick partial). Only an endpoint that is neither (starting, or failing
// its readiness probe while not terminating) is skipped.
func (c *Controller) endpoints() []collect.Endpoint {
	slices, err := c.slices.EndpointSlices(c.opt.ExtprocNamespace).List(labels.Everything())
	if err != nil {
		return nil
	}
	var out []collect.Endpoint
	seen := map[string]bool{}
	for _, s := range slices {
		port := int32(0)
		if n, err := strconv.Atoi(c.opt.SnapshotPort); err == nil {
			port = int32(n)
		} else {
			for _, p := range s.Ports {
				if p.Name != nil && *p.Name == c.opt.SnapshotPort && p.Port != nil {
					port = *p.Port
				}
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if !fetchable(e.Conditions) || len(e.Addresses) == 0 {
				continue
			}
			addr := net.JoinHostPort(e.Addresses[0], strconv.Itoa(int(port)))
			key := addr
			if e.TargetRef != nil && e.TargetRef.Name != "" {
				key = e.TargetRef.Name
			}
			if seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, collect.Endpoint{Key: key, URL: "http://" + addr + c.opt.SnapshotPath})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// fetchable reports whether an endpoint's replica may hold counts: ready,
// serving or terminating. Unset conditions read as the API documents them:
// ready and serving unknown mean ready, terminating unknown means not.
func fetchable(c discoveryv1.EndpointConditions) bool {
	ready := c.Ready == nil || *c.Ready
	serving := c.Serving == nil && ready || c.Serving != nil && *c.Serving
	terminating := c.Terminating != nil && *c.Terminating
	return ready || serving || terminating
}

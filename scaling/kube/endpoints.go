package kube

import (
	"net"
	"sort"
	"strconv"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/inflight-dev/inflight/scaling/collect"
)

// endpoints lists the ready extproc endpoints from the EndpointSlices.
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
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			if e.Conditions.Terminating != nil && *e.Conditions.Terminating {
				continue
			}
			if len(e.Addresses) == 0 {
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

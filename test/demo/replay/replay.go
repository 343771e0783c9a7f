// Package replay is the demo's mesh: it replays a request trace
// (scaling/sim's Trace, e.g. the Azure LLM conversation hour) in compressed
// real time, routes each request to a pod of the simulated fleet and sends
// it through the Envoy-faithful ext_proc client (test/envoy) exactly as the
// inbound sidecar of that pod would: request attributes naming the pod, its
// workload and namespace, response headers after the pod's queueing wait
// and prefill, then an SSE-style streamed body paced by the generated
// tokens. Pods alternate between an Envoy ≤ 1.36 and an Envoy ≥ 1.37 sidecar
// (a mesh mid-upgrade) unless one version is chosen.
//
// Concurrency: Run owns the schedule and starts one goroutine per request;
// Stats may be read from any goroutine while Run runs. There is no
// package-level mutable state.
package replay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/inflight-dev/inflight/scaling/sim"
	"github.com/inflight-dev/inflight/test/demo/fleet"
	"github.com/inflight-dev/inflight/test/envoy"
)

// Versions selects the sidecars' Envoy versions.
type Versions int

const (
	// Mixed: even pods run Envoy ≤ 1.36, odd pods Envoy ≥ 1.37.
	Mixed Versions = iota
	// Only136: every sidecar is Envoy ≤ 1.36.
	Only136
	// Only137: every sidecar is Envoy ≥ 1.37.
	Only137
)

// ParseVersions reads "mixed", "1.36" or "1.37".
func ParseVersions(s string) (Versions, error) {
	switch s {
	case "mixed", "":
		return Mixed, nil
	case "1.36":
		return Only136, nil
	case "1.37":
		return Only137, nil
	}
	return 0, fmt.Errorf("envoy version %q: want mixed, 1.36 or 1.37", s)
}

// Options configure a Replayer.
type Options struct {
	Namespace, Workload, Service string
	Port                         int // the model server's port (default 8000)
	Versions                     Versions
	// Extprocs are the ext_proc gRPC addresses (loopback host:port); each
	// sidecar balances its side streams across them.
	Extprocs []string
	// Speed compresses the trace's arrival times (default 1).
	Speed float64
	// MaxChunks bounds the SSE chunks of one response (default 8).
	MaxChunks int
	// Gateway, if set, makes the replay a gateway-only install: every
	// request goes through an ingress gateway's ext_proc filter (the
	// control profile, GATEWAY context: the cluster names the Service,
	// no pod) and the gateway's router picks a host among Gateway's
	// endpoints when the filter lets the request pass — none: 503
	// no_healthy_upstream. The model pods have no sidecar.
	Gateway *EDS
}

// Replayer sends a trace through the harness to the fleet.
type Replayer struct {
	opt     Options
	fleet   *fleet.Fleet
	clients [2]*envoy.Client

	sent, done, noReplica atomic.Int64
	mu                    sync.Mutex
	outcomes              map[string]int
	gw                    gatewayStats
}

// gatewayStats are the gateway-only replay's counters.
type gatewayStats struct {
	status                 map[int]int
	held                   []Held
	noHealthy, failOpen    int
	immediate, holdTimeout int
	shed                   int
}

// Held is one request the gateway's ext_proc held (it extended Envoy's
// message timer: override_message_timeout).
type Held struct {
	// Arrival is when the request reached the gateway; Routed when the
	// router picked its host (zero if it never did); Answered when its
	// response headers reached the client (queueing in the pod and
	// prefill included; zero if none).
	Arrival, Routed, Answered time.Time
	Status                    int
}

// New connects one harness client per Envoy version to the extprocs.
func New(f *fleet.Fleet, opt Options) (*Replayer, error) {
	if opt.Speed == 0 {
		opt.Speed = 1
	}
	if opt.Port == 0 {
		opt.Port = 8000
	}
	if opt.MaxChunks == 0 {
		opt.MaxChunks = 8
	}
	if len(opt.Extprocs) == 0 {
		return nil, errors.New("replay: no extproc address")
	}
	r := &Replayer{opt: opt, fleet: f, outcomes: map[string]int{}, gw: gatewayStats{status: map[int]int{}}}
	profile := envoy.Observe
	if opt.Gateway != nil {
		profile = envoy.Control
	}
	for i, v := range []envoy.Version{envoy.Envoy136, envoy.Envoy137} {
		// The shipped install: the observe profile's rendered filter in
		// the sidecars, the control profile's at the gateway.
		c, err := envoy.NewClient(envoy.Config{Version: v, Profile: profile, ConnsPerReplica: 2}, opt.Extprocs...)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("replay: harness client %v: %w", v, err)
		}
		r.clients[i] = c
	}
	return r, nil
}

// Close closes the harness clients (after Run returned).
func (r *Replayer) Close() {
	for _, c := range r.clients {
		if c != nil {
			_ = c.Close()
		}
	}
}

// Stats are the replay's counters so far.
type Stats struct {
	Sent, Done, NoReplica int64
	Outcomes              map[string]int
	// Gateway-only replay: HTTP statuses sent to the clients, the held
	// requests (arrival order), 503 no_healthy_upstream answers, requests
	// whose filter failed open, immediate responses, of which hold
	// timeouts (503) and shed (429).
	Status                        map[int]int
	Held                          []Held
	NoHealthyUpstream, FailOpen   int
	Immediate, HoldTimeouts, Shed int
}

// Stats returns the counters.
func (r *Replayer) Stats() Stats {
	r.mu.Lock()
	o := make(map[string]int, len(r.outcomes))
	for k, v := range r.outcomes {
		o[k] = v
	}
	st := Stats{Sent: r.sent.Load(), Done: r.done.Load(), NoReplica: r.noReplica.Load(), Outcomes: o,
		Status: make(map[int]int, len(r.gw.status)), Held: append([]Held(nil), r.gw.held...),
		NoHealthyUpstream: r.gw.noHealthy, FailOpen: r.gw.failOpen, Immediate: r.gw.immediate,
		HoldTimeouts: r.gw.holdTimeout, Shed: r.gw.shed}
	for k, v := range r.gw.status {
		st.Status[k] = v
	}
	r.mu.Unlock()
	slices.SortFunc(st.Held, func(a, b Held) int { return a.Arrival.Compare(b.Arrival) })
	return st
}

func (r *Replayer) client(podIndex int) *envoy.Client {
	switch r.opt.Versions {
	case Only136:
		return r.clients[0]
	case Only137:
		return r.clients[1]
	}
	return r.clients[podIndex%2]
}

// Run replays tr from now: request i is sent at start + Arrival/Speed. It
// returns when every request has ended and every side stream is closed;
// when ctx ends, no new request is sent and the open ones are aborted (the
// client goes away), as a real client would.
func (r *Replayer) Run(ctx context.Context, tr sim.Trace) error {
	start := time.Now()
	var wg sync.WaitGroup
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for _, req := range tr.Requests {
		at := start.Add(time.Duration(req.Arrival / r.opt.Speed * float64(time.Second)))
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				timer.Stop()
			case <-timer.C:
			}
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(req sim.Request) {
			defer wg.Done()
			r.one(ctx, req)
		}(req)
	}
	wg.Wait()
	r.Wait()
	return ctx.Err()
}

func (r *Replayer) one(ctx context.Context, q sim.Request) {
	_, _ = r.Send(ctx, q)
}

// Send sends one request now (its arrival time is ignored) and returns how
// its HTTP exchange ended, once it has; its side stream may close later
// (Run waits for that; callers of Send alone call Wait).
func (r *Replayer) Send(ctx context.Context, q sim.Request) (envoy.Outcome, error) {
	if r.opt.Gateway != nil {
		return r.sendGateway(ctx, q), nil
	}
	now := time.Now()
	svc, prefill := r.fleet.ServiceTime(q)
	a, err := r.fleet.Route(now, svc)
	if err != nil {
		r.noReplica.Add(1)
		return 0, err
	}
	r.sent.Add(1)
	defer r.done.Add(1)
	body := r.sseBody(q)
	chunks := len(body)
	decode := svc - prefill
	req := &envoy.Request{
		Method: "POST", Path: "/v1/chat/completions",
		Authority: fmt.Sprintf("%s.%s.svc.cluster.local:%d", r.opt.Service, r.opt.Namespace, r.opt.Port),
		Headers:   []envoy.Header{{Name: "content-type", Value: "application/json"}},
		Body:      [][]byte{fmt.Appendf(nil, `{"model":%q,"stream":true,"max_tokens":%d}`, r.opt.Workload, q.Generated)},
		Attributes: envoy.InboundAttributes(r.opt.Namespace, r.opt.Workload, r.opt.Service,
			a.Pod, a.IP, r.opt.Port),
		ResponseAttributes: envoy.ResponseAttributesFor(a.IP, r.opt.Port, 200),
		Response: envoy.Response{
			Status:       200,
			Headers:      []envoy.Header{{Name: "content-type", Value: "text/event-stream"}},
			Body:         body,
			HeadersDelay: max(0, time.Until(a.Start)) + prefill,
			ChunkDelay:   decode / time.Duration(chunks),
		},
	}
	res := r.client(a.Index).Do(ctx, req)
	r.mu.Lock()
	r.outcomes[res.Outcome.String()]++
	r.mu.Unlock()
	return res.Outcome, nil
}

func (r *Replayer) sseBody(q sim.Request) [][]byte {
	chunks := min(r.opt.MaxChunks, max(1, q.Generated/16))
	body := make([][]byte, chunks)
	for i := range body {
		body[i] = fmt.Appendf(nil, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok%d\"}}]}\n\n", i)
	}
	body[chunks-1] = append(body[chunks-1], "data: [DONE]\n\n"...)
	return body
}

// sendGateway sends one request through the gateway: its ext_proc filter
// may hold it (a workload at zero) or answer it (hold timeout, shed); when
// the filter lets it pass, the router picks a host among the gateway's
// EDS view of the Service at that moment (none: 503 UH) and the fleet
// serves it there.
func (r *Replayer) sendGateway(ctx context.Context, q sim.Request) envoy.Outcome {
	arrival := time.Now()
	svc, prefill := r.fleet.ServiceTime(q)
	n := r.sent.Add(1)
	defer r.done.Add(1)
	body := r.sseBody(q)
	var routed, answered time.Time
	req := &envoy.Request{
		Method: "POST", Path: "/v1/chat/completions",
		Authority:  fmt.Sprintf("%s.%s.svc.cluster.local:%d", r.opt.Service, r.opt.Namespace, r.opt.Port),
		Headers:    []envoy.Header{{Name: "content-type", Value: "application/json"}},
		Body:       [][]byte{fmt.Appendf(nil, `{"model":%q,"stream":true,"max_tokens":%d}`, r.opt.Workload, q.Generated)},
		Attributes: envoy.GatewayAttributes(r.opt.Namespace, r.opt.Service, r.opt.Port),
		Response: envoy.Response{
			Status:  200,
			Headers: []envoy.Header{{Name: "content-type", Value: "text/event-stream"}},
			Body:    body,
		},
	}
	// The router's host selection, when the filter lets the request pass
	// (Request.NoHealthyUpstream is asked exactly then, on Do's
	// goroutine, before the response plan is read).
	req.NoHealthyUpstream = func() bool {
		now := time.Now()
		a, err := r.fleet.RouteAmong(now, svc, r.opt.Gateway.Has)
		if err != nil {
			return true
		}
		routed = now
		req.Response.HeadersDelay = max(0, a.Start.Sub(now)) + prefill
		req.Response.ChunkDelay = (svc - prefill) / time.Duration(len(body))
		answered = now.Add(req.Response.HeadersDelay)
		return false
	}
	// Two gateway replicas when the versions are mixed.
	res := r.client(int(n)).Do(ctx, req)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes[res.Outcome.String()]++
	r.gw.status[res.Status]++
	if res.NoHealthyUpstream {
		r.gw.noHealthy++
		answered = time.Time{}
	}
	if res.FailOpen {
		r.gw.failOpen++
	}
	if res.ImmediateResponse {
		r.gw.immediate++
		switch res.LocalDetails {
		case "inflight_hold_timeout":
			r.gw.holdTimeout++
		case "inflight_shed":
			r.gw.shed++
		}
	}
	if res.TimeoutOverrides > 0 {
		if res.Outcome != envoy.Completed {
			answered = time.Time{}
		}
		r.gw.held = append(r.gw.held, Held{Arrival: arrival, Routed: routed, Answered: answered, Status: res.Status})
	}
	return res.Outcome
}

// Wait waits until every side stream of the requests sent so far is
// closed; call it after the Send calls returned.
func (r *Replayer) Wait() {
	for _, c := range r.clients {
		c.Wait()
	}
}

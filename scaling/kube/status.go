package kube

import (
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// StatusVersion names the JSON contract of GET /v1/status.
const StatusVersion = "inflight.dev/controller-status/v1"

// Status is what GET /v1/status serves: this replica's view, complete on
// the leader (a follower lists no workloads).
type Status struct {
	Version  string    `json:"version"`
	Identity string    `json:"identity"`
	Leader   bool      `json:"leader"`
	Time     time.Time `json:"time"` // of the last tick (zero before the first)
	// Partial is set when the last tick's data was partial.
	Partial bool `json:"partial"`
	// ExtprocEndpoints and ExtprocAnswered count the snapshot sources.
	ExtprocEndpoints int              `json:"extproc_endpoints"`
	ExtprocAnswered  int              `json:"extproc_answered"`
	Workloads        []WorkloadStatus `json:"workloads"`
}

// WorkloadStatus is one managed Deployment.
type WorkloadStatus struct {
	Namespace string `json:"namespace"`
	Workload  string `json:"workload"`
	// Target is the configured in-flight per replica (0 while no valid
	// configuration was ever seen).
	Target float64 `json:"target"`
	// ConfigError is the current annotation error, if any (the last valid
	// configuration stays in force).
	ConfigError string `json:"config_error,omitempty"`
	// Source is where the last tick saw the workload's demand: "inbound"
	// (its pods' sidecars), "edge" (a gateway or callers' outbound
	// sidecars, for the Services that select it), "both" (sidecars count
	// it; the edge adds its held requests), or "" (no demand seen).
	Source     string          `json:"source,omitempty"`
	Last       *DecisionStatus `json:"last_decision,omitempty"`
	LastChange *DecisionStatus `json:"last_change,omitempty"`
}

// DecisionStatus is one decision with the numbers behind it.
type DecisionStatus struct {
	Time            time.Time `json:"time"`
	InFlight        float64   `json:"in_flight"`
	Held            float64   `json:"held"`
	Concurrency     float64   `json:"concurrency"`
	StableDemand    float64   `json:"stable_demand"`
	PanicDemand     float64   `json:"panic_demand"`
	Trend           float64   `json:"trend"`
	PredictedDemand float64   `json:"predicted_demand"`
	Panicking       bool      `json:"panicking"`
	Partial         bool      `json:"partial"`
	Ready           int32     `json:"ready_replicas"`
	Starting        int32     `json:"starting_replicas"`
	Requested       int32     `json:"requested_replicas"`
	Desired         int32     `json:"desired_replicas"`
	ColdStartSec    float64   `json:"cold_start_seconds"`
	Direction       string    `json:"direction"`
	Reason          string    `json:"reason"`
	// Written is set on a change that was written to /scale; From is the
	// replica count it replaced.
	Written bool  `json:"written"`
	From    int32 `json:"from,omitempty"`
}

func decisionStatus(d scaling.Decision, o scaling.Observation, written bool) *DecisionStatus {
	return &DecisionStatus{Time: d.Time, InFlight: o.InFlight + o.Held, Held: o.Held, Concurrency: o.Concurrency,
		StableDemand: d.StableDemand, PanicDemand: d.PanicDemand, Trend: d.Trend,
		PredictedDemand: d.PredictedDemand, Panicking: d.Panicking, Partial: o.Partial,
		Ready: o.Ready, Starting: o.Starting, Requested: o.Requested, Desired: d.Desired,
		ColdStartSec: o.ColdStart.Seconds(), Direction: d.Direction.String(), Reason: d.Reason, Written: written}
}

// publish replaces the served status with this tick's.
func (c *Controller) publish(t *term, res collect.Result, now time.Time) {
	s := Status{Version: StatusVersion, Identity: c.opt.Identity, Leader: true, Time: now,
		Partial: res.Partial, ExtprocEndpoints: res.Endpoints, ExtprocAnswered: res.Answered,
		Workloads: make([]WorkloadStatus, 0, len(t.workloads))}
	for w, st := range t.workloads {
		ws := WorkloadStatus{Namespace: w.Namespace, Workload: w.Name, Last: st.last, LastChange: st.change, Source: st.source}
		if st.cfg != nil {
			ws.Target = st.cfg.Target
		}
		if st.cfgErr != nil {
			ws.ConfigError = st.cfgErr.Error()
		}
		s.Workloads = append(s.Workloads, ws)
	}
	sort.Slice(s.Workloads, func(i, j int) bool {
		a, b := s.Workloads[i], s.Workloads[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Workload < b.Workload
	})
	c.statusMu.Lock()
	c.status = s
	c.statusMu.Unlock()
}

// Status returns the last published status.
func (c *Controller) Status() Status {
	c.statusMu.Lock()
	s := c.status
	c.statusMu.Unlock()
	s.Version, s.Identity = StatusVersion, c.opt.Identity
	s.Leader = c.Leading()
	if !s.Leader {
		s.Workloads = nil
	}
	if s.Workloads == nil {
		s.Workloads = []WorkloadStatus{}
	}
	return s
}

// StatusHandler serves GET /v1/status.
func (c *Controller) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(c.Status())
	})
}

package extproc

import "time"

// SnapshotVersion names the JSON contract served at GET /v1/snapshot. The
// controller refuses documents of another version. Bump it on any change that
// is not a pure addition of optional fields.
const SnapshotVersion = "inflight.dev/snapshot/v1"

// Snapshot is one extproc replica's view of every target it has seen, read
// at one instant. Counters are monotonic for the life of the process (BootID);
// a reader that sees a new BootID must treat the counters as reset.
type Snapshot struct {
	Version string    `json:"version"`
	Replica string    `json:"replica"`
	BootID  string    `json:"boot_id"`
	Time    time.Time `json:"time"`
	// UptimeSeconds is the replica's monotonic clock at Time, in seconds
	// since the process started counting. Differences of UptimeSeconds
	// between two snapshots of one BootID are the exact elapsed time to
	// divide busy-seconds deltas by (wall-clock Time may step).
	UptimeSeconds float64 `json:"uptime_seconds"`
	// Draining is true once the replica got SIGTERM: it still counts the
	// streams Envoy sends it and serves snapshots until it exits, but its
	// records will vanish then. Absent when false.
	Draining bool `json:"draining,omitempty"`
	// Targets is sorted by (namespace, workload, service, pod, reason).
	Targets []TargetRecord `json:"targets"`
}

// TargetRecord holds the counters of one target on one replica.
type TargetRecord struct {
	Namespace string `json:"namespace"`
	Workload  string `json:"workload"`
	Service   string `json:"service"`
	Pod       string `json:"pod"`
	// Reason is empty for a target the request was counted for. Otherwise
	// the record is a catch-all that no workload may be scaled on, and
	// Reason (a mesh.Reason) says why its requests were not attributed:
	// missing or malformed attributes ("no_attributes",
	// "malformed_cluster_name", "no_namespace", "no_workload",
	// "invalid_name", "unsupported_cluster"), a caller whose mesh identity
	// is unknown ("unauthenticated") or may not speak for the claimed
	// namespace ("unauthorized"), or the bound on distinct targets
	// ("overflow"). New values may be added; a reader must treat any
	// non-empty Reason alike.
	Reason string `json:"reason,omitempty"`
	// Source is where the target's requests are seen (mesh.Source):
	// "inbound" (a pod's inbound sidecar; the target has a workload) or
	// "edge" (a gateway or an outbound sidecar; a Service, with no workload
	// or pod). Absent on the catch-all records (Reason set). New values may
	// be added.
	Source string `json:"source,omitempty"`

	InFlight  int64  `json:"in_flight"`
	Started   uint64 `json:"started_total"`
	Completed uint64 `json:"completed_total"`
	// Untracked counts requests that arrived while the replica's
	// open-stream cap was reached: they were answered at once (Envoy went
	// on without the extproc), so they are in no other counter and their
	// time in flight is unknown. Absent when 0.
	Untracked uint64 `json:"untracked_total,omitempty"`
	// Held is the part of InFlight waiting in a hold queue (edge targets
	// whose workload has no ready endpoint; ISSUE12.md). HeldTotal counts
	// every request that was held; each leaves the hold once: Released (let
	// through, still in flight until it ends), HoldTimeouts (answered 503
	// at its hold timeout) or HoldAbandoned (its client went away), so
	// HeldTotal = Held + Released + HoldTimeouts + HoldAbandoned. Shed
	// counts requests answered at once over a limit (429): like untracked
	// ones they are in no other counter. All absent when 0.
	Held          int64  `json:"held,omitempty"`
	HeldTotal     uint64 `json:"held_total,omitempty"`
	Released      uint64 `json:"released_total,omitempty"`
	HoldTimeouts  uint64 `json:"hold_timeouts_total,omitempty"`
	HoldAbandoned uint64 `json:"hold_abandoned_total,omitempty"`
	Shed          uint64 `json:"shed_total,omitempty"`
	// BusySeconds is the integral of InFlight over time (request-seconds)
	// up to Snapshot.Time. Its difference between two snapshots of the same
	// BootID divided by the elapsed time is the exact mean concurrency.
	BusySeconds float64 `json:"busy_seconds_total"`
	// DurationSecondsSum is the sum of the durations of completed requests.
	DurationSecondsSum float64 `json:"duration_seconds_sum"`
	// CreatedUptimeSeconds is the replica's uptime_seconds when this record
	// was created, with all its counters at 0. Records idle (nothing in
	// flight, no change) for the replica's idle TTL are evicted; a later
	// request for the same target creates a new record with a later value,
	// which a reader must treat as a counter reset of that target alone.
	CreatedUptimeSeconds float64 `json:"created_uptime_seconds"`
}

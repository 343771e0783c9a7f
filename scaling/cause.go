package scaling

import "fmt"

// Cause is what determined a decision's replica count: the last step of
// Decide that bound it. Its String is a stable lower_snake label for
// metrics (a bounded set: Causes lists it); Message is one human sentence
// for Events. The detailed numbers are in Decision.Reason.
type Cause uint8

// The causes, in the order in which Decide applies them (a later one
// overrides an earlier one when it changes the count). The labels are part
// of the metric contract: never rename one.
const (
	// CauseNoData: no observation yet; nothing to decide on.
	CauseNoData Cause = iota
	// CauseDemand: the stable-window in-flight over the target.
	CauseDemand
	// CauseTrend: the arrival rate the last seconds prove, times the
	// service time (Little's law), is above the stable demand.
	CauseTrend
	// CauseBurst: burst (panic) mode: the short window sized the count,
	// or the count is held because the policy is in burst mode.
	CauseBurst
	// CauseFalling: in-flight is falling; a scale-up the backlog alone
	// would ask for is suppressed.
	CauseFalling
	// CauseColdStartCap: replicas are starting; the scale-up is capped at
	// what the arrivals need by the time a new replica would be ready.
	CauseColdStartCap
	// CauseScaleDownDelay: a scale-down waits for scale-down-delay.
	CauseScaleDownDelay
	// CauseRateCap: max-scale-up-rate (× the ready replicas: a cap in
	// time) or max-scale-down-rate bound the step.
	CauseRateCap
	// CauseStale: the newest observation is too old: no scale-down.
	CauseStale
	// CausePartial: some data is missing (partial tick): no scale-down.
	CausePartial
	// CauseWarmingUp: less than one window of data since the autoscaler
	// started (a new leader): no scale-down.
	CauseWarmingUp
	// CauseMinReplicas and CauseMaxReplicas: the bounds clamped the count.
	CauseMinReplicas
	CauseMaxReplicas
	// CauseHysteresis: the demand is within Hysteresis of the current
	// count, which is kept.
	CauseHysteresis
	// CauseSLO: the queueing model sized the count so that the predicted
	// p99 queue wait stays within slo-wait.
	CauseSLO
	// CauseForecast: the learned seasonal forecast asks for capacity ahead
	// of a rise seen one period ago.
	CauseForecast
	// CauseWake: the workload is at zero replicas and there is demand (in
	// flight, held or arriving): at least one replica at once.
	CauseWake
	// CauseIdle: min-replicas 0 and no demand for the learned idle
	// period: scale to zero.
	CauseIdle
	numCauses
)

var causeInfo = [numCauses]struct{ label, msg string }{
	CauseNoData:         {"no_data", "no observation yet"},
	CauseDemand:         {"demand", "requests in flight over the target per replica"},
	CauseTrend:          {"trend", "the arrival rate is rising: sized for where in-flight is going"},
	CauseBurst:          {"burst", "burst mode: short-window demand reached the panic threshold"},
	CauseFalling:        {"falling", "in-flight is falling: no scale-up"},
	CauseColdStartCap:   {"cold_start_cap", "replicas are starting: scale-up capped at what arrives by the time they are ready"},
	CauseScaleDownDelay: {"scale_down_delay", "holding for the scale-down delay"},
	CauseRateCap:        {"rate_cap", "capped by max-scale-up-rate (× ready replicas) or max-scale-down-rate"},
	CauseStale:          {"stale", "data is stale: no scale-down"},
	CausePartial:        {"partial", "data is partial: no scale-down"},
	CauseWarmingUp:      {"warming_up", "less than one window of data: no scale-down"},
	CauseMinReplicas:    {"min_replicas", "held at min-replicas"},
	CauseMaxReplicas:    {"max_replicas", "held at max-replicas"},
	CauseHysteresis:     {"hysteresis", "demand within the hysteresis band of the current count: kept"},
	CauseSLO:            {"slo", "sized so the predicted p99 queue wait stays within slo-wait"},
	CauseForecast:       {"forecast", "the learned forecast predicts a rise within two cold starts"},
	CauseWake:           {"wake", "demand at zero replicas: waking the workload"},
	CauseIdle:           {"idle", "no demand for the learned idle period: scaling to zero"},
}

// Causes lists every cause, for pre-creating metric series.
func Causes() []Cause {
	out := make([]Cause, numCauses)
	for i := range out {
		out[i] = Cause(i)
	}
	return out
}

// String returns the cause's metric label (lower_snake, stable).
func (c Cause) String() string {
	if c < numCauses {
		return causeInfo[c].label
	}
	return fmt.Sprintf("cause_%d", uint8(c))
}

// Message returns one human sentence for Events.
func (c Cause) Message() string {
	if c < numCauses {
		return causeInfo[c].msg
	}
	return c.String()
}

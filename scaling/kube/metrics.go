package kube

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inflight-dev/inflight/scaling"
	"github.com/inflight-dev/inflight/scaling/collect"
)

// Metrics are the controller's Prometheus metrics (prefix inflight_controller_).
type Metrics struct {
	desired, current, ready, starting  *prometheus.GaugeVec
	inFlight, concurrency              *prometheus.GaugeVec
	stable, panicDemand, trend, panicG *prometheus.GaugeVec
	configInvalid                      *prometheus.GaugeVec
	target, minReplicas, maxReplicas   *prometheus.GaugeVec
	coldStart                          *prometheus.GaugeVec
	invalidConfigs                     prometheus.Counter
	decisions                          *prometheus.CounterVec
	scaleWrites                        *prometheus.CounterVec
	scaleConflicts                     prometheus.Counter
	scrapeErrors                       *prometheus.CounterVec
	scrapeDuration                     prometheus.Histogram
	tickDuration                       prometheus.Histogram
	partial                            prometheus.Gauge
	unattributed                       prometheus.Gauge
	endpoints                          *prometheus.GaugeVec
	leader                             prometheus.Gauge
	skipped                            *prometheus.GaugeVec // hpa.go
	unmapped                           prometheus.Gauge
	gates                              prometheus.Gauge // gates.go
	gatesPushes                        *prometheus.CounterVec
	gatesImmediate, wakeTicks          prometheus.Counter
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	wl := []string{"namespace", "workload"}
	g := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "inflight", Subsystem: "controller", Name: name, Help: help}, wl)
	}
	m := &Metrics{
		desired:       g("desired_replicas", "Replicas the policy decided on the last tick."),
		current:       g("current_replicas", "spec.replicas of the workload as last observed or written."),
		ready:         g("ready_replicas", "Ready pods of the workload."),
		starting:      g("starting_replicas", "Pods of the workload that exist but are not ready yet."),
		inFlight:      g("in_flight", "Requests in flight now, summed over every extproc replica."),
		concurrency:   g("concurrency", "Mean requests in flight over the last tick (busy-seconds delta / elapsed)."),
		stable:        g("stable_demand", "Time-averaged in-flight over the stable window."),
		panicDemand:   g("panic_demand", "Time-averaged in-flight over the panic window."),
		trend:         g("trend", "Least-squares slope of in-flight over the panic window (requests/s)."),
		panicG:        g("panic", "1 while the workload is in burst (panic) mode."),
		target:        g("target", "Requests in flight per replica to aim for (inflight.dev/target in force)."),
		minReplicas:   g("min_replicas", "Lower replica bound in force."),
		maxReplicas:   g("max_replicas", "Upper replica bound in force."),
		coldStart:     g("cold_start_seconds", "Cold start the policy plans with: the annotation, else the learned pod created → Ready time, else 0 (the policy's 120 s default)."),
		configInvalid: g("config_invalid", "1 while the workload's inflight.dev/ annotations are invalid (the last valid configuration stays in force)."),
		invalidConfigs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "invalid_configs_total", Help: "Invalid annotation sets seen (each distinct invalid set counts once)."}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "decisions_total", Help: "Policy decisions by direction (up, down, hold) and reason (the policy's typed cause: no_data, demand, trend, burst, ...)."}, []string{"direction", "reason"}),
		scaleWrites: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "scale_writes_total", Help: "Writes of spec.replicas through the scale subresource by result (ok, error)."}, []string{"result"}),
		scaleConflicts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "scale_conflicts_total", Help: "Scale subresource updates that hit a Conflict and were retried."}),
		scrapeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "snapshot_errors_total", Help: "Failed extproc snapshot fetches by kind (timeout, connect, http-status, decode, version) and snapshots rejected for impossible numbers (invalid)."}, []string{"kind"}),
		scrapeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "snapshot_duration_seconds", Help: "Duration of one extproc snapshot fetch.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}}),
		tickDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "tick_duration_seconds", Help: "Duration of one controller tick (collect, decide, write).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		partial: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "data_partial", Help: "1 when the last tick's data was partial for every workload (an extproc replica did not answer, was rejected or vanished within --expire, a global overflow target was active, or none was listed)."}),
		unattributed: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "unattributed_in_flight", Help: "Requests in flight that snapshots reported for a workload from a pod that is not a live pod of it (stale or forged claims), last tick: counted for nobody."}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "extproc_endpoints", Help: "extproc replicas on the last tick, by state (answered; failed: no answer or a rejected snapshot; vanished: no longer listed, last values still counted)."}, []string{"state"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "is_leader", Help: "1 while this controller replica holds the Lease."}),
		unmapped: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "unmapped_edge_in_flight", Help: "Requests in flight that edge targets (gateways, outbound sidecars) reported for a Service that selects no Deployment, last tick: counted for nobody."}),
		gates: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "gates", Help: "Entries of the gate table last sent to the extproc replicas (PUT /v1/gates: holding at zero, max-queue)."}),
		gatesPushes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "gates_pushes_total", Help: "Gate tables sent to an extproc replica, by result (ok; timeout, connect, http-status: not taken; invalid: not sent, a controller bug). A failure is never fatal: the extproc fails open when its table expires."}, []string{"result"}),
		gatesImmediate: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "gates_immediate_total", Help: "Gate pushes between ticks because a model Service's ready endpoints went from 0 to more."}),
		wakeTicks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "inflight", Subsystem: "controller",
			Name: "wake_ticks_total", Help: "Ticks run at once, between ticks, because an extproc replica held the first request for a Service with no ready endpoint (GET /v1/gates/wake)."}),
	}
	reg.MustRegister(m.desired, m.current, m.ready, m.starting, m.inFlight, m.concurrency,
		m.stable, m.panicDemand, m.trend, m.panicG, m.configInvalid, m.invalidConfigs,
		m.target, m.minReplicas, m.maxReplicas, m.coldStart,
		m.decisions, m.scaleWrites, m.scaleConflicts, m.scrapeErrors, m.scrapeDuration,
		m.tickDuration, m.partial, m.unattributed, m.endpoints, m.leader,
		m.gates, m.gatesPushes, m.gatesImmediate, m.wakeTicks, m.unmapped)
	m.skipped = skippedMetric(reg)
	return m
}

var _ collect.Observer = (*Metrics)(nil)

// Fetched implements collect.Observer.
func (m *Metrics) Fetched(kind string, d time.Duration) {
	m.scrapeDuration.Observe(d.Seconds())
	if kind != "" {
		m.scrapeErrors.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) workload(w collect.Workload, cfg scaling.Config, o scaling.Observation, d scaling.Decision) {
	l := []string{w.Namespace, w.Name}
	m.target.WithLabelValues(l...).Set(cfg.Target)
	m.minReplicas.WithLabelValues(l...).Set(float64(cfg.MinReplicas))
	m.maxReplicas.WithLabelValues(l...).Set(float64(cfg.MaxReplicas))
	cs := cfg.ColdStart
	if cs == 0 {
		cs = o.ColdStart
	}
	m.coldStart.WithLabelValues(l...).Set(cs.Seconds())
	m.desired.WithLabelValues(l...).Set(float64(d.Desired))
	m.current.WithLabelValues(l...).Set(float64(o.Requested))
	m.ready.WithLabelValues(l...).Set(float64(o.Ready))
	m.starting.WithLabelValues(l...).Set(float64(o.Starting))
	m.inFlight.WithLabelValues(l...).Set(o.InFlight)
	m.concurrency.WithLabelValues(l...).Set(o.Concurrency)
	m.stable.WithLabelValues(l...).Set(d.StableDemand)
	m.panicDemand.WithLabelValues(l...).Set(d.PanicDemand)
	m.trend.WithLabelValues(l...).Set(d.Trend)
	p := 0.0
	if d.Panicking {
		p = 1
	}
	m.panicG.WithLabelValues(l...).Set(p)
	m.decisions.WithLabelValues(d.Direction.String(), d.Cause.String()).Inc()
}

func (m *Metrics) forget(w collect.Workload) {
	for _, v := range []*prometheus.GaugeVec{m.desired, m.current, m.ready, m.starting, m.inFlight,
		m.concurrency, m.stable, m.panicDemand, m.trend, m.panicG, m.configInvalid,
		m.target, m.minReplicas, m.maxReplicas, m.coldStart} {
		v.DeleteLabelValues(w.Namespace, w.Name)
	}
}

func (m *Metrics) setInvalid(w collect.Workload, invalid bool) {
	v := 0.0
	if invalid {
		v = 1
	}
	m.configInvalid.WithLabelValues(w.Namespace, w.Name).Set(v)
}

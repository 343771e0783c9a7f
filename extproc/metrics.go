package extproc

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the extproc's Prometheus metrics. The per-target series are
// read from the Tracker at scrape time, so the hot path pays nothing for them.
type Metrics struct {
	open         atomic.Int64 // streams in Process now
	maxOpen      atomic.Int64 // the server's cap (0: none)
	overReaders  atomic.Int64 // over-limit streams waiting for their first message
	held         atomic.Int64 // requests in a hold queue (Gates)
	maxHeld      atomic.Int64 // the gates' cap on held requests
	epoch        time.Time
	now          func() time.Time          // the clock of gates_age_seconds
	gatesAt      atomic.Pointer[time.Time] // when the last gate table was accepted (nil: none yet)
	gatesEntries atomic.Int64              // entries of the gates in force (0: none)

	streamsActive prometheus.GaugeFunc
	maxStreams    prometheus.GaugeFunc
	ends          [numEndCauses]prometheus.Counter
	noResponse    [numEndCauses]prometheus.Counter
	noStart       [numEndCauses]prometheus.Counter
	overLimit     [numOverLimit]prometheus.Counter
	streamErrors  *prometheus.CounterVec
	endsVec       *prometheus.CounterVec
	noResponseVec *prometheus.CounterVec
	noStartVec    *prometheus.CounterVec
	overLimitVec  *prometheus.CounterVec
	evicted       prometheus.Counter

	gatesAge      prometheus.GaugeFunc
	gatesGauge    prometheus.GaugeFunc
	heldGauge     prometheus.GaugeFunc
	maxHeldGauge  prometheus.GaugeFunc
	gatesExpired  prometheus.Counter
	gatesRejected prometheus.Counter
	releases      [numReleaseCauses]prometheus.Counter
	shedBy        [numShedLimits]prometheus.Counter
	releasesVec   *prometheus.CounterVec
	shedByVec     *prometheus.CounterVec
}

// How a stream opened beyond the open-stream cap was handled. Values index
// Metrics.overLimit.
const (
	overUntracked = iota // its request_headers read and counted as untracked
	overNotRead          // closed without a request counted
	numOverLimit
)

func newMetrics() *Metrics {
	m := &Metrics{
		epoch: time.Now(),
		now:   time.Now,
		streamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inflight_extproc_stream_errors_total",
			Help: "ext_proc streams that ended with an error other than EOF or cancellation, by gRPC code.",
		}, []string{"code"}),
		endsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inflight_extproc_request_ends_total",
			Help: "Requests ended, by the signal that ended them.",
		}, []string{"cause"}),
		noResponseVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inflight_extproc_requests_without_response_total",
			Help: "Requests whose stream ended before any response message reached the extproc (Envoy's message timeout or gRPC error, a local reply not sent to ext_proc, a client abort before the response), by how the stream ended.",
		}, []string{"cause"}),
		noStartVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inflight_extproc_streams_without_request_headers_total",
			Help: "Streams that ended without request_headers, so nothing was counted for them, by how the stream ended.",
		}, []string{"cause"}),
		overLimitVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inflight_extproc_streams_over_limit_total",
			Help: "Streams opened while --max-open-streams were open, answered at once: untracked (request counted in untracked_total) or not_read.",
		}, []string{"handled"}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "inflight_extproc_targets_evicted_total",
			Help: "Target records evicted after --target-idle-ttl with nothing in flight and no change.",
		}),
		gatesExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "inflight_extproc_gates_expired_total",
			Help: "Times the gate table expired without a newer PUT /v1/gates: every held request was released and nothing was shed until the next one (fail-open).",
		}),
		gatesRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "inflight_extproc_gates_rejected_total",
			Help: "PUT /v1/gates documents refused as invalid (400); the table in force stays.",
		}),
		releasesVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inflight_extproc_hold_releases_total",
			Help: "Held requests released (CONTINUE), by cause: ready (the gate reports ready endpoints; paced), or fail-open: expired (the gate table expired), no_gate (the gate was removed or stopped holding), shutdown.",
		}, []string{"cause"}),
		shedByVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inflight_extproc_shed_by_limit_total",
			Help: "Requests shed (429), by the limit they met: max_in_flight or max_held (the gate's, this replica's share) or extproc_max_held (--max-held).",
		}, []string{"limit"}),
	}
	m.streamsActive = gaugeOf(&m.open, "inflight_extproc_streams_active",
		"ext_proc gRPC streams open now (including those answered at once over the cap).")
	m.maxStreams = gaugeOf(&m.maxOpen, "inflight_extproc_max_open_streams",
		"The open-stream cap (--max-open-streams); 0 means none.")
	m.gatesAge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "inflight_extproc_gates_age_seconds",
		Help: "Seconds since the last accepted PUT /v1/gates (since the process started if none was).",
	}, m.gatesAgeSeconds)
	m.gatesGauge = gaugeOf(&m.gatesEntries, "inflight_extproc_gates",
		"Entries of the gate table in force; 0 when none is (never received, expired or shutting down).")
	m.heldGauge = gaugeOf(&m.held, "inflight_extproc_held_requests",
		"Requests held now on this replica, all Services (per Service: inflight_extproc_held).")
	m.maxHeldGauge = gaugeOf(&m.maxHeld, "inflight_extproc_max_held",
		"The cap on held requests (--max-held); beyond it a request for a Service at zero is shed.")
	for c := range numReleaseCauses {
		m.releases[c] = m.releasesVec.WithLabelValues(releaseCauseNames[c])
	}
	for l := range numShedLimits {
		m.shedBy[l] = m.shedByVec.WithLabelValues(shedLimitNames[l])
	}
	unregistered := prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"})
	for c := range numEndCauses {
		m.ends[c] = m.endsVec.WithLabelValues(endCauseNames[c])
		m.noResponse[c] = unregistered
	}
	for c := range endHoldTimeout { // a hold timeout ends a started request
		m.noStart[c] = m.noStartVec.WithLabelValues(endCauseNames[c])
	}
	m.noStart[endHoldTimeout] = unregistered
	// A request without a response message can only end by its stream's end.
	for _, c := range []endCause{endStreamEOF, endCanceled, endStreamErr} {
		m.noResponse[c] = m.noResponseVec.WithLabelValues(endCauseNames[c])
	}
	m.overLimit[overUntracked] = m.overLimitVec.WithLabelValues("untracked")
	m.overLimit[overNotRead] = m.overLimitVec.WithLabelValues("not_read")
	return m
}

// gatesAgeSeconds is the seconds since the last accepted gate table, or
// since the metrics were made if none was: gates_age_seconds, and the age
// GET /v1/gates reports.
func (m *Metrics) gatesAgeSeconds() float64 {
	if t := m.gatesAt.Load(); t != nil {
		return m.now().Sub(*t).Seconds()
	}
	return m.now().Sub(m.epoch).Seconds()
}

// gaugeOf is a gauge that reads v at scrape time.
func gaugeOf(v *atomic.Int64, name, help string) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) })
}

// NewMetrics creates the metrics and registers them, and a collector of the
// tracker's per-target series, with reg.
func NewMetrics(reg prometheus.Registerer, tr *Tracker) (*Metrics, error) {
	m := newMetrics()
	for _, c := range []prometheus.Collector{m.streamsActive, m.maxStreams, m.streamErrors, m.endsVec,
		m.noResponseVec, m.noStartVec, m.overLimitVec, m.evicted, m.gatesAge, m.gatesGauge, m.heldGauge, m.maxHeldGauge,
		m.gatesExpired, m.gatesRejected, m.releasesVec, m.shedByVec, &trackerCollector{tr: tr}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// OpenStreams is the number of streams in Process now.
func (m *Metrics) OpenStreams() int64 { return m.open.Load() }

// Evicted counts target records evicted by Tracker.Sweep.
func (m *Metrics) Evicted(n int) { m.evicted.Add(float64(n)) }

var targetLabels = []string{"namespace", "workload", "service", "pod", "reason"}

var (
	descInFlight = prometheus.NewDesc("inflight_requests_in_flight",
		"Requests in flight now, per target.", targetLabels, nil)
	descStarted = prometheus.NewDesc("inflight_requests_started_total",
		"Requests started, per target.", targetLabels, nil)
	descCompleted = prometheus.NewDesc("inflight_requests_completed_total",
		"Requests ended, per target (completed, aborted or reset).", targetLabels, nil)
	descBusy = prometheus.NewDesc("inflight_busy_seconds_total",
		"Integral of requests in flight over time (request-seconds), per target; its rate is the mean concurrency.", targetLabels, nil)
	descDuration = prometheus.NewDesc("inflight_request_duration_seconds",
		"Duration of ended requests, from request headers to the end of the response or the stream.", targetLabels, nil)
	descUntracked = prometheus.NewDesc("inflight_requests_untracked_total",
		"Requests that arrived while the open-stream cap was reached, per target: answered at once, not in any other counter (exported once non-zero).", targetLabels, nil)
	descHeld = prometheus.NewDesc("inflight_extproc_held",
		"Requests held now (part of inflight_requests_in_flight), per target: edge requests for a workload with no ready endpoint (exported once a request was held).", targetLabels, nil)
	descHeldTotal = prometheus.NewDesc("inflight_extproc_held_total",
		"Requests held, per target; each leaves the hold once: released, hold timeout or abandoned.", targetLabels, nil)
	descReleased = prometheus.NewDesc("inflight_extproc_released_total",
		"Held requests released (CONTINUE), per target.", targetLabels, nil)
	descHoldTimeouts = prometheus.NewDesc("inflight_extproc_hold_timeouts_total",
		"Held requests answered 503 with Retry-After at their hold timeout, per target.", targetLabels, nil)
	descHoldAbandoned = prometheus.NewDesc("inflight_extproc_hold_abandoned_total",
		"Held requests whose client went away while held, per target.", targetLabels, nil)
	descShed = prometheus.NewDesc("inflight_extproc_shed_total",
		"Requests shed (answered 429 with Retry-After over a limit), per target; in no other counter (exported once non-zero).", targetLabels, nil)
	descTargets = prometheus.NewDesc("inflight_extproc_targets",
		"Target records tracked (bounded by --max-targets and --max-targets-per-namespace; beyond them requests count under reason=\"overflow\" or \"namespace_overflow\").", nil, nil)
)

// trackerCollector exports the tracker's records at scrape time.
type trackerCollector struct{ tr *Tracker }

func (c *trackerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInFlight, descStarted, descCompleted, descBusy, descDuration, descUntracked, descTargets,
		descHeld, descHeldTotal, descReleased, descHoldTimeouts, descHoldAbandoned, descShed} {
		ch <- d
	}
}

func (c *trackerCollector) Collect(ch chan<- prometheus.Metric) {
	recs := c.tr.Records()
	bounds := c.tr.Buckets()
	ch <- prometheus.MustNewConstMetric(descTargets, prometheus.GaugeValue, float64(len(recs)))
	for _, r := range recs {
		lv := []string{r.Namespace, r.Workload, r.Service, r.Pod, r.Reason}
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(r.InFlight), lv...)
		ch <- prometheus.MustNewConstMetric(descStarted, prometheus.CounterValue, float64(r.Started), lv...)
		ch <- prometheus.MustNewConstMetric(descCompleted, prometheus.CounterValue, float64(r.Completed), lv...)
		ch <- prometheus.MustNewConstMetric(descBusy, prometheus.CounterValue, r.BusySeconds, lv...)
		if r.Untracked > 0 {
			ch <- prometheus.MustNewConstMetric(descUntracked, prometheus.CounterValue, float64(r.Untracked), lv...)
		}
		if r.HeldTotal > 0 {
			ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(r.Held), lv...)
			ch <- prometheus.MustNewConstMetric(descHeldTotal, prometheus.CounterValue, float64(r.HeldTotal), lv...)
			ch <- prometheus.MustNewConstMetric(descReleased, prometheus.CounterValue, float64(r.Released), lv...)
			ch <- prometheus.MustNewConstMetric(descHoldTimeouts, prometheus.CounterValue, float64(r.HoldTimeouts), lv...)
			ch <- prometheus.MustNewConstMetric(descHoldAbandoned, prometheus.CounterValue, float64(r.HoldAbandoned), lv...)
		}
		if r.Shed > 0 {
			ch <- prometheus.MustNewConstMetric(descShed, prometheus.CounterValue, float64(r.Shed), lv...)
		}
		cum := make(map[float64]uint64, len(bounds))
		var n uint64
		for i, b := range bounds {
			n += r.BucketCounts[i]
			cum[b] = n
		}
		ch <- prometheus.MustNewConstHistogram(descDuration, r.Completed, r.DurationSecondsSum, cum, lv...)
	}
}

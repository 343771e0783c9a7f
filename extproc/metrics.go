package extproc

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the extproc's Prometheus metrics. The per-target series are
// read from the Tracker at scrape time, so the hot path pays nothing for them.
type Metrics struct {
	open        atomic.Int64 // streams in Process now
	maxOpen     atomic.Int64 // the server's cap (0: none)
	overReaders atomic.Int64 // over-limit streams waiting for their first message

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
	}
	m.streamsActive = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "inflight_extproc_streams_active",
		Help: "ext_proc gRPC streams open now (including those answered at once over the cap).",
	}, func() float64 { return float64(m.open.Load()) })
	m.maxStreams = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "inflight_extproc_max_open_streams",
		Help: "The open-stream cap (--max-open-streams); 0 means none.",
	}, func() float64 { return float64(m.maxOpen.Load()) })
	unregistered := prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"})
	for c := range numEndCauses {
		m.ends[c] = m.endsVec.WithLabelValues(endCauseNames[c])
		m.noResponse[c] = unregistered
	}
	for c := range numEndCauses {
		m.noStart[c] = m.noStartVec.WithLabelValues(endCauseNames[c])
	}
	// A request without a response message can only end by its stream's end.
	for _, c := range []endCause{endStreamEOF, endCanceled, endStreamErr} {
		m.noResponse[c] = m.noResponseVec.WithLabelValues(endCauseNames[c])
	}
	m.overLimit[overUntracked] = m.overLimitVec.WithLabelValues("untracked")
	m.overLimit[overNotRead] = m.overLimitVec.WithLabelValues("not_read")
	return m
}

// NewMetrics creates the metrics and registers them, and a collector of the
// tracker's per-target series, with reg.
func NewMetrics(reg prometheus.Registerer, tr *Tracker) (*Metrics, error) {
	m := newMetrics()
	for _, c := range []prometheus.Collector{m.streamsActive, m.maxStreams, m.streamErrors, m.endsVec,
		m.noResponseVec, m.noStartVec, m.overLimitVec, m.evicted, &trackerCollector{tr: tr}} {
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
	descTargets = prometheus.NewDesc("inflight_extproc_targets",
		"Target records tracked (bounded by --max-targets and --max-targets-per-namespace; beyond them requests count under reason=\"overflow\" or \"namespace_overflow\").", nil, nil)
)

// trackerCollector exports the tracker's records at scrape time.
type trackerCollector struct{ tr *Tracker }

func (c *trackerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInFlight, descStarted, descCompleted, descBusy, descDuration, descUntracked, descTargets} {
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
		cum := make(map[float64]uint64, len(bounds))
		var n uint64
		for i, b := range bounds {
			n += r.BucketCounts[i]
			cum[b] = n
		}
		ch <- prometheus.MustNewConstHistogram(descDuration, r.Completed, r.DurationSecondsSum, cum, lv...)
	}
}

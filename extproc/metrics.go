package extproc

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the extproc's Prometheus metrics. The per-target series are
// read from the Tracker at scrape time, so the hot path pays nothing for them.
type Metrics struct {
	streamsActive prometheus.Gauge
	ends          [numEndCauses]prometheus.Counter
	streamErrors  *prometheus.CounterVec
	endsVec       *prometheus.CounterVec
}

func newMetrics() *Metrics {
	m := &Metrics{
		streamsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "inflight_extproc_streams_active",
			Help: "ext_proc gRPC streams open now.",
		}),
		streamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inflight_extproc_stream_errors_total",
			Help: "ext_proc streams that ended with an error other than EOF or cancellation, by gRPC code.",
		}, []string{"code"}),
		endsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inflight_extproc_request_ends_total",
			Help: "Requests ended, by the signal that ended them.",
		}, []string{"cause"}),
	}
	for c := range numEndCauses {
		m.ends[c] = m.endsVec.WithLabelValues(endCauseNames[c])
	}
	return m
}

// NewMetrics creates the metrics and registers them, and a collector of the
// tracker's per-target series, with reg.
func NewMetrics(reg prometheus.Registerer, tr *Tracker) (*Metrics, error) {
	m := newMetrics()
	for _, c := range []prometheus.Collector{m.streamsActive, m.streamErrors, m.endsVec, &trackerCollector{tr: tr}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

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
	descTargets = prometheus.NewDesc("inflight_extproc_targets",
		"Distinct targets tracked (bounded by --max-targets; beyond it requests count under reason=\"overflow\").", nil, nil)
)

// trackerCollector exports the tracker's records at scrape time.
type trackerCollector struct{ tr *Tracker }

func (c *trackerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInFlight, descStarted, descCompleted, descBusy, descDuration, descTargets} {
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
		cum := make(map[float64]uint64, len(bounds))
		var n uint64
		for i, b := range bounds {
			n += r.BucketCounts[i]
			cum[b] = n
		}
		ch <- prometheus.MustNewConstHistogram(descDuration, r.Completed, r.DurationSecondsSum, cum, lv...)
	}
}

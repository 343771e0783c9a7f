package extproc

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Admin serves the admin HTTP port: /v1/snapshot, /metrics, /healthz and
// /readyz. It must not be exposed outside the cluster (see deploy/).
type Admin struct {
	Tracker  *Tracker
	Replica  string
	BootID   string
	Gatherer prometheus.Gatherer
	// Ready is reported by /readyz; the binary clears it when draining.
	Ready *atomic.Bool
	// Wall is the wall clock for Snapshot.Time; nil means time.Now.
	Wall func() time.Time
	// Draining is reported in snapshots; the binary sets it on SIGTERM.
	Draining *atomic.Bool
}

// NewBootID returns a random identifier for one process start.
func NewBootID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error
	return hex.EncodeToString(b)
}

// Snapshot reads every target now.
func (a *Admin) Snapshot() Snapshot {
	wall := a.Wall
	if wall == nil {
		wall = time.Now
	}
	s := Snapshot{
		Version:       SnapshotVersion,
		Replica:       a.Replica,
		BootID:        a.BootID,
		Time:          wall().UTC(),
		UptimeSeconds: a.Tracker.Uptime().Seconds(),
		Draining:      a.Draining != nil && a.Draining.Load(),
		Targets:       []TargetRecord{},
	}
	for _, r := range a.Tracker.Records() {
		s.Targets = append(s.Targets, r.TargetRecord)
	}
	return s
}

// At most this many /v1/snapshot and /metrics responses are built at once;
// more get 503 with Retry-After at once. Each holds every target's data
// until written (README, Security → Limits), so this bounds the admin
// port's memory whatever the number of readers.
const (
	maxSnapshotsInFlight = 4
	maxScrapesInFlight   = 2
)

// Handler returns the admin HTTP handler.
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	snapshots := make(chan struct{}, maxSnapshotsInFlight)
	mux.HandleFunc("GET /v1/snapshot", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case snapshots <- struct{}{}:
			defer func() { <-snapshots }()
		default:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "too many snapshot reads at once", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(a.Snapshot())
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.Gatherer, promhttp.HandlerOpts{MaxRequestsInFlight: maxScrapesInFlight}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.Ready != nil && !a.Ready.Load() {
			http.Error(w, "not ready: draining or starting", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

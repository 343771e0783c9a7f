package extproc

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Admin serves the admin HTTP port: /v1/snapshot, /metrics, /healthz,
// /readyz and, with Gates, PUT and GET /v1/gates and GET /v1/gates/wake. It
// must not be exposed outside the cluster (see deploy/): only the leading
// controller may send gates.
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
	// Gates, if set, are what PUT /v1/gates updates.
	Gates *Gates
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
	// Only the leading controller sends gates; two at once allow a leader
	// change, and bound the documents decoded at once.
	maxGatePutsInFlight = 2
	// maxWakeWaitsInFlight bounds the GET /v1/gates/wake waits: one per
	// controller replica at most is expected.
	maxWakeWaitsInFlight = 8
	// MaxWakeWait is the longest GET /v1/gates/wake wait, below the admin
	// server's 30 s write timeout.
	MaxWakeWait = 20 * time.Second
)

// Handler returns the admin HTTP handler.
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/snapshot", limited(maxSnapshotsInFlight, "too many snapshot reads at once", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(a.Snapshot())
	}))
	if a.Gates != nil {
		mux.HandleFunc("PUT /v1/gates", limited(maxGatePutsInFlight, "too many gate documents at once", func(w http.ResponseWriter, r *http.Request) {
			doc, status, err := decodeGates(w, r)
			if err == nil {
				status = http.StatusBadRequest
				if err = a.Gates.Apply(doc); errors.Is(err, ErrGatesClosed) {
					status = http.StatusServiceUnavailable
				}
			}
			if err != nil {
				http.Error(w, "PUT /v1/gates: "+err.Error(), status)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}))
		mux.HandleFunc("GET /v1/gates/wake", limited(maxWakeWaitsInFlight, "too many wake waits at once", a.serveWake))
		mux.HandleFunc("GET /v1/gates", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			_ = json.NewEncoder(w).Encode(a.Gates.Status())
		})
	}
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

// limited serves h at most n at a time; beyond that it answers 503 with
// Retry-After and busy, so slow or piled-up callers cannot hold memory.
func limited(n int, busy string, h http.HandlerFunc) http.HandlerFunc {
	sem := make(chan struct{}, n)
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
		default:
			w.Header().Set("Retry-After", "1")
			http.Error(w, busy, http.StatusServiceUnavailable)
			return
		}
		h(w, r)
	}
}

// WakeStatus is what GET /v1/gates/wake answers.
type WakeStatus struct {
	// Wakes counts the requests held first at a gate with no ready
	// endpoint since the process started.
	Wakes uint64 `json:"wakes"`
}

// serveWake answers GET /v1/gates/wake?after=N&wait=D once more than N
// wakes happened, or after D (at most MaxWakeWait; without after: at
// once). The leading controller waits here to wake a workload at zero as
// soon as a request is held for it, not at its next tick.
func (a *Admin) serveWake(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	wait := time.Duration(0)
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			http.Error(w, fmt.Sprintf("after=%q: want a count ≥ 0", v), http.StatusBadRequest)
			return
		}
		after, wait = n, MaxWakeWait
	}
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > MaxWakeWait {
			http.Error(w, fmt.Sprintf("wait=%q: want a duration from 0s to %v", v, MaxWakeWait), http.StatusBadRequest)
			return
		}
		wait = d
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(WakeStatus{Wakes: a.Gates.WaitWake(ctx, after)})
}

// decodeGates reads a PUT /v1/gates body of at most MaxGatesBytes (413
// beyond), one JSON object and nothing after it (400 otherwise, naming the
// field when the JSON has the wrong type). Unknown fields are ignored.
func decodeGates(w http.ResponseWriter, r *http.Request) (*GatesDocument, int, error) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxGatesBytes))
	var doc GatesDocument
	err := dec.Decode(&doc)
	if err == nil && dec.More() {
		err = errors.New("data after the JSON document")
	}
	var tooLarge *http.MaxBytesError
	var typeErr *json.UnmarshalTypeError
	var fieldErr gatesFieldError
	switch {
	case err == nil:
		return &doc, 0, nil
	case errors.As(err, &tooLarge):
		return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("body larger than %d bytes", MaxGatesBytes)
	case errors.As(err, &fieldErr):
		return nil, http.StatusBadRequest, fieldErr
	case errors.As(err, &typeErr):
		return nil, http.StatusBadRequest, fmt.Errorf("%s: want a JSON %s, got %s", typeErr.Field, typeErr.Type, typeErr.Value)
	default:
		return nil, http.StatusBadRequest, fmt.Errorf("invalid JSON: %w", err)
	}
}

// PutGates sends doc to an extproc's admin server at base
// ("http://host:port"), as the leading controller does each tick. It
// returns the server's message for a refused document.
func PutGates(ctx context.Context, c *http.Client, base string, doc *GatesDocument) error {
	body, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, base+"/v1/gates", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("PUT %s/v1/gates: %s: %s", base, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

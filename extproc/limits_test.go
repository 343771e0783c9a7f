package extproc

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inflight-dev/inflight/mesh"
	"github.com/inflight-dev/inflight/test/envoy"
)

// TestOverLimitStreamsAnsweredAtOnce: beyond MaxOpenStreams a new stream is
// answered at once and closed with OK (Envoy proceeds, nothing fails) and
// its request counted as untracked; the held streams are unaffected, and
// once they end new streams are tracked again.
func TestOverLimitStreamsAnsweredAtOnce(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	m := newMetrics()
	addr := serveProc(t, tr, ServerOptions{Metrics: m, MaxOpenStreams: 3})
	c, err := envoy.NewClient(envoy.Config{Profile: envoy.Control, Version: envoy.Envoy136, MessageTimeout: 10 * time.Second}, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	held := make(chan struct{}, 3)
	release := make(chan struct{})
	results := make(chan *envoy.Result, 3)
	for range 3 {
		go func() {
			results <- c.Do(context.Background(), &envoy.Request{Attributes: podA,
				Response: envoy.Response{Body: [][]byte{[]byte("a"), []byte("b")}},
				OnResponseChunk: func(i int, _ *envoy.Result) {
					if i == 1 {
						held <- struct{}{}
						<-release
					}
				}})
		}()
	}
	for range 3 {
		<-held
	}
	for range 5 {
		r := c.Do(context.Background(), &envoy.Request{Attributes: podB})
		if r.FailOpen || r.Status != 200 || len(r.Replies) == 0 {
			t.Fatalf("over the cap: want an immediate CONTINUE and the request served, got fail-open %v (%v), status %d, %d replies",
				r.FailOpen, r.ProcessorErr, r.Status, len(r.Replies))
		}
	}
	b := recordOf(t, tr, mesh.Target{Namespace: "team-b", Workload: "vllm", Service: "vllm", Pod: podB[mesh.AttrPod].(string)}, mesh.ReasonNone)
	if b.Untracked != 5 || b.Started != 0 || b.InFlight != 0 {
		t.Fatalf("over-cap requests: %+v; want 5 untracked and nothing else", b.TargetRecord)
	}
	if a := recordOf(t, tr, mesh.Target{Namespace: "team-a", Workload: "chat", Service: "chat", Pod: podA[mesh.AttrPod].(string)}, mesh.ReasonNone); a.InFlight != 3 {
		t.Fatalf("held streams: %+v", a.TargetRecord)
	}
	close(release)
	for range 3 {
		if r := <-results; r.FailOpen {
			t.Fatalf("held stream failed: %v", r.ProcessorErr)
		}
	}
	c.Wait()
	// The client saw its streams close; the server's handlers return a
	// moment later.
	for deadline := time.Now().Add(10 * time.Second); m.open.Load() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still open on the server", m.open.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if r := c.Do(context.Background(), &envoy.Request{Attributes: podB}); r.FailOpen {
		t.Fatal(r.ProcessorErr)
	}
	c.Wait()
	b = recordOf(t, tr, mesh.Target{Namespace: "team-b", Workload: "vllm", Service: "vllm", Pod: podB[mesh.AttrPod].(string)}, mesh.ReasonNone)
	if b.Started != 1 || b.Completed != 1 || b.Untracked != 5 {
		t.Fatalf("below the cap again: %+v", b.TargetRecord)
	}
	checkDrained(t, tr)
}

// blockedWriter is a ResponseWriter whose Write blocks until released: a
// slow reader holding a response.
type blockedWriter struct {
	*httptest.ResponseRecorder
	writing chan struct{}
	release chan struct{}
	once    sync.Once
}

func (w *blockedWriter) Write(b []byte) (int, error) {
	w.once.Do(func() { close(w.writing) })
	<-w.release
	return w.ResponseRecorder.Write(b)
}

// TestAdminBoundsConcurrentReads: however many readers hold responses, at
// most maxSnapshotsInFlight snapshots and maxScrapesInFlight scrapes are
// built at once; the others get 503 with Retry-After at once.
func TestAdminBoundsConcurrentReads(t *testing.T) {
	tr := NewTracker(TrackerOptions{})
	r := tr.Start(vllm, mesh.ReasonNone)
	defer tr.End(&r)
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg, tr); err != nil {
		t.Fatal(err)
	}
	h := (&Admin{Tracker: tr, Gatherer: reg}).Handler()
	for _, c := range []struct {
		path  string
		limit int
	}{{"/v1/snapshot", maxSnapshotsInFlight}, {"/metrics", maxScrapesInFlight}} {
		release := make(chan struct{})
		var wg sync.WaitGroup
		for range c.limit {
			w := &blockedWriter{ResponseRecorder: httptest.NewRecorder(), writing: make(chan struct{}), release: release}
			wg.Go(func() { h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, c.path, nil)) })
			<-w.writing
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, c.path, nil))
		if rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s with %d slow readers: %d, want 503", c.path, c.limit, rec.Code)
		}
		if c.path == "/v1/snapshot" && rec.Header().Get("Retry-After") != "1" {
			t.Fatalf("%s: no Retry-After", c.path)
		}
		close(release)
		wg.Wait()
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, c.path, nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("%s after the readers left: %d", c.path, rec.Code)
		}
	}
}

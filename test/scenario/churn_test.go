package scenario

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/test/envoy"
	"github.com/inflight-dev/inflight/test/envoy/envoytest"
)

// churnLoad runs workers closed-loop SSE requests through c until stop is
// closed, and returns every result.
func churnLoad(c *envoy.Client, workers int, stop <-chan struct{}) func() []*envoy.Result {
	var mu sync.Mutex
	var results []*envoy.Result
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				req := request(10)
				req.Response.ChunkDelay = 3 * time.Millisecond // a 30 ms token stream
				r := c.Do(context.Background(), req)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		})
	}
	return func() []*envoy.Result {
		wg.Wait()
		c.Wait()
		return results
	}
}

// after waits d on a timer (the orchestration's clock is real time: the
// servers and the harness run on it).
func after(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	<-t.C
}

// TestRollingRestartModel models a rolling restart of 3 extproc replicas
// as Envoy sees it (ENVOY.md §4 item 11), with in-process replicas: each in
// turn, a new replica joins the cluster's endpoints, the old one gets
// SIGTERM, and Envoy drops it from EDS only a propagation delay later
// (istiod push + Envoy update), sending it new streams until then. Two
// shutdown behaviours of the old replica:
//   - stop at once (GracefulStop at SIGTERM: listener closed, GOAWAY on its
//     connections): the streams Envoy sends it during the propagation delay
//     are refused and go on fail-open, never counted; the harness must see
//     them (Result.Uncounted);
//   - keep serving new streams through the propagation delay, then
//     GracefulStop and let open streams finish: nothing is lost.
//
// Either way each replica counts every stream it was sent and drains to
// zero. The real binary's drain is tested in TestRollingRestartBinary.
func TestRollingRestartModel(t *testing.T) {
	const propagation = 300 * time.Millisecond
	for _, tc := range []struct {
		name     string
		serveFor time.Duration // how long a replica keeps serving after SIGTERM
		wantLoss bool
	}{
		{"stop-at-sigterm", 0, true},
		{"serve-through-propagation", propagation + 200*time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reps := envoytest.Start(t, 6) // 0–2 the old generation, 3–5 their replacements
			c := newClient(t, envoy.Config{Version: envoy.Envoy137, Profile: envoy.Control, Balancing: envoy.RoundRobin}, reps[:3])
			stop := make(chan struct{})
			collect := churnLoad(c, 8, stop)
			active := []string{reps[0].Addr, reps[1].Addr, reps[2].Addr}
			after(200 * time.Millisecond)
			for k := range 3 {
				active = append(active, reps[3+k].Addr)
				if err := c.SetEndpoints(active...); err != nil {
					t.Fatal(err)
				}
				after(100 * time.Millisecond)
				// SIGTERM to the old replica k.
				stopped := make(chan struct{})
				go func() {
					after(tc.serveFor)
					reps[k].Server.GracefulStop()
					close(stopped)
				}()
				after(propagation)
				active = active[1:] // EDS drops replica k
				if err := c.SetEndpoints(active...); err != nil {
					t.Fatal(err)
				}
				<-stopped
			}
			after(200 * time.Millisecond)
			close(stop)
			results := collect()

			var uncounted atomic.Int64
			opened := make(map[string]uint64)
			for _, r := range results {
				if r.Uncounted() {
					uncounted.Add(1)
					if !r.FailOpen || r.Outcome == envoy.LocalReply {
						t.Fatalf("an uncounted request did not go on fail-open: %+v", r)
					}
				}
				if r.Stream.Opened && !r.Stream.Lost {
					opened[c.Endpoints()[r.Stream.Replica]]++
				}
			}
			t.Logf("%d requests, %d uncounted (refused or lost after SIGTERM)", len(results), uncounted.Load())
			if tc.wantLoss && uncounted.Load() == 0 {
				t.Fatal("no request was lost while the stopped replica stayed in EDS: the model shows nothing")
			}
			if !tc.wantLoss && uncounted.Load() != 0 {
				t.Fatalf("%d requests lost although every replica served through the propagation delay", uncounted.Load())
			}
			envoytest.Drained(t, reps, drainWait)
			for i, r := range reps {
				var excused uint64
				for _, res := range results {
					if c.Endpoints()[res.Stream.Replica] == r.Addr && (res.Stream.Uncertain || r.Undelivered(res.Stream.Tag)) {
						excused++
					}
				}
				st := envoytest.Sum(reps[i : i+1]).Started
				if op := opened[r.Addr]; st > op || st+excused < op {
					t.Errorf("replica %d: started %d, harness opened %d streams there (%d uncertain or undelivered)", i, st, op, excused)
				}
			}
			if t.Failed() {
				return
			}
			for i := range 3 {
				if opened[reps[3+i].Addr] == 0 || opened[reps[i].Addr] == 0 {
					t.Fatalf("replica pair %d took no traffic: %v", i, opened)
				}
			}
		})
	}
}

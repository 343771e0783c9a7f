package collect_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling/collect"
	"github.com/inflight-dev/inflight/scaling/collect/collecttest"
)

// llamaSvc maps the Service ml/llama to the workload w, whole.
func llamaSvc(ns, svc string) []collect.Share {
	if ns == "ml" && svc == "llama" {
		return []collect.Share{{Workload: w, Fraction: 1}}
	}
	return nil
}

// Issue 12.1, the demand rule: a request seen at the edge and at the
// inbound sidecar counts once. Edge only: the edge's demand, all of it.
// In-mesh only: the inbound demand. Both: the inbound demand plus the
// edge's held requests, which cannot have reached a pod.
func TestEdgeDemandCountsOnce(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name                 string
		edge, held, inbound  int
		wantInFlight, wantHe float64
		wantSource           string
	}{
		{"edge only", 5, 2, 0, 5, 2, collect.SourceEdge},
		{"in-mesh only", 0, 0, 4, 4, 0, collect.SourceInbound},
		{"both", 5, 2, 3, 3 + 2, 2, collect.SourceBoth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk, c := rig(collect.Options{})
			a := replica(t, "a", clk)
			if tc.edge > 0 {
				a.StartEdge("ml", "llama", tc.edge, tc.held)
			}
			if tc.inbound > 0 {
				a.Start("ml", "llama", "p1", tc.inbound)
			}
			c.Tick(ctx, eps(a), nil, llamaSvc)
			clk.Step(time.Second)
			r := c.Tick(ctx, eps(a), nil, llamaSvc)
			s := r.Workloads[w]
			near(t, "in-flight", s.InFlight, tc.wantInFlight)
			near(t, "held", s.Held, tc.wantHe)
			near(t, "concurrency", s.Concurrency, tc.wantInFlight)
			if s.Source != tc.wantSource || r.Partial {
				t.Errorf("source %q partial %v, want %q, complete", s.Source, r.Partial, tc.wantSource)
			}
		})
	}
}

// Arrivals at the edge are the workload's arrivals when nothing counts it
// at a sidecar, and not when something does (the sidecar counts them).
func TestEdgeArrivalsOnlyWithoutSidecar(t *testing.T) {
	ctx := context.Background()
	clk, c := rig(collect.Options{Expire: 3 * time.Second})
	a := replica(t, "a", clk)
	c.Tick(ctx, eps(a), nil, llamaSvc)
	clk.Step(time.Second)
	a.StartEdge("ml", "llama", 4, 0)
	r := c.Tick(ctx, eps(a), nil, llamaSvc)
	near(t, "edge-only arrivals", r.Workloads[w].Arrivals, 4)

	a.Start("ml", "llama", "p1", 4) // the same 4 reach the pod
	clk.Step(time.Second)
	a.StartEdge("ml", "llama", 2, 0)
	a.Start("ml", "llama", "p1", 2)
	r = c.Tick(ctx, eps(a), nil, llamaSvc)
	s := r.Workloads[w]
	near(t, "arrivals", s.Arrivals, 6) // the inbound ones: 4 + 2
	near(t, "in-flight", s.InFlight, 6)
	if s.Source != collect.SourceBoth {
		t.Errorf("source %q, want both", s.Source)
	}

	// The pod's record goes (the pod died: the attribution refuses it).
	// Within Expire the workload is still counted by its sidecar: only the
	// held requests count; after, the edge's demand is all of it.
	gone := func(collect.Target) (collect.Workload, bool) { return collect.Workload{}, false }
	a.StartEdge("ml", "llama", 3, 3)
	clk.Step(time.Second)
	r = c.Tick(ctx, eps(a), gone, llamaSvc)
	near(t, "in-flight within expire", r.Workloads[w].InFlight, 3)
	near(t, "held within expire", r.Workloads[w].Held, 3)
	clk.Step(4 * time.Second)
	r = c.Tick(ctx, eps(a), gone, llamaSvc)
	near(t, "in-flight after expire", r.Workloads[w].InFlight, 9)
	if r.Workloads[w].Source != collect.SourceEdge {
		t.Errorf("source after expire %q, want edge", r.Workloads[w].Source)
	}
}

// A Service selecting several Deployments splits its edge demand in the
// shares the EdgeMap gives; one selecting none is counted as unmapped.
func TestEdgeSharesAndUnmapped(t *testing.T) {
	snap := extproc.Snapshot{Version: extproc.SnapshotVersion, Replica: "s", BootID: "b", UptimeSeconds: 3600,
		Targets: []extproc.TargetRecord{
			{Namespace: "ml", Service: "both", InFlight: 8, Started: 8},
			{Namespace: "ml", Service: "nobody", InFlight: 5, Started: 5},
		}}
	st, err := collecttest.NewStatic(snap)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	x, y := collect.Workload{Namespace: "ml", Name: "x"}, collect.Workload{Namespace: "ml", Name: "y"}
	split := func(ns, svc string) []collect.Share {
		if svc == "both" {
			return []collect.Share{{Workload: x, Fraction: 0.75}, {Workload: y, Fraction: 0.25}}
		}
		return nil
	}
	r := collect.New(collect.Options{}).Tick(context.Background(), []collect.Endpoint{{Key: "s", URL: st.URL()}}, nil, split)
	near(t, "x", r.Workloads[x].InFlight, 6)
	near(t, "y", r.Workloads[y].InFlight, 2)
	near(t, "unmapped", r.Unmapped, 5)
	if len(r.Workloads) != 2 {
		t.Errorf("workloads %v, want x and y", r.Workloads)
	}
}

// Held requests are in flight: a record holding more than it has in
// flight is impossible and rejected.
func TestRejectsHeldBeyondInFlight(t *testing.T) {
	clk, c := rig(collect.Options{})
	a := replica(t, "a", clk)
	a.StartEdge("ml", "llama", 2, 2)
	a.Mutate(func(s *extproc.Snapshot) {
		for i := range s.Targets {
			s.Targets[i].InFlight = 1
		}
	})
	r := c.Tick(context.Background(), eps(a), nil, llamaSvc)
	if !r.Partial || len(r.Errors) != 1 || r.Errors[0].Kind != collect.KindInvalid || !strings.Contains(r.Errors[0].Error(), "held") {
		t.Errorf("partial %v errors %v, want one invalid snapshot naming held", r.Partial, r.Errors)
	}
}

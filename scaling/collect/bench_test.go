package collect_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/inflight-dev/inflight/extproc"
	"github.com/inflight-dev/inflight/scaling/collect"
	"github.com/inflight-dev/inflight/scaling/collect/collecttest"
)

// BenchmarkTick1000x20 is the collection alone: 20 replicas on loopback,
// each reporting 1,000 workloads × 2 pods (idle: the fixed counters of a
// pre-encoded snapshot are consistent only with nothing in flight).
func BenchmarkTick1000x20(b *testing.B) {
	var recs []extproc.TargetRecord
	for i := range 1000 {
		for p := range 2 {
			name := fmt.Sprintf("model-%04d", i)
			recs = append(recs, extproc.TargetRecord{Namespace: "ml", Workload: name, Service: name,
				Pod: fmt.Sprintf("%s-%d", name, p), Started: 1000, Completed: 1000, BusySeconds: 5000, DurationSecondsSum: 4900})
		}
	}
	var eps []collect.Endpoint
	for r := range 20 {
		st, err := collecttest.NewStatic(extproc.Snapshot{Version: extproc.SnapshotVersion, Replica: fmt.Sprint(r),
			BootID: "b", UptimeSeconds: 3600, Targets: recs})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(st.Close)
		eps = append(eps, collect.Endpoint{Key: fmt.Sprint(r), URL: st.URL()})
	}
	c := collect.New(collect.Options{Timeout: 5 * time.Second})
	ctx := context.Background()
	if r := c.Tick(ctx, eps, nil, nil); r.Partial || len(r.Workloads) != 1000 {
		b.Fatalf("partial=%v workloads=%d errors=%v", r.Partial, len(r.Workloads), r.Errors)
	}
	b.ResetTimer()
	for b.Loop() {
		c.Tick(ctx, eps, nil, nil)
	}
}

package scaling

import (
	"testing"
	"time"
)

// Issue 12: a workload at zero replicas whose demand is only held at the
// edge (nothing in flight at a pod, no window of data) decides one
// replica on the tick that sees the first held request; nothing held
// keeps it at zero.
func TestWakeAtZeroOnHeldRequests(t *testing.T) {
	c := DefaultConfig(4)
	c.MinReplicas = 0
	now := t0
	a := NewAutoscaler(c, Features{}, now)
	for i := range 5 {
		now = now.Add(time.Second)
		a.Observe(Observation{Time: now})
		if d := a.Decide(now); d.Desired != 0 {
			t.Fatalf("tick %d, idle at zero: desired %d (%s)", i, d.Desired, d.Reason)
		}
	}
	now = now.Add(time.Second)
	a.Observe(Observation{Time: now, Held: 1})
	d := a.Decide(now)
	if d.Desired != 1 || d.Cause != CauseWake || d.Direction != Up {
		t.Fatalf("one held request at zero: desired %d cause %v (%s), want 1, wake", d.Desired, d.Cause, d.Reason)
	}
	// The cap of max-replicas 0 wins: nothing to wake.
	c.MaxReplicas = 0
	b := NewAutoscaler(c, Features{}, now)
	b.Observe(Observation{Time: now, Held: 3})
	if d := b.Decide(now); d.Desired != 0 {
		t.Errorf("max-replicas 0: desired %d", d.Desired)
	}
}

package scaling

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

// Erlang C against values computed by hand and from the textbook tables.
func TestErlangC(t *testing.T) {
	cases := []struct {
		c    int
		a    float64
		want float64
	}{
		{1, 0.5, 0.5},        // M/M/1: P(wait) = ρ
		{2, 1, 1.0 / 3},      // 2 servers, 1 erlang
		{3, 2, 4.0 / 9},      // 3 servers, 2 erlangs
		{10, 8, 0.4092},      // table value (Cooper)
		{1, 1, 1}, {4, 5, 1}, // unstable: everyone waits
		{5, 0, 0}, // no load
	}
	for _, c := range cases {
		if got := erlangC(c.c, c.a); math.Abs(got-c.want) > 5e-4 {
			t.Errorf("erlangC(%d, %g) = %.4f, want %.4f", c.c, c.a, got, c.want)
		}
	}
}

func TestReplicasForWait(t *testing.T) {
	// 5.5 req/s of 6.6 s on batch-8 replicas: 36.3 erlangs. 5 replicas
	// (40 servers) leave P(W > 10 s) = C·e^{−(40−36.3)·10/6.6} under 1 %;
	// 4 replicas (32 servers) are unstable.
	if got := ReplicasForWait(5.5, 6.6, 8, 10, 0.99, 100); got != 5 {
		t.Fatalf("got %d replicas, want 5", got)
	}
	// A tighter bound needs more.
	if got := ReplicasForWait(5.5, 6.6, 8, 0.1, 0.99, 100); got <= 5 {
		t.Fatalf("slo 0.1 s: got %d replicas, want more than 5", got)
	}
	// The count is the fewest that meets the bound, by the closed form.
	for _, c := range []struct {
		lambda, s float64
		b         int32
		slo       float64
	}{{5.5, 6.6, 8, 10}, {5.5, 6.6, 8, 0.1}, {40, 1.9, 4, 2}, {0.3, 20, 1, 5}} {
		r := ReplicasForWait(c.lambda, c.s, c.b, c.slo, 0.99, 1000)
		a := c.lambda * c.s
		if p := waitTail(int(r*c.b), a, c.s, c.slo); p > 0.01 {
			t.Errorf("%+v: %d replicas leave P(W > slo) = %.4f > 1 %%", c, r, p)
		}
		if p := waitTail(int((r-1)*c.b), a, c.s, c.slo); r > 1 && p <= 0.01 {
			t.Errorf("%+v: %d replicas already meet the bound (P = %.4f); %d is not the fewest", c, r-1, p, r)
		}
	}
	// Monotone in the load, 0 without load, capped by the limit.
	prev := int32(0)
	for l := 0.0; l < 50; l += 0.25 {
		r := ReplicasForWait(l, 6.6, 8, 10, 0.99, 1000)
		if r < prev {
			t.Fatalf("λ %.2f: %d replicas < %d at a lower load", l, r, prev)
		}
		prev = r
	}
	if ReplicasForWait(0, 6.6, 8, 10, 0.99, 100) != 0 || ReplicasForWait(1e6, 6.6, 8, 10, 0.99, 7) != 7 {
		t.Fatal("no load or the limit")
	}
	// Past maxQueueServers the Halfin–Whitt approximation takes over; it
	// agrees with the exact recursion within 1 % where both can run.
	for _, c := range []struct{ lambda, s, slo float64 }{{300, 6, 10}, {330, 6, 0.5}, {1000, 1.9, 2}} {
		a := c.lambda * c.s
		exact := float64(ReplicasForWait(c.lambda, c.s, 1, c.slo, 0.99, 1e6))
		approx := math.Ceil(a + halfinWhittBeta(a, c.s, c.slo, 0.01)*math.Sqrt(a))
		if math.Abs(exact-approx)/exact > 0.01 {
			t.Errorf("%+v: exact %v vs Halfin–Whitt %v", c, exact, approx)
		}
	}
	if r := ReplicasForWait(10000, 6, 8, 10, 0.99, 1e6); r < 7500 || r > 7600 {
		t.Errorf("60000 erlangs on batch 8: %d replicas, want just over 7500", r)
	}
}

// TestQueueModelAgainstSimulation checks the stated model against a direct
// simulation of an M/M/c queue: the p99 wait at the count ReplicasForWait
// picks is within the bound, and one replica fewer breaks it.
func TestQueueModelAgainstSimulation(t *testing.T) {
	const lambda, s, b, slo = 5.5, 6.6, 8, 10.0
	r := ReplicasForWait(lambda, s, b, slo, 0.99, 100)
	p99 := func(servers int) float64 {
		rng := rand.New(rand.NewPCG(1, 2))
		var free floatHeap
		for i := 0; i < servers; i++ {
			heap.Push(&free, 0.0)
		}
		var waits []float64
		now := 0.0
		for i := 0; i < 400000; i++ {
			now += rng.ExpFloat64() / lambda
			at := heap.Pop(&free).(float64) // the earliest free server
			start := math.Max(now, at)
			waits = append(waits, start-now)
			heap.Push(&free, start+rng.ExpFloat64()*s)
		}
		sort.Float64s(waits)
		return waits[len(waits)*99/100]
	}
	if w := p99(int(r) * b); w > slo {
		t.Errorf("%d replicas: simulated p99 wait %.1f s > %g s", r, w, slo)
	}
	if w := p99(int(r-1) * b); w <= slo {
		t.Errorf("%d replicas: simulated p99 wait %.1f s ≤ %g s: the model over-provisions", r-1, w, slo)
	}
}

type floatHeap []float64

func (h floatHeap) Len() int           { return len(h) }
func (h floatHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h floatHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *floatHeap) Push(x any)        { *h = append(*h, x.(float64)) }
func (h *floatHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

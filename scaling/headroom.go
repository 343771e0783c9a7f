package scaling

import "math"

// headroom learns how much more capacity than the Poisson model asks for
// the workload's own arrivals need to keep the p99 wait within slo-wait:
// the burstiness the M/M/c model does not see (arrivals in spikes, not one
// by one).
//
// It replays the arrivals, one window behind, through fluid queues: one
// per candidate factor h, each served at the throughput of the replicas
// ReplicasForWait gives for h × the arrival rate around that second: the
// mean over ±headroomWindow ticks, about one cold start in all, so a rise or
// fall slower than a cold start (which scaling follows) is not mistaken for
// a burst, and a burst shorter than one (which it cannot) is. A request that arrives when its queue holds more than slo-wait of
// work counts as over. The headroom is the smallest h whose share of
// requests over, exponentially forgotten over headroomMemory, stays within
// headroomBudget. Until headroomMinRequests requests were replayed, it is 1.
type headroom struct {
	ring       [2*headroomWindow + 1]struct{ arr, dt float64 }
	n, head    int
	queue      [len(headroomCandidates)]float64
	over       [len(headroomCandidates)]float64
	replicas   [len(headroomCandidates)]int32
	total      float64
	lastLambda float64
}

// headroomCandidates are the factors tried, in increasing order.
var headroomCandidates = [...]float64{1, 1.1, 1.2, 1.3, 1.45, 1.6, 1.8, 2, 2.3, 2.6, 3}

const (
	headroomWindow      = 60     // samples (ticks) on either side of the replayed one: half a default cold start each way
	headroomMemory      = 3600.0 // s
	headroomBudget      = 0.003  // share of requests over the bound: 0.3 % of the 1 % a p99 allows
	headroomMinRequests = 300
)

// add records one tick's arrivals over dt seconds and replays the tick
// headroomWindow ticks back. s is the service time and b the batch; both
// must be known (> 0).
func (h *headroom) add(arr, dt, s float64, b int32, slo float64) {
	size := len(h.ring)
	h.ring[(h.head+h.n)%size] = struct{ arr, dt float64 }{arr, dt}
	if h.n < size {
		h.n++
		if h.n < size {
			return
		}
	} else {
		h.head = (h.head + 1) % size
	}
	var sa, sd float64
	for i := range h.ring {
		sa += h.ring[i].arr
		sd += h.ring[i].dt
	}
	mid := h.ring[(h.head+headroomWindow)%size]
	if sd <= 0 || mid.dt <= 0 {
		return
	}
	lambda := sa / sd
	if math.Abs(lambda-h.lastLambda) > 0.02*h.lastLambda || h.replicas[0] == 0 {
		// The counts move little from tick to tick: recompute them only
		// when the rate moved by 2 %.
		h.lastLambda = lambda
		for i, c := range headroomCandidates {
			h.replicas[i] = max(1, ReplicasForWait(c*lambda, s, b, slo, 0.99, math.MaxInt32/int32(max(1, b))))
		}
	}
	decay := math.Exp(-mid.dt / headroomMemory)
	h.total = h.total*decay + mid.arr
	for i := range headroomCandidates {
		rate := float64(h.replicas[i]) * float64(b) / s // requests per second the replicas serve
		q := math.Max(0, h.queue[i]+mid.arr-rate*mid.dt)
		h.queue[i] = q
		h.over[i] *= decay
		if q/rate > slo {
			h.over[i] += mid.arr
		}
	}
}

// rate returns the mean arrival rate over the ticks held (about the last
// two minutes): the rate the headroom applies to, as the replay applies it
// to the same span around each tick.
func (h *headroom) rate() float64 {
	var sa, sd float64
	for i := 0; i < h.n; i++ {
		e := h.ring[(h.head+i)%len(h.ring)]
		sa += e.arr
		sd += e.dt
	}
	if sd == 0 {
		return 0
	}
	return sa / sd
}

// factor returns the learned headroom.
func (h *headroom) factor() float64 {
	if h.total < headroomMinRequests {
		return 1
	}
	for i, c := range headroomCandidates {
		if h.over[i] <= headroomBudget*h.total {
			return c
		}
	}
	return headroomCandidates[len(headroomCandidates)-1]
}

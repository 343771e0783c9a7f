package scaling

import "math"

// The queueing model of slo-wait.
//
// A workload of R replicas that each serve up to B requests at once, with
// a mean service time S, fed by arrivals at rate λ, is modelled as an
// M/M/c queue with c = R·B servers of rate 1/S and one FIFO queue: Poisson
// arrivals, exponential service (a coefficient of variation of 1, the
// order of LLM generations whose lengths vary widely), no abandonment.
// With the offered load a = λ·S erlangs and c > a, the probability that an
// arrival waits at all is Erlang's C formula, and the wait is then
// exponential with rate (c − a)/S:
//
//	P(W > t) = C(c, a) · exp(−(c − a)·t/S)
//
// ReplicasForWait returns the fewest R for which P(W > slo) ≤ 1 − q (q =
// 0.99 for a p99). Burstiness beyond Poisson, which this model does not
// see, is added by the learned headroom (see headroom.go), and transients
// (a rise faster than a cold start) by the burst mode and the forecast.

// erlangC returns Erlang's C formula: the probability that an arrival to an
// M/M/c queue with offered load a erlangs waits (1 when c ≤ a).
func erlangC(c int, a float64) float64 {
	if a <= 0 {
		return 0
	}
	if float64(c) <= a {
		return 1
	}
	b := 1.0 // Erlang B by the stable forward recursion
	for k := 1; k <= c; k++ {
		b = a * b / (float64(k) + a*b)
	}
	return float64(c) * b / (float64(c) - a*(1-b))
}

// waitTail returns P(W > t) for an M/M/c queue with offered load a and
// mean service time s.
func waitTail(c int, a, s, t float64) float64 {
	if float64(c) <= a {
		return 1
	}
	return erlangC(c, a) * math.Exp(-(float64(c)-a)*t/s)
}

// maxQueueServers bounds the exact Erlang recursion (a few µs): beyond
// it the model uses the Halfin–Whitt approximation, c = a + β√a with
// C ≈ 1/(1 + β·Φ(β)/φ(β)), which the exact formula converges to as the
// load grows (tested to agree within 1 %).
const maxQueueServers = 2000

// ReplicasForWait returns the fewest replicas of batch capacity b for which
// an M/M/c queue with arrival rate lambda (per second) and mean service time
// s (seconds) keeps P(wait > slo) ≤ 1 − q. It returns 0 for no load and
// caps the search at limit replicas.
func ReplicasForWait(lambda, s float64, b int32, slo, q float64, limit int32) int32 {
	if !(lambda > 0) || !(s > 0) || b < 1 {
		return 0
	}
	a := lambda * s
	bb := float64(b)
	p := 1 - q
	if a > maxQueueServers {
		beta := halfinWhittBeta(a, s, slo, p)
		return int32(math.Min(float64(limit), math.Ceil((a+beta*math.Sqrt(a))/bb-1e-9)))
	}
	erlangB := 1.0
	k := 0
	for r := int32(1); r <= limit; r++ {
		c := int(r) * int(b)
		for ; k < c; k++ {
			erlangB = a * erlangB / (float64(k+1) + a*erlangB)
		}
		if float64(c) <= a {
			continue
		}
		pw := float64(c) * erlangB / (float64(c) - a*(1-erlangB))
		if pw*math.Exp(-(float64(c)-a)*slo/s) <= p {
			return r
		}
	}
	return limit
}

// halfinWhittBeta returns the smallest β ≥ 0 with C(β)·exp(−β√a·slo/s) ≤
// p, by bisection (the left side decreases in β).
func halfinWhittBeta(a, s, slo, p float64) float64 {
	tail := func(beta float64) float64 {
		phi := math.Exp(-beta*beta/2) / math.Sqrt(2*math.Pi)
		cdf := 0.5 * math.Erfc(-beta/math.Sqrt2)
		return math.Exp(-beta*math.Sqrt(a)*slo/s) / (1 + beta*cdf/phi)
	}
	lo, hi := 0.0, 10.0
	for i := 0; i < 60; i++ {
		mid := (lo + hi) / 2
		if tail(mid) <= p {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
}

package scaling

import (
	"math"
	"time"
)

// season is the learned seasonal forecast: the workload's own arrivals of
// the last period (ForecastPeriod), in seasonBuckets buckets per period,
// from which it predicts the arrival rate ahead. It knows nothing until a
// full period of history exists.
type season struct {
	period time.Duration
	width  time.Duration // of a bucket
	start  time.Time     // of bucket 0
	arr    []float64     // arrivals per bucket, a ring of 2 periods
	secs   []float64     // seconds observed per bucket
	last   int64         // newest bucket written (-1: none)
	first  int64         // oldest bucket with data
	// refuted is set when the forecast predicted a level the arrivals did
	// not reach for refuteAfter: the forecast is off until it agrees with
	// the arrivals again.
	refuted   bool
	wrongFrom time.Time
	// err is the forecast's recent relative error (an average over about
	// seasonErrMemory): the forecast is trusted to release capacity early
	// only while it is small.
	err     float64
	errTime time.Time
	scratch []float64 // ahead's prefix sums, reused
	// ahead's last answer, for the window [aheadK0, aheadK1].
	aheadK0, aheadK1 int64
	aheadPeak        float64
	aheadValid       bool
}

// seasonErrMemory is how long the forecast's error is remembered.
const seasonErrMemory = 10 * time.Minute

// trusted reports whether the forecast predicted the arrivals within 25 %
// lately.
func (s *season) trusted() bool { return !s.refuted && !s.errTime.IsZero() && s.err < 0.25 }

// seasonBuckets is the resolution of the forecast: 360 buckets per period
// (10 s for an hour, 4 minutes for a day).
const seasonBuckets = 360

// smoothing is the window over which a bucket's rate is averaged, so that a
// maximum over buckets is not a maximum of Poisson noise.
const smoothing = time.Minute

func newSeason(period time.Duration, start time.Time) *season {
	w := max(time.Second, period/seasonBuckets)
	n := 2 * int(period/w)
	return &season{period: period, width: w, start: start, arr: make([]float64, n), secs: make([]float64, n), last: -1}
}

func (s *season) bucket(t time.Time) int64 {
	return int64(math.Floor(float64(t.Sub(s.start)) / float64(s.width)))
}

// add records arrivals over the dt seconds ending at t.
func (s *season) add(t time.Time, arrivals, dt float64) {
	k := s.bucket(t.Add(-time.Nanosecond))
	if k < 0 || (s.last >= 0 && k < s.last) {
		return
	}
	n := int64(len(s.arr))
	if s.last < 0 {
		s.first, s.last = k, k-1
	}
	for j := max(s.last+1, k-n+1); j <= k; j++ {
		s.arr[j%n], s.secs[j%n] = 0, 0 // new buckets; the slot may hold one from two periods ago
	}
	s.last = k
	s.first = max(s.first, k-n+1)
	s.arr[k%n] += arrivals
	s.secs[k%n] += dt
}

// ready reports whether a full period of history lies behind now.
func (s *season) ready(now time.Time) bool {
	return s.last >= 0 && s.bucket(now.Add(-s.period)) >= s.first
}

// raw returns bucket k's rate, and whether it has data.
func (s *season) raw(k int64) (float64, bool) {
	n := int64(len(s.arr))
	if k < s.first || k > s.last || k <= s.last-n {
		return 0, false
	}
	if sec := s.secs[k%n]; sec > 0 {
		return s.arr[k%n] / sec, true
	}
	return 0, false
}

// alignWindow is how much of this period the alignment compares with the
// last one.
const alignWindow = 30 * time.Minute

// alignment is what align found.
type alignment int8

const (
	alignUnknown  alignment = iota // too little history to compare
	alignFlat                      // no variation beyond Poisson noise: nothing to align, nothing contradicts
	alignOK                        // the last period, shifted, explains this one
	alignMismatch                  // this period varies, and the last one does not explain it
)

// align estimates how late this period runs against the last one: the
// shift, within ±maxShift, that best lays the last period's arrivals over
// the last alignWindow of this one. It is alignOK when the shifted last
// period explains at least 75 % of the variation of this one; a stretch
// whose variation is only Poisson noise is alignFlat.
func (s *season) align(now time.Time, maxShift time.Duration) (late time.Duration, st alignment) {
	pb := int64(s.period / s.width)
	k1 := s.bucket(now) - 1
	k0 := k1 - int64(alignWindow/s.width)
	js := int64(maxShift / s.width)
	var mean, nc float64
	for k := k0; k <= k1; k++ {
		if c, has := s.raw(k); has {
			mean += c
			nc++
		}
	}
	if nc < 10 {
		return 0, alignUnknown
	}
	mean /= nc
	var vari float64
	for k := k0; k <= k1; k++ {
		if c, has := s.raw(k); has {
			vari += (c - mean) * (c - mean)
		}
	}
	// The last period's rates over the window widened by the shifts, once.
	prev := make([]float64, int(k1-k0+2*js)+1)
	for i := range prev {
		if p, has := s.raw(k0 - pb - js + int64(i)); has {
			prev[i] = p
		} else {
			prev[i] = math.NaN()
		}
	}
	best, bestJ := math.Inf(1), int64(0)
	for j := -js; j <= js; j++ {
		var sse, n float64
		for k := k0; k <= k1; k++ {
			c, has := s.raw(k)
			p := prev[int(k-k0-j+js)]
			if has && !math.IsNaN(p) {
				sse += (c - p) * (c - p)
				n++
			}
		}
		if n < nc/2 {
			continue // too little of the last period to compare with
		}
		if sse *= nc / n; sse < best || (sse == best && abs64(j) < abs64(bestJ)) {
			best, bestJ = sse, j
		}
	}
	// A bucket's rate over w seconds has the Poisson variance mean/w.
	if vari/nc <= 2*mean/s.width.Seconds() {
		return 0, alignFlat
	}
	if math.IsInf(best, 1) {
		return 0, alignUnknown
	}
	if best > 0.25*vari {
		return 0, alignMismatch
	}
	return time.Duration(bestJ) * s.width, alignOK
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// sustain is how long a level of the last period must have lasted for
// the forecast to ask for it: shorter bursts (which recur at other times,
// if at all) are the headroom's business.
const sustain = time.Minute

// ahead returns the highest level the rate of one period ago held for
// sustain within [now, now+d], for a period that runs late by the given
// shift.
func (s *season) ahead(now time.Time, late, d time.Duration) (peak float64) {
	k0 := s.bucket(now.Add(-s.period - late))
	k1 := s.bucket(now.Add(-s.period - late + d))
	// The buckets of one period ago no longer change: the answer changes
	// only when the window moves to other buckets.
	if s.aheadValid && s.aheadK0 == k0 && s.aheadK1 == k1 && s.last > k1+int64(sustain/s.width)+int64(smoothing/s.width) {
		return s.aheadPeak
	}
	defer func() { s.aheadK0, s.aheadK1, s.aheadPeak, s.aheadValid = k0, k1, peak, true }()
	span := max(0, int64(sustain/s.width)-1)
	half := int64(smoothing/s.width) / 2
	// Prefix sums of arrivals and seconds over [k0−half, k1+span+half].
	lo, hi := k0-half, k1+span+half
	n := int(hi-lo) + 2
	if cap(s.scratch) < 2*n {
		s.scratch = make([]float64, 2*n)
	}
	pa, ps := s.scratch[:n], s.scratch[n:2*n]
	pa[0], ps[0] = 0, 0
	ring := int64(len(s.arr))
	for k := lo; k <= hi; k++ {
		i := int(k - lo)
		pa[i+1], ps[i+1] = pa[i], ps[i]
		if k >= s.first && k <= s.last && k > s.last-ring {
			pa[i+1] += s.arr[k%ring]
			ps[i+1] += s.secs[k%ring]
		}
	}
	smooth := func(k int64) float64 { // the rate over [k−half, k+half], as rate(k)
		a, b := int(k-half-lo), int(k+half-lo)+1
		if sec := ps[b] - ps[a]; sec > 0 {
			return (pa[b] - pa[a]) / sec
		}
		return 0
	}
	for k := k0; k <= k1; k++ {
		low := math.Inf(1)
		for j := k; j <= k+span; j++ {
			if v := smooth(j); v < low {
				low = v
			}
		}
		if low > peak {
			peak = low
		}
	}
	return peak
}

// trailing returns the mean rate of one period ago over the window w
// ending at now (as the stable window measures the arrivals now).
func (s *season) trailing(now time.Time, w time.Duration) float64 {
	n := int64(len(s.arr))
	var a, sec float64
	for k := s.bucket(now.Add(-s.period - w)); k <= s.bucket(now.Add(-s.period-time.Nanosecond)); k++ {
		if k < s.first || k > s.last || k <= s.last-n {
			continue
		}
		a += s.arr[k%n]
		sec += s.secs[k%n]
	}
	if sec == 0 {
		return 0
	}
	return a / sec
}

// check updates the refutation state and the error: one period ago the
// arrivals over the stable window were predicted; now they are observed. A forecast above twice what arrives for refuteAfter is
// refuted; it is believed again once it is within 25 % of what arrives.
func (s *season) check(now time.Time, predicted, observed float64, refuteAfter time.Duration) {
	e := math.Abs(predicted-observed) / math.Max(0.1, math.Max(predicted, observed))
	if s.errTime.IsZero() {
		s.err = e
	} else {
		w := 1 - math.Exp(-now.Sub(s.errTime).Seconds()/seasonErrMemory.Seconds())
		s.err += w * (e - s.err)
	}
	s.errTime = now
	switch {
	case predicted > 2*observed+0.05:
		if s.wrongFrom.IsZero() {
			s.wrongFrom = now
		}
		if now.Sub(s.wrongFrom) >= refuteAfter {
			s.refuted = true
		}
	default:
		s.wrongFrom = time.Time{}
		if predicted <= 1.25*observed+0.05 {
			s.refuted = false
		}
	}
}

package sim

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Request is one request of a trace: its arrival in seconds from the start
// of the trace and its tokens.
type Request struct {
	Arrival   float64
	Context   int // prompt (prefill) tokens
	Generated int // generated tokens
}

// Trace is a named, time-ordered list of requests.
type Trace struct {
	Name string
	// Duration is the horizon in seconds: GPU time is charged up to it.
	Duration float64
	Requests []Request
	// Steps are the times (s) of the load steps of a synthetic trace (rising
	// edges), for the step → first scale-up measurement; empty for replays.
	Steps []float64
	// Kind says what the trace is meant to exercise ("smooth", "bursty",
	// "diurnal", "idle-gap"), for the README's targets.
	Kind string
	// HeldOut marks a trace drawn with a seed other than the documented
	// run's: the policy was not developed on it. The ablation skips it.
	HeldOut bool
}

const csvTimeLayout = "2006-01-02 15:04:05.9999999"

// LoadCSV reads a trace in the format of the Azure LLM inference trace:
// a header TIMESTAMP,ContextTokens,GeneratedTokens and one row per request.
// Rows need not be sorted; arrivals are made relative to the first one.
func LoadCSV(name string, r io.Reader) (Trace, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	var reqs []Request
	var first time.Time
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		f := strings.Split(text, ",")
		if line == 1 {
			if len(f) != 3 || !strings.EqualFold(strings.TrimSpace(f[0]), "TIMESTAMP") {
				return Trace{}, fmt.Errorf("%s:1: want header TIMESTAMP,ContextTokens,GeneratedTokens, got %q", name, text)
			}
			continue
		}
		if len(f) != 3 {
			return Trace{}, fmt.Errorf("%s:%d: want 3 fields, got %d", name, line, len(f))
		}
		ts, err := time.Parse(csvTimeLayout, strings.TrimSpace(f[0]))
		if err != nil {
			return Trace{}, fmt.Errorf("%s:%d: timestamp: %w", name, line, err)
		}
		ctx, err1 := strconv.Atoi(strings.TrimSpace(f[1]))
		gen, err2 := strconv.Atoi(strings.TrimSpace(f[2]))
		if err1 != nil || err2 != nil || ctx < 0 || gen < 0 {
			return Trace{}, fmt.Errorf("%s:%d: token counts must be integers ≥ 0, got %q,%q", name, line, f[1], f[2])
		}
		if len(reqs) == 0 || ts.Before(first) {
			first = ts
		}
		reqs = append(reqs, Request{Arrival: float64(ts.UnixNano()), Context: ctx, Generated: gen})
	}
	if err := sc.Err(); err != nil {
		return Trace{}, fmt.Errorf("%s: %w", name, err)
	}
	if len(reqs) == 0 {
		return Trace{}, fmt.Errorf("%s: no requests", name)
	}
	for i := range reqs {
		reqs[i].Arrival = (reqs[i].Arrival - float64(first.UnixNano())) / 1e9
	}
	sort.SliceStable(reqs, func(i, j int) bool { return reqs[i].Arrival < reqs[j].Arrival })
	return Trace{Name: name, Duration: math.Ceil(reqs[len(reqs)-1].Arrival) + 1, Requests: reqs, Kind: "smooth"}, nil
}

// Shape is a synthetic arrival-rate curve.
type Shape struct {
	Name     string
	Kind     string
	Duration float64
	Rate     func(t float64) float64 // requests per second at t
	MaxRate  float64                 // an upper bound of Rate, for thinning
	Steps    []float64
}

// Shapes returns the synthetic traces, all in requests/s of the same
// token mix: a step, a ramp, a flash crowd, on/off with idle gaps, and a
// compressed diurnal cycle.
func Shapes() []Shape {
	return []Shape{
		{Name: "step", Kind: "bursty", Duration: 3600, MaxRate: 8, Steps: []float64{1200},
			Rate: func(t float64) float64 {
				if t >= 1200 && t < 2400 {
					return 8
				}
				return 2
			}},
		{Name: "ramp", Kind: "diurnal", Duration: 3600, MaxRate: 10,
			Rate: func(t float64) float64 {
				switch {
				case t < 300:
					return 1
				case t < 2100:
					return 1 + 9*(t-300)/1800
				case t < 2700:
					return 10
				default:
					return 10 - 9*(t-2700)/900
				}
			}},
		{Name: "flash-crowd", Kind: "bursty", Duration: 3600, MaxRate: 18, Steps: []float64{1200, 2700},
			Rate: func(t float64) float64 {
				switch {
				case t >= 1200 && t < 1380:
					return 18
				case t >= 2700 && t < 2760:
					return 15
				}
				return 3
			}},
		{Name: "on-off", Kind: "idle-gap", Duration: 3600, MaxRate: 6, Steps: []float64{600, 1500, 2400, 3300},
			Rate: func(t float64) float64 {
				// 6 req/s for 5 minutes, then 10 minutes at 0.1 req/s (nearly idle).
				if p := math.Mod(t, 900); p >= 600 && p < 900 {
					return 6
				}
				return 0.1
			}},
		{Name: "diurnal", Kind: "diurnal", Duration: 4 * 3600, MaxRate: 9,
			Rate: func(t float64) float64 {
				// One day compressed into four hours: 0.5 → 9 → 0.5 req/s, with a
				// lunchtime dip.
				x := t / (4 * 3600)
				base := 0.5 + 8.5*0.5*(1-math.Cos(2*math.Pi*x))
				return base * (1 - 0.15*math.Exp(-math.Pow((x-0.5)/0.04, 2)))
			}},
	}
}

// Synthesize draws a trace from a shape: a non-homogeneous Poisson process
// (thinning) whose requests take their tokens from the pool, resampled with
// replacement. The same seed gives the same trace.
func Synthesize(s Shape, pool []Request, seed uint64) Trace {
	rng := rand.New(rand.NewPCG(seed, uint64(len(s.Name))))
	var reqs []Request
	t := 0.0
	for {
		t += rng.ExpFloat64() / s.MaxRate
		if t >= s.Duration {
			break
		}
		if rng.Float64()*s.MaxRate > s.Rate(t) {
			continue
		}
		r := Request{Arrival: t, Context: 1000, Generated: 200}
		if len(pool) > 0 {
			p := pool[rng.IntN(len(pool))]
			r.Context, r.Generated = p.Context, p.Generated
		}
		reqs = append(reqs, r)
	}
	return Trace{Name: s.Name, Kind: s.Kind, Duration: s.Duration, Requests: reqs, Steps: s.Steps}
}

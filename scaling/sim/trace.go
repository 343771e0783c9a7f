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
	// Kind is the family the trace stands for ("conversation", "step",
	// "ramp", "flash-crowd", "idle-gap", "diurnal", "bursty"; "replay" for
	// a CSV of unknown kind), for the README's targets.
	Kind string
	// Period is the trace's season in seconds (a synthetic shape's "day"),
	// which the inflight policy is told as its forecast-period; 0: unknown.
	Period float64
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
	return Trace{Name: name, Duration: math.Ceil(reqs[len(reqs)-1].Arrival) + 1, Requests: reqs, Kind: "replay"}, nil
}

// Shape is a family of synthetic arrival-rate curves.
type Shape struct {
	Name string
	// Kind is the family the shape stands for in the targets: "step",
	// "ramp", "flash-crowd", "idle-gap", "diurnal", "bursty".
	Kind     string
	Duration float64
	MaxRate  float64 // an upper bound of every draw's rate, for thinning
	// Make returns one draw's rate curve and its load steps (rising edges,
	// for the step → first scale-up measurement). Its random parts come
	// from rng: burst times always; with jitter, also the draw's shift of
	// its features in time and scale (a day is never exactly the last).
	Make func(rng *rand.Rand, jitter bool) (rate func(t float64) float64, steps []float64)
	// OneOff marks a shape whose event does not recur: the period before
	// it (the warm-up) has only the Base rate.
	OneOff bool
	Base   float64
}

// uniform draws from [−w, w] when jitter is on, else 0.
func uniform(rng *rand.Rand, jitter bool, w float64) float64 {
	if !jitter {
		return 0
	}
	return (2*rng.Float64() - 1) * w
}

// Shapes returns the synthetic trace families, all in requests/s of the
// same token mix: a step, a ramp, a flash crowd, on/off with idle gaps, a
// compressed diurnal cycle, and short random bursts.
func Shapes() []Shape {
	return []Shape{
		{Name: "step", Kind: "step", Duration: 3600, MaxRate: 8,
			Make: func(rng *rand.Rand, jitter bool) (func(float64) float64, []float64) {
				// 2 → 8 req/s for 20 minutes; each day's step a minute earlier or later.
				up, down := 1200+uniform(rng, jitter, 60), 2400+uniform(rng, jitter, 60)
				return func(t float64) float64 {
					if t >= up && t < down {
						return 8
					}
					return 2
				}, []float64{up}
			}},
		{Name: "ramp", Kind: "ramp", Duration: 3600, MaxRate: 10.5,
			Make: func(rng *rand.Rand, jitter bool) (func(float64) float64, []float64) {
				sh, k := uniform(rng, jitter, 60), 1+uniform(rng, jitter, 0.05)
				return func(t float64) float64 {
					t -= sh
					switch {
					case t < 300:
						return k
					case t < 2100:
						return k * (1 + 9*(t-300)/1800)
					case t < 2700:
						return k * 10
					default:
						return k * math.Max(1, 10-9*(t-2700)/900)
					}
				}, nil
			}},
		{Name: "flash-crowd", Kind: "flash-crowd", Duration: 3600, MaxRate: 18, OneOff: true, Base: 3,
			Make: func(rng *rand.Rand, jitter bool) (func(float64) float64, []float64) {
				a, b := 1200+uniform(rng, jitter, 120), 2700+uniform(rng, jitter, 120)
				return func(t float64) float64 {
					switch {
					case t >= a && t < a+180:
						return 18
					case t >= b && t < b+60:
						return 15
					}
					return 3
				}, []float64{a, b}
			}},
		{Name: "on-off", Kind: "idle-gap", Duration: 3600, MaxRate: 6,
			Make: func(rng *rand.Rand, jitter bool) (func(float64) float64, []float64) {
				// 6 req/s for 5 minutes, then 10 idle minutes; each day's
				// cycle up to 30 s earlier or later.
				sh := uniform(rng, jitter, 30)
				var steps []float64
				for on := 600.0; on < 3600; on += 900 {
					steps = append(steps, on+sh)
				}
				return func(t float64) float64 {
					if p := math.Mod(t-sh+900, 900); p >= 600 && p < 900 {
						return 6
					}
					return 0
				}, steps
			}},
		{Name: "diurnal", Kind: "diurnal", Duration: 4 * 3600, MaxRate: 10,
			Make: func(rng *rand.Rand, jitter bool) (func(float64) float64, []float64) {
				// One day compressed into four hours: 0.5 → 9 → 0.5 req/s, with a
				// lunchtime dip; each day ±8 % busier and ±3 minutes shifted.
				k, sh := 1+uniform(rng, jitter, 0.08), uniform(rng, jitter, 180)
				return func(t float64) float64 {
					x := (t - sh) / (4 * 3600)
					base := 0.5 + 8.5*0.5*(1-math.Cos(2*math.Pi*x))
					return k * base * (1 - 0.15*math.Exp(-math.Pow((x-0.5)/0.04, 2)))
				}, nil
			}},
		{Name: "bursty", Kind: "bursty", Duration: 3600, MaxRate: 10,
			Make: func(rng *rand.Rand, _ bool) (func(float64) float64, []float64) {
				// 2.5 req/s with bursts of ×2.5–4 lasting 10–40 s, about one
				// every 2.5 minutes at random: most drain within seconds.
				type burst struct{ from, to, k float64 }
				var bs []burst
				for t := rng.ExpFloat64() * 150; t < 3600; t += rng.ExpFloat64() * 150 {
					bs = append(bs, burst{t, t + 10 + 30*rng.Float64(), 2.5 + 1.5*rng.Float64()})
				}
				var steps []float64
				for _, b := range bs {
					steps = append(steps, b.from)
				}
				return func(t float64) float64 {
					for _, b := range bs {
						if t >= b.from && t < b.to {
							return 2.5 * b.k
						}
					}
					return 2.5
				}, steps
			}},
	}
}

// Synthesize draws a trace from a shape: a non-homogeneous Poisson process
// (thinning) whose requests take their tokens from the pool, resampled with
// replacement. The same seed gives the same trace. The draw is the shape's
// canonical one (no jitter); see Draw.
func Synthesize(s Shape, pool []Request, seed uint64) Trace {
	return Draw(s, pool, seed, false)
}

// Draw is Synthesize with the shape's jitter on or off.
func Draw(s Shape, pool []Request, seed uint64, jitter bool) Trace {
	rate, steps := s.Make(rand.New(rand.NewPCG(seed, uint64(len(s.Name))+1)), jitter)
	rng := rand.New(rand.NewPCG(seed, uint64(len(s.Name))))
	var reqs []Request
	t := 0.0
	for {
		t += rng.ExpFloat64() / s.MaxRate
		if t >= s.Duration {
			break
		}
		if rng.Float64()*s.MaxRate > rate(t) {
			continue
		}
		r := Request{Arrival: t, Context: 1000, Generated: 200}
		if len(pool) > 0 {
			p := pool[rng.IntN(len(pool))]
			r.Context, r.Generated = p.Context, p.Generated
		}
		reqs = append(reqs, r)
	}
	return Trace{Name: s.Name, Kind: s.Kind, Duration: s.Duration, Requests: reqs, Steps: steps, Period: s.Duration}
}

// Previous draws the period before a trace of shape s (its warm-up): the
// same shape with another seed and jitter on, or only the Base rate when
// the shape's event is a one-off.
func Previous(s Shape, pool []Request, seed uint64) Trace {
	if s.OneOff {
		base := s.Base
		s.MaxRate = base
		s.Make = func(*rand.Rand, bool) (func(float64) float64, []float64) {
			return func(float64) float64 { return base }, nil
		}
	}
	tr := Draw(s, pool, seed*7919+101, true)
	tr.Name, tr.Steps = s.Name+" (previous period)", nil
	return tr
}

// WarmupOf returns the warm-up of a replayed trace that has no period
// before it: its own first ten minutes.
func WarmupOf(tr Trace) Trace {
	const d = 600.0
	w := Trace{Name: tr.Name + " (first 10 min)", Duration: math.Min(d, tr.Duration)}
	for _, r := range tr.Requests {
		if r.Arrival < w.Duration {
			w.Requests = append(w.Requests, r)
		}
	}
	return w
}

package sim

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// Baselines are the policies inflight is compared against for the targets.
var Baselines = []string{"hpa-cpu", "cortex", "knative-kpa"}

// WaitLimits are the p99 queue-wait bounds of the frontier (s).
var WaitLimits = []float64{2, 10}

// FormatWait formats a wait in seconds for reports ("0", "0.35", "12"; "—"
// for NaN); the unit is the caller's to print.
func FormatWait(s float64) string {
	switch {
	case math.IsNaN(s):
		return "—"
	case s < 0.01:
		return "0"
	case s < 10:
		return fmt.Sprintf("%.2f", s)
	}
	return fmt.Sprintf("%.0f", s)
}

func fmtReaction(s float64) string {
	if math.IsNaN(s) {
		return "—"
	}
	return fmt.Sprintf("%.0f s", s)
}

// BestBaseline returns the cheapest baseline holding p99 ≤ limit on trace ti.
func (o Outcome) BestBaseline(ti int, limit float64) (Summary, bool) {
	var best Summary
	ok := false
	for _, b := range Baselines {
		if s, found := o.Cheapest(ti, b, limit); found && (!ok || s.GPUHours < best.GPUHours) {
			best, ok = s, true
		}
	}
	return best, ok
}

// WriteMarkdown writes the results: per-trace tables at the default knobs,
// the frontier, the ablation and the targets.
func (o Outcome) WriteMarkdown(w io.Writer, command string) error {
	var b strings.Builder
	m := o.Model
	fmt.Fprintf(&b, "# inflight-sim results\n\n")
	fmt.Fprintf(&b, "Regenerate: `%s` (%.0f s on this machine).\n\n", command, o.Elapsed.Seconds())
	fmt.Fprintf(&b, "Replica model: batch %d, prefill %.0f tok/s, %.0f ms per generated token, cold start %.0f s; "+
		"least-loaded routing, one FIFO queue; GPU time from request to removal. Every autoscaler starts warm with "+
		"the replicas the first five minutes need, min 1 replica, max %d.\n\n",
		m.Batch, m.PrefillTPS, m.SecPerToken*1000, m.ColdStart, o.maxReplicas())
	b.WriteString("## Traces\n\n| trace | kind | duration | requests | mean req/s | peak 1-min demand (replicas) |\n|---|---|---|---|---|---|\n")
	for i, tr := range o.Traces {
		fmt.Fprintf(&b, "| %s | %s | %.0f min | %d | %.2f | %.0f |\n", tr.Name, tr.Kind, tr.Duration/60,
			len(tr.Requests), float64(len(tr.Requests))/tr.Duration, staticPeak(o.Envs[i]))
	}
	b.WriteString("\n## At default settings\n\nQueue wait = arrival → start of service. " +
		"Step → up: time from the trace's first load step to the policy's first scale-up decision.\n\n")
	for _, ti := range o.named() {
		tr := o.Traces[ti]
		fmt.Fprintf(&b, "### %s\n\n| policy | knob | GPU-h | p50 wait (s) | p95 | p99 | waits > 2 s | scale events | reversals | step → up |\n|---|---|---|---|---|---|---|---|---|---|\n", tr.Name)
		for _, sp := range o.Specs {
			s, ok := o.DefaultRun(ti, sp.Name)
			if !ok {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s %.3g | %.2f | %s | %s | %s | %.1f %% | %d | %d | %s |\n", sp.Name, sp.KnobName, s.Knob,
				s.GPUHours, FormatWait(s.P50), FormatWait(s.P95), FormatWait(s.P99), 100*s.Over2s, s.ScaleEvents, s.Reversals, fmtReaction(s.StepReaction))
		}
		b.WriteString("\n")
	}
	b.WriteString("## Cost-vs-wait frontier\n\nEach policy's main knob swept (inflight, Cortex, KPA, clairvoyant: the in-flight target " +
		"per replica at 0.4–2 × the batch; HPA: target utilization 0.3–0.95; static: replicas). Cell: the fewest GPU-hours " +
		"of any setting whose p99 wait stays within the bound (— : no setting does).\n\n")
	o.frontierTable(&b, o.Specs)
	b.WriteString("## inflight against the targets\n\nGPU-hours of the cheapest setting of each policy whose p99 wait " +
		"stays within the bound; saving and ratio at p99 ≤ 10 s (saving > 0: inflight is cheaper).\n\n")
	o.targetsTable(&b, o.named())
	if h := o.heldOut(); len(h) > 0 {
		b.WriteString("### Held-out traces\n\nThe same shapes drawn with other seeds: the policy was not developed on them.\n\n")
		o.targetsTable(&b, h)
	}
	if len(o.Ablations) > 0 {
		b.WriteString("## Ablation: inflight with one ingredient off\n\nSame traces, same sweep of the target; cells as in the frontier " +
			"(GPU-hours at p99 ≤ 10 s), then p99 wait and GPU-hours at the default target.\n\n")
		b.WriteString("| variant |")
		for _, ti := range o.named() {
			fmt.Fprintf(&b, " %s |", o.Traces[ti].Name)
		}
		b.WriteString("\n|---|" + strings.Repeat("---|", len(o.named())) + "\n")
		for _, sp := range append([]Spec{o.Specs[0]}, o.Ablations...) {
			fmt.Fprintf(&b, "| %s |", sp.Name)
			for _, ti := range o.named() {
				f := "—"
				if s, ok := o.Cheapest(ti, sp.Name, 10); ok {
					f = fmt.Sprintf("%.2f", s.GPUHours)
				}
				d, _ := o.DefaultRun(ti, sp.Name)
				fmt.Fprintf(&b, " %s · %s s / %.2f |", f, FormatWait(d.P99), d.GPUHours)
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (o Outcome) maxReplicas() int {
	if len(o.Envs) == 0 {
		return 0
	}
	return o.Envs[0].MaxReplicas
}

func (o Outcome) frontierTable(b *strings.Builder, specs []Spec) {
	b.WriteString("| policy |")
	for _, ti := range o.named() {
		fmt.Fprintf(b, " %s ≤2 s | ≤10 s |", o.Traces[ti].Name)
	}
	b.WriteString("\n|---|" + strings.Repeat("---|---|", len(o.named())) + "\n")
	for _, sp := range specs {
		fmt.Fprintf(b, "| %s |", sp.Name)
		for _, ti := range o.named() {
			for _, lim := range WaitLimits {
				if s, ok := o.Cheapest(ti, sp.Name, lim); ok {
					fmt.Fprintf(b, " %.2f |", s.GPUHours)
				} else {
					b.WriteString(" — |")
				}
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

// named returns the indices of the traces of the documented run;
// heldOut those drawn with other seeds.
func (o Outcome) named() []int   { return o.pick(false) }
func (o Outcome) heldOut() []int { return o.pick(true) }

func (o Outcome) pick(held bool) []int {
	var out []int
	for i, tr := range o.Traces {
		if tr.HeldOut == held {
			out = append(out, i)
		}
	}
	return out
}

// targetsTable compares inflight with the best baseline and the
// clairvoyant at both wait bounds on the traces tis.
func (o Outcome) targetsTable(b *strings.Builder, tis []int) {
	b.WriteString("| trace | kind | inflight ≤2 s | ≤10 s | best of HPA/Cortex/KPA ≤2 s | ≤10 s | saving | clairvoyant ≤10 s | inflight / clairvoyant | inflight step → up |\n" +
		"|---|---|---|---|---|---|---|---|---|---|\n")
	cell := func(s Summary, ok bool) string {
		if !ok {
			return "—"
		}
		return fmt.Sprintf("%.2f", s.GPUHours)
	}
	for _, ti := range tis {
		tr := o.Traces[ti]
		in2, ok2 := o.Cheapest(ti, "inflight", 2)
		in, okIn := o.Cheapest(ti, "inflight", 10)
		bb2, okB2 := o.BestBaseline(ti, 2)
		bb, okB := o.BestBaseline(ti, 10)
		cv, okC := o.Cheapest(ti, "clairvoyant", 10)
		saving, ratio := "—", "—"
		if okIn && okB {
			saving = fmt.Sprintf("%+.0f %%", 100*(1-in.GPUHours/bb.GPUHours))
		}
		if okIn && okC {
			ratio = fmt.Sprintf("%.2f", in.GPUHours/cv.GPUHours)
		}
		bname := func(s Summary, ok bool) string {
			if !ok {
				return "—"
			}
			return fmt.Sprintf("%.2f (%s)", s.GPUHours, s.Policy)
		}
		def, _ := o.DefaultRun(ti, "inflight")
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", tr.Name, tr.Kind, cell(in2, ok2), cell(in, okIn),
			bname(bb2, okB2), bname(bb, okB), saving, cell(cv, okC), ratio, fmtReaction(def.StepReaction))
	}
	b.WriteString("\n")
}

// WriteCSV writes every run, one line each: trace, policy, knob, whether
// it is the default knob, GPU-hours, p50/p95/p99 wait, share > 2 s, scale
// events, reversals and step → first scale-up (s, empty if none).
func (o Outcome) WriteCSV(w io.Writer) error {
	var b strings.Builder
	b.WriteString("trace,held_out,policy,knob,default,gpu_hours,p50,p95,p99,over_2s,scale_events,reversals,step_to_up\n")
	for ti, tr := range o.Traces {
		for _, sp := range append(append([]Spec(nil), o.Specs...), o.Ablations...) {
			for _, s := range o.Runs[ti][sp.Name] {
				step := ""
				if !math.IsNaN(s.StepReaction) {
					step = fmt.Sprintf("%g", s.StepReaction)
				}
				fmt.Fprintf(&b, "%s,%t,%s,%g,%t,%.4f,%.3f,%.3f,%.3f,%.4f,%d,%d,%s\n", tr.Name, tr.HeldOut, sp.Name, s.Knob,
					s.Default, s.GPUHours, s.P50, s.P95, s.P99, s.Over2s, s.ScaleEvents, s.Reversals, step)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

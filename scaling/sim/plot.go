package sim

import (
	"fmt"
	"image/color"
	"io"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// policyColors gives every policy a fixed colour across plots.
var policyColors = []color.Color{
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // inflight: red
	color.RGBA{R: 0xff, G: 0x98, B: 0x96, A: 0xff}, // inflight-zero: light red
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xae, G: 0xc7, B: 0xe8, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
	color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0xbc, G: 0xbd, B: 0x22, A: 0xff},
	color.RGBA{R: 0x17, G: 0xbe, B: 0xcf, A: 0xff},
}

func colorOf(i int) color.Color { return policyColors[i%len(policyColors)] }

// tile renders plots in a grid into a PNG written to w.
func tile(w io.Writer, plots [][]*plot.Plot, width, height vg.Length) error {
	img := vgimg.New(width, height)
	dc := draw.New(img)
	t := draw.Tiles{Rows: len(plots), Cols: len(plots[0]), PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(plots, t, dc)
	for r := range plots {
		for c := range plots[r] {
			if plots[r][c] != nil {
				plots[r][c].Draw(canvases[r][c])
			}
		}
	}
	_, err := vgimg.PngCanvas{Canvas: img}.WriteTo(w)
	return err
}

func grid(n, cols int) [][]*plot.Plot {
	rows := (n + cols - 1) / cols
	g := make([][]*plot.Plot, rows)
	for r := range g {
		g[r] = make([]*plot.Plot, cols)
	}
	return g
}

// WriteTimelines draws, per trace, the demand (replicas needed at the
// batch limit, 30 s mean) against each policy's requested replicas at its
// default knob.
func (o Outcome) WriteTimelines(w io.Writer) error {
	const step = 30
	g := grid(len(o.named()), 2)
	for gi, ti := range o.named() {
		tr := o.Traces[ti]
		p := plot.New()
		p.Title.Text = tr.Name
		p.X.Label.Text = "minutes"
		p.Y.Label.Text = "replicas"
		p.Legend.Top = true
		p.Legend.Left = true
		p.Legend.TextStyle.Font.Size = vg.Points(7)
		env := o.Envs[ti]
		var demand plotter.XYs
		for s := 0; s+step <= len(env.OfferedMean); s += step {
			sum := 0.0
			for _, v := range env.OfferedMean[s : s+step] {
				sum += v
			}
			demand = append(demand, plotter.XY{X: float64(s) / 60, Y: sum / step / float64(o.Model.Batch)})
		}
		if l, err := plotter.NewLine(demand); err == nil {
			l.Color = color.Black
			l.Width = vg.Points(1.5)
			p.Add(l)
			if gi == 0 {
				p.Legend.Add("demand", l)
			}
		}
		for si, sp := range o.Specs {
			s, ok := o.DefaultRun(ti, sp.Name)
			if !ok || s.Timeline == nil || len(s.Timeline.Requested) == 0 || sp.Name == "static" {
				continue
			}
			var xy plotter.XYs
			for i := 0; i < len(s.Timeline.Requested); i += step {
				xy = append(xy, plotter.XY{X: float64(i) / 60, Y: float64(s.Timeline.Requested[i])})
			}
			l, err := plotter.NewLine(xy)
			if err != nil {
				return err
			}
			l.Color = colorOf(si)
			l.Width = vg.Points(0.8)
			if sp.Name == "inflight" {
				l.Width = vg.Points(1.4)
			}
			p.Add(l)
			if gi == 0 {
				p.Legend.Add(sp.Name, l)
			}
		}
		g[gi/2][gi%2] = p
	}
	return tile(w, g, vg.Points(900), vg.Points(260*float64(len(g))))
}

// WriteFrontier draws, per trace, GPU-hours against p99 queue wait for
// every setting of every policy's knob.
func (o Outcome) WriteFrontier(w io.Writer) error {
	g := grid(len(o.named()), 3)
	for gi, ti := range o.named() {
		tr := o.Traces[ti]
		p := plot.New()
		p.Title.Text = tr.Name
		p.X.Label.Text = "GPU-hours"
		p.Y.Label.Text = "p99 queue wait (s)"
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Legend.Top = true
		p.Legend.TextStyle.Font.Size = vg.Points(7)
		for si, sp := range o.Specs {
			var xy plotter.XYs
			for _, s := range o.Runs[ti][sp.Name] {
				xy = append(xy, plotter.XY{X: s.GPUHours, Y: math.Max(0.01, s.P99)})
			}
			if len(xy) == 0 {
				continue
			}
			sc, err := plotter.NewScatter(xy)
			if err != nil {
				return fmt.Errorf("frontier %s/%s: %w", tr.Name, sp.Name, err)
			}
			sc.Color = colorOf(si)
			sc.Radius = vg.Points(2.2)
			p.Add(sc)
			if gi == 0 {
				p.Legend.Add(sp.Name, sc)
			}
		}
		for _, lim := range WaitLimits {
			l, _ := plotter.NewLine(plotter.XYs{{X: p.X.Min, Y: lim}, {X: p.X.Max, Y: lim}})
			l.Color = color.Gray{Y: 0xa0}
			l.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
			p.Add(l)
		}
		g[gi/3][gi%3] = p
	}
	return tile(w, g, vg.Points(1000), vg.Points(300*float64(len(g))))
}

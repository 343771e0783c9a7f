package main

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	red   = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	blue  = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	green = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
	grey  = color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff}
)

// writePNG draws the timeline: requests in flight seen at the mesh (top)
// and, below, the replicas desired and ready against the demand in
// replicas (in-flight / target), on the trace's uncompressed minutes.
func (d *demo) writePNG(path string) error {
	d.mu.Lock()
	samples := append([]sample(nil), d.samples...)
	d.mu.Unlock()
	if len(samples) == 0 {
		return fmt.Errorf("no samples")
	}
	x := func(s sample) float64 { return s.T.Minutes() * d.opt.Speed }
	inflight := make(plotter.XYs, len(samples))
	demand := make(plotter.XYs, len(samples))
	var desired, ready plotter.XYs
	for i, s := range samples {
		inflight[i] = plotter.XY{X: x(s), Y: s.MeshInFlight}
		demand[i] = plotter.XY{X: x(s), Y: s.MeshInFlight / d.opt.Target}
		// Steps: hold the previous value until this sample.
		if i > 0 {
			desired = append(desired, plotter.XY{X: x(s), Y: float64(samples[i-1].Desired)})
			ready = append(ready, plotter.XY{X: x(s), Y: float64(samples[i-1].Ready)})
		}
		desired = append(desired, plotter.XY{X: x(s), Y: float64(s.Desired)})
		ready = append(ready, plotter.XY{X: x(s), Y: float64(s.Ready)})
	}

	top := plot.New()
	top.Title.Text = fmt.Sprintf("inflight demo: %s at %g×, target %g in flight per replica", d.trace.Name, d.opt.Speed, d.opt.Target)
	top.Y.Label.Text = "requests in flight (mesh)"
	top.X.Label.Text = "trace time (min)"
	top.Add(plotter.NewGrid())
	l, err := plotter.NewLine(inflight)
	if err != nil {
		return err
	}
	l.Color, l.Width = red, vg.Points(1)
	top.Add(l)
	top.Legend.Add("in flight (sum of extproc snapshots)", l)
	top.Legend.Top = true
	top.Y.Min = 0

	bot := plot.New()
	bot.Y.Label.Text = "replicas"
	bot.X.Label.Text = "trace time (min)"
	bot.Add(plotter.NewGrid())
	dl, err := plotter.NewLine(demand)
	if err != nil {
		return err
	}
	dl.Color, dl.Width, dl.Dashes = grey, vg.Points(0.8), []vg.Length{vg.Points(3), vg.Points(2)}
	des, err := plotter.NewLine(desired)
	if err != nil {
		return err
	}
	des.Color, des.Width = blue, vg.Points(1.6)
	rd, err := plotter.NewLine(ready)
	if err != nil {
		return err
	}
	rd.Color, rd.Width = green, vg.Points(1.2)
	bot.Add(dl, des, rd)
	bot.Legend.Add("demand: in flight / target (clipped at max-replicas + 2)", dl)
	bot.Legend.Add("desired (spec.replicas)", des)
	bot.Legend.Add("ready", rd)
	bot.Legend.Top = true
	bot.Y.Min = 0
	bot.Y.Max = float64(d.opt.MaxReplica + 2) // demand beyond it is clipped

	img := vgimg.New(9*vg.Inch, 6*vg.Inch)
	dc := draw.New(img)
	t := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	plots := [][]*plot.Plot{{top}, {bot}}
	canvases := plot.Align(plots, t, dc)
	top.Draw(canvases[0][0])
	bot.Draw(canvases[1][0])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// Package plots draws the benchmark pictures as PNG files with gonum.org/v1/plot: serving
// latency against throughput across request rates (from `qvl bench serve` results), and decode
// throughput and time per token against batch size beside their floors (from `qvl bench offline`).
package plots

import (
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/qvl-dev/qvl/bench"
	"github.com/qvl-dev/qvl/bench/offline"
)

// Colors of the series: p50 solid, p99 dashed, floors grey.
var (
	blue   = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	orange = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	grey   = color.RGBA{R: 120, G: 120, B: 120, A: 255}
	dashed = []vg.Length{vg.Points(5), vg.Points(3)}
)

// series is one line of a panel.
type series struct {
	name   string
	xys    plotter.XYs
	color  color.Color
	dashes []vg.Length
	labels []string
}

// panel is one plot of a figure.
type panel struct {
	title, xLabel, yLabel string
	lines                 []series
	logX, logY            bool
	xTicks                []float64
}

// LatencyThroughput writes a PNG with two panels — TTFT and TPOT (median and p99) against
// output token throughput — one point per result (e.g. per request rate of a sweep), labelled
// with its request rate. Results are ordered by rate; p99 lines appear when 99 was recorded.
func LatencyThroughput(path, title string, results []*bench.Result) error {
	if len(results) == 0 {
		return errors.New("plots: no results to draw")
	}
	rs := slices.Clone(results)
	slices.SortFunc(rs, func(a, b *bench.Result) int {
		switch {
		case a.RequestRate < b.RequestRate:
			return -1
		case a.RequestRate > b.RequestRate:
			return 1
		}
		return 0
	})
	var labels []string
	for _, r := range rs {
		l := bench.PyFloat(r.RequestRate) + " rps"
		if r.MaxConcurrency != nil {
			l += " c" + strconv.Itoa(*r.MaxConcurrency)
		}
		labels = append(labels, l)
	}
	metric := func(name, key string, median func(*bench.Result) float64) panel {
		p := panel{title: name, xLabel: "output throughput (tok/s)", yLabel: name + " (ms)"}
		var p50, p99 plotter.XYs
		have99 := true
		for _, r := range rs {
			p50 = append(p50, plotter.XY{X: r.OutputThroughput, Y: median(r)})
			v, ok := r.Percentile(key, 99)
			have99 = have99 && ok
			p99 = append(p99, plotter.XY{X: r.OutputThroughput, Y: v})
		}
		p.lines = append(p.lines, series{name: "p50", xys: p50, color: blue, labels: labels})
		if have99 {
			p.lines = append(p.lines, series{name: "p99", xys: p99, color: orange, dashes: dashed})
		}
		return p
	}
	return draw2(path, title, []panel{
		metric("TTFT", "ttft", func(r *bench.Result) float64 { return r.MedianTTFTMs }),
		metric("TPOT", "tpot", func(r *bench.Result) float64 { return r.MedianTPOTMs }),
	})
}

// DecodeScaling writes a PNG with two panels: decode tokens/s (batch / mean step) against batch
// size beside the floor's tokens/s, and time per output token (the median step) against batch
// size beside the floor's time.
func DecodeScaling(path string, rep *offline.Report) error {
	if len(rep.Decode) == 0 {
		return errors.New("plots: the report has no decode results")
	}
	ds := slices.Clone(rep.Decode)
	slices.SortFunc(ds, func(a, b offline.DecodeResult) int { return a.Batch - b.Batch })
	var tok, tokFloor, tpot, tpotFloor plotter.XYs
	var ticks []float64
	for _, d := range ds {
		b := float64(d.Batch)
		ticks = append(ticks, b)
		tok = append(tok, plotter.XY{X: b, Y: d.TokensPerS})
		tokFloor = append(tokFloor, plotter.XY{X: b, Y: d.FloorTokensPerS})
		t := d.TPOTMs // the median step, as the tables show it
		if t == 0 {
			t = d.MeanStepMs
		}
		tpot = append(tpot, plotter.XY{X: b, Y: t})
		tpotFloor = append(tpotFloor, plotter.XY{X: b, Y: d.FloorMs})
	}
	title := fmt.Sprintf("decode at context %d: %s on %s", rep.Context, rep.Model, rep.Backend)
	return draw2(path, title, []panel{
		{title: "throughput", xLabel: "batch size", yLabel: "tokens/s", logX: true, logY: true, xTicks: ticks,
			lines: []series{{name: "measured", xys: tok, color: blue}, {name: "floor", xys: tokFloor, color: grey, dashes: dashed}}},
		{title: "time per output token", xLabel: "batch size", yLabel: "ms", logX: true, xTicks: ticks,
			lines: []series{{name: "measured", xys: tpot, color: blue}, {name: "floor", xys: tpotFloor, color: grey, dashes: dashed}}},
	})
}

// draw2 renders panels side by side into a PNG. gonum/plot panics on some inputs (a log axis
// with a value ≤ 0); such a panic is returned as an error.
func draw2(path, title string, panels []panel) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("plots: drawing %s: %v", path, r)
		}
	}()
	row := make([]*plot.Plot, len(panels))
	for i, pn := range panels {
		p, err := build(pn)
		if err != nil {
			return fmt.Errorf("plots: %s: %w", path, err)
		}
		row[i] = p
	}
	const w, h = 12 * vg.Inch, 5 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	head := plot.New()
	head.Title.Text = title
	top := vg.Points(34)
	titleCanvas := draw.Crop(dc, 0, 0, h-top, 0)
	titleCanvas.FillText(head.Title.TextStyle, vg.Point{X: w / 2, Y: h - top/2}, title)
	body := draw.Crop(dc, 0, 0, 0, -top)
	tiles := draw.Tiles{Rows: 1, Cols: len(panels), PadX: vg.Points(24), PadTop: vg.Points(4), PadBottom: vg.Points(4),
		PadLeft: vg.Points(4), PadRight: vg.Points(12)}
	cs := plot.Align([][]*plot.Plot{row}, tiles, body)
	for i, p := range row {
		p.Draw(cs[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plots: writing %s: %w", path, err)
	}
	return f.Close()
}

// build makes one panel's plot.
func build(pn panel) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = pn.title
	p.X.Label.Text, p.Y.Label.Text = pn.xLabel, pn.yLabel
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), vg.Points(-4)
	p.Add(plotter.NewGrid())
	positive := func(get func(plotter.XY) float64) bool {
		for _, s := range pn.lines {
			for _, xy := range s.xys {
				if v := get(xy); !(v > 0) || math.IsInf(v, 0) {
					return false
				}
			}
		}
		return true
	}
	if pn.logX && positive(func(xy plotter.XY) float64 { return xy.X }) {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	if pn.xTicks != nil {
		var ticks []plot.Tick
		for _, v := range pn.xTicks {
			ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
	}
	if pn.logY && positive(func(xy plotter.XY) float64 { return xy.Y }) {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = ticks125{}
	} else {
		p.Y.Min = 0
	}
	for _, s := range pn.lines {
		for _, xy := range s.xys {
			if math.IsNaN(xy.X) || math.IsNaN(xy.Y) || math.IsInf(xy.X, 0) || math.IsInf(xy.Y, 0) {
				return nil, fmt.Errorf("series %s of %q has a non-finite point (%v, %v)", s.name, pn.title, xy.X, xy.Y)
			}
		}
		l, sc, err := plotter.NewLinePoints(s.xys)
		if err != nil {
			return nil, fmt.Errorf("series %s of %q: %w", s.name, pn.title, err)
		}
		l.Color, sc.Color = s.color, s.color
		l.Dashes = s.dashes
		l.Width = vg.Points(1.5)
		sc.Shape = draw.CircleGlyph{}
		p.Add(l, sc)
		p.Legend.Add(s.name, l, sc)
		if s.labels != nil {
			lb, err := plotter.NewLabels(plotter.XYLabels{XYs: s.xys, Labels: s.labels})
			if err != nil {
				return nil, err
			}
			for i := range lb.TextStyle {
				lb.TextStyle[i].Font.Size = vg.Points(8)
				lb.TextStyle[i].Color = grey
			}
			lb.Offset = vg.Point{X: vg.Points(4), Y: vg.Points(4)}
			p.Add(lb)
		}
	}
	return p, nil
}

// ticks125 marks a log axis at 1, 2 and 5 times each power of ten, labelled (gonum's LogTicks
// labels only the powers of ten, which leaves short ranges with one label or none).
type ticks125 struct{}

// Ticks implements plot.Ticker.
func (ticks125) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v >= lo*(1-1e-9) && v <= hi*(1+1e-9) {
				ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', 4, 64)})
			}
		}
	}
	return ts
}

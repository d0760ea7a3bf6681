// Package verify checks qvl against reference outputs from Hugging Face transformers (a
// goldens directory, see testdata/goldens/README.md). Every case runs through the serving
// engine, so the check covers the real path: scheduling, the paged KV cache, chunked prefill and
// teacher-forced decode one token at a time.
package verify

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// Options configure Run.
type Options struct {
	// MaxAbs is the largest |Δlogit| allowed (default 2e-3); negative disables the check.
	MaxAbs float64
	// MaxRelL2 is the largest relative L2 error of logits allowed; 0 disables the check (use 2e-2 for bf16 backends).
	MaxRelL2 float64
	// GreedyMargin: a greedy token that differs fails only where the reference's top-2 margin exceeds it (default 1e-2).
	GreedyMargin float64
	// MaxNumBatchedTokens is the engine's step budget (small values force chunked prefill); 0: engine default.
	MaxNumBatchedTokens int
	// Dump, when set, is a directory that receives <case>.safetensors with the computed logits.
	Dump string
	// Out receives one line per case (nil: discarded).
	Out io.Writer
}

// CaseResult is one case's outcome.
type CaseResult struct {
	Name, Kind string
	// MaxAbs and RelL2 compare every prompt-position and generated-position logit.
	MaxAbs, RelL2 float64
	// Positions is "ok", "n/a" or a description of the first mismatch.
	Positions string
	// Projector is the max |Δ| of the projector output against the reference, -1 when not applicable.
	Projector float64
	// GreedyAgree of GreedyTotal generated tokens are the reference's argmax; GreedyFail counts
	// disagreements where the reference margin exceeds Options.GreedyMargin.
	GreedyAgree, GreedyTotal, GreedyFail int
	Pass                                 bool
	// Err is set when the case could not run.
	Err error
}

// Run verifies every case of the goldens directory dir on backend b.
func Run(ctx context.Context, dir string, b ml.Backend, o Options) ([]CaseResult, error) {
	if o.MaxAbs == 0 {
		o.MaxAbs = 2e-3
	}
	if o.GreedyMargin == 0 {
		o.GreedyMargin = 1e-2
	}
	gs, err := loader.LoadGoldens(dir)
	if err != nil {
		return nil, err
	}
	var projDir string
	if _, err := os.Stat(filepath.Join(gs.ProjectorDir(), loader.ProjectorConfigFileName)); err == nil {
		projDir = gs.ProjectorDir()
	}
	m, err := model.Open(b, gs.ModelDir(), model.Options{ProjectorDir: projDir})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	eng, err := engine.New(m, engine.Config{MaxNumBatchedTokens: o.MaxNumBatchedTokens, KVCacheBytes: 64 << 20})
	if err != nil {
		return nil, err
	}
	if o.Dump != "" {
		if err := os.MkdirAll(o.Dump, 0o755); err != nil {
			return nil, err
		}
	}
	cases := make([]*runCase, len(gs.Cases))
	for i, gc := range gs.Cases {
		cases[i] = &runCase{gc: gc, res: CaseResult{Name: gc.Name, Kind: gc.Kind, Projector: -1, Positions: "n/a"}}
		if err := cases[i].prepare(gs, m); err != nil {
			cases[i].res.Err = err
		}
	}
	// Projector checks run before the engine starts stepping: one goroutine drives the backend.
	for _, c := range cases {
		if c.res.Err == nil {
			c.checkProjector(m)
		}
	}
	// All cases run together: the engine batches them, and must give each what it gives alone.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- eng.Run(runCtx) }()
	var wg sync.WaitGroup
	for _, c := range cases {
		if c.res.Err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.out, c.res.Err = eng.Generate(ctx, c.req)
		}()
	}
	wg.Wait()
	eng.Close()
	if err := <-done; err != nil && ctx.Err() == nil {
		return nil, err
	}
	results := make([]CaseResult, len(cases))
	for i, c := range cases {
		if c.res.Err == nil {
			c.compare(m.Config.VocabSize, o)
			if o.Dump != "" {
				c.res.Err = c.dump(o.Dump, m.Config.VocabSize)
			}
		}
		c.res.Pass = c.res.Err == nil && c.res.Pass
		results[i] = c.res
		if o.Out != nil {
			fmt.Fprintln(o.Out, c.res.Line())
		}
	}
	return results, nil
}

// Line formats a result as one line of the verify report.
func (r CaseResult) Line() string {
	if r.Err != nil {
		return fmt.Sprintf("%-12s FAIL  %v", r.Name, r.Err)
	}
	status := "ok  "
	if !r.Pass {
		status = "FAIL"
	}
	proj := "n/a"
	if r.Projector >= 0 {
		proj = fmt.Sprintf("%.1e", r.Projector)
	}
	greedy := "n/a"
	if r.GreedyTotal > 0 {
		greedy = fmt.Sprintf("%d/%d", r.GreedyAgree, r.GreedyTotal)
		if r.GreedyFail > 0 {
			greedy += fmt.Sprintf(" (%d beyond margin)", r.GreedyFail)
		}
	}
	return fmt.Sprintf("%-12s %s  max|Δlogit| %.2e  relL2 %.2e  positions %s  projector %s  greedy %s",
		r.Name, status, r.MaxAbs, r.RelL2, r.Positions, proj, greedy)
}

// runCase is one golden case on its way through the engine.
type runCase struct {
	gc  loader.GoldenCase
	req *engine.Request
	out *engine.Result
	res CaseResult

	promptLen    int
	wantLogits   []float32
	wantGen      []float32
	genIDs       []int
	embeddings   []float32
	wantProjects []float32
}

func readF32(f *loader.File, name string) ([]float32, error) {
	t, err := f.Tensor(name)
	if err != nil {
		return nil, err
	}
	return t.Float32()
}

func readInts(f *loader.File, name string) ([]int, error) {
	t, err := f.Tensor(name)
	if err != nil {
		return nil, err
	}
	x, err := t.Int64s()
	if err != nil {
		return nil, err
	}
	out := make([]int, len(x))
	for i, v := range x {
		out[i] = int(v)
	}
	return out, nil
}

// prepare reads a case and builds its engine request.
func (c *runCase) prepare(gs *loader.GoldenSet, m *model.Model) error {
	f, err := c.gc.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	ids, err := readInts(f, "input_ids")
	if err != nil {
		return err
	}
	c.promptLen = len(ids)
	if c.wantLogits, err = readF32(f, "logits"); err != nil {
		return err
	}
	req := &engine.Request{ID: c.gc.Name, Prompt: ids, PromptLogits: true, ReturnLogits: true, IgnoreEOS: true,
		Sampling: sample.Params{Logprobs: -1}, MaxTokens: 1}
	if f.Has("generated_ids") {
		if c.genIDs, err = readInts(f, "generated_ids"); err != nil {
			return err
		}
		if c.wantGen, err = readF32(f, "generated_logits"); err != nil {
			return err
		}
		req.Forced, req.MaxTokens = c.genIDs, len(c.genIDs)
	}
	h := m.Config.HiddenSize
	var spans []model.ImageSpan
	switch c.gc.Kind {
	case loader.KindImage:
		grids, err := readInts(f, "image_grid_thw")
		if err != nil {
			return err
		}
		emb, err := readF32(f, "image_embeds")
		if err != nil {
			return err
		}
		var ds []float32
		levels := 0
		if f.Has("deepstack_embeds") {
			if ds, err = readF32(f, "deepstack_embeds"); err != nil {
				return err
			}
			levels = len(ds) / len(emb)
		}
		nv, row := len(emb)/h, 0
		for g := 0; g+2 < len(grids); g += 3 {
			thw := [3]int{grids[g], grids[g+1], grids[g+2]}
			merged, err := model.MergedGrid(thw, m.Config.SpatialMergeSize)
			if err != nil {
				return err
			}
			n := merged[0] * merged[1] * merged[2]
			if row+n > nv {
				return fmt.Errorf("%s: image_embeds has %d rows, the grids need more", c.gc.Name, nv)
			}
			im := engine.Image{GridTHW: thw, Embeds: emb[row*h : (row+n)*h]}
			for l := 0; l < levels; l++ {
				im.DeepStack = append(im.DeepStack, ds[(l*nv+row)*h:(l*nv+row+n)*h])
			}
			req.Images = append(req.Images, im)
			row += n
		}
		spans = imageSpans(ids, m.Config.ImageTokenID, req.Images, m.Config.SpatialMergeSize, 0)
	case loader.KindCustom:
		if !m.HasProjector() {
			return fmt.Errorf("%s: the case needs a projector and the goldens directory has none", c.gc.Name)
		}
		if c.embeddings, err = readF32(f, "embeddings"); err != nil {
			return err
		}
		d := m.Projector.InputDim
		for e := 0; e+d <= len(c.embeddings); e += d {
			req.Images = append(req.Images, engine.Image{Custom: c.embeddings[e : e+d]})
		}
		if f.Has("projected") {
			if c.wantProjects, err = readF32(f, "projected"); err != nil {
				return err
			}
		}
		spans = imageSpans(ids, m.Config.ImageTokenID, req.Images, m.Config.SpatialMergeSize, m.Projector.TokensPerEmbedding)
	}
	if f.Has("position_ids") {
		want, err := readInts(f, "position_ids")
		if err != nil {
			return err
		}
		c.res.Positions = checkPositions(ids, spans, want)
	}
	c.req = req
	return nil
}

// imageSpans finds each image's run of pad tokens; k > 0 marks custom embeddings of k tokens.
func imageSpans(ids []int, pad int, images []engine.Image, merge, k int) []model.ImageSpan {
	var spans []model.ImageSpan
	i := 0
	for _, im := range images {
		for i < len(ids) && ids[i] != pad {
			i++
		}
		grid := [3]int{1, 1, k}
		if k == 0 {
			grid, _ = model.MergedGrid(im.GridTHW, merge)
		}
		spans = append(spans, model.ImageSpan{Start: i, Grid: grid})
		i += grid[0] * grid[1] * grid[2]
	}
	return spans
}

// checkPositions compares the runtime's position rule with the reference position_ids [3, L].
func checkPositions(ids []int, spans []model.ImageSpan, want []int) string {
	got, _, err := model.Positions(len(ids), spans)
	if err != nil {
		return err.Error()
	}
	n := len(ids)
	if len(want) != 3*n {
		return fmt.Sprintf("reference has %d positions for %d tokens", len(want), n)
	}
	for i := 0; i < n; i++ {
		for a := 0; a < 3; a++ {
			if int(got[3*i+a]) != want[a*n+i] {
				return fmt.Sprintf("token %d axis %d: got %d, want %d", i, a, got[3*i+a], want[a*n+i])
			}
		}
	}
	return "ok"
}

func (c *runCase) checkProjector(m *model.Model) {
	if c.wantProjects == nil {
		return
	}
	got, err := m.Project(c.embeddings)
	if err != nil {
		c.res.Err = err
		return
	}
	if len(got) != len(c.wantProjects) {
		c.res.Err = fmt.Errorf("projector made %d values, the reference %d", len(got), len(c.wantProjects))
		return
	}
	c.res.Projector = maxAbs(got, c.wantProjects)
}

func maxAbs(a, b []float32) float64 {
	var m float64
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i])-float64(b[i])))
	}
	return m
}

// compare fills the result's error measures and pass/fail.
func (c *runCase) compare(v int, o Options) {
	r := &c.res
	got := c.out.PromptLogits
	if len(got) != len(c.wantLogits) {
		r.Err = fmt.Errorf("engine returned %d prompt logits, want %d", len(got), len(c.wantLogits))
		return
	}
	var num, den float64
	acc := func(a, b []float32) {
		r.MaxAbs = math.Max(r.MaxAbs, maxAbs(a, b))
		for i := range a {
			d := float64(a[i]) - float64(b[i])
			num += d * d
			den += float64(b[i]) * float64(b[i])
		}
	}
	acc(got, c.wantLogits)
	if c.wantGen != nil {
		if len(c.out.Logits) != len(c.genIDs) {
			r.Err = fmt.Errorf("engine returned %d generated positions, want %d", len(c.out.Logits), len(c.genIDs))
			return
		}
		for i, row := range c.out.Logits {
			want := c.wantGen[i*v : (i+1)*v]
			acc(row, want)
			r.GreedyTotal++
			if argmax(row) == c.genIDs[i] {
				r.GreedyAgree++
			} else if margin(want) > o.GreedyMargin {
				r.GreedyFail++
			}
		}
	}
	if den > 0 {
		r.RelL2 = math.Sqrt(num / den)
	}
	r.Pass = r.GreedyFail == 0 && (r.Positions == "ok" || r.Positions == "n/a")
	if o.MaxAbs > 0 && r.MaxAbs > o.MaxAbs {
		r.Pass = false
	}
	if o.MaxRelL2 > 0 && r.RelL2 > o.MaxRelL2 {
		r.Pass = false
	}
	if r.Projector >= 0 && o.MaxAbs > 0 && r.Projector > o.MaxAbs {
		r.Pass = false
	}
}

func argmax(row []float32) int {
	best := 0
	for i, x := range row {
		if x > row[best] {
			best = i
		}
	}
	return best
}

// margin is the gap between the two largest logits.
func margin(row []float32) float64 {
	s := append([]float32(nil), row...)
	sort.Slice(s, func(i, j int) bool { return s[i] > s[j] })
	if len(s) < 2 {
		return math.Inf(1)
	}
	return float64(s[0] - s[1])
}

// dump writes the computed logits under the golden's tensor names and shapes.
func (c *runCase) dump(dir string, v int) error {
	ts := []loader.WriteTensor{{Name: "logits", DType: loader.F32, Shape: []int{c.promptLen, v}, Data: loader.F32Bytes(c.out.PromptLogits)}}
	if c.wantGen != nil {
		var gen []float32
		for _, row := range c.out.Logits {
			gen = append(gen, row...)
		}
		ts = append(ts, loader.WriteTensor{Name: "generated_logits", DType: loader.F32, Shape: []int{len(c.out.Logits), v}, Data: loader.F32Bytes(gen)})
	}
	return loader.WriteFile(filepath.Join(dir, c.gc.Name+".safetensors"), ts, map[string]string{"producer": "qvl verify"})
}

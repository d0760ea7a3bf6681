package cuda

import (
	"context"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
	"github.com/stretchr/testify/require"
)

// EnvSynth2B names a directory holding a checkpoint written by `qvl synth --shape qwen3-vl-2b`
// (with its projector/). The GPU tests that need the 2B shape use it, or synthesize one into a
// temporary directory (3.4 GB) when it is unset.
const EnvSynth2B = "QVL_SYNTH_2B"

// synth2B returns the directory of a synthetic Qwen3-VL-2B checkpoint.
func synth2B(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv(EnvSynth2B); dir != "" {
		_, err := os.Stat(filepath.Join(dir, "config.json"))
		require.NoError(t, err, "%s=%s", EnvSynth2B, dir)
		return dir
	}
	dir := filepath.Join(t.TempDir(), "qwen3-vl-2b")
	start := time.Now()
	require.NoError(t, synth.Write(dir, synth.Shapes["qwen3-vl-2b"], synth.Options{Seed: 1}))
	t.Logf("synthesized the 2B checkpoint in %s", time.Since(start).Round(time.Millisecond))
	return dir
}

// mixedRequests makes 8 requests teacher-forced for steps tokens: text of several lengths,
// Qwen3-VL image embeddings with DeepStack features (one and two images), and custom
// embeddings through the projector.
func mixedRequests(spec model.Spec, seed uint64, steps int) []*engine.Request {
	r := rand.New(rand.NewPCG(seed, 5))
	h := spec.HiddenSize
	vocab := min(spec.VocabSize-16, 150000) // ordinary tokens, clear of the special ids
	text := func(n int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = r.IntN(vocab)
		}
		return out
	}
	vec := func(n int, s float64) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(s * r.NormFloat64())
		}
		return x
	}
	qwenImage := func(hp, wp int) (engine.Image, int) {
		n := hp * wp / 4
		im := engine.Image{GridTHW: [3]int{1, hp, wp}, Embeds: vec(n*h, 0.1)}
		for l := 0; l < spec.DeepStackLevels; l++ {
			im.DeepStack = append(im.DeepStack, vec(n*h, 0.05))
		}
		return im, n
	}
	pads := func(n int) []int {
		out := make([]int, n)
		for i := range out {
			out[i] = spec.ImageTokenID
		}
		return out
	}
	var reqs []*engine.Request
	add := func(prompt []int, images []engine.Image) {
		reqs = append(reqs, &engine.Request{Prompt: prompt, Images: images, Forced: text(steps), MaxTokens: steps,
			IgnoreEOS: true, ReturnLogits: true, Sampling: sample.Params{Logprobs: -1}})
	}
	for _, n := range []int{5, 37, 70} {
		add(text(n), nil)
	}
	for k := 0; k < 3; k++ {
		var prompt []int
		var images []engine.Image
		for i := 0; i <= k%2; i++ {
			im, n := qwenImage(4+2*k, 6)
			prompt = append(append(append(prompt, text(3+k)...), pads(n)...), text(2)...)
			images = append(images, im)
		}
		add(prompt, images)
	}
	for k := 0; k < 2; k++ {
		var prompt []int
		var images []engine.Image
		for i := 0; i <= k; i++ {
			images = append(images, engine.Image{Custom: vec(spec.ProjectorInputDim, 1)})
			prompt = append(append(append(prompt, text(4)...), pads(spec.ProjectorTokens)...), text(3)...)
		}
		add(prompt, images)
	}
	return reqs
}

// runRequests serves mixedRequests on b from a checkpoint and projector directory and returns
// each request's logits per forced step.
func runRequests(t *testing.T, b ml.Backend, dir, projDir string, seed uint64, steps int) [][][]float32 {
	m, err := model.Open(b, dir, model.Options{ProjectorDir: projDir})
	require.NoError(t, err)
	defer m.Close()
	e, err := engine.New(m, engine.Config{KVCacheBytes: 512 << 20})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	// The engine's step goroutine must be gone before the model's memory is freed.
	defer func() {
		cancel()
		<-done
	}()
	reqs := mixedRequests(m.Spec(), seed, steps)
	out := make([][][]float32, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := e.Generate(ctx, req)
			require.NoError(t, err, "request %d", i)
			out[i] = res.Logits
		}()
	}
	wg.Wait()
	return out
}

// compareRuns checks every step's logits of got against want (relative L2 ≤ bound) and returns
// the worst error.
func compareRuns(t *testing.T, got, want [][][]float32, bound float64) float64 {
	require.Len(t, got, len(want))
	worst := 0.0
	for i := range want {
		require.Len(t, got[i], len(want[i]), "request %d", i)
		for s := range want[i] {
			var num, den float64
			for j, w := range want[i][s] {
				d := float64(got[i][s][j]) - float64(w)
				num += d * d
				den += float64(w) * float64(w)
			}
			rel := math.Sqrt(num / den)
			worst = max(worst, rel)
			require.LessOrEqual(t, rel, bound, "request %d step %d: relative L2 error of the logits", i, s)
		}
	}
	return worst
}

// TestMixedRequestsSim is the 2B test's comparison on the tiny goldens model and the CPU
// emulation of the kernels, 8 steps.
func TestMixedRequestsSim(t *testing.T) {
	skipShortSim(t, false)
	b := simBackend(t)
	root, err := repoRoot()
	require.NoError(t, err)
	dir := filepath.Join(root, "testdata", "goldens", "qwen3vl-tiny-a")
	want := runRequests(t, cpu.NewReference(), filepath.Join(dir, "model"), filepath.Join(dir, "projector"), 4, 8)
	got := runRequests(t, b, filepath.Join(dir, "model"), filepath.Join(dir, "projector"), 4, 8)
	t.Logf("worst relative L2 error of the logits: %.3e (bound 2e-2)", compareRuns(t, got, want, 2e-2))
}

// TestGPUSynth2BMixedRequests: on the synthetic 2B checkpoint, 8 mixed requests (text, image
// embeddings with DeepStack, custom embeddings) teacher-forced for 32 steps through the engine
// give the logits of the CPU backend (its fast kernels) within a relative L2 error of 2e-2 at
// every step.
func TestGPUSynth2BMixedRequests(t *testing.T) {
	b := gpuBackend(t)
	dir := synth2B(t)
	proj := filepath.Join(dir, "projector")
	start := time.Now()
	want := runRequests(t, cpu.New(cpu.Options{}), dir, proj, 3, 32)
	t.Logf("CPU reference: %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	got := runRequests(t, b, dir, proj, 3, 32)
	t.Logf("CUDA: %s", time.Since(start).Round(time.Millisecond))
	worst := compareRuns(t, got, want, 2e-2)
	t.Logf("worst relative L2 error of the logits over 8 requests × 32 steps: %.3e (bound 2e-2)", worst)
}

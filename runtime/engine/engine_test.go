package engine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// The golden tiny model: vocab 1000, hidden 128, 2 DeepStack levels, a projector from 48 dims to
// 4 tokens; image pad id 995, vision start/end 992/993, eos 991.
const (
	goldenModel = "../../testdata/goldens/qwen3vl-tiny-a/model"
	goldenProj  = "../../testdata/goldens/qwen3vl-tiny-a/projector"
	imgPad      = 995
	visStart    = 992
	visEnd      = 993
	hidden      = 128
)

func openModel(t testing.TB) *model.Model {
	m, err := model.Open(cpu.NewReference(), goldenModel, model.Options{ProjectorDir: goldenProj})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

// start runs an engine over a fresh model until the test ends.
func start(t testing.TB, cfg engine.Config) *engine.Engine {
	e, err := engine.New(openModel(t), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return e
}

// mixedRequest makes request i of a reproducible mix: text prompts, prompts with Qwen3-VL image
// embeddings (with DeepStack) and prompts with custom embeddings, of 1 to 300 tokens.
func mixedRequest(i int, sampled bool) *engine.Request {
	r := rand.New(rand.NewPCG(uint64(i), 42))
	text := func(n int) []int {
		ids := make([]int, n)
		for k := range ids {
			ids[k] = r.IntN(990)
		}
		return ids
	}
	req := &engine.Request{ID: fmt.Sprint("mix-", i), MaxTokens: 8 + r.IntN(8), IgnoreEOS: true, Sampling: sample.Params{Logprobs: -1}}
	switch i % 3 {
	case 0:
		req.Prompt = text(1 + r.IntN(300))
	case 1:
		// One or two images with DeepStack features between text.
		req.Prompt = text(1 + r.IntN(40))
		for k := 0; k < 1+r.IntN(2); k++ {
			grid := [3]int{1, 2 * (1 + r.IntN(4)), 2 * (1 + r.IntN(6))}
			n := grid[1] * grid[2] / 4
			im := engine.Image{GridTHW: grid, Embeds: randVec(r, n*hidden)}
			for l := 0; l < 2; l++ {
				im.DeepStack = append(im.DeepStack, randVec(r, n*hidden))
			}
			req.Images = append(req.Images, im)
			req.Prompt = append(req.Prompt, visStart)
			for j := 0; j < n; j++ {
				req.Prompt = append(req.Prompt, imgPad)
			}
			req.Prompt = append(req.Prompt, visEnd)
			req.Prompt = append(req.Prompt, text(r.IntN(30))...)
		}
	case 2:
		req.Prompt = text(1 + r.IntN(20))
		for k := 0; k < 1+r.IntN(3); k++ {
			req.Images = append(req.Images, engine.Image{Custom: randVec(r, 48)})
			req.Prompt = append(req.Prompt, visStart, imgPad, imgPad, imgPad, imgPad, visEnd)
			req.Prompt = append(req.Prompt, text(r.IntN(10))...)
		}
	}
	if sampled {
		seed := uint64(1000 + i)
		req.Sampling = sample.Params{Temperature: 0.9, TopK: []int{0, 40}[i%2], TopP: []float32{1, 0.9}[(i/2)%2],
			MinP: []float32{0, 0.05}[(i/4)%2], RepetitionPenalty: 1.1, Seed: &seed, Logprobs: 2}
	}
	return req
}

func randVec(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	return x
}

func generate(t testing.TB, e *engine.Engine, r *engine.Request) *engine.Result {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := e.Generate(ctx, r)
	require.NoError(t, err, r.ID)
	return res
}

// runAll submits all requests at once and collects their results.
func runAll(t *testing.T, e *engine.Engine, reqs []*engine.Request) []*engine.Result {
	out := make([]*engine.Result, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = generate(t, e, r)
		}()
	}
	wg.Wait()
	return out
}

// TestBatchedEqualsAlone: 32 mixed requests run together give token for token what each gives
// alone, greedy and sampled with seeds; then again with a KV pool so small that the scheduler
// must preempt, which the test checks happened.
func TestBatchedEqualsAlone(t *testing.T) {
	for _, sampled := range []bool{false, true} {
		t.Run(fmt.Sprint("sampled=", sampled), func(t *testing.T) {
			alone := start(t, engine.Config{})
			var reqs []*engine.Request
			var want []*engine.Result
			for i := 0; i < 32; i++ {
				want = append(want, generate(t, alone, mixedRequest(i, sampled)))
				reqs = append(reqs, mixedRequest(i, sampled))
			}
			// Together, with a step budget that forces chunked prefills mixed with decodes.
			together := start(t, engine.Config{MaxNumBatchedTokens: 96, MaxNumSeqs: 32})
			got := runAll(t, together, reqs)
			for i := range reqs {
				require.Equal(t, want[i].Tokens, got[i].Tokens, "request %d", i)
				require.Equal(t, engine.FinishLength, got[i].Finish)
				if sampled {
					require.Equal(t, want[i].Logprobs, got[i].Logprobs, "request %d", i)
				}
			}
			st := together.Stats()
			require.Zero(t, st.KVBlocksUsed)
			require.Zero(t, st.Preemptions)

			// 24 blocks of 16 tokens: a 300-token prompt alone needs 20, so 32 requests must preempt.
			small := start(t, engine.Config{NumBlocks: 24, BlockSize: 16, MaxNumBatchedTokens: 128})
			reqs = reqs[:0]
			for i := 0; i < 32; i++ {
				reqs = append(reqs, mixedRequest(i, sampled))
			}
			got = runAll(t, small, reqs)
			for i := range reqs {
				require.Equal(t, want[i].Tokens, got[i].Tokens, "request %d under preemption", i)
			}
			st = small.Stats()
			require.Greater(t, st.Preemptions, int64(0), "the small pool must force preemption")
			require.Zero(t, st.KVBlocksUsed)
			t.Logf("preemptions with 24 blocks: %d", st.Preemptions)
		})
	}
}

// TestRandomCancellations runs 1000 short requests, cancelling a random third of them at random
// times, and requires every block to be free at the end and every request to end once.
func TestRandomCancellations(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 200
	}
	e := start(t, engine.Config{NumBlocks: 64, BlockSize: 4, MaxNumBatchedTokens: 64, MaxNumSeqs: 24})
	r := rand.New(rand.NewPCG(7, 7))
	var wg sync.WaitGroup
	var mu sync.Mutex
	reasons := map[engine.FinishReason]int{}
	for i := 0; i < n; i++ {
		req := &engine.Request{MaxTokens: 1 + r.IntN(16), IgnoreEOS: r.IntN(2) == 0, Sampling: sample.Params{Logprobs: -1}}
		for k := 0; k < 1+r.IntN(40); k++ {
			req.Prompt = append(req.Prompt, r.IntN(990))
		}
		cancelAfter := -1
		if r.IntN(3) == 0 {
			cancelAfter = r.IntN(4)
		}
		st, err := e.Submit(req)
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			events := 0
			for {
				if events == cancelAfter {
					st.Cancel()
				}
				ev, err := st.Next(context.Background())
				if err != nil {
					break
				}
				events++
				if ev.Finish != "" {
					mu.Lock()
					reasons[ev.Finish]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, c := range reasons {
		total += c
	}
	require.Equal(t, n, total, "every request ends exactly once: %v", reasons)
	require.Greater(t, reasons[engine.FinishCancelled], 0)
	require.Eventually(t, func() bool { s := e.Stats(); return s.Running == 0 && s.Waiting == 0 }, 10*time.Second, 10*time.Millisecond)
	s := e.Stats()
	require.Zero(t, s.KVBlocksUsed, "blocks still held: %+v", s)
	t.Logf("finish reasons: %v, preemptions %d", reasons, s.Preemptions)
}

// TestPrefixCache: a request that shares a system prompt and an image with an earlier one reuses
// its blocks (metric), and gets exactly the logits it gets with caching off; a different image
// behind the same pad tokens is not a hit.
func TestPrefixCache(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	system := make([]int, 40)
	for i := range system {
		system[i] = r.IntN(990)
	}
	img := func(seed uint64) engine.Image {
		rr := rand.New(rand.NewPCG(seed, 1))
		return engine.Image{GridTHW: [3]int{1, 4, 8}, Embeds: randVec(rr, 8*hidden),
			DeepStack: [][]float32{randVec(rr, 8*hidden), randVec(rr, 8*hidden)}}
	}
	prompt := func(tail ...int) []int {
		p := append([]int(nil), system...)
		p = append(p, visStart)
		for i := 0; i < 8; i++ {
			p = append(p, imgPad)
		}
		p = append(p, visEnd)
		return append(p, tail...)
	}
	req := func(im engine.Image, tail ...int) *engine.Request {
		return &engine.Request{Prompt: prompt(tail...), Images: []engine.Image{im}, MaxTokens: 6, IgnoreEOS: true,
			ReturnLogits: true, Sampling: sample.Params{Logprobs: -1}}
	}
	cached := start(t, engine.Config{BlockSize: 4})
	generate(t, cached, req(img(1), 5, 6, 7))
	before := cached.Stats()
	hit := generate(t, cached, req(img(1), 8, 9))
	after := cached.Stats()
	// 40 system tokens + 10 image tokens = 50 shared: 12 full blocks of 4.
	require.Equal(t, int64(48), after.PrefixHits-before.PrefixHits)
	require.Equal(t, 48, hit.Usage.CachedTokens)

	plain := start(t, engine.Config{BlockSize: 4, DisablePrefixCaching: true})
	miss := generate(t, plain, req(img(1), 8, 9))
	require.Zero(t, miss.Usage.CachedTokens)
	require.Equal(t, miss.Tokens, hit.Tokens)
	require.Equal(t, miss.Logits, hit.Logits, "a prefix-cache hit must give the logits of a miss")

	// Another image behind identical pad tokens shares only the system prompt's 10 full blocks.
	before = cached.Stats()
	other := generate(t, cached, req(img(2), 8, 9))
	after = cached.Stats()
	require.Equal(t, int64(40), after.PrefixHits-before.PrefixHits)
	require.Equal(t, 40, other.Usage.CachedTokens)
	ref := generate(t, plain, req(img(2), 8, 9))
	require.Equal(t, ref.Logits, other.Logits)
}

// TestDeviceSamplingMatchesHost: the CPU backend samples "on the device" (ml.DeviceSampler)
// when a step allows it; asking for logprobs forces the host sampler. Both must give the same
// tokens for the same seeds.
func TestDeviceSamplingMatchesHost(t *testing.T) {
	e := start(t, engine.Config{})
	for i := 0; i < 12; i++ {
		seed := uint64(500 + i)
		p := sample.Params{Temperature: 0.8, TopK: []int{0, 30, 1}[i%3], TopP: []float32{1, 0.8}[(i/3)%2], MinP: []float32{0, 0.1}[(i/6)%2], Seed: &seed}
		req := func(logprobs int) *engine.Request {
			r := mixedRequest(i, false)
			r.Sampling = p
			r.Sampling.Logprobs = logprobs
			r.MaxTokens = 12
			return r
		}
		dev := generate(t, e, req(-1))
		host := generate(t, e, req(0))
		require.Len(t, host.Logprobs, 12, "the host path ran")
		require.Equal(t, host.Tokens, dev.Tokens, "request %d", i)
	}
}

package cpu

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
)

// The 2B benchmarks run the synthetic Qwen3-VL-2B checkpoint (bf16, 3.44 GB of text weights)
// through model.Forward. They run only when -bench selects them, e.g.
//
//	go test ./runtime/cpu -run '^$' -bench 'Decode2B|Prefill2B' -benchtime 16x -v
//
// The checkpoint is written once (about 30 s) to $QVL_BENCH_2B_DIR or
// <user cache>/qvl/bench-qwen3-vl-2b-seed1. $QVL_BENCH_THREADS sets the thread count (default:
// all cores). Each result is reported next to a probe measured in the same run: the bandwidth
// probe streaming the checkpoint's own bytes (decode) and the micro-kernel peak (prefill).

const benchShape = "qwen3-vl-2b"

func bench2BDir(b *testing.B) string {
	b.Helper()
	dir := os.Getenv("QVL_BENCH_2B_DIR")
	if dir == "" {
		c, err := os.UserCacheDir()
		if err != nil {
			c = os.TempDir()
		}
		dir = filepath.Join(c, "qvl", "bench-"+benchShape+"-seed1")
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		return dir
	}
	b.Logf("synthesizing %s into %s", benchShape, dir)
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		b.Fatal(err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".synth-")
	if err != nil {
		b.Fatal(err)
	}
	if err := synth.Write(tmp, synth.Shapes[benchShape], synth.Options{Seed: 1}); err != nil {
		os.RemoveAll(tmp)
		b.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		b.Fatal(err)
	}
	return dir
}

func benchThreads() int {
	var t int
	if s := os.Getenv("QVL_BENCH_THREADS"); s != "" {
		fmt.Sscan(s, &t)
	}
	if t <= 0 {
		t = runtime.NumCPU()
	}
	return t
}

// weightBytes returns the bf16 tensors of the checkpoint's language model (the bytes a batch-1
// decode step streams) as mapped slices; close the checkpoint after use.
func weightBytes(b *testing.B, dir string) (*loader.Checkpoint, [][]byte, int64) {
	ck, err := loader.OpenCheckpoint(dir)
	if err != nil {
		b.Fatal(err)
	}
	var parts [][]byte
	var total int64
	for _, name := range ck.Names() {
		t, err := ck.Tensor(name)
		if err != nil {
			b.Fatal(err)
		}
		if t.DType != loader.BF16 || len(t.Shape) != 2 {
			continue // norms: a few kilobytes
		}
		parts = append(parts, t.Data)
		total += int64(len(t.Data))
	}
	return ck, parts, total
}

// probeAll streams every part once with the bandwidth probe and returns GB/s over all of them.
func probeAll(parts [][]byte, threads int) float64 {
	var bytes int64
	t0 := time.Now()
	for _, p := range parts {
		ProbeBandwidth(p, threads)
		bytes += int64(len(p))
	}
	return float64(bytes) / time.Since(t0).Seconds() / 1e9
}

func median(x []float64) float64 {
	s := slices.Clone(x)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// benchModel opens the 2B checkpoint on backend be with a cache of blocks*16 tokens.
func benchModel(b *testing.B, be *Backend, dir string, blocks int) *model.Model {
	m, err := model.Open(be, dir, model.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := m.InitCache(blocks, 16); err != nil {
		b.Fatal(err)
	}
	return m
}

// seqBatch builds a step of tokens for one sequence whose cache holds ctx tokens before it,
// with blocks 0, 1, 2, ... and logits of the last row.
func seqBatch(tokens []int32, ctx int, blocks []int32) *model.Batch {
	n := len(tokens)
	bt := &model.Batch{Tokens: tokens, LogitRows: []int32{int32(n - 1)}}
	for i := 0; i < n; i++ {
		p := int32(ctx + i)
		bt.Pos = append(bt.Pos, p, p, p)
		bt.Slots = append(bt.Slots, blocks[p/16]*16+p%16)
	}
	bt.Seqs = []model.Seq{{QueryLen: n, CtxLen: ctx + n, Blocks: blocks}}
	return bt
}

func promptTokens(n int) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(1000 + (i*7919)%100000)
	}
	return t
}

func logProfile(b *testing.B, be *Backend, steps int) {
	var sb strings.Builder
	var total time.Duration
	prof := be.Profile()
	for _, p := range prof {
		total += p.Total
	}
	for _, p := range prof {
		fmt.Fprintf(&sb, "  %-12s %5d calls %9.3f ms/step %5.1f%%\n", p.Name, p.Calls,
			p.Total.Seconds()*1e3/float64(steps), 100*p.Total.Seconds()/total.Seconds())
	}
	b.Logf("per-op profile over %d steps (%s):\n%s", steps, be.Name(), sb.String())
}

// BenchmarkDecode2B times batch-1 decode steps after a 128-token prompt. Metrics: tok/s, the
// weight stream in GB/s, the bandwidth probe's GB/s (median of probes before and after, same
// bytes, same threads) and the share of it the model reaches (bw-share).
func BenchmarkDecode2B(b *testing.B) {
	dir := bench2BDir(b)
	threads := benchThreads()
	ck, parts, wbytes := weightBytes(b, dir)
	defer ck.Close()
	// fast copies the weights into anonymous memory (the default); fast-alias streams them from
	// the checkpoint's file mapping.
	for _, mode := range []string{"fast", "fast-alias", "ref"} {
		b.Run(fmt.Sprintf("%s/t%d", mode, threads), func(b *testing.B) {
			be := New(Options{Threads: threads, Reference: mode == "ref", AliasWeights: mode == "fast-alias"})
			m := benchModel(b, be, dir, 64)
			defer m.Close()
			blocks := make([]int32, 64)
			for i := range blocks {
				blocks[i] = int32(i)
			}
			const prompt = 128
			if _, err := m.Forward(seqBatch(promptTokens(prompt), 0, blocks)); err != nil {
				b.Fatal(err)
			}
			if b.N+prompt > 64*16 {
				b.Fatalf("at most %d decode steps fit the cache", 64*16-prompt)
			}
			probes := []float64{probeAll(parts, threads)}
			be.SetProfiling(true)
			b.ResetTimer()
			ctx, tok := prompt, int32(42)
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := m.Forward(seqBatch([]int32{tok}, ctx, blocks)); err != nil {
					b.Fatal(err)
				}
				ctx++
				tok = int32(1000 + i)
			}
			sec := time.Since(t0).Seconds() / float64(b.N)
			b.StopTimer()
			be.SetProfiling(false)
			probes = append(probes, probeAll(parts, threads), probeAll(parts, threads))
			pbw := median(probes)
			b.ReportMetric(1/sec, "tok/s")
			b.ReportMetric(float64(wbytes)/sec/1e9, "GB/s")
			b.ReportMetric(pbw, "probe-GB/s")
			b.ReportMetric(float64(wbytes)/sec/1e9/pbw, "bw-share")
			logProfile(b, be, b.N)
		})
	}
}

// prefillFlops counts the multiply-adds (x2) of a one-sequence prefill of n tokens: the
// linear layers for every token, the head for the last, and causal attention.
func prefillFlops(c *loader.ModelConfig, n int) (matmul, attn float64) {
	h, hd, nh, nkv, inter := float64(c.HiddenSize), float64(c.HeadDim), float64(c.NumHeads), float64(c.NumKVHeads), float64(c.IntermediateSize)
	perTok := h*(nh+2*nkv)*hd + nh*hd*h + h*2*inter + inter*h
	matmul = 2 * float64(n) * perTok * float64(c.NumLayers)
	matmul += 2 * h * float64(c.VocabSize)
	pairs := float64(n) * float64(n+1) / 2
	attn = 4 * hd * nh * pairs * float64(c.NumLayers)
	return matmul, attn
}

// BenchmarkPrefill2B times a 512-token prompt in one step, for each matmul precision this CPU
// has. Metrics: tok/s, GFLOP/s of the matmuls, the micro-kernel peak of the same precision
// (median of probes before and after) and the share of it reached (peak-share).
func BenchmarkPrefill2B(b *testing.B) {
	dir := bench2BDir(b)
	threads := benchThreads()
	const n = 512
	precs := []Precision{PrecisionExact}
	if KernelLevel() == "avx512-bf16" {
		precs = append(precs, PrecisionBF16, PrecisionHiLo)
	}
	for _, p := range precs {
		b.Run(fmt.Sprintf("%s/t%d", p, threads), func(b *testing.B) {
			be := New(Options{Threads: threads})
			if !setPrecision(be, p) {
				b.Skipf("no %s matmul in this build", p)
			}
			m := benchModel(b, be, dir, n/16+1)
			defer m.Close()
			blocks := make([]int32, n/16+1)
			for i := range blocks {
				blocks[i] = int32(i)
			}
			bt := seqBatch(promptTokens(n), 0, blocks)
			if _, err := m.Forward(bt); err != nil { // warm up: buffers, page cache
				b.Fatal(err)
			}
			peaks := []float64{ProbePeak(threads, p, 300*time.Millisecond)}
			be.SetProfiling(true)
			b.ResetTimer()
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := m.Forward(bt); err != nil {
					b.Fatal(err)
				}
			}
			sec := time.Since(t0).Seconds() / float64(b.N)
			b.StopTimer()
			be.SetProfiling(false)
			peaks = append(peaks, ProbePeak(threads, p, 300*time.Millisecond), ProbePeak(threads, p, 300*time.Millisecond))
			mm, at := prefillFlops(m.Config, n)
			var mmSec float64
			for _, op := range be.Profile() {
				if op.Name == "MatMul" {
					mmSec = op.Total.Seconds() / float64(b.N)
				}
			}
			peak := median(peaks)
			b.ReportMetric(n/sec, "tok/s")
			b.ReportMetric((mm+at)/sec/1e9, "GFLOP/s")
			b.ReportMetric(mm/mmSec/1e9, "matmul-GFLOP/s")
			b.ReportMetric(peak, "peak-GFLOP/s")
			b.ReportMetric(mm/mmSec/1e9/peak, "peak-share")
			logProfile(b, be, b.N)
		})
	}
}

var _ ml.Profiler = (*Backend)(nil)

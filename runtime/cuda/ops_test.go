package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Each test runs the op on the CPU reference and on each CUDA backend (see harness_test.go)
// with inputs drawn from the same seed, outputs poisoned with NaN, and compares under the
// op's tolerance below (relative L2 and max |Δ|/max |ref|, see compare).

// Tolerances per op. bf16 is 8 bits of mantissa: rounding one operand costs up to 2⁻⁹ ≈ 2e-3
// relative per element, about 1e-3 on a long dot product of random terms.
var tolerances = map[string]tol{
	"exact":             {0, 0},         // copies and bf16 widening are exact
	"MatMul/bf16":       {5e-3, 2e-2},   // x rounded to bf16, bf16 weights exact, f32 accumulation
	"MatMul/f32":        {1e-5, 1e-4},   // f32 GEMM, another summation order
	"MatMul/same-input": {1e-6, 1e-5},   // the same bf16 operands at another address (cuBLAS may pick another kernel)
	"RMSNorm":           {2e-6, 1e-5},   // f32 sum of squares, f64 rsqrt
	"SwiGLU":            {2e-6, 1e-5},   // expf vs f64 exp
	"ScatterAdd":        {1e-6, 1e-6},   // atomics reorder duplicate adds
	"QKV/q":             {5e-6, 5e-5},   // f32 norm and rope vs f64 (angles reduced in f64)
	"QKV/cache":         {3e-3, 8e-3},   // k and v stored as bf16: one bf16 rounding
	"Attention/decode":  {1e-4, 1e-3},   // f32 math over the same bf16 cache values
	"QKVAttention":      {3e-3, 8e-3},   // QKV then decode: the new token's k and v are bf16 in the CUDA cache, f32 in the reference's
	"Attention/mma":     {1.5e-2, 6e-2}, // q and P rounded to bf16 for the tensor cores
	"Embed/custom":      {1e-2, 4e-2},   // custom and mid rounded to bf16 for the tensor cores
	"Graph":             {2e-3, 1e-2},   // a replayed step: the batch (gemv at 1 row, cuBLASLt above) and the attention split may differ, and so may a bf16 rounding of an activation
}

func ref() ml.Backend { return cpu.NewReference() }

func dtName(d ml.DType) string { return d.String() }

func TestOpMatMul(t *testing.T) {
	cases := []struct {
		n, k, m int
		w       ml.DType
	}{
		{1, 769, 769, ml.BF16}, {5, 160, 37, ml.BF16}, {17, 769, 300, ml.BF16}, {300, 769, 769, ml.BF16},
		{5, 160, 37, ml.F32}, {17, 769, 300, ml.F32}, {3, 8, 1, ml.BF16},
	}
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for i, c := range cases {
			t.Run(fmt.Sprintf("%dx%dx%d_%s", c.n, c.k, c.m, dtName(c.w)), func(t *testing.T) {
				run := func(bk ml.Backend) []float32 {
					r := rand.New(rand.NewPCG(11, uint64(i)))
					e := newEnv(t, bk)
					x := e.in(ml.F32, randn(r, c.n*c.k, 1), c.n, c.k)
					w := e.weight(c.w, randn(r, c.m*c.k, 1/math.Sqrt(float64(c.k))), c.m, c.k)
					out := e.out(ml.F32, c.n, c.m)
					require.NoError(t, bk.MatMul(out, x, w))
					return e.read(out)
				}
				compare(t, "out", "MatMul/"+dtName(c.w), run(b), run(ref()))
			})
		}
	})
}

func TestOpRMSNorm(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for _, rows := range []int{1, 5, 17, 300} {
			// 160 and 2048 are held in registers; 5000 (> 16 × 256) takes the two-pass loop.
			for _, h := range []int{160, 2048, 5000} {
				for _, wdt := range []ml.DType{ml.BF16, ml.F32} {
					t.Run(fmt.Sprintf("%dx%d_%s", rows, h, dtName(wdt)), func(t *testing.T) {
						run := func(bk ml.Backend) (norm, addNorm, resid []float32) {
							r := rand.New(rand.NewPCG(12, uint64(rows*h)))
							e := newEnv(t, bk)
							xv := randn(r, rows*h, 2)
							wv := make([]float32, h)
							for i := range wv {
								wv[i] = float32(1 + 0.2*r.NormFloat64())
							}
							w := e.weight(wdt, wv, h)
							x := e.in(ml.F32, xv, rows, h)
							out := e.out(ml.F32, rows, h)
							require.NoError(t, bk.RMSNorm(out, x, w, 1e-6))
							norm = e.read(out)
							d := e.in(ml.F32, randn(r, rows*h, 1), rows, h)
							out2 := e.out(ml.F32, rows, h)
							require.NoError(t, bk.AddRMSNorm(out2, x, d, w, 1e-6))
							return norm, e.read(out2), e.read(x)
						}
						g1, g2, g3 := run(b)
						w1, w2, w3 := run(ref())
						compare(t, "rmsnorm", "RMSNorm", g1, w1)
						compare(t, "add_rmsnorm", "RMSNorm", g2, w2)
						compare(t, "residual", "RMSNorm", g3, w3)
					})
				}
			}
		}
	})
}

func TestOpSwiGLU(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for _, c := range [][2]int{{1, 769}, {17, 64}, {300, 160}} {
			t.Run(fmt.Sprintf("%dx%d", c[0], c[1]), func(t *testing.T) {
				run := func(bk ml.Backend) []float32 {
					r := rand.New(rand.NewPCG(13, uint64(c[0])))
					e := newEnv(t, bk)
					gu := randn(r, c[0]*2*c[1], 3)
					gu[0] = -100 // e^100 overflows f32: silu must still be −0
					x := e.in(ml.F32, gu, c[0], 2*c[1])
					out := e.out(ml.F32, c[0], c[1])
					require.NoError(t, bk.SwiGLU(out, x))
					return e.read(out)
				}
				compare(t, "out", "SwiGLU", run(b), run(ref()))
			})
		}
	})
}

func TestOpScatterAddGather(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		run := func(bk ml.Backend) (scattered, gathered []float32) {
			r := rand.New(rand.NewPCG(14, 0))
			e := newEnv(t, bk)
			x := e.in(ml.F32, randn(r, 17*160, 1), 17, 160)
			rows := e.in(ml.F32, randn(r, 5*160, 1), 5, 160)
			idx := e.in(ml.I32, []int32{3, 16, 0, 3, 9}, 5) // row 3 twice
			require.NoError(t, bk.ScatterAdd(x, rows, idx))
			gidx := e.in(ml.I32, []int32{16, 3, 3, 0}, 4)
			out := e.out(ml.F32, 4, 160)
			require.NoError(t, bk.Gather(out, x, gidx))
			return e.read(x), e.read(out)
		}
		g1, g2 := run(b)
		w1, w2 := run(ref())
		compare(t, "scatter_add", "ScatterAdd", g1, w1)
		compare(t, "gather", "ScatterAdd", g2, w2)
	})
}

func TestOpQKV(t *testing.T) {
	cases := []struct {
		n, heads, kv, hd, bs, blocks int
		rope                         ml.Rope
		normDT                       ml.DType
	}{
		{5, 4, 2, 64, 16, 3, ml.Rope{Theta: 5e6, Section: []int{12, 10, 10}, Interleaved: true}, ml.BF16},
		{17, 16, 8, 128, 4, 9, ml.Rope{Theta: 5e6, Section: []int{24, 20, 20}, Interleaved: true}, ml.BF16},
		{1, 4, 1, 32, 16, 2, ml.Rope{Theta: 1e6, Section: []int{6, 5, 5}, Interleaved: true}, ml.F32},
		{3, 2, 1, 48, 8, 2, ml.Rope{Theta: 1e4, Section: []int{8, 8, 8}}, ml.F32},
		{4, 2, 2, 64, 16, 1, ml.Rope{Theta: 1e4}, ml.BF16},
		// Past qkvDecodeTokens: 4 warps a block, each looping over several heads (prefill).
		{300, 6, 3, 64, 16, 20, ml.Rope{Theta: 5e6, Section: []int{12, 10, 10}, Interleaved: true}, ml.BF16},
	}
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for i, c := range cases {
			t.Run(fmt.Sprintf("n%d_h%d_kv%d_hd%d", c.n, c.heads, c.kv, c.hd), func(t *testing.T) {
				run := func(bk ml.Backend) (q, kc, vc []float32) {
					r := rand.New(rand.NewPCG(15, uint64(i)))
					e := newEnv(t, bk)
					width := (c.heads + 2*c.kv) * c.hd
					qkv := e.in(ml.F32, randn(r, c.n*width, 1.5), c.n, width)
					nw := func() ml.Tensor {
						w := make([]float32, c.hd)
						for j := range w {
							w[j] = float32(1 + 0.2*r.NormFloat64())
						}
						return e.weight(c.normDT, w, c.hd)
					}
					qn, kn := nw(), nw()
					pos := make([]int32, 3*c.n)
					for j := range pos {
						pos[j] = int32(r.IntN(262144))
					}
					layout := ml.KVLayout{NumBlocks: c.blocks, BlockSize: c.bs, KVHeads: c.kv, HeadDim: c.hd}
					slots := make([]int32, c.n)
					for j, s := range r.Perm(c.blocks * c.bs)[:c.n] {
						slots[j] = int32(s)
					}
					qo := e.out(ml.F32, c.n, c.heads*c.hd)
					k := e.out(bk.KVDType(), layout.Shape()...)
					v := e.out(bk.KVDType(), layout.Shape()...)
					a := ml.QKVArgs{Q: qo, QNorm: qn, KNorm: kn, Pos: e.in(ml.I32, pos, c.n, 3), Slots: e.in(ml.I32, slots, c.n),
						K: k, V: v, Heads: c.heads, KVHeads: c.kv, HeadDim: c.hd, Eps: 1e-6, Rope: c.rope, Layout: layout}
					require.NoError(t, bk.QKV(qkv, a))
					return e.read(qo), e.read(k), e.read(v)
				}
				gq, gk, gv := run(b)
				wq, wk, wv := run(ref())
				compare(t, "q", "QKV/q", gq, wq)
				compare(t, "k cache", "QKV/cache", gk, wk)
				compare(t, "v cache", "QKV/cache", gv, wv)
			})
		}
	})
}

type attnCase struct {
	name                 string
	heads, kv, hd, bs    int
	seqs                 [][2]int // query rows, context
	tolerance            string
	spareBlocks, padCols int
}

var attnCases = []attnCase{
	{name: "decode_gqa1kv_hd64_splitk", heads: 4, kv: 1, hd: 64, bs: 16, seqs: [][2]int{{1, 1}, {1, 37}, {1, 300}}, tolerance: "Attention/decode", spareBlocks: 3, padCols: 1},
	{name: "decode_2b_hd128_splitk", heads: 16, kv: 8, hd: 128, bs: 16, seqs: [][2]int{{1, 600}, {1, 5}}, tolerance: "Attention/decode", spareBlocks: 2},
	{name: "decode_hd32_bs4", heads: 4, kv: 2, hd: 32, bs: 4, seqs: [][2]int{{1, 150}, {1, 3}, {1, 64}}, tolerance: "Attention/decode", spareBlocks: 5, padCols: 2},
	{name: "decode_hd256", heads: 4, kv: 2, hd: 256, bs: 16, seqs: [][2]int{{1, 70}, {1, 17}}, tolerance: "Attention/decode"},
	{name: "decode_group3", heads: 6, kv: 2, hd: 64, bs: 16, seqs: [][2]int{{1, 90}}, tolerance: "Attention/decode"},
	{name: "mixed_hd64_chunked", heads: 4, kv: 2, hd: 64, bs: 16, seqs: [][2]int{{70, 70}, {17, 100}, {1, 50}}, tolerance: "Attention/mma", spareBlocks: 4},
	{name: "prefill_hd128_gqa4_bs4", heads: 4, kv: 1, hd: 128, bs: 4, seqs: [][2]int{{130, 200}, {2, 2}}, tolerance: "Attention/mma", padCols: 3},
	{name: "prefill_hd32_group3", heads: 6, kv: 2, hd: 32, bs: 16, seqs: [][2]int{{65, 65}, {1, 1}}, tolerance: "Attention/mma"},
	{name: "generic_hd48", heads: 6, kv: 2, hd: 48, bs: 16, seqs: [][2]int{{20, 40}, {1, 33}}, tolerance: "Attention/decode"},
	{name: "generic_hd256_prefill", heads: 2, kv: 1, hd: 256, bs: 8, seqs: [][2]int{{5, 9}, {1, 20}}, tolerance: "Attention/decode"},
	{name: "generic_group16", heads: 16, kv: 1, hd: 64, bs: 16, seqs: [][2]int{{1, 40}, {3, 10}}, tolerance: "Attention/decode"},
}

// cpuShape wraps a shape as a tensor for ml.NumElements.
type shapeOnly []int

func (s shapeOnly) DType() ml.DType { return ml.F32 }
func (s shapeOnly) Shape() []int    { return s }

func cpuShape(s []int) ml.Tensor { return shapeOnly(s) }

func TestOpAttention(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for i, c := range attnCases {
			t.Run(c.name, func(t *testing.T) {
				compare(t, "out", c.tolerance, runAttention(t, b, c, uint64(i)), runAttention(t, ref(), c, uint64(i)))
			})
		}
	})
}

type embedCase struct {
	name           string
	n, h, vocab    int
	table          ml.DType
	visIdx         []int32
	cusIdx, cusSrc []int32
	ne, d, hid, k  int
	fc, bias       ml.DType
	tanh           bool
}

var embedCases = []embedCase{
	{name: "text", n: 17, h: 40, vocab: 100, table: ml.BF16},
	{name: "text_f32_table", n: 5, h: 33, vocab: 9, table: ml.F32},
	{name: "visual_custom_odd", n: 17, h: 40, vocab: 100, table: ml.BF16,
		visIdx: []int32{2, 5, 2, 11}, cusIdx: []int32{7, 8, 9, 11, 16}, cusSrc: []int32{0, 1, 2, 5, 3},
		ne: 2, d: 37, hid: 70, k: 3, fc: ml.BF16, bias: ml.BF16},
	{name: "custom_vector_tanh_f32", n: 9, h: 64, vocab: 50, table: ml.F32,
		cusIdx: []int32{0, 1, 2, 3, 8, 7, 6, 5}, cusSrc: []int32{0, 1, 2, 3, 11, 10, 9, 8},
		ne: 3, d: 64, hid: 128, k: 4, fc: ml.F32, bias: ml.F32, tanh: true},
	{name: "custom_two_tiles", n: 150, h: 128, vocab: 300, table: ml.BF16,
		cusIdx: seq(0, 140), cusSrc: seq(0, 140), visIdx: []int32{140, 141, 0},
		ne: 70, d: 48, hid: 96, k: 2, fc: ml.BF16, bias: ml.F32},
	// The pipelined GEMMs past their tiles: Ne 130 (GEMM2's 128-row tiles, a second one of 2
	// rows), D and hid multiples of 8 (cp.async) but not of the 32-deep K slices, K·H 216 (a
	// partial 128-column tile; H 72 puts two or three (row, k) segments in a tile), more K
	// slices than pipeline stages; rows taken by several custom rows (later wins) and (e, k)
	// taken by several rows (lists longer than one), a visual row overwritten by a custom one.
	{name: "custom_pipeline_odd", n: 301, h: 72, vocab: 500, table: ml.BF16,
		cusIdx: scramble(0, 420, 300, 7), cusSrc: scramble(1, 420, 130*3, 11), visIdx: []int32{0, 299, 300, 17},
		ne: 130, d: 40, hid: 200, k: 3, fc: ml.BF16, bias: ml.BF16},
	// The plain-load path: D and hid not multiples of 8; Ne 66 (two 64-row GEMM1 tiles, one
	// 128-row GEMM2 tile), H 50.
	{name: "custom_scalar_odd", n: 140, h: 50, vocab: 60, table: ml.F32,
		cusIdx: scramble(2, 132, 140, 5), cusSrc: scramble(3, 132, 66*2, 3), visIdx: []int32{5},
		ne: 66, d: 37, hid: 45, k: 2, fc: ml.BF16, bias: ml.F32, tanh: true},
	// A deep GEMM1 K (D 328: 10 full K slices of 32 and a partial one, one 64 × 128 tile) and
	// a GEMM2 K (hid 120) that ends inside a slice; a split-K version must cut both unevenly.
	{name: "custom_deep_k", n: 40, h: 48, vocab: 70, table: ml.BF16,
		cusIdx: scramble(4, 36, 40, 3), cusSrc: scramble(5, 36, 20*2, 7),
		ne: 20, d: 328, hid: 120, k: 2, fc: ml.BF16, bias: ml.BF16},
}

// scramble returns n indices in [0, m): i·step + off mod m, so that they repeat when n > m
// and come in an order that is not monotonic.
func scramble(off, n, m, step int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32((i*step + off) % m)
	}
	return out
}

func seq(lo, hi int) []int32 {
	out := make([]int32, 0, hi-lo)
	for i := lo; i < hi; i++ {
		out = append(out, int32(i))
	}
	return out
}

func runEmbed(t *testing.T, bk ml.Backend, c embedCase, seed uint64) []float32 {
	e, out, a := embedInputs(t, bk, c, seed)
	require.NoError(t, bk.EmbedProject(out, a))
	return e.read(out)
}

// embedInputs allocates case c's inputs (drawn from seed) and its NaN-poisoned output on bk.
func embedInputs(t *testing.T, bk ml.Backend, c embedCase, seed uint64) (*env, ml.Tensor, ml.EmbedArgs) {
	r := rand.New(rand.NewPCG(17, seed))
	e := newEnv(t, bk)
	toks := make([]int32, c.n)
	for i := range toks {
		toks[i] = int32(r.IntN(c.vocab))
	}
	a := ml.EmbedArgs{Tokens: e.in(ml.I32, toks, c.n), Table: e.weight(c.table, randn(r, c.vocab*c.h, 1), c.vocab, c.h)}
	if len(c.visIdx) > 0 {
		a.VisualIdx = e.in(ml.I32, c.visIdx, len(c.visIdx))
		a.Visual = e.in(ml.F32, randn(r, len(c.visIdx)*c.h, 1), len(c.visIdx), c.h)
	}
	if len(c.cusIdx) > 0 {
		a.CustomIdx = e.in(ml.I32, c.cusIdx, len(c.cusIdx))
		a.CustomSrc = e.in(ml.I32, c.cusSrc, len(c.cusSrc))
		a.Custom = e.in(ml.F32, randn(r, c.ne*c.d, 1), c.ne, c.d)
		a.Projector = &ml.Projector{
			FC1: e.weight(c.fc, randn(r, c.hid*c.d, 1/math.Sqrt(float64(c.d))), c.hid, c.d),
			B1:  e.weight(c.bias, randn(r, c.hid, 0.1), c.hid),
			FC2: e.weight(c.fc, randn(r, c.k*c.h*c.hid, 1/math.Sqrt(float64(c.hid))), c.k*c.h, c.hid),
			B2:  e.weight(c.bias, randn(r, c.k*c.h, 0.1), c.k*c.h),
			K:   c.k, H: c.h, TanhGELU: c.tanh,
		}
	}
	return e, e.out(ml.F32, c.n, c.h), a
}

// TestOpEmbedProject runs every case on every EmbedProject path (embedVariants).
func TestOpEmbedProject(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for _, v := range embedVariants {
			t.Run(v.name, func(t *testing.T) {
				withEmbedVariant(t, b, v)
				testEmbedCases(t, b)
			})
		}
	})
}

// testEmbedCases runs embedCases on b against the CPU reference: text and visual rows exact,
// custom rows under Embed/custom.
func testEmbedCases(t *testing.T, b *Backend) {
	for i, c := range embedCases {
		t.Run(c.name, func(t *testing.T) {
			got, want := runEmbed(t, b, c, uint64(i)), runEmbed(t, ref(), c, uint64(i))
			custom := map[int32]bool{}
			for _, d := range c.cusIdx {
				custom[d] = true
			}
			// Text and visual rows are copies: exact. Custom rows went through the tensor cores.
			var ge, we, gc, wc []float32
			for row := 0; row < c.n; row++ {
				gr, wr := got[row*c.h:(row+1)*c.h], want[row*c.h:(row+1)*c.h]
				if custom[int32(row)] {
					gc, wc = append(gc, gr...), append(wc, wr...)
				} else {
					ge, we = append(ge, gr...), append(we, wr...)
				}
			}
			compare(t, "text and visual rows", "exact", ge, we)
			if len(wc) > 0 {
				compare(t, "custom rows", "Embed/custom", gc, wc)
			}
		})
	}
}

// TestOpAttentionRepeatable runs split-K decode cases again and again on one backend: the
// output must not change from run to run (the last block of each sequence and KV head merges
// the partitions, counted with atomics that must return to zero after every launch; on a GPU a
// race there would show as a run that differs). The emulation runs blocks one at a time, so
// it only checks the counters' reset; the GPU runs many more times.
func TestOpAttentionRepeatable(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		reps := 3
		if gpu {
			reps = 50
		}
		for i, c := range attnCases {
			if !strings.Contains(c.name, "splitk") {
				continue
			}
			t.Run(c.name, func(t *testing.T) {
				r := rand.New(rand.NewPCG(18, uint64(i)))
				first := runAttention(t, b, c, uint64(i))
				compare(t, "out", c.tolerance, first, runAttention(t, ref(), c, uint64(i)))
				// The same inputs again, and between repeats other batches through the same
				// counters (a different number of sequences and partitions).
				for k := 0; k < reps; k++ {
					got := runAttention(t, b, c, uint64(i))
					require.Equal(t, first, got, "repeat %d differs from the first run", k)
					if k%2 == 0 {
						runAttention(t, b, attnCases[r.IntN(2)], uint64(k))
					}
				}
			})
		}
	})
}

// TestToleranceNamesExist reads this package's tests for compare calls with a literal tolerance
// name and checks that each names an entry of tolerances: a GPU-only test with a misspelt name
// would otherwise fail only on a GPU (TestGPUPDLMatchesDefault's "PDL" did, in the seventh H100
// run). Names built at run time are checked when they are used.
func TestToleranceNamesExist(t *testing.T) {
	files, err := filepath.Glob("*_test.go")
	require.NoError(t, err)
	re := regexp.MustCompile(`compare\(t, "[^"]*", "([^"]*)"`)
	seen := 0
	for _, f := range files {
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, m := range re.FindAllStringSubmatch(string(src), -1) {
			seen++
			if strings.HasSuffix(m[1], "/") {
				continue // a prefix completed at run time ("MatMul/" + the dtype)
			}
			_, ok := tolerances[m[1]]
			assert.True(t, ok, "%s: compare with tolerance %q, which tolerances lacks", f, m[1])
		}
	}
	require.Greater(t, seen, 40, "the pattern no longer finds the compare calls")
}

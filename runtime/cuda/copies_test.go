package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The bf16 copies of activations (copies.go): a producer's copy must be exactly what
// qvl_f32_to_bf16 makes of its f32 output, MatMul must use it (no conversion launch) and give
// what it gives on the converted input, and no write that bypasses a producer may leave a copy
// that MatMul would read stale.

// readCopy returns the bf16 copy of t's first NumElements(t) elements as raw bits, and whether
// it is current.
func readCopy(t *testing.T, b *Backend, x ml.Tensor) ([]uint16, bool) {
	t.Helper()
	p, ok := b.currentCopy(x)
	if !ok {
		return nil, false
	}
	out := make([]uint16, ml.NumElements(x))
	require.NoError(t, b.dev.do(func() error { return b.dev.download(u16Bytes(out), p) }))
	return out, true
}

// launches returns the kernels and GEMMs that fn queued, by name, and their total.
func launches(t *testing.T, b *Backend, fn func()) (map[string]int64, int64) {
	t.Helper()
	b.ResetProfile()
	b.SetProfiling(true)
	fn()
	p := b.Profile()
	b.SetProfiling(false)
	out := map[string]int64{}
	total := int64(0)
	for _, o := range p {
		out[o.Name] = o.Calls
		total += o.Calls
	}
	return out, total
}

// checkProduced checks that out has a current copy equal to bf16(out) element for element and
// that MatMul reads it: the product equals MatMul on the same values uploaded (converted by
// qvl_f32_to_bf16), and no conversion kernel runs.
func checkProduced(t *testing.T, b *Backend, e *env, out ml.Tensor) {
	t.Helper()
	f := e.read(out)
	bits, ok := readCopy(t, b, out)
	require.True(t, ok, "the producer left no current bf16 copy")
	for i, v := range f {
		if want := loader.F32ToBF16(v); bits[i] != want {
			t.Fatalf("copy element %d is %#04x, bf16(%v) is %#04x", i, bits[i], v, want)
		}
	}
	rows, k := out.Shape()[0], out.Shape()[1]
	r := rand.New(rand.NewPCG(40, uint64(k)))
	w := e.weight(ml.BF16, randn(r, 7*k, 1/math.Sqrt(float64(k))), 7, k)
	x2 := e.in(ml.F32, f, rows, k)
	y1, y2 := e.out(ml.F32, rows, 7), e.out(ml.F32, rows, 7)
	got, _ := launches(t, b, func() { require.NoError(t, b.MatMul(y1, out, w)) })
	assert.Equal(t, map[string]int64{bf16MatMulKernel(rows): 1}, got, "MatMul after a producer")
	conv, _ := launches(t, b, func() { require.NoError(t, b.MatMul(y2, x2, w)) })
	assert.Equal(t, map[string]int64{"qvl_f32_to_bf16": 1, bf16MatMulKernel(rows): 1}, conv, "MatMul on uploaded values")
	compare(t, "MatMul on the copy vs on the converted values", "MatMul/same-input", e.read(y1), e.read(y2))
}

func TestBF16CopyIsTheConversion(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		r := rand.New(rand.NewPCG(41, 0))
		t.Run("RMSNorm", func(t *testing.T) {
			e := newEnv(t, b)
			x := e.in(ml.F32, randn(r, 5*160, 2), 5, 160)
			w := e.weight(ml.BF16, randn(r, 160, 1), 160)
			out := e.out(ml.F32, 5, 160)
			require.NoError(t, b.RMSNorm(out, x, w, 1e-6))
			checkProduced(t, b, e, out)
		})
		t.Run("AddRMSNorm", func(t *testing.T) {
			e := newEnv(t, b)
			x := e.in(ml.F32, randn(r, 3*2048, 2), 3, 2048)
			d := e.in(ml.F32, randn(r, 3*2048, 1), 3, 2048)
			w := e.weight(ml.F32, randn(r, 2048, 1), 2048)
			out := e.out(ml.F32, 3, 2048)
			require.NoError(t, b.AddRMSNorm(out, x, d, w, 1e-6))
			checkProduced(t, b, e, out)
		})
		t.Run("SwiGLU", func(t *testing.T) {
			e := newEnv(t, b)
			gu := e.in(ml.F32, randn(r, 4*2*769, 3), 4, 2*769)
			out := e.out(ml.F32, 4, 769)
			require.NoError(t, b.SwiGLU(out, gu))
			checkProduced(t, b, e, out)
		})
		t.Run("Gather", func(t *testing.T) {
			e := newEnv(t, b)
			x := e.in(ml.F32, randn(r, 6*160, 1), 6, 160)
			out := e.out(ml.F32, 3, 160)
			require.NoError(t, b.Gather(out, x, e.in(ml.I32, []int32{5, 0, 5}, 3)))
			checkProduced(t, b, e, out)
		})
		for i, c := range attnCases {
			t.Run("Attention/"+c.name, func(t *testing.T) {
				out := runAttentionOut(t, b, c, uint64(i))
				checkProduced(t, b, newEnv(t, b), out)
			})
		}
	})
}

// runAttentionOut is runAttention that returns the output tensor (freed at the end of the test).
func runAttentionOut(t *testing.T, b *Backend, c attnCase, seed uint64) ml.Tensor {
	var out ml.Tensor
	spy := &outSpy{Backend: b, out: &out}
	runAttention(t, spy, c, seed)
	require.NotNil(t, out)
	return out
}

// outSpy is a backend that remembers the output tensor of its last Attention.
type outSpy struct {
	*Backend
	out *ml.Tensor
}

func (s *outSpy) Attention(out, q ml.Tensor, a ml.AttnArgs) error {
	*s.out = out
	return s.Backend.Attention(out, q, a)
}

// TestBF16CopyNeverStale: after a producer wrote h and its copy, each way of writing h without
// writing the copy must make MatMul convert h again.
func TestBF16CopyNeverStale(t *testing.T) {
	b := simBackend(t)
	const rows, hd = 4, 64
	writes := []struct {
		name string
		fn   func(e *env, r *rand.Rand, h ml.Tensor)
	}{
		{"Write", func(e *env, r *rand.Rand, h ml.Tensor) { require.NoError(t, b.Write(h, randn(r, rows*hd, 1))) }},
		{"Write into a view", func(e *env, r *rand.Rand, h ml.Tensor) {
			require.NoError(t, b.Write(b.Rows(h, 1), randn(r, hd, 1)))
		}},
		{"AddRMSNorm's residual", func(e *env, r *rand.Rand, h ml.Tensor) {
			out := e.out(ml.F32, rows, hd)
			require.NoError(t, b.AddRMSNorm(out, h, e.in(ml.F32, randn(r, rows*hd, 1), rows, hd), e.weight(ml.F32, randn(r, hd, 1), hd), 1e-6))
		}},
		{"ScatterAdd", func(e *env, r *rand.Rand, h ml.Tensor) {
			require.NoError(t, b.ScatterAdd(h, e.in(ml.F32, randn(r, 2*hd, 1), 2, hd), e.in(ml.I32, []int32{3, 1}, 2)))
		}},
		{"MatMul's output", func(e *env, r *rand.Rand, h ml.Tensor) {
			require.NoError(t, b.MatMul(h, e.in(ml.F32, randn(r, rows*8, 1), rows, 8), e.weight(ml.BF16, randn(r, hd*8, 1), hd, 8)))
		}},
		{"EmbedProject's output", func(e *env, r *rand.Rand, h ml.Tensor) {
			require.NoError(t, b.EmbedProject(h, ml.EmbedArgs{Tokens: e.in(ml.I32, []int32{1, 0, 2, 1}, rows),
				Table: e.weight(ml.BF16, randn(r, 3*hd, 1), 3, hd)}))
		}},
		{"QKV's q", func(e *env, r *rand.Rand, h ml.Tensor) {
			// One head of 64: q is [rows, 64] = h's shape.
			layout := ml.KVLayout{NumBlocks: 2, BlockSize: 4, KVHeads: 1, HeadDim: hd}
			k, v := e.out(ml.BF16, layout.Shape()...), e.out(ml.BF16, layout.Shape()...)
			nw := e.weight(ml.F32, randn(r, hd, 1), hd)
			a := ml.QKVArgs{Q: h, QNorm: nw, KNorm: nw, Pos: e.in(ml.I32, make([]int32, 3*rows), rows, 3),
				Slots: e.in(ml.I32, []int32{0, 1, 2, 3}, rows), K: k, V: v, Heads: 1, KVHeads: 1, HeadDim: hd, Eps: 1e-6,
				Rope: ml.Rope{Theta: 1e4}, Layout: layout}
			require.NoError(t, b.QKV(e.in(ml.F32, randn(r, rows*3*hd, 1), rows, 3*hd), a))
		}},
		{"a producer of fewer rows", func(e *env, r *rand.Rand, h ml.Tensor) {
			require.NoError(t, b.Write(h, randn(r, rows*hd, 1)))
			require.NoError(t, b.RMSNorm(b.Rows(h, 2), b.Rows(e.in(ml.F32, randn(r, rows*hd, 1), rows, hd), 2), e.weight(ml.F32, randn(r, hd, 1), hd), 1e-6))
		}},
	}
	for i, wr := range writes {
		t.Run(wr.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(42, uint64(i)))
			e := newEnv(t, b)
			h := e.out(ml.F32, rows, hd)
			require.NoError(t, b.RMSNorm(h, e.in(ml.F32, randn(r, rows*hd, 1), rows, hd), e.weight(ml.F32, randn(r, hd, 1), hd), 1e-6))
			_, ok := b.currentCopy(h)
			require.True(t, ok, "RMSNorm wrote h's copy")
			wr.fn(e, r, h)
			_, ok = b.currentCopy(h)
			require.False(t, ok, "h's copy must be stale after %s", wr.name)
			w := e.weight(ml.BF16, randn(r, 5*hd, 0.1), 5, hd)
			y := e.out(ml.F32, rows, 5)
			got, _ := launches(t, b, func() { require.NoError(t, b.MatMul(y, h, w)) })
			assert.Equal(t, int64(1), got["qvl_f32_to_bf16"], "MatMul converts h")
			want := e.out(ml.F32, rows, 5)
			require.NoError(t, b.MatMul(want, e.in(ml.F32, e.read(h), rows, hd), w))
			compare(t, "MatMul after "+wr.name, "exact", e.read(y), e.read(want))
		})
	}
}

// TestBF16CopyInGraphs: a recorded MatMul reads a copy only if a producer in the same graph
// wrote it; a copy made before the capture is not baked into the graph.
func TestBF16CopyInGraphs(t *testing.T) {
	b := simBackend(t)
	e := newEnv(t, b)
	r := rand.New(rand.NewPCG(43, 0))
	const rows, k = 3, 96
	x := e.in(ml.F32, randn(r, rows*k, 1), rows, k)
	nw := e.weight(ml.BF16, randn(r, k, 1), k)
	w := e.weight(ml.BF16, randn(r, 9*k, 0.1), 9, k)
	h := e.out(ml.F32, rows, k)
	y := e.out(ml.F32, rows, 9)
	matmulOf := func(vals []float32) []float32 {
		want := e.out(ml.F32, rows, 9)
		require.NoError(t, b.MatMul(want, e.in(ml.F32, vals, rows, k), w))
		return e.read(want)
	}

	// Produced inside the graph: the replay reads the copy the replay wrote.
	require.NoError(t, b.Capture(1, func() error {
		if err := b.RMSNorm(h, x, nw, 1e-6); err != nil {
			return err
		}
		return b.MatMul(y, h, w)
	}))
	g := b.dev.(*simDevice).graphs[b.graphs[1]]
	assert.Len(t, g, 2, "the graph holds the norm and the GEMM, no conversion")
	require.NoError(t, b.Write(x, randn(r, rows*k, 1)))
	require.NoError(t, b.Replay(1))
	compare(t, "replayed norm → MatMul", "exact", e.read(y), matmulOf(e.read(h)))
	_, ok := b.currentCopy(h)
	assert.False(t, ok, "nothing is trusted after a replay")

	// Produced before the capture: the graph must convert, since h may change before a replay.
	require.NoError(t, b.RMSNorm(h, x, nw, 1e-6))
	require.NoError(t, b.Capture(2, func() error { return b.MatMul(y, h, w) }))
	assert.Len(t, b.dev.(*simDevice).graphs[b.graphs[2]], 2, "conversion and GEMM")
	vals := randn(r, rows*k, 1)
	require.NoError(t, b.Write(h, vals))
	require.NoError(t, b.Replay(2))
	compare(t, "replayed MatMul of an input written after the capture", "exact", e.read(y), matmulOf(vals))

	// Produced after the MatMul in the graph (the warm-up run's norm wrote the copy before the
	// recording began): the recorded MatMul must still convert.
	require.NoError(t, b.Capture(3, func() error {
		if err := b.MatMul(y, h, w); err != nil {
			return err
		}
		return b.RMSNorm(h, x, nw, 1e-6)
	}))
	vals = randn(r, rows*k, 1)
	require.NoError(t, b.Write(h, vals))
	require.NoError(t, b.Replay(3))
	compare(t, "replayed MatMul before the norm that rewrites its input", "exact", e.read(y), matmulOf(vals))

	// A replay that writes h without its copy, after an eager norm wrote both: h's copy is
	// stale for the eager MatMul after the replay.
	w2 := e.weight(ml.BF16, randn(r, k*k, 0.1), k, k)
	require.NoError(t, b.Capture(4, func() error { return b.MatMul(h, x, w2) }))
	require.NoError(t, b.RMSNorm(h, x, nw, 1e-6))
	require.NoError(t, b.Replay(4))
	require.NoError(t, b.MatMul(y, h, w))
	compare(t, "eager MatMul after a replay rewrote its input", "exact", e.read(y), matmulOf(e.read(h)))
}

// decodeStepLaunches runs, on the tiny goldens model, a prefill of ctx−1 tokens and then one
// batch-1 decode step, and returns the decode step's launches by name. With graphs it returns
// the recorded graph's node count instead (by = nil).
func decodeStepLaunches(t *testing.T, b *Backend, graphs bool, ctx int) (by map[string]int64, total int64, layers int) {
	root, err := repoRoot()
	require.NoError(t, err)
	var be ml.Backend = WithoutGraphs(b)
	if graphs {
		be = b
	}
	m, err := model.Open(be, filepath.Join(root, "testdata", "goldens", "qwen3vl-tiny-a", "model"), model.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, m.Close()) })
	const bs = 16
	require.NoError(t, m.InitCache(16, bs))
	r := rand.New(rand.NewPCG(44, uint64(ctx)))
	s := &seqState{blocks: []int32{3, 7, 1, 12, 5, 9, 0, 2, 4, 6, 8, 10, 11, 13, 14, 15}}
	textBatch := func(r *rand.Rand, seqs []*seqState, q, bs int) *model.Batch {
		bt := textBatch(r, seqs, q, bs)
		for i := range bt.Tokens {
			bt.Tokens[i] %= int32(m.Config.VocabSize)
		}
		return bt
	}
	_, err = m.Forward(textBatch(r, []*seqState{s}, ctx-1, bs))
	require.NoError(t, err)
	if graphs {
		before := len(b.graphs)
		_, err = m.Forward(textBatch(r, []*seqState{s}, 1, bs))
		require.NoError(t, err)
		require.Len(t, b.graphs, before+1, "the decode step was recorded")
		for _, g := range b.graphs {
			total = max(total, int64(len(b.dev.(*simDevice).graphs[g])))
		}
		return nil, total, m.Config.NumLayers
	}
	by, total = launches(t, b, func() {
		_, err = m.Forward(textBatch(r, []*seqState{s}, 1, bs))
		require.NoError(t, err)
	})
	return by, total, m.Config.NumLayers
}

// TestDecodeStepLaunches pins the launch count of a batch-1 decode step: 6 per layer (qvl_qkv,
// decode attention with its merge, the o GEMM, the post-attention add-norm fused with the
// gate-up GEMM, SwiGLU fused with the down GEMM, the residual add fused with the next layer's
// input norm and qkv GEMM — after the last layer the add and the final norm alone) and 4 per
// step (embedding, the first norm fused with layer 0's qkv GEMM, logit-row gather, LM head),
// with or without split-K, and no qvl_f32_to_bf16 anywhere. (Unfused it was 9 per layer.)
func TestDecodeStepLaunches(t *testing.T) {
	skipShortSim(t, false)
	b := simBackend(t)
	was := fuseOff.Load()
	fuseOff.Store(false) // the fused kernels are opt-in (QVL_CUDA_FUSE=1)
	t.Cleanup(func() { fuseOff.Store(was) })
	for _, ctx := range []int{40, 150} { // one partition, then three (the emulation has 4 SMs)
		t.Run(fmt.Sprintf("ctx%d", ctx), func(t *testing.T) {
			by, total, L := decodeStepLaunches(t, b, false, ctx)
			t.Logf("eager decode step, %d layers: %d launches %v", L, total, by)
			l := int64(L)
			assert.Equal(t, map[string]int64{
				"qvl_embed": 1, "qvl_norm_gemv": 2 * l, "qvl_gather_rows": 1, bf16MatMulKernel(1): l + 1,
				"qvl_qkv": l, "qvl_attn_decode_hd32_g2": l, "qvl_add_rmsnorm": 1, "qvl_swiglu_gemv": l,
			}, by)
			assert.Equal(t, 6*l+4, total)
			_, nodes, _ := decodeStepLaunches(t, b, true, ctx)
			assert.Equal(t, 6*l+4, nodes, "graph nodes of the recorded decode step")
		})
	}
}

// TestDecodeStepLaunchesDefault pins the launch count of a batch-1 decode step without
// QVL_CUDA_FUSE: 9 per layer on the default path (the qkv GEMM, qvl_qkv, decode attention, the
// o GEMM, the post-attention add-norm, the gate-up GEMM, SwiGLU, the down GEMM, the residual add
// with the next layer's input norm — after the last layer, with the final norm) and 4 per step
// (embedding, the first norm, logit-row gather, LM head); 8 per layer with QVL_CUDA_GLU_GEMV=1
// (SwiGLU as the gate-up GEMV's epilogue). (The emulated model's head size, 32, has no folded
// decode instance.)
func TestDecodeStepLaunchesDefault(t *testing.T) {
	skipShortSim(t, false)
	b := simBackend(t)
	withFuse(false, func() {
		for _, glu := range []bool{true, false} {
			t.Run(fmt.Sprintf("glu%v", glu), func(t *testing.T) {
				withGLU(glu, func() {
					by, total, L := decodeStepLaunches(t, b, false, 40)
					t.Logf("eager decode step, %d layers: %d launches %v", L, total, by)
					l := int64(L)
					want := map[string]int64{
						"qvl_embed": 1, "qvl_rmsnorm": 1, "qvl_gather_rows": 1, bf16MatMulKernel(1): 3*l + 1,
						"qvl_qkv": l, "qvl_attn_decode_hd32_g2": l, "qvl_add_rmsnorm": 2 * l, "qvl_gemv_glu": l,
					}
					per := int64(8)
					if !glu {
						delete(want, "qvl_gemv_glu")
						want[bf16MatMulKernel(1)] += l
						want["qvl_swiglu"] = l
						per = 9
					}
					assert.Equal(t, want, by)
					assert.Equal(t, per*l+4, total)
				})
			})
		}
	})
}

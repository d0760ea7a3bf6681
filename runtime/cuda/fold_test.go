package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The folded decode (fold.go, attention.cu's FOLD) is checked bit for bit against this
// backend's own QKV followed by Attention (QVL_CUDA_QKV_FOLD=0's path): the attention output,
// its bf16 copy and both caches, on the emulation's 4 and 132 SMs (one and many partitions) and
// on the GPU; against the CPU reference's ml.QKVAttentionOps within the decode tolerance; and by
// the kernels the profiler saw.

// withQKVFold runs fn with the folded decode turned on or off and restores the setting after.
func withQKVFold(on bool, fn func()) { withSwitch(&qkvFoldOn, on, fn) }

// foldCase is a decode-only step: one query row per sequence of context ctxs[i] (the new
// token's position is ctx − 1), heads = g·kv at head size 128, pages of bs tokens; part fixes
// the decode partition (0: the backend's choice).
type foldCase struct {
	name        string
	g, kv, bs   int
	ctxs        []int
	part        int
	qnBF, knBF  bool // the norm weights' dtypes (bf16, else f32)
	spareBlocks int
}

// foldInputs lays out the step on bk: a random qkv row per sequence, norm weights, positions up
// to 2.6e5, the sequences' pages in shuffled blocks of a cache of random bf16 values (the new
// token's slot holding junk until written), each sequence's slot for its new token. Q and out
// start as NaN.
type foldInputs struct {
	e       *env
	out     ml.Tensor
	qkv     ml.Tensor
	qa      ml.QKVArgs
	aa      ml.AttnArgs
	numSeqs int
}

func newFoldInputs(t testing.TB, bk ml.Backend, c foldCase, seed uint64) *foldInputs {
	r := rand.New(rand.NewPCG(41, seed))
	e := newEnv(t, bk)
	const hd = 128
	heads, nb := c.g*c.kv, len(c.ctxs)
	maxBlocks, total, maxCtx := 0, 0, 0
	for _, ctx := range c.ctxs {
		need := (ctx + c.bs - 1) / c.bs
		maxBlocks = max(maxBlocks, need)
		total += need
		maxCtx = max(maxCtx, ctx)
	}
	numBlocks := total + c.spareBlocks
	perm := r.Perm(numBlocks)
	tables := make([]int32, nb*maxBlocks)
	seqStart := make([]int32, nb+1)
	ctxLen := make([]int32, nb)
	slots := make([]int32, nb)
	next := 0
	for i, ctx := range c.ctxs {
		for j := 0; j < (ctx+c.bs-1)/c.bs; j++ {
			tables[i*maxBlocks+j] = int32(perm[next])
			next++
		}
		seqStart[i+1] = int32(i + 1)
		ctxLen[i] = int32(ctx)
		slots[i] = tables[i*maxBlocks+(ctx-1)/c.bs]*int32(c.bs) + int32((ctx-1)%c.bs)
	}
	layout := ml.KVLayout{NumBlocks: numBlocks, BlockSize: c.bs, KVHeads: c.kv, HeadDim: hd}
	size := ml.NumElements(cpuShape(layout.Shape()))
	k := e.in(bk.KVDType(), bf16Round(randn(r, size, 1)), layout.Shape()...)
	v := e.in(bk.KVDType(), bf16Round(randn(r, size, 1)), layout.Shape()...)
	width := (heads + 2*c.kv) * hd
	qkv := e.in(ml.F32, randn(r, nb*width, 1.5), nb, width)
	norm := func(bf bool) ml.Tensor {
		w := make([]float32, hd)
		for j := range w {
			w[j] = float32(1 + 0.2*r.NormFloat64())
		}
		if bf {
			return e.weight(ml.BF16, w, hd)
		}
		return e.weight(ml.F32, w, hd)
	}
	qn, kn := norm(c.qnBF), norm(c.knBF)
	pos := make([]int32, 3*nb)
	for j := range pos {
		pos[j] = int32(r.IntN(262144))
	}
	q := e.out(ml.F32, nb, heads*hd)
	out := e.out(ml.F32, nb, heads*hd)
	qa := ml.QKVArgs{Q: q, QNorm: qn, KNorm: kn, Pos: e.in(ml.I32, pos, nb, 3), Slots: e.in(ml.I32, slots, nb),
		K: k, V: v, Heads: heads, KVHeads: c.kv, HeadDim: hd, Eps: 1e-6,
		Rope: ml.Rope{Theta: 5e6, Section: []int{24, 20, 20}, Interleaved: true}, Layout: layout}
	aa := ml.AttnArgs{K: k, V: v, SeqStart: e.in(ml.I32, seqStart, nb+1), CtxLen: e.in(ml.I32, ctxLen, nb),
		BlockTables: e.in(ml.I32, tables, nb, maxBlocks), NumSeqs: nb, Heads: heads, KVHeads: c.kv, HeadDim: hd,
		Scale: float32(1 / math.Sqrt(hd)), MaxQueryLen: 1, MaxCtxLen: maxCtx, Layout: layout}
	return &foldInputs{e: e, out: out, qkv: qkv, qa: qa, aa: aa, numSeqs: nb}
}

// foldResult is what QKVAttention leaves: the output, its bf16 copy (nil off the CUDA
// backend) and the caches.
type foldResult struct {
	out, k, v []float32
	outBF16   []uint16
}

// runQKVAttention runs QKVAttention on bk (a CUDA backend with the fold on or off, or the CPU
// reference through ml.QKVAttentionOps) and returns what it wrote, and the kernels it launched
// on a CUDA backend.
func runQKVAttention(t *testing.T, bk ml.Backend, c foldCase, seed uint64, fold bool) (foldResult, map[string]int64) {
	in := newFoldInputs(t, bk, c, seed)
	var ran map[string]int64
	if b, ok := bk.(*Backend); ok {
		b.decodePart = c.part
		defer func() { b.decodePart = 0 }()
		withQKVFold(fold, func() {
			ran = profiledKernels(t, b, func() error { return b.QKVAttention(in.out, in.qkv, in.qa, in.aa) })
		})
	} else {
		require.NoError(t, ml.QKVAttentionOps(bk, in.out, in.qkv, in.qa, in.aa))
	}
	res := foldResult{out: in.e.read(in.out), k: in.e.read(in.qa.K), v: in.e.read(in.qa.V)}
	if b, ok := bk.(*Backend); ok {
		res.outBF16 = readBF16Copy(t, b, in.out)
	}
	return res, ran
}

// readBF16Copy returns the bf16 copy of out that the attention kernels write beside it.
func readBF16Copy(t *testing.T, b *Backend, out ml.Tensor) []uint16 {
	t.Helper()
	bits, ok := readCopy(t, b, out)
	require.True(t, ok, "out's bf16 copy is current")
	return bits
}

// requireBits fails unless got and want hold the same bits.
func requireBits(t *testing.T, what string, want, got []float32) {
	t.Helper()
	require.Equal(t, len(want), len(got), "%s: length", what)
	for i := range want {
		if math.Float32bits(want[i]) != math.Float32bits(got[i]) {
			t.Fatalf("%s: element %d is %v (%#08x), unfused %v (%#08x)", what, i, got[i], math.Float32bits(got[i]),
				want[i], math.Float32bits(want[i]))
		}
	}
}

// foldCases cover the groups 1, 2, 4, 8 at head size 128; pages of 16 and of 5 (not a power of
// two); a context of one token (the new one only), a new token first and last in its page,
// single-pass partitions (≤ 64 tokens) and multi-step ones, one partition and several (fixed
// 32, 64 and 1024, and the backend's choice, which on 132 SMs splits batch 1 into partitions of 32);
// bf16 and f32 norm weights; batch 1 and a batch-64 step.
var foldCases = []foldCase{
	{name: "b1_g1_ctx1", g: 1, kv: 2, bs: 16, ctxs: []int{1}, qnBF: true, knBF: true},
	{name: "b1_g2_bs16", g: 2, kv: 2, bs: 16, ctxs: []int{300}, qnBF: true, knBF: true, spareBlocks: 2},
	{name: "b1_g4_bs5_part32", g: 4, kv: 1, bs: 5, ctxs: []int{161}, part: 32, qnBF: false, knBF: true},
	{name: "b1_g8_bs16_part64", g: 8, kv: 1, bs: 16, ctxs: []int{449}, part: 64, qnBF: true, knBF: false, spareBlocks: 1},
	{name: "b3_g2_bs5", g: 2, kv: 2, bs: 5, ctxs: []int{17, 64, 5}, qnBF: true, knBF: true, spareBlocks: 3},
	{name: "b3_g8_bs16_part32", g: 8, kv: 1, bs: 16, ctxs: []int{33, 97, 16}, part: 32, qnBF: false, knBF: false},
	{name: "b3_g3_bs16", g: 3, kv: 2, bs: 16, ctxs: []int{70, 2, 129}, qnBF: true, knBF: true}, // group 3 on the g4 instance
	// Partitions of 1024 (groups ≤ 2 only): the new token in the second of two, and in the first.
	{name: "b2_g2_bs3_part1024", g: 2, kv: 2, bs: 3, ctxs: []int{1500, 1024}, part: 1024, qnBF: true, knBF: false},
}

func TestOpQKVAttentionFold(t *testing.T) {
	run := func(t *testing.T, b *Backend, c foldCase, seed uint64) {
		want, ranOps := runQKVAttention(t, b, c, seed, false)
		assert.Equal(t, int64(1), ranOps["qvl_qkv"], "the unfused path launches qvl_qkv")
		got, ranFold := runQKVAttention(t, b, c, seed, true)
		k, ok := foldKernel(128, c.g)
		require.True(t, ok)
		assert.Equal(t, map[string]int64{kernelTable[k].name: 1}, ranFold, "one folded launch")
		requireBits(t, "out", want.out, got.out)
		require.Equal(t, want.outBF16, got.outBF16, "out's bf16 copy")
		requireBits(t, "k cache", want.k, got.k)
		requireBits(t, "v cache", want.v, got.v)
		refRes, _ := runQKVAttention(t, ref(), c, seed, false)
		compare(t, "out", "QKVAttention", got.out, refRes.out)
		compare(t, "k cache", "QKV/cache", got.k, refRes.k)
		compare(t, "v cache", "QKV/cache", got.v, refRes.v)
	}
	for _, sms := range []int{4, 132} {
		t.Run(fmt.Sprintf("sim%d", sms), func(t *testing.T) {
			b := simBackendSMs(t, sms)
			for i, c := range foldCases {
				t.Run(c.name, func(t *testing.T) { run(t, b, c, uint64(i)) })
			}
		})
	}
	t.Run("gpu", func(t *testing.T) {
		b := gpuBackend(t)
		for i, c := range foldCases {
			t.Run(c.name, func(t *testing.T) { run(t, b, c, uint64(i)) })
		}
	})
}

// TestOpQKVAttentionFoldBatch64 is a batch-64 decode step of the 2B's attention shape (16 heads,
// 8 KV heads of 128) at short contexts on the emulation's 132 SMs, and at contexts up to 600 on
// the GPU (skipped under -short on the emulation: seconds of CPU).
func TestOpQKVAttentionFoldBatch64(t *testing.T) {
	ctxs := func(hi int) []int {
		r := rand.New(rand.NewPCG(9, uint64(hi)))
		c := make([]int, 64)
		for i := range c {
			c[i] = 1 + r.IntN(hi)
		}
		return c
	}
	run := func(t *testing.T, b *Backend, c foldCase) {
		want, _ := runQKVAttention(t, b, c, 64, false)
		got, ran := runQKVAttention(t, b, c, 64, true)
		assert.Equal(t, int64(1), ran["qvl_attn_decode_fold_hd128_g2"])
		requireBits(t, "out", want.out, got.out)
		require.Equal(t, want.outBF16, got.outBF16, "out's bf16 copy")
		requireBits(t, "k cache", want.k, got.k)
		requireBits(t, "v cache", want.v, got.v)
	}
	t.Run("sim132", func(t *testing.T) {
		if testing.Short() {
			t.Skip("a batch-64 step on the CPU emulation: skipped with -short")
		}
		run(t, simBackendSMs(t, 132), foldCase{g: 2, kv: 8, bs: 16, ctxs: ctxs(40), qnBF: true, knBF: true, spareBlocks: 2})
	})
	t.Run("gpu", func(t *testing.T) {
		b := gpuBackend(t)
		run(t, b, foldCase{g: 2, kv: 8, bs: 16, ctxs: ctxs(600), qnBF: true, knBF: true, spareBlocks: 2})
		run(t, b, foldCase{g: 2, kv: 8, bs: 5, ctxs: ctxs(300), part: 64, qnBF: true, knBF: true})
	})
}

// TestOpQKVAttentionFoldRouting: with the fold on, steps it does not cover run QKV and
// Attention — a query row of 2 (MaxQueryLen 2), a head size other than 128 — and with it off a
// decode step does too.
func TestOpQKVAttentionFoldRouting(t *testing.T) {
	b := simBackend(t)
	c := foldCase{g: 2, kv: 1, bs: 16, ctxs: []int{20, 3}, qnBF: true, knBF: true}
	in := newFoldInputs(t, b, c, 5)
	ops := func(fold bool, aa ml.AttnArgs) map[string]int64 {
		var ran map[string]int64
		withQKVFold(fold, func() {
			ran = profiledKernels(t, b, func() error { return b.QKVAttention(in.out, in.qkv, in.qa, aa) })
		})
		return ran
	}
	assert.Equal(t, map[string]int64{"qvl_attn_decode_fold_hd128_g2": 1}, ops(true, in.aa))
	unfused := map[string]int64{"qvl_qkv": 1, "qvl_attn_decode_hd128_g2": 1}
	assert.Equal(t, unfused, ops(false, in.aa))
	mixed := in.aa
	mixed.MaxQueryLen = 2
	ran := ops(true, mixed)
	assert.Equal(t, int64(1), ran["qvl_qkv"], "a step that may hold a prefill row runs QKV")
	assert.Zero(t, ran["qvl_attn_decode_fold_hd128_g2"])

	_, ok := foldKernel(64, 2)
	assert.False(t, ok, "no folded instance at head size 64")
	for g, want := range map[int]int{1: 0, 2: 1, 3: 2, 4: 2, 5: 3, 8: 3} {
		k, ok := foldKernel(128, g)
		require.True(t, ok)
		assert.Equal(t, fmt.Sprintf("qvl_attn_decode_fold_hd128_g%d", decodeGroups[want]), kernelTable[k].name, "group %d", g)
		assert.Equal(t, sigFold, kernelTable[k].sig)
	}
	_, ok = foldKernel(128, 9)
	assert.False(t, ok, "no folded instance for groups above 8")
}

// TestOpQKVAttentionFoldBadSlot: a new token's slot outside the cache raises QKV's device error
// through the folded path too, and the step's other sequences are still finished.
func TestOpQKVAttentionFoldBadSlot(t *testing.T) {
	run := func(t *testing.T, b *Backend) {
		c := foldCase{g: 2, kv: 2, bs: 16, ctxs: []int{40, 9}, part: 32, qnBF: true, knBF: true}
		in := newFoldInputs(t, b, c, 3)
		slots := make([]int32, in.numSeqs)
		require.NoError(t, b.Read(in.qa.Slots, slots))
		slots[1] = int32(in.qa.Layout.NumBlocks * in.qa.Layout.BlockSize)
		require.NoError(t, b.Write(in.qa.Slots, slots))
		withQKVFold(true, func() { require.NoError(t, b.QKVAttention(in.out, in.qkv, in.qa, in.aa)) })
		err := b.Sync()
		require.ErrorIs(t, err, ErrDeviceCheck)
		require.ErrorContains(t, err, "a cache slot is outside the cache")
	}
	t.Run("sim", func(t *testing.T) { run(t, simBackend(t)) })
	t.Run("gpu", func(t *testing.T) { run(t, gpuBackend(t)) })
}

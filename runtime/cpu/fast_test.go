//go:build cgo

package cpu

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/ml"
)

// Accuracy metric of these tests: for every output row (one token's output for matmul, norms
// and SwiGLU; one head of one token for QKV and attention),
//
//	max_i |fast_i - ref_i| / max(max_i |ref_i|, rms(ref), 1e-30)
//
// must not exceed tolExact (1e-5), where rms(ref) is taken over the op's whole output. The rms
// term matters only for rows of a single output (matmul with m = 1): a lone dot product that
// cancels to a small value measures the conditioning of its sum (float32 sums in two orders differ
// by about 6e-8 of the sum of |terms|), not the kernel. Outputs are poisoned with NaN before each
// fast call, so an element the kernel forgets to write fails the comparison.
const tolExact = 1e-5

// setPrecision switches a backend's fast kernels to precision p; false when it has none.
func setPrecision(be *Backend, p Precision) bool {
	f, ok := be.k.(*fastKernels)
	if !ok {
		return p == PrecisionExact
	}
	f.prec = p
	if f.lvl < levelBF16 {
		f.prec = PrecisionExact
	}
	be.name = f.name()
	return true
}

// variants are the level/thread combinations this CPU can run.
func variants(t *testing.T) []*fastKernels {
	var vs []*fastKernels
	for l := levelGeneric; l <= detected(); l++ {
		for _, th := range []int{1, 2, 3} {
			vs = append(vs, newFastKernelsAt(l, th, PrecisionExact))
		}
	}
	require.NotEmpty(t, vs)
	return vs
}

func randF32(r *rand.Rand, n int, scale float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(scale * (2*r.Float64() - 1))
	}
	return x
}

// randWeight returns an [rows, cols] weight in dt with values of size scale (BF16 values are
// exactly representable, so both paths see the same numbers).
func randWeight(r *rand.Rand, dt ml.DType, rows, cols int, center, scale float64) *Tensor {
	t := NewTensor(dt, rows, cols)
	for i := 0; i < rows*cols; i++ {
		v := float32(center + scale*(2*r.Float64()-1))
		if dt == ml.BF16 {
			t.BF16[i] = loader.F32ToBF16(v)
		} else {
			t.F32[i] = v
		}
	}
	return t
}

func poison(x []float32) {
	for i := range x {
		x[i] = float32(math.NaN())
	}
}

// rowErr returns the largest per-row relative error (the metric above) of got against want
// (rows of width w) and the row where it occurs; NaN or Inf in got counts as an infinite error.
func rowErr(got, want []float32, w int) (float64, int) {
	var sq float64
	for _, v := range want {
		sq += float64(v) * float64(v)
	}
	rms := math.Sqrt(sq / float64(max(len(want), 1)))
	worst, at := 0.0, -1
	for r := 0; r < len(want)/w; r++ {
		var maxRef, maxDiff float64
		for i := r * w; i < (r+1)*w; i++ {
			maxRef = math.Max(maxRef, math.Abs(float64(want[i])))
			d := math.Abs(float64(got[i]) - float64(want[i]))
			if math.IsNaN(d) || math.IsInf(d, 0) {
				d = math.Inf(1)
			}
			maxDiff = math.Max(maxDiff, d)
		}
		if e := maxDiff / math.Max(math.Max(maxRef, rms), 1e-30); e > worst || at < 0 {
			worst, at = e, r
		}
	}
	return worst, at
}

// worstSeen records the largest error each test saw (logged, for the record).
var worstSeen sync.Map

func requireClose(t *testing.T, got, want []float32, w int, tol float64, what string) {
	t.Helper()
	require.Equal(t, len(want), len(got), what)
	e, r := rowErr(got, want, w)
	if old, ok := worstSeen.Load(t.Name()); !ok || e > old.(float64) {
		worstSeen.Store(t.Name(), e)
	}
	require.LessOrEqualf(t, e, tol, "%s: row %d has relative error %.3g (bound %.0e)", what, r, e, tol)
}

// logWorst logs the largest relative error a test saw.
func logWorst(t *testing.T) {
	t.Cleanup(func() {
		if e, ok := worstSeen.Load(t.Name()); ok {
			t.Logf("worst relative error %.3g (bound %.0e)", e, tolExact)
		}
	})
}

func TestFastMatMul(t *testing.T) {
	logWorst(t)
	r := rand.New(rand.NewPCG(1, 2))
	for _, dt := range []ml.DType{ml.BF16, ml.F32} {
		for _, k := range []int{160, 769} {
			for _, m := range []int{1, 769, 2051} {
				w := randWeight(r, dt, m, k, 0, 1/math.Sqrt(float64(k)))
				ns := []int{1, 2, 3, 4, 5, 12, 13, 17}
				if m <= 769 {
					// Both sides of GEMV_MAX (128): the GEMV and the packed GEMM (in exact mode with
					// bf16 weights, the GEMV up to GEMV_EXACT_MAX).
					ns = append(ns, 128, 129, 150)
				}
				if m == 769 && k == 160 && dt == ml.BF16 {
					// Both sides of GEMV_EXACT_MAX (2048): the exact mode's GEMV and packed GEMM.
					ns = append(ns, 2048, 2049)
				}
				for _, n := range ns {
					x := randF32(r, n*k, 1)
					want := make([]float32, n*m)
					matmulRef(want, x, w, n, k, m)
					for _, f := range variants(t) {
						got := make([]float32, n*m)
						poison(got)
						f.matmul(got, x, w, n, k, m)
						requireClose(t, got, want, m, tolExact, fmt.Sprintf("%s n=%d k=%d m=%d %s", dt, n, k, m, f.name()))
					}
				}
			}
		}
	}
}

func TestFastMatMulEmptyK(t *testing.T) {
	for _, n := range []int{1, 20} {
		out := make([]float32, n*3)
		poison(out)
		newFastKernelsAt(detected(), 2, PrecisionExact).matmul(out, nil, NewTensor(ml.BF16, 3, 0), n, 0, 3)
		assert.Equal(t, make([]float32, n*3), out, "n=%d", n)
	}
}

// TestFastMatMulPrecision checks the vdpbf16ps GEMMs against their own bounds: bf16 activations
// cost about 2^-9 per product, the hi+lo split about 2^-17. Rounding errors of single products
// do not shrink with a sum that cancels, so the error is measured against the largest output of
// the whole product (an output row of one element would otherwise be its own scale).
func TestFastMatMulPrecision(t *testing.T) {
	if detected() < levelBF16 {
		t.Skipf("this CPU has no AVX512_BF16 (level %s)", detected())
	}
	r := rand.New(rand.NewPCG(3, 4))
	bounds := map[Precision]float64{PrecisionBF16: 2e-2, PrecisionHiLo: tolExact}
	for _, p := range []Precision{PrecisionBF16, PrecisionHiLo} {
		worst := 0.0
		for _, k := range []int{160, 769, 2048} {
			for _, m := range []int{1, 33, 769} {
				w := randWeight(r, ml.BF16, m, k, 0, 1/math.Sqrt(float64(k)))
				for _, n := range []int{129, 136} { // above GEMV_MAX: the vdpbf16ps GEMM
					x := randF32(r, n*k, 1)
					want := make([]float32, n*m)
					matmulRef(want, x, w, n, k, m)
					for _, th := range []int{1, 2} {
						f := newFastKernelsAt(levelBF16, th, p)
						got := make([]float32, n*m)
						poison(got)
						f.matmul(got, x, w, n, k, m)
						requireClose(t, got, want, n*m, bounds[p], fmt.Sprintf("%s n=%d k=%d m=%d %s", p, n, k, m, f.name()))
						e, _ := rowErr(got, want, n*m)
						worst = math.Max(worst, e)
					}
				}
			}
		}
		t.Logf("%s matmul: worst error relative to the largest output %.3g", p, worst)
	}
}

func TestFastRMSNorm(t *testing.T) {
	logWorst(t)
	r := rand.New(rand.NewPCG(5, 6))
	for _, dt := range []ml.DType{ml.BF16, ml.F32} {
		for _, h := range []int{160, 769, 2048} {
			w := randWeight(r, dt, 1, h, 1, 0.2)
			w.shape = []int{h}
			for _, rows := range []int{1, 5, 17} {
				x := randF32(r, rows*h, 3)
				delta := randF32(r, rows*h, 1)
				want := make([]float32, rows*h)
				rmsNormRef(want, x, w, h, 1e-6)
				wantX := append([]float32(nil), x...)
				wantAdd := make([]float32, rows*h)
				addRMSNormRef(wantAdd, wantX, delta, w, h, 1e-6)
				for _, f := range variants(t) {
					what := fmt.Sprintf("%s rows=%d h=%d %s", dt, rows, h, f.name())
					got := make([]float32, rows*h)
					poison(got)
					f.rmsNorm(got, x, w, h, 1e-6)
					requireClose(t, got, want, h, tolExact, "rmsnorm "+what)

					gotX := append([]float32(nil), x...)
					poison(got)
					f.addRMSNorm(got, gotX, delta, w, h, 1e-6)
					require.Equal(t, wantX, gotX, "add+rmsnorm residual "+what)
					requireClose(t, got, wantAdd, h, tolExact, "add+rmsnorm "+what)
				}
			}
		}
	}
}

func TestFastSwiGLU(t *testing.T) {
	logWorst(t)
	r := rand.New(rand.NewPCG(7, 8))
	for _, inter := range []int{1, 17, 769, 6144} {
		for _, rows := range []int{1, 5, 17} {
			gu := randF32(r, rows*2*inter, 8)
			// The exp clamps: very negative and very positive gates.
			gu[0], gu[inter/2] = -120, 95
			want := make([]float32, rows*inter)
			swigluRef(want, gu, inter)
			for _, f := range variants(t) {
				got := make([]float32, rows*inter)
				poison(got)
				f.swiglu(got, gu, inter)
				requireClose(t, got, want, inter, tolExact, fmt.Sprintf("swiglu rows=%d inter=%d %s", rows, inter, f.name()))
			}
		}
	}
}

type attnCase struct {
	heads, kvHeads, hd, bs int
	// seqs lists each sequence's query rows and context length (query rows are its last tokens).
	seqs [][2]int
}

var attnCases = []attnCase{
	{heads: 4, kvHeads: 2, hd: 64, bs: 16, seqs: [][2]int{{1, 1}, {1, 37}, {5, 5}, {17, 50}}},
	{heads: 4, kvHeads: 1, hd: 128, bs: 4, seqs: [][2]int{{17, 17}, {3, 40}, {1, 9}}},
	{heads: 16, kvHeads: 8, hd: 128, bs: 16, seqs: [][2]int{{1, 70}, {40, 100}}},
	{heads: 6, kvHeads: 3, hd: 40, bs: 4, seqs: [][2]int{{2, 11}, {7, 7}}},
	{heads: 2, kvHeads: 2, hd: 64, bs: 16, seqs: [][2]int{{33, 33}}},
	{heads: 16, kvHeads: 1, hd: 64, bs: 16, seqs: [][2]int{{3, 20}, {1, 5}, {9, 9}}},
}

// layoutFor returns a cache layout with enough blocks for the case plus spares, and each
// sequence's block table drawn from a shuffled list of blocks.
func layoutFor(r *rand.Rand, c attnCase) (ml.KVLayout, [][]int32, int) {
	need := 0
	maxBlocks := 0
	for _, s := range c.seqs {
		b := (s[1] + c.bs - 1) / c.bs
		need += b
		maxBlocks = max(maxBlocks, b)
	}
	l := ml.KVLayout{NumBlocks: need + 3, BlockSize: c.bs, KVHeads: c.kvHeads, HeadDim: c.hd}
	perm := r.Perm(l.NumBlocks)
	var tables [][]int32
	next := 0
	for _, s := range c.seqs {
		b := (s[1] + c.bs - 1) / c.bs
		tb := make([]int32, b)
		for i := range tb {
			tb[i] = int32(perm[next])
			next++
		}
		tables = append(tables, tb)
	}
	return l, tables, maxBlocks
}

func TestFastAttention(t *testing.T) {
	logWorst(t)
	r := rand.New(rand.NewPCG(9, 10))
	for ci, c := range attnCases {
		l, tabs, maxBlocks := layoutFor(r, c)
		kc := randF32(r, ml.NumElements(NewTensor(ml.F32, l.Shape()...)), 1)
		vc := randF32(r, len(kc), 1)
		seqStart := []int32{0}
		var ctxLen, tables []int32
		for i, s := range c.seqs {
			seqStart = append(seqStart, seqStart[i]+int32(s[0]))
			ctxLen = append(ctxLen, int32(s[1]))
			tb := make([]int32, maxBlocks)
			copy(tb, tabs[i])
			tables = append(tables, tb...)
		}
		n := int(seqStart[len(c.seqs)])
		q := randF32(r, n*c.heads*c.hd, 1)
		a := ml.AttnArgs{NumSeqs: len(c.seqs), Heads: c.heads, KVHeads: c.kvHeads, HeadDim: c.hd,
			Scale: float32(1 / math.Sqrt(float64(c.hd))), Layout: l}
		want := make([]float32, n*c.heads*c.hd)
		attentionRef(want, q, kc, vc, seqStart, ctxLen, tables, a)
		for _, f := range variants(t) {
			got := make([]float32, len(want))
			poison(got)
			f.attention(got, q, kc, vc, seqStart, ctxLen, tables, a)
			requireClose(t, got, want, c.hd, tolExact, fmt.Sprintf("attention case %d %s", ci, f.name()))
		}
	}
}

func TestFastQKV(t *testing.T) {
	logWorst(t)
	r := rand.New(rand.NewPCG(11, 12))
	ropes := []ml.Rope{
		{Theta: 5e6, Section: []int{24, 20, 20}, Interleaved: true},
		{Theta: 1e6, Section: []int{16, 24, 24}},
		{Theta: 1e4},
	}
	for ci, c := range attnCases {
		for ri, rope := range ropes {
			if len(rope.Section) == 3 && 2*(rope.Section[0]+rope.Section[1]+rope.Section[2]) != c.hd {
				// Scale the sections to this head size (pairs of the halves).
				half := c.hd / 2
				rope.Section = []int{half - 2*(half/3), half / 3, half / 3}
			}
			l, tabs, _ := layoutFor(r, c)
			for _, dt := range []ml.DType{ml.BF16, ml.F32} {
				n := 0
				var slots, pos []int32
				for i, s := range c.seqs {
					for j := s[1] - s[0]; j < s[1]; j++ {
						slots = append(slots, tabs[i][j/c.bs]*int32(c.bs)+int32(j%c.bs))
						p := int32(j)
						if ri == 0 {
							p += int32(r.IntN(200000))
						}
						pos = append(pos, p, p+int32(r.IntN(3)), p+int32(r.IntN(5)))
						n++
					}
				}
				width := (c.heads + 2*c.kvHeads) * c.hd
				qkv := randF32(r, n*width, 2)
				qn := randWeight(r, dt, 1, c.hd, 1, 0.2)
				kn := randWeight(r, dt, 1, c.hd, 1, 0.2)
				a := ml.QKVArgs{Heads: c.heads, KVHeads: c.kvHeads, HeadDim: c.hd, Eps: 1e-6, Rope: rope, Layout: l}
				cacheLen := ml.NumElements(NewTensor(ml.F32, l.Shape()...))
				kc0, vc0 := randF32(r, cacheLen, 1), randF32(r, cacheLen, 1)
				wantQ := make([]float32, n*c.heads*c.hd)
				wantK, wantV := append([]float32(nil), kc0...), append([]float32(nil), vc0...)
				qkvRef(qkv, wantQ, qn, kn, pos, slots, wantK, wantV, a)
				for _, f := range variants(t) {
					what := fmt.Sprintf("qkv case %d rope %d %s %s", ci, ri, dt, f.name())
					gotQ := make([]float32, len(wantQ))
					poison(gotQ)
					gotK, gotV := append([]float32(nil), kc0...), append([]float32(nil), vc0...)
					// Poison the slots the op must write.
					for _, s := range slots {
						for h := 0; h < c.kvHeads; h++ {
							poison(gotK[l.Offset(int(s), h):][:c.hd])
							poison(gotV[l.Offset(int(s), h):][:c.hd])
						}
					}
					f.qkv(qkv, gotQ, qn, kn, pos, slots, gotK, gotV, a)
					requireClose(t, gotQ, wantQ, c.hd, tolExact, what+" q")
					requireClose(t, gotK, wantK, c.hd, tolExact, what+" k cache")
					require.Equal(t, wantV, gotV, what+" v cache")
					// A second call with the same positions reuses the rope table.
					f.qkv(qkv, gotQ, qn, kn, pos, slots, gotK, gotV, a)
					requireClose(t, gotQ, wantQ, c.hd, tolExact, what+" q (cached rope)")
				}
			}
		}
	}
}

// TestFastBackendConcurrent runs two fast backends at once on the shared pool: one of them
// gets the pool, the other runs on its own thread, and both must be right.
func TestFastBackendConcurrent(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	const n, k, m = 9, 300, 1000
	w := randWeight(r, ml.BF16, m, k, 0, 0.05)
	x := randF32(r, n*k, 1)
	want := make([]float32, n*m)
	matmulRef(want, x, w, n, k, m)
	var wg sync.WaitGroup
	errs := make([]float64, 4)
	for g := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := New(Options{Threads: 2})
			out := NewTensor(ml.F32, n, m)
			worst := 0.0
			for i := 0; i < 20; i++ {
				poison(out.F32)
				if err := b.MatMul(out, FromF32(x, n, k), w); err != nil {
					worst = math.Inf(1)
					return
				}
				e, _ := rowErr(out.F32, want, m)
				worst = math.Max(worst, e)
			}
			errs[g] = worst
		}()
	}
	wg.Wait()
	for g, e := range errs {
		assert.LessOrEqualf(t, e, tolExact, "goroutine %d", g)
	}
}

func TestFastSelected(t *testing.T) {
	b := New(Options{Threads: 2})
	assert.Contains(t, b.Name(), detected().String())
	assert.Contains(t, b.Name(), "2 threads")
	assert.Equal(t, "cpu-ref", NewReference().Name())
	f := newFastKernelsAt(detected(), 0, PrecisionExact)
	assert.Greater(t, f.threads, 0)
	// Levels above what the CPU has are clamped, and precision modes need AVX512_BF16.
	g := newFastKernelsAt(levelGeneric, 1, PrecisionBF16)
	assert.Equal(t, PrecisionExact, g.prec)
}

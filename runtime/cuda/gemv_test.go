package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// qvl_gemv's tolerance against the CPU twin when x is already bf16-representable: both sides
// multiply the same bf16 values exactly in f32 and differ only in summation order (the twin
// adds k in order; the kernel adds each lane's slice, then a shuffle tree), ~√K·2⁻²⁴ relative.
func init() { tolerances["MatMul/gemv"] = tol{1e-5, 1e-4} }

// bf16MatMulKernel is the name the profiler gives the kernel of a bf16 MatMul with rows x rows.
// (K a multiple of 64 and 16-byte aligned operands, as the tests' are, for qvl_gemm_skinny).
func bf16MatMulKernel(rows int) string {
	if useGemv(rows) {
		return fmt.Sprintf("qvl_gemv_m%d", rows)
	}
	if skinnyOn.Load() && rows >= skinnyMinRows && rows <= skinnyMaxRows {
		return kernelTable[must(skinnyKernel(rows))].name
	}
	return "cublasLt gemm bf16"
}

// forceGemv turns qvl_gemv on for the test (whatever QVL_CUDA_GEMV says) and restores the setting after.
func forceGemv(t *testing.T) {
	was := gemvOff.Load()
	gemvOff.Store(false)
	t.Cleanup(func() { gemvOff.Store(was) })
}

// profiledKernels runs fn with the profiler on and returns the names it recorded, with calls.
func profiledKernels(t *testing.T, b *Backend, fn func() error) map[string]int64 {
	t.Helper()
	b.ResetProfile()
	b.SetProfiling(true)
	err := fn()
	prof := b.Profile()
	b.SetProfiling(false)
	require.NoError(t, err)
	out := map[string]int64{}
	for _, o := range prof {
		out[o.Name] += o.Calls
	}
	return out
}

// TestOpGemv checks MatMul's qvl_gemv path (1–8 x rows, bf16 weights) against the CPU twin on
// odd shapes: K below a vector (7, 13), K with a scalar tail (2053), K on the vector path with
// whole rounds and a tail of uint4s (64, 520, 2056, 6152), N odd and below a block's rows, so
// that the last warp's rows (R = 2 for ≥ 4 rows) fall past N, and N beyond the grid's cap
// (5001, 20003 rows on the emulation's 4 SMs: 128 blocks of 4 warps), so that warps take
// several row groups and reduce several batches of them, the last one partial. Outputs start
// as NaN. Rows up to gemvMaxRows go through MatMul; the kernels for more rows (built, not
// chosen) are launched directly on x's bf16 values.
func TestOpGemv(t *testing.T) {
	shapes := [][2]int{{7, 13}, {13, 1}, {2053, 37}, {64, 9}, {520, 3}, {2056, 33}, {6152, 5}, {16, 5001}, {24, 20003}}
	forceGemv(t)
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for rows := 1; rows <= gemvKernelRows; rows++ {
			for _, s := range shapes {
				k, m := s[0], s[1]
				t.Run(fmt.Sprintf("%dx%dx%d", rows, k, m), func(t *testing.T) {
					run := func(bk ml.Backend) []float32 {
						r := rand.New(rand.NewPCG(61, uint64(rows*100000+k*100+m)))
						e := newEnv(t, bk)
						xv := bf16Round(randn(r, rows*k, 1))
						x := e.in(ml.F32, xv, rows, k)
						w := e.weight(ml.BF16, randn(r, m*k, 1/math.Sqrt(float64(k))), m, k)
						out := e.out(ml.F32, rows, m)
						if cb, ok := bk.(*Backend); ok && rows > gemvMaxRows {
							xb := e.in(ml.BF16, xv, rows, k)
							ran := profiledKernels(t, cb, func() error {
								return cb.dev.do(func() error { return cb.gemv(rows, m, k, ptr(xb), ptr(w), ptr(out)) })
							})
							assert.Equal(t, map[string]int64{fmt.Sprintf("qvl_gemv_m%d", rows): 1}, ran)
						} else if ok {
							ran := profiledKernels(t, cb, func() error { return bk.MatMul(out, x, w) })
							assert.Equal(t, int64(1), ran[fmt.Sprintf("qvl_gemv_m%d", rows)], "kernels run: %v", ran)
							assert.Zero(t, ran["cublasLt gemm bf16"], "kernels run: %v", ran)
						} else {
							require.NoError(t, bk.MatMul(out, x, w))
						}
						return e.read(out)
					}
					compare(t, "out", "MatMul/gemv", run(b), run(ref()))
				})
			}
		}
	})
}

// TestGemvUnaligned launches qvl_gemv on x and W that start 2 bytes past a 16-byte boundary
// (K a multiple of 8, so only the alignment sends it to the scalar path) and checks it against
// sums of the same bf16 products in float64.
func TestGemvUnaligned(t *testing.T) {
	const rows, k, m = 3, 64, 11
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		r := rand.New(rand.NewPCG(62, 1))
		e := newEnv(t, b)
		xv := bf16Round(randn(r, rows*k+1, 1))
		wv := bf16Round(randn(r, m*k+1, 0.1))
		xt := e.in(ml.BF16, xv, rows*k+1)
		wt := e.in(ml.BF16, wv, m*k+1)
		out := e.out(ml.F32, rows, m)
		require.NoError(t, b.dev.do(func() error { return b.gemv(rows, m, k, ptr(xt)+2, ptr(wt)+2, ptr(out)) }))
		got := e.read(out)
		for i := 0; i < rows; i++ {
			for j := 0; j < m; j++ {
				var want, mag float64
				for c := 0; c < k; c++ {
					p := float64(xv[1+i*k+c]) * float64(wv[1+j*k+c])
					want += p
					mag += math.Abs(p)
				}
				assert.InDelta(t, want, float64(got[i*m+j]), 1e-5*mag+1e-30, "y[%d, %d]", i, j)
			}
		}
	})
}

// TestGemvChoice checks which kernel MatMul picks: qvl_gemv for one bf16 x row (gemvMaxRows),
// cuBLASLt above and when QVL_CUDA_GEMV=0 turned it off, an f32 GEMM for f32 weights; and that
// the kernels' row bound is enforced.
func TestGemvChoice(t *testing.T) {
	forceGemv(t)
	assert.True(t, useGemv(1))
	assert.True(t, useGemv(gemvMaxRows))
	assert.False(t, useGemv(gemvMaxRows+1))
	assert.False(t, useGemv(0))
	b := simBackend(t)
	require.ErrorContains(t, b.dev.do(func() error { return b.gemv(gemvKernelRows+1, 3, 8, 0, 0, 0) }), "the kernels take 1 to 8")
	const k, m = 24, 5
	r := rand.New(rand.NewPCG(63, 1))
	e := newEnv(t, b)
	w := e.weight(ml.BF16, randn(r, m*k, 0.2), m, k)
	wf := e.weight(ml.F32, randn(r, m*k, 0.2), m, k)
	for _, c := range []struct {
		rows int
		w    ml.Tensor
		off  bool
		want string
	}{
		{1, w, false, "qvl_gemv_m1"}, {2, w, false, "cublasLt gemm bf16"}, {8, w, false, "cublasLt gemm bf16"},
		{1, w, true, "cublasLt gemm bf16"}, {8, w, true, "cublasLt gemm bf16"}, {2, wf, false, "cublasLt gemm f32"},
	} {
		x := e.in(ml.F32, randn(r, c.rows*k, 1), c.rows, k)
		out := e.out(ml.F32, c.rows, m)
		gemvOff.Store(c.off)
		ran := profiledKernels(t, b, func() error { return b.MatMul(out, x, c.w) })
		gemvOff.Store(false)
		assert.Equal(t, int64(1), ran[c.want], "%d rows, gemv off %v: kernels run %v", c.rows, c.off, ran)
		got := e.read(out)
		want := make([]float32, c.rows*m)
		wr := e.read(c.w)
		xr := e.read(x)
		for i := 0; i < c.rows; i++ {
			for j := 0; j < m; j++ {
				var s float64
				for q := 0; q < k; q++ {
					xq := xr[i*k+q]
					if c.w == w {
						xq = loader.BF16ToF32(loader.F32ToBF16(xq))
					}
					s += float64(xq) * float64(wr[j*k+q])
				}
				want[i*m+j] = float32(s)
			}
		}
		assert.InDeltaSlice(t, want, got, 1e-4, "%d rows, gemv off %v", c.rows, c.off)
	}
}

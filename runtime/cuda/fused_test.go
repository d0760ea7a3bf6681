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

// The fused decode ops (fused.go, kernels/fused.cu) are checked three ways: against the CPU
// reference's composition of the same ops (NormMatMul = AddRMSNorm + MatMul, SwiGLUMatMul =
// SwiGLU + MatMul), bit for bit against this backend's own unfused kernels (QVL_CUDA_FUSE=0's
// path: the fused kernels sum and round exactly as the two ops do), and by the kernels the
// profiler saw: one fused launch for one row, the two ops otherwise.

// withFuse runs fn with the fused kernels turned on or off and restores the setting after.
func withFuse(on bool, fn func()) { withSwitch(&fuseOff, !on, fn) }

// normCase is a NormMatMul shape: rows × k into m weight rows.
type normCase struct {
	rows, k, m int
	add        bool     // delta given (AddRMSNorm) or nil (RMSNorm)
	norm       ml.DType // the norm weight's dtype
}

// fusedNormCases: K odd (the gemv's scalar path: 13, 157, 2053), K on the vector path with a
// tail of uint4s (520) and whole rounds (2048, and 4096, the largest row the prologue holds),
// K past it (5000: the two ops); N below a warp's share, odd, and beyond the emulation's grid
// cap (5001 rows on 2·4 blocks of 8 warps: ~78 rows a warp, several reduction batches, the
// last partial); rows 1 (the fused kernel) and 3, 17 (the two ops).
var fusedNormCases = []normCase{
	{1, 13, 5, true, ml.BF16}, {1, 157, 37, true, ml.F32}, {1, 2053, 9, false, ml.BF16},
	{1, 520, 301, true, ml.BF16}, {1, 2048, 64, true, ml.BF16}, {1, 4096, 33, false, ml.F32},
	{1, 64, 5001, true, ml.BF16}, {1, 5000, 7, true, ml.BF16},
	{3, 157, 37, true, ml.BF16}, {17, 520, 11, false, ml.BF16},
}

// normInputs makes a residual-and-norm op's inputs: the residual x [rows, k], delta of the same
// shape when add (else nil) and a norm weight of dtype dt around 1.
func normInputs(e *env, r *rand.Rand, rows, k int, add bool, dt ml.DType) (x, delta, norm ml.Tensor) {
	x = e.in(ml.F32, randn(r, rows*k, 2), rows, k)
	if add {
		delta = e.in(ml.F32, randn(r, rows*k, 1), rows, k)
	}
	nv := make([]float32, k)
	for i := range nv {
		nv[i] = float32(1 + 0.2*r.NormFloat64())
	}
	return x, delta, e.weight(dt, nv, k)
}

// runNormMatMul runs NormMatMul on bk and returns y, h and the residual x after it. The
// outputs start as NaN.
func runNormMatMul(t *testing.T, bk ml.Backend, c normCase, seed uint64) (y, h, x []float32) {
	r := rand.New(rand.NewPCG(71, seed))
	e := newEnv(t, bk)
	xt, dt, nt := normInputs(e, r, c.rows, c.k, c.add, c.norm)
	wt := e.weight(ml.BF16, randn(r, c.m*c.k, 1/math.Sqrt(float64(c.k))), c.m, c.k)
	yt, ht := e.out(ml.F32, c.rows, c.m), e.out(ml.F32, c.rows, c.k)
	require.NoError(t, bk.(ml.NormMatMuler).NormMatMul(yt, ht, xt, dt, nt, wt, 1e-6))
	return e.read(yt), e.read(ht), e.read(xt)
}

func TestOpNormMatMul(t *testing.T) {
	forceGemv(t)
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for i, c := range fusedNormCases {
			t.Run(fmt.Sprintf("%dx%dx%d_add%v_%s", c.rows, c.k, c.m, c.add, dtName(c.norm)), func(t *testing.T) {
				fused := c.rows == 1 && c.k <= fusedNormMaxK
				var y, h, x []float32
				ran := profiledKernels(t, b, func() error {
					withFuse(true, func() { y, h, x = runNormMatMul(t, b, c, uint64(i)) })
					return nil
				})
				if fused {
					assert.Equal(t, int64(1), ran["qvl_norm_gemv"], "kernels run: %v", ran)
					assert.Zero(t, ran["qvl_rmsnorm"]+ran["qvl_add_rmsnorm"]+ran["qvl_gemv_m1"], "kernels run: %v", ran)
				} else {
					assert.Zero(t, ran["qvl_norm_gemv"], "kernels run: %v", ran)
				}
				wy, wh, wx := runNormMatMul(t, ref(), c, uint64(i))
				compare(t, "y", "MatMul/bf16", y, wy)
				compare(t, "h", "RMSNorm", h, wh)
				compare(t, "residual", "RMSNorm", x, wx)
				var uy, uh, ux []float32
				withFuse(false, func() { uy, uh, ux = runNormMatMul(t, b, c, uint64(i)) })
				compare(t, "y against the unfused kernels", "exact", y, uy)
				compare(t, "h against the unfused kernels", "exact", h, uh)
				compare(t, "residual against the unfused kernels", "exact", x, ux)
			})
		}
	})
}

// swigluCase is a SwiGLUMatMul shape: rows × i into m weight rows.
type swigluCase struct{ rows, i, m int }

// fusedSwiGLUCases: I odd (scalar path), on the vector path (6144, the 2B's), the largest the
// prologue holds (12288) and past it (12296: the two ops); N as for the norm; rows 1 and 4.
var fusedSwiGLUCases = []swigluCase{
	{1, 13, 5}, {1, 769, 37}, {1, 6144, 21}, {1, 12288, 3}, {1, 96, 5001}, {1, 12296, 2}, {4, 769, 9},
}

// runSwiGLUMatMul runs SwiGLUMatMul on bk and returns y and act. The outputs start as NaN.
func runSwiGLUMatMul(t *testing.T, bk ml.Backend, c swigluCase, seed uint64) (y, act []float32) {
	r := rand.New(rand.NewPCG(72, seed))
	e := newEnv(t, bk)
	gv := randn(r, c.rows*2*c.i, 3)
	gv[0] = -100 // e^100 overflows f32: silu must still be −0
	gu := e.in(ml.F32, gv, c.rows, 2*c.i)
	wt := e.weight(ml.BF16, randn(r, c.m*c.i, 1/math.Sqrt(float64(c.i))), c.m, c.i)
	yt, at := e.out(ml.F32, c.rows, c.m), e.out(ml.F32, c.rows, c.i)
	require.NoError(t, bk.(ml.SwiGLUMatMuler).SwiGLUMatMul(yt, at, gu, wt))
	return e.read(yt), e.read(at)
}

func TestOpSwiGLUMatMul(t *testing.T) {
	forceGemv(t)
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for i, c := range fusedSwiGLUCases {
			t.Run(fmt.Sprintf("%dx%dx%d", c.rows, c.i, c.m), func(t *testing.T) {
				fused := c.rows == 1 && c.i <= fusedActMaxK
				var y, act []float32
				ran := profiledKernels(t, b, func() error {
					withFuse(true, func() { y, act = runSwiGLUMatMul(t, b, c, uint64(i)) })
					return nil
				})
				if fused {
					assert.Equal(t, int64(1), ran["qvl_swiglu_gemv"], "kernels run: %v", ran)
					assert.Zero(t, ran["qvl_swiglu"]+ran["qvl_gemv_m1"], "kernels run: %v", ran)
				} else {
					assert.Zero(t, ran["qvl_swiglu_gemv"], "kernels run: %v", ran)
				}
				wy, wa := runSwiGLUMatMul(t, ref(), c, uint64(i))
				compare(t, "y", "MatMul/bf16", y, wy)
				compare(t, "act", "SwiGLU", act, wa)
				var uy, ua []float32
				withFuse(false, func() { uy, ua = runSwiGLUMatMul(t, b, c, uint64(i)) })
				compare(t, "y against the unfused kernels", "exact", y, uy)
				compare(t, "act against the unfused kernels", "exact", act, ua)
			})
		}
	})
}

// TestFusedCopiesAndRepeats: the fused ops leave current bf16 copies of h and act that MatMul
// reads (bit for bit bf16 of the f32 outputs), and qvl_norm_gemv leaves its block counter at
// zero: a second launch on the updated residual gives what the unfused ops give.
func TestFusedCopiesAndRepeats(t *testing.T) {
	forceGemv(t)
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		r := rand.New(rand.NewPCG(73, 0))
		const k, m, inter = 160, 300, 96
		e := newEnv(t, b)
		xv, dv := randn(r, k, 2), randn(r, k, 1)
		nt := e.weight(ml.BF16, randn(r, k, 1), k)
		wt := e.weight(ml.BF16, randn(r, m*k, 0.1), m, k)
		y, h := e.out(ml.F32, 1, m), e.out(ml.F32, 1, k)
		results := func(fuse bool) (ys [][]float32, resid []float32) {
			x := e.in(ml.F32, xv, 1, k)
			d := e.in(ml.F32, dv, 1, k)
			withFuse(fuse, func() {
				for range 3 {
					require.NoError(t, b.NormMatMul(y, h, x, d, nt, wt, 1e-6))
					ys = append(ys, e.read(y))
				}
			})
			return ys, e.read(x)
		}
		got, gx := results(true)
		want, wx := results(false)
		for i := range want {
			compare(t, fmt.Sprintf("y of launch %d", i+1), "exact", got[i], want[i])
		}
		compare(t, "residual after 3 adds", "exact", gx, wx)
		withFuse(true, func() {
			require.NoError(t, b.NormMatMul(y, h, e.in(ml.F32, xv, 1, k), nil, nt, wt, 1e-6))
			checkFusedCopy(t, b, e, h)
			gu := e.in(ml.F32, randn(r, 2*inter, 3), 1, 2*inter)
			act := e.out(ml.F32, 1, inter)
			w2 := e.weight(ml.BF16, randn(r, 7*inter, 0.1), 7, inter)
			require.NoError(t, b.SwiGLUMatMul(e.out(ml.F32, 1, 7), act, gu, w2))
			checkFusedCopy(t, b, e, act)
		})
	})
}

// checkFusedCopy checks that out's bf16 copy is current and equals bf16(out).
func checkFusedCopy(t *testing.T, b *Backend, e *env, out ml.Tensor) {
	t.Helper()
	f := e.read(out)
	bits, ok := readCopy(t, b, out)
	require.True(t, ok, "the fused op left no current bf16 copy")
	for i, v := range f {
		require.Equal(t, loader.F32ToBF16(v), bits[i], "copy element %d of %v", i, v)
	}
}

// TestFusedManyRows: warps that take many row groups, where the fused kernels carry the next
// row group's first round of W loads across rows (gemv.cuh's qvl_gemv_rows_next): N well past
// the grid's 2·SMs·8 warps, at K 2048 (a row is one round: every load of a warp's next row is
// issued before the current row's sums) and at K 2088 and 2600, not multiples of 256 (a round
// and a tail of uint4s after the carried loads), on 4 and 132 emulated SMs (64 and 2,112 warps)
// and on the GPU. y must be bit for bit the unfused kernels'.
func TestFusedManyRows(t *testing.T) {
	forceGemv(t)
	run := func(t *testing.T, b *Backend, m int) {
		for i, k := range []int{2048, 2088, 2600} {
			t.Run(fmt.Sprintf("norm_%dx%d", k, m), func(t *testing.T) {
				c := normCase{1, k, m, true, ml.BF16}
				var y []float32
				ran := profiledKernels(t, b, func() error {
					withFuse(true, func() { y, _, _ = runNormMatMul(t, b, c, uint64(100+i)) })
					return nil
				})
				assert.Equal(t, int64(1), ran["qvl_norm_gemv"], "kernels run: %v", ran)
				var uy []float32
				withFuse(false, func() { uy, _, _ = runNormMatMul(t, b, c, uint64(100+i)) })
				compare(t, "y against the unfused kernels", "exact", y, uy)
				wy, _, _ := runNormMatMul(t, ref(), c, uint64(100+i))
				compare(t, "y", "MatMul/bf16", y, wy)
			})
			t.Run(fmt.Sprintf("swiglu_%dx%d", k, m), func(t *testing.T) {
				c := swigluCase{1, k, m}
				var y []float32
				ran := profiledKernels(t, b, func() error {
					withFuse(true, func() { y, _ = runSwiGLUMatMul(t, b, c, uint64(100+i)) })
					return nil
				})
				assert.Equal(t, int64(1), ran["qvl_swiglu_gemv"], "kernels run: %v", ran)
				var uy []float32
				withFuse(false, func() { uy, _ = runSwiGLUMatMul(t, b, c, uint64(100+i)) })
				compare(t, "y against the unfused kernels", "exact", y, uy)
				wy, _ := runSwiGLUMatMul(t, ref(), c, uint64(100+i))
				compare(t, "y", "MatMul/bf16", y, wy)
			})
		}
	}
	// 4 SMs: 64 warps, ~16 rows a warp (2 reduction batches of 8); 132 SMs: 2,112 warps, 4–5
	// rows a warp, the last group of the grid partial. The GPU: 20,011 rows, ~9.5 a warp on an
	// H100 (two reduction batches, the second partial); the LM head's 151,936 took 84 s on the
	// H100 machine, nearly all of it the CPU reference.
	t.Run("sim4", func(t *testing.T) { run(t, simBackendSMs(t, 4), 1001) })
	t.Run("sim132", func(t *testing.T) { run(t, simBackendSMs(t, 132), 9001) })
	t.Run("gpu", func(t *testing.T) { run(t, gpuBackend(t), 20011) })
}

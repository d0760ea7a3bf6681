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

// The MLP op (glu.go, qvl_gemv_glu in kernels/gemv.cu) is checked three ways: against the CPU
// reference's composition of the same ops (ml.MLPOps: AddRMSNorm, MatMul, SwiGLU, MatMul), bit
// for bit against this backend's own unfused kernels (the default path, without
// QVL_CUDA_GLU_GEMV=1), and by the kernels the profiler saw: qvl_gemv_glu and no qvl_swiglu for
// one row, the unfused ops otherwise.

// withGLU runs fn with qvl_gemv_glu turned on or off and restores the setting after.
func withGLU(on bool, fn func()) { withSwitch(&gluOn, on, fn) }

// mlpCase is an MLP shape: rows × hidden k, intermediate size inter, m outputs of the down
// projection.
type mlpCase struct {
	rows, k, inter, m int
	add               bool // delta given (AddRMSNorm) or nil (RMSNorm)
	gpuOnly           bool // the 2B's shape: seconds of CPU on the emulation
}

// mlpCases: K odd (the GEMV's scalar path: 13, 157), K on the vector path with a tail of uint4s
// (520) and whole rounds (2048); I below a warp's share, odd, and beyond the emulation's grid
// cap (2,501 gate/up pairs on 32·4 blocks of 4 warps: ~5 pairs a warp, two reduction batches,
// the last partial); rows 1 (the fused kernel) and 3 (the unfused ops); the 2B's MLP on a GPU.
var mlpCases = []mlpCase{
	{rows: 1, k: 13, inter: 5, m: 7, add: true},
	{rows: 1, k: 157, inter: 37, m: 9},
	{rows: 1, k: 520, inter: 301, m: 33, add: true},
	{rows: 1, k: 2048, inter: 96, m: 64, add: true},
	{rows: 1, k: 64, inter: 2501, m: 5, add: true},
	{rows: 3, k: 157, inter: 37, m: 11, add: true},
	{rows: 1, k: 2048, inter: 6144, m: 2048, add: true, gpuOnly: true},
}

// mlpResult is what MLP leaves: y, act, h and the residual x.
type mlpResult struct{ y, act, h, x []float32 }

// runMLP runs MLP on bk (ml.MLPer where it is one, else ml.MLPOps) and returns what it wrote.
// The outputs start as NaN.
func runMLP(t *testing.T, bk ml.Backend, c mlpCase, seed uint64) mlpResult {
	r := rand.New(rand.NewPCG(73, seed))
	e := newEnv(t, bk)
	xt, dt, nt := normInputs(e, r, c.rows, c.k, c.add, ml.BF16)
	wgu := e.weight(ml.BF16, randn(r, 2*c.inter*c.k, 3/math.Sqrt(float64(c.k))), 2*c.inter, c.k)
	wd := e.weight(ml.BF16, randn(r, c.m*c.inter, 1/math.Sqrt(float64(c.inter))), c.m, c.inter)
	yt, at := e.out(ml.F32, c.rows, c.m), e.out(ml.F32, c.rows, c.inter)
	gt, ht := e.out(ml.F32, c.rows, 2*c.inter), e.out(ml.F32, c.rows, c.k)
	if f, ok := bk.(ml.MLPer); ok {
		require.NoError(t, f.MLP(yt, at, gt, ht, xt, dt, nt, wgu, wd, 1e-6))
	} else {
		require.NoError(t, ml.MLPOps(bk, yt, at, gt, ht, xt, dt, nt, wgu, wd, 1e-6))
	}
	return mlpResult{y: e.read(yt), act: e.read(at), h: e.read(ht), x: e.read(xt)}
}

func TestOpMLP(t *testing.T) {
	forceGemv(t)
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		withFuse(false, func() {
			for i, c := range mlpCases {
				if c.gpuOnly && !gpu {
					continue
				}
				t.Run(fmt.Sprintf("%dx%d_i%d_m%d_add%v", c.rows, c.k, c.inter, c.m, c.add), func(t *testing.T) {
					var got mlpResult
					ran := profiledKernels(t, b, func() error {
						withGLU(true, func() { got = runMLP(t, b, c, uint64(i)) })
						return nil
					})
					if c.rows == 1 {
						assert.Equal(t, int64(1), ran["qvl_gemv_glu"], "kernels run: %v", ran)
						assert.Zero(t, ran["qvl_swiglu"], "kernels run: %v", ran)
						assert.Equal(t, int64(1), ran["qvl_gemv_m1"], "only the down projection: %v", ran)
					} else {
						assert.Zero(t, ran["qvl_gemv_glu"], "kernels run: %v", ran)
						assert.Equal(t, int64(1), ran["qvl_swiglu"], "kernels run: %v", ran)
					}
					want := runMLP(t, ref(), c, uint64(i))
					compare(t, "y", "MatMul/bf16", got.y, want.y)
					compare(t, "act", "MatMul/bf16", got.act, want.act)
					compare(t, "h", "RMSNorm", got.h, want.h)
					compare(t, "residual", "RMSNorm", got.x, want.x)
					var plain mlpResult
					withGLU(false, func() { plain = runMLP(t, b, c, uint64(i)) })
					requireBits(t, "act against the unfused kernels", plain.act, got.act)
					requireBits(t, "y against the unfused kernels", plain.y, got.y)
					requireBits(t, "h against the unfused kernels", plain.h, got.h)
					requireBits(t, "residual against the unfused kernels", plain.x, got.x)
				})
			}
		})
	})
}

// TestMLPWithFuse: QVL_CUDA_FUSE=1 keeps its own kernels (the norm fused into the gate-up GEMV,
// SwiGLU into the down GEMV) rather than qvl_gemv_glu, and computes the same tensors.
func TestMLPWithFuse(t *testing.T) {
	forceGemv(t)
	b := simBackend(t)
	c := mlpCases[2]
	var fused, glu mlpResult
	ran := profiledKernels(t, b, func() error {
		withFuse(true, func() { withGLU(true, func() { fused = runMLP(t, b, c, 5) }) })
		return nil
	})
	assert.Equal(t, map[string]int64{"qvl_norm_gemv": 1, "qvl_swiglu_gemv": 1}, ran)
	withFuse(false, func() { withGLU(true, func() { glu = runMLP(t, b, c, 5) }) })
	requireBits(t, "act", glu.act, fused.act)
	requireBits(t, "y", glu.y, fused.y)
}

package cuda

import (
	"os"
	"sync/atomic"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// The MLP block (ml.MLPer) with SwiGLU as the gate-up GEMV's epilogue, on kernels/gemv.cu's
// qvl_gemv_glu.
//
// At one row (a batch-1 decode step) the MLP ran as qvl_add_rmsnorm, qvl_gemv_m1 over the
// [gate; up] weight into an f32 [1, 2I] row, qvl_swiglu and qvl_gemv_m1 for the down
// projection. qvl_gemv_glu has each warp sum gate row i and up row I + i and write
// silu(gate)·up and its bf16 copy: one launch fewer a layer (28 a step of the 2B; the sixth
// H100 run's eager profile put qvl_swiglu at ~4.8 µs a launch with ~3 µs of it event overhead)
// and no gate-up row through memory. Each sum is bit for bit qvl_gemv_m1's for its row and the
// epilogue is qvl_swiglu's expression, so act is bit for bit what the unfused ops make. Other
// shapes (more rows, an f32 weight, qvl_gemv turned off) and QVL_CUDA_FUSE=1 (whose kernels
// fuse the norm into the gate-up GEMV and SwiGLU into the down GEMV instead) run ml.MLPOps.

// envGLU is the environment variable that, set to 1, turns qvl_gemv_glu on; it is read once,
// when the package loads. Off by default: the seventh H100 run measured it within noise of the
// unfused kernels in batch-1 graph steps (−0.2%; docs/perf-log.md): in a graph qvl_swiglu costs
// ~1.8 µs, about what qvl_gemv_glu's gate-up GEMV, with half the warps each taking two rows,
// loses against qvl_gemv_m1's. The benchmark's ablation keeps timing it.
const envGLU = "QVL_CUDA_GLU_GEMV"

// gluOn is set when envGLU is "1" (tests and the ablation flip it).
var gluOn atomic.Bool

func init() { gluOn.Store(os.Getenv(envGLU) == "1") }

// useGLU reports whether MLP runs its gate-up projection and SwiGLU as one qvl_gemv_glu launch
// for rows x rows and a gate-up weight w.
func useGLU(rows int, w ml.Tensor) bool {
	return rows == 1 && isBF16(w) && useGemv(1) && gluOn.Load() && fuseOff.Load()
}

// MLP implements ml.MLPer: AddRMSNorm (RMSNorm when delta is nil), qvl_gemv_glu and MatMul at
// one row with a bf16 gate-up weight when envGLU is on, else ml.MLPOps (which takes the fused kernels of
// QVL_CUDA_FUSE=1 where they apply). gu is left unwritten on the fused path.
func (b *Backend) MLP(y, act, gu, h, x, delta, norm, wgu, wdown ml.Tensor, eps float32) error {
	const op = "MLP"
	if err := ml.CheckMLP(y, act, gu, h, x, delta, norm, wgu, wdown); err != nil {
		return err
	}
	if err := b.owns(op, y, act, gu, h, x, delta, norm, wgu, wdown); err != nil {
		return err
	}
	rows, k, inter := h.Shape()[0], h.Shape()[1], act.Shape()[1]
	if !useGLU(rows, wgu) || k == 0 || inter == 0 {
		return ml.MLPOps(b, y, act, gu, h, x, delta, norm, wgu, wdown, eps)
	}
	return b.dev.do(func() error {
		b.stale(gu) // not written
		if delta == nil {
			if err := b.RMSNorm(h, x, norm, eps); err != nil {
				return err
			}
		} else if err := b.AddRMSNorm(h, x, delta, norm, eps); err != nil {
			return err
		}
		hbf, ok := b.currentCopy(h)
		if !ok {
			// The norms write h's copy; this is only reached if that ever changes.
			if err := b.ensure(&b.xbf, 2*k); err != nil {
				return err
			}
			if err := b.convertBF16(ptr(h), b.xbf.p, k); err != nil {
				return err
			}
			hbf = b.xbf.p
		}
		abf, err := b.copyFor(act)
		if err != nil {
			return err
		}
		b.a.reset().ptr(ptr(act)).ptr(abf).ptr(hbf).ptr(ptr(wgu)).i32(2 * inter).i32(k)
		grid := max(1, min((inter+gemvWarps-1)/gemvWarps, gemvBlocksPerSM*b.info.sms))
		if err := b.launch(kGemvGLU, d1(grid), d1(32*gemvWarps), 0); err != nil {
			return err
		}
		b.produced(act, abf)
		return b.MatMul(y, act, wdown)
	})
}

var _ ml.MLPer = (*Backend)(nil)

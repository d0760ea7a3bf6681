package cuda

import (
	"os"
	"sync/atomic"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// Fused decode ops (ml.NormMatMuler, ml.SwiGLUMatMuler) on kernels/fused.cu.
//
// At batch 1 a decode step is latency-bound: each launch costs ~2–4 µs of launch and
// dependency latency besides its work (the H100 profile of docs/perf-log.md: 56 add-norms and
// 28 SwiGLUs a step of the 2B, ~4 µs each, beside GEMMs of 6–22 µs). qvl_norm_gemv and
// qvl_swiglu_gemv compute the row a GEMM reads — the (residual add and) RMSNorm, or the SwiGLU —
// in every block's prologue, into shared memory, and then stream the weight as qvl_gemv_m1:
// 84 launches fewer a step of the 2B. They give bit for bit what the two ops give (fused.cu),
// and write every tensor the two ops write. Other shapes (more rows, f32 weights, rows longer
// than the prologue holds, qvl_gemv turned off) run the two ops.

// envFuse is the environment variable that, set to 1, turns the fused kernels on; it is read
// once, when the package loads. They are off by default until a GPU run has measured them
// (written and checked on the CPU emulation only: the session that wrote them had no device
// time left); scripts/gpu-check.sh runs their op tests and a benchmark with them on.
const envFuse = "QVL_CUDA_FUSE"

// fuseOff is set unless envFuse is "1" (tests set it to compare both paths).
var fuseOff atomic.Bool

func init() { fuseOff.Store(os.Getenv(envFuse) != "1") }

// Launch shape of kernels/fused.cu.
const (
	fusedThreads = 256 // QVL_FUSED_THREADS
	fusedWarps   = fusedThreads / 32
	// fusedBlocksPerSM caps the grid (grid-stride over W's rows): every block reads the whole x
	// row from L2 in its prologue (20 KB for the 2B's norm, 48 KB for its SwiGLU), so the grid
	// stays small next to the weight's bytes; 2 blocks of 8 warps per SM still keep 64 KB of
	// weight loads in flight per SM.
	fusedBlocksPerSM = 2
	fusedNormMaxK    = 4096  // QVL_FUSED_NORM_K: the norm row in registers, 16 per thread
	fusedActMaxK     = 12288 // QVL_FUSED_ACT_K: the SwiGLU row in shared memory
)

// useFused reports whether a fused op over rows × k into a weight w runs as one kernel.
func useFused(rows, k, maxK int, w ml.Tensor) bool {
	return rows == 1 && k >= 1 && k <= maxK && isBF16(w) && useGemv(1) && !fuseOff.Load()
}

// fusedGrid is the grid of a fused kernel over m weight rows.
func (b *Backend) fusedGrid(m int) int {
	return max(1, min((m+fusedWarps-1)/fusedWarps, fusedBlocksPerSM*b.info.sms))
}

// NormMatMul implements ml.NormMatMuler: one launch of qvl_norm_gemv for one row and a bf16 w
// (H ≤ 4096), else AddRMSNorm (RMSNorm when delta is nil) and MatMul.
func (b *Backend) NormMatMul(y, h, x, delta, norm, w ml.Tensor, eps float32) error {
	const op = "NormMatMul"
	if err := ml.CheckNormMatMul(y, h, x, delta, norm, w); err != nil {
		return err
	}
	if err := b.owns(op, y, h, x, delta, norm, w); err != nil {
		return err
	}
	rows, k, m := x.Shape()[0], x.Shape()[1], w.Shape()[0]
	if !useFused(rows, k, fusedNormMaxK, w) || m == 0 {
		return ml.NormMatMulOps(b, y, h, x, delta, norm, w, eps)
	}
	return b.dev.do(func() error {
		if delta != nil {
			b.stale(x)
		}
		b.stale(y)
		hbf, err := b.copyFor(h)
		if err != nil {
			return err
		}
		if err := b.ensureZeroed(&b.fusedCnt, 4); err != nil {
			return err
		}
		b.a.reset().ptr(ptr(y)).ptr(ptr(h)).ptr(hbf).ptr(ptr(x)).ptr(ptr(delta)).ptr(ptr(norm)).flag(isBF16(norm)).
			ptr(ptr(w)).i32(m).i32(k).f32(eps).ptr(b.fusedCnt.p)
		if err := b.launch(kNormGemv, d1(b.fusedGrid(m)), d1(fusedThreads), 0); err != nil {
			return err
		}
		b.produced(h, hbf)
		return nil
	})
}

// SwiGLUMatMul implements ml.SwiGLUMatMuler: one launch of qvl_swiglu_gemv for one row and a
// bf16 w (I ≤ 12288), else SwiGLU and MatMul.
func (b *Backend) SwiGLUMatMul(y, act, gu, w ml.Tensor) error {
	const op = "SwiGLUMatMul"
	if err := ml.CheckSwiGLUMatMul(y, act, gu, w); err != nil {
		return err
	}
	if err := b.owns(op, y, act, gu, w); err != nil {
		return err
	}
	rows, k, m := act.Shape()[0], act.Shape()[1], w.Shape()[0]
	if !useFused(rows, k, fusedActMaxK, w) || m == 0 {
		return ml.SwiGLUMatMulOps(b, y, act, gu, w)
	}
	return b.dev.do(func() error {
		b.stale(y)
		abf, err := b.copyFor(act)
		if err != nil {
			return err
		}
		b.a.reset().ptr(ptr(y)).ptr(ptr(act)).ptr(abf).ptr(ptr(gu)).ptr(ptr(w)).i32(m).i32(k)
		if err := b.launch(kSwiGLUGemv, d1(b.fusedGrid(m)), d1(fusedThreads), 0); err != nil {
			return err
		}
		b.produced(act, abf)
		return nil
	})
}

var (
	_ ml.NormMatMuler   = (*Backend)(nil)
	_ ml.SwiGLUMatMuler = (*Backend)(nil)
)

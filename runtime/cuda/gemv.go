package cuda

import (
	"fmt"
	"os"
	"sync/atomic"
)

// Skinny bf16 GEMMs (decode steps) on qvl_gemv_m* (kernels/gemv.cu).
//
// At a few x rows a GEMM is a stream of its weight. cuBLASLt's kernels, built for tiles of
// tensor-core work, reached 36–95% of 3.0 TB/s on the 2B's weights at one row on the H100 (the
// 8 MB o projection worst; docs/perf-log.md). qvl_gemv reads each weight row with one warp in
// 16-byte loads and uses every element it loads for all of x's rows, so its cost is the
// weight's bytes; it is also where a decode step's GEMM epilogues can be fused.

// envGemv is the environment variable that, set to 0, keeps every bf16 MatMul on cuBLASLt
// (for A/B runs); it is read once, when the package loads.
const envGemv = "QVL_CUDA_GEMV"

// gemvMaxRows is the most x rows MatMul hands to qvl_gemv: 1. Measured on the H100 (fourth run,
// docs/perf-log.md; held-stream event pairs, µs at 1/4/8 rows, qvl_gemv vs cuBLASLt): qkv
// 8.6/9.3/12.7 vs 8.2/8.0/8.0, o 6.0/7.2/8.0 vs 7.8/7.8/7.8, gate-up 21.6/27.3/30.7 vs
// 22.3/22.4/24.0, down 9.6/12.9/14.8 vs 11.2/10.8/10.5, LM head 204.5/213.5/242.8 vs
// 218.7/221.2/223.5. qvl_gemv wins at one row only (o, gate-up, down, the LM head): past it the
// arithmetic, the reads of x from L1 and the per-row reduction grow with the rows while
// cuBLASLt's time stays flat. The kernels for 2–8 rows (gemvKernelRows) stay compiled and
// tested, for a later kernel that keeps more rows' work off the issue slots.
const gemvMaxRows = 1

// gemvKernelRows is the most x rows a qvl_gemv_m* kernel exists for (qvl_gemv_m1 … m8).
const gemvKernelRows = 8

// gemvWarps is QVL_GEMV_WARPS: warps per block.
const gemvWarps = 4

// gemvBlocksPerSM caps the grid (the kernel is grid-stride over row groups): enough blocks for
// several waves on any GPU, few enough that the LM head's rows are several per warp.
const gemvBlocksPerSM = 32

// gemvOff is set when envGemv is "0" (and by tests that time cuBLASLt beside qvl_gemv).
var gemvOff atomic.Bool

func init() { gemvOff.Store(os.Getenv(envGemv) == "0") }

// gemvRowsPerWarp is R of qvl_gemv_m{rows}: the weight rows one warp computes.
func gemvRowsPerWarp(rows int) int {
	if rows >= 4 {
		return 2
	}
	return 1
}

// useGemv reports whether a bf16 MatMul with rows x rows runs on qvl_gemv.
func useGemv(rows int) bool { return rows >= 1 && rows <= gemvMaxRows && !gemvOff.Load() }

// gemv queues y[rows, m] = x[rows, k]·w[m, k]ᵀ (x and w bf16, y f32) with qvl_gemv_m{rows},
// 1 ≤ rows ≤ gemvKernelRows, k ≥ 1. Run inside do.
func (b *Backend) gemv(rows, m, k int, x, w, y uintptr) error {
	if rows < 1 || rows > gemvKernelRows {
		return fmt.Errorf("qvl_gemv: %d rows; the kernels take 1 to %d", rows, gemvKernelRows)
	}
	per := gemvWarps * gemvRowsPerWarp(rows)
	b.a.reset().ptr(y).ptr(x).ptr(w).i32(m).i32(k)
	grid := min((m+per-1)/per, gemvBlocksPerSM*b.info.sms)
	return b.launch(kGemv1+kernelID(rows-1), d1(max(grid, 1)), d1(32*gemvWarps), 0)
}

// matmulBF16 queues y[rows, m] = x[rows, k]·w[m, k]ᵀ for a bf16 x and w: qvl_gemv for up to
// gemvMaxRows rows, qvl_gemm_skinny for 2 to 64 when it is on (skinny.go), cuBLASLt
// otherwise. Run inside do.
func (b *Backend) matmulBF16(rows, m, k int, x, w, y uintptr) error {
	if useGemv(rows) {
		return b.gemv(rows, m, k, x, w, y)
	}
	if b.useSkinny(rows, k, x, w) {
		return b.skinny(rows, m, k, x, w, y)
	}
	return b.linear(rows, m, k, true, x, w, y)
}

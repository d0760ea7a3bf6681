package cuda

import (
	"fmt"
	"os"
	"sync/atomic"
)

// The GEMMs of batched decode steps (2 to 64 rows) on qvl_gemm_skinny_m{16,32,64}
// (kernels/skinny.cu): tensor cores fed by a cp.async pipeline, each block a 128-column slice
// of the weight and one of S slices of K, the S partial tiles summed in a fixed order by the
// tile's last block. cuBLASLt's tiles gave the 2B's N = 2048 GEMMs 16 blocks at 64 rows on the
// H100 (the down projection at 48% of the bandwidth, the o projection at 35%: docs/perf-log.md);
// here N/128 · S blocks stream the weight.

// envSkinny is the environment variable that, set to 1, runs the bf16 MatMuls of 2 to 64 rows
// on qvl_gemm_skinny instead of cuBLASLt; it is read once, when the package loads. Off by
// default until a GPU run has measured it (written and checked on the CPU emulation only); the
// GPU benchmark times both on every decode GEMM shape whatever it says, and its ablation and
// scripts/gpu-check.sh's opt-in runs turn it on.
const envSkinny = "QVL_CUDA_SKINNY"

// skinnyOn is set when envSkinny is "1" (tests and the benchmark set it).
var skinnyOn atomic.Bool

func init() { skinnyOn.Store(os.Getenv(envSkinny) == "1") }

// Launch shape of kernels/skinny.cu.
const (
	skinnyBN      = 128 // QVL_SKINNY_BN: weight rows (output columns) a block
	skinnyBK      = 64  // QVL_SKINNY_BK: K a pipeline stage
	skinnyStages  = 4   // QVL_SKINNY_STAGES
	skinnyLD      = 72  // QVL_SKINNY_LD: shared row stride, bf16
	skinnyThreads = 256 // QVL_SKINNY_THREADS
	// skinnyMinRows and skinnyMaxRows bound the x rows it takes: one row is qvl_gemv's, and
	// past 64 rows cuBLASLt's tiles have blocks enough.
	skinnyMinRows = 2
	skinnyMaxRows = 64
	// skinnyMaxSplit bounds S (QVL_SKINNY_MAX_SPLIT); skinnyMinSlice is the shortest K slice a
	// block gets (4 stages of 64: shorter slices spend their time filling the pipeline).
	skinnyMaxSplit = 8
	skinnyMinSlice = 256
)

// skinnySmem is the dynamic shared memory of the instance with mt m16 tiles
// (QVL_SKINNY_SMEM of kernels/skinny.cu).
func skinnySmem(mt int) int { return skinnyStages * (skinnyBN + 16*mt) * skinnyLD * 2 }

// skinnyKernel returns the instance for rows x rows (2 ≤ rows ≤ 64) and its m16 tiles.
func skinnyKernel(rows int) (kernelID, int) {
	switch {
	case rows <= 16:
		return kSkinny16, 1
	case rows <= 32:
		return kSkinny32, 2
	}
	return kSkinny64, 4
}

// skinnySplit is S, the number of K slices for a weight of n rows and k columns on a device of
// sms multiprocessors: the largest power of two up to skinnyMaxSplit that keeps the grid's
// ⌈n/128⌉·S blocks within one wave of one block an SM (three stages in flight of 128 blocks,
// ~6 MB, cover the H100's bandwidth-latency product), k a multiple of 64·S and the slices at
// least skinnyMinSlice long. The tile's last block sums the S partial tiles alone (S·16·MT·128·4
// bytes from L2: 256 KB at S 8, MT 4, ~1.5 µs for one SM), so S stays small. On the H100's 132
// SMs, 2B shapes: qkv (4096 × 2048) 4, o (2048 × 2048) 8, gate-up (12288 × 2048) 1, down
// (2048 × 6144) 8, the LM head 1.
func skinnySplit(n, k, sms int) int {
	tiles := (n + skinnyBN - 1) / skinnyBN
	s := 1
	for s2 := 2; s2 <= skinnyMaxSplit && tiles*s2 <= sms && k%(skinnyBK*s2) == 0 && k/s2 >= skinnyMinSlice; s2 *= 2 {
		s = s2
	}
	return s
}

// useSkinnyShape reports whether qvl_gemm_skinny takes rows x rows of inner size k when it is
// on and the operands are aligned.
func (b *Backend) useSkinnyShape(rows, k int) bool {
	if rows < skinnyMinRows || rows > skinnyMaxRows || k%skinnyBK != 0 {
		return false
	}
	_, mt := skinnyKernel(rows)
	return skinnySmem(mt) <= b.info.smemOptin
}

// useSkinny reports whether a bf16 MatMul of rows x rows, inner size k, x at x and w at w runs
// on qvl_gemm_skinny.
func (b *Backend) useSkinny(rows, k int, x, w uintptr) bool {
	return skinnyOn.Load() && x%16 == 0 && w%16 == 0 && b.useSkinnyShape(rows, k)
}

// skinny queues y[rows, n] = x[rows, k]·w[n, k]ᵀ (x and w bf16, y f32) on qvl_gemm_skinny.
// Run inside do, after useSkinny.
func (b *Backend) skinny(rows, n, k int, x, w, y uintptr) error {
	id, mt := skinnyKernel(rows)
	s := skinnySplit(n, k, b.info.sms)
	if b.forceSkinnySplit > 0 {
		s = b.forceSkinnySplit
		if s > skinnyMaxSplit || k%(skinnyBK*s) != 0 {
			return fmt.Errorf("qvl_gemm_skinny: %d K slices of %d: want at most %d, each a multiple of %d", s, k, skinnyMaxSplit, skinnyBK)
		}
	}
	tiles := (n + skinnyBN - 1) / skinnyBN
	var part, cnt uintptr
	if s > 1 {
		if err := b.ensure(&b.skinnyPart, 4*tiles*s*16*mt*skinnyBN); err != nil {
			return err
		}
		if err := b.ensureZeroed(&b.skinnyCnt, 4*tiles); err != nil {
			return err
		}
		part, cnt = b.skinnyPart.p, b.skinnyCnt.p
	}
	b.a.reset().ptr(y).ptr(part).ptr(cnt).ptr(x).ptr(w).i32(rows).i32(n).i32(k).i32(s)
	return b.launch(id, dim3{x: tiles, y: s, z: 1}, d1(skinnyThreads), skinnySmem(mt))
}

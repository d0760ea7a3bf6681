// gemv.cu — skinny bf16 GEMM for decode steps: a few activation rows times a bf16 weight.
//
//   qvl_gemv_m{M}  y[m, n] = Σ_k x[m, k] · W[n, k]      m < M (1..8), n < N, k < K
//
// x is [M, K] bf16 row-major (MatMul's bf16 copy of its f32 input), W is [N, K] bf16 row-major
// (the weight as loaded: the same operand cuBLASLt gets as x·Wᵀ), y is [M, N] f32 row-major.
// Products and sums are f32 (each lane accumulates its slice of k in order, then one lane adds
// the 32 lanes' partials in order), so the result differs from cuBLASLt's only by summation order.
//
// Launch: grid min(⌈N / (4·R)⌉, 32·SMs), block 128 (4 warps), 16.5 KiB of static shared
// memory. A warp computes R consecutive rows of W at a time (R = 1 for M ≤ 3, 2 for M ≥ 4, so
// that each x element loaded serves 2 weight rows when x is the heavier side of the inner loop)
// and takes the grid's row groups in turn (grid-stride: the LM head's 151,936 rows are ~9 per
// warp on an H100). The vector path (K % 8 == 0 and 16-byte aligned x and W) has each lane load
// W 16 bytes (8 bf16) at a time, 8 such loads in flight per lane per round (R·U = 8: U chunks
// of 32 lanes × 8 elements along k, for R rows), with the evict-first hint (__ldcs: W is read
// once a step, 3.4 GB ≫ the 50 MB L2); x is read with 16-byte __ldg loads from L1/L2 (at most
// 8 × 6144 bf16 = 96 KB, shared by every warp of an SM). Anything else (odd K, unaligned
// views) takes a scalar path with the same arithmetic, 2-byte loads. The lanes' partial sums
// go through shared memory (qvl_gemv_body); warps are independent: no __syncthreads.
//
// Floor: bandwidth, 2·N·K bytes of W (x and y are ≤ 0.4% of it for the 2B shapes). At 3.0 TB/s:
// qkv 4096×2048 (16.8 MB) 5.6 µs, o 2048×2048 (8.4 MB) 2.8 µs, gate-up 12288×2048 (50.3 MB)
// 16.8 µs, down 2048×6144 (25.2 MB) 8.4 µs, LM head 151936×2048 (622 MB) 207 µs. Compute is
// M·N·K FMAs plus the bf16 unpacking, ~(8 + 8M + 8M/R) thread-ops per 16 bytes of W: at
// 3.0 TB/s that is ~60–70% of the H100's issue rate at M = 8 before loads and addressing, and
// ~15% at M = 1. Measured on the H100, qvl_gemv beat cuBLASLt at one row only (runtime/cuda/
// gemv.go's gemvMaxRows), so the backend uses qvl_gemv_m1 alone; m2–m8 stay built and tested.
#include "gemv.cuh"  // qvl_gemv_rows, qvl_gemv_body, qvl_gemv_glu_body

#define QVL_GEMV(MR, RR)                                                                                           \
    extern "C" __global__ void __launch_bounds__(32 * QVL_GEMV_WARPS)                                              \
        qvl_gemv_m##MR(float* __restrict__ y, const qvl_bf16* __restrict__ x, const qvl_bf16* __restrict__ w, int N, \
                       int K) {                                                                                    \
        qvl_gemv_prefetch<RR, QVL_GEMV_WARPS>(w, N, K);                                                            \
        QVL_PDL_ENTER();                                                                                           \
        qvl_gemv_body<MR, RR>(y, x, w, N, K);                                                                      \
    }                                                                                                              \
    QVL_REGISTER(qvl_gemv_m##MR)

QVL_GEMV(1, 1)
QVL_GEMV(2, 1)
QVL_GEMV(3, 1)
QVL_GEMV(4, 2)
QVL_GEMV(5, 2)
QVL_GEMV(6, 2)
QVL_GEMV(7, 2)
QVL_GEMV(8, 2)

// qvl_gemv_glu  act[i] = silu(Σ_k x[k]·W[i, k]) · Σ_k x[k]·W[I + i, k]     i < I = N / 2, k < K
//
// The MLP's gate-up projection at one x row with SwiGLU as its epilogue (runtime/cuda's
// MatMulSwiGLU, QVL_CUDA_GLU_GEMV): W is the fused [gate; up] weight [2I, K] bf16, x [1, K]
// bf16, act [1, I] f32 and its bf16 copy act_bf16 (nullable). A warp takes gate row i and up row
// I + i together (R = 2, rows I apart: 4 + 4 16-byte loads in flight per lane) and writes
// qvl_silu_mul of the two sums, each of which is bit for bit qvl_gemv_m1's for its row; so act
// is bit for bit qvl_gemv_m1 then qvl_swiglu, without the [1, 2I] f32 gate-up row and without
// qvl_swiglu's launch (~3–4 µs a layer in a batch-1 graph on the H100).
// Launch: grid min(I / 4, 32·SMs), block 128 (4 warps), 16.5 KiB of static shared memory; the
// bounds ask for 5 blocks an SM (96 registers, as qvl_gemv_m1's 98; left alone ptxas took 116:
// 4 blocks).
// Floor: W's 2·N·K bytes, as qvl_gemv_m1 (2B gate-up: 50.3 MB, 16.8 µs at 3.0 TB/s).
extern "C" __global__ void __launch_bounds__(32 * QVL_GEMV_WARPS, 5)
    qvl_gemv_glu(float* __restrict__ act, qvl_bf16* __restrict__ act_bf16, const qvl_bf16* __restrict__ x,
                 const qvl_bf16* __restrict__ w, int N, int K) {
#if defined(QVL_PDL)
    // As qvl_gemv_prefetch, for this warp's gate and up rows (the weight is 25 Mi elements).
    {
        const int lane = threadIdx.x & 31, i = blockIdx.x * QVL_GEMV_WARPS + (int)(threadIdx.x >> 5);
        if (i < N / 2 && lane * 128LL < 2LL * K) {
            qvl_prefetch_l2(reinterpret_cast<const char*>(w + (long long)i * K) + lane * 128);
            qvl_prefetch_l2(reinterpret_cast<const char*>(w + (long long)(N / 2 + i) * K) + lane * 128);
        }
    }
#endif
    QVL_PDL_ENTER();
    qvl_gemv_glu_body(act, act_bf16, x, w, N, K);
}
QVL_REGISTER(qvl_gemv_glu)

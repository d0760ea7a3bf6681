// fused.cu — decode-step (one activation row) kernels that compute a GEMM's x row in a prologue
// and then stream the weight as qvl_gemv_m1 does (gemv.cuh), saving the launch, and the
// dependency wait, of the op that made x.
//
//   qvl_norm_gemv    x += delta (in place; skipped when delta is null), h = w_norm ⊙ x / sqrt(mean(x²) + eps),
//                    y[n] = Σ_k bf16(h[k]) · W[n, k]                                     n < N, k < K = H
//   qvl_swiglu_gemv  act[i] = silu(gu[i]) · gu[I + i],  y[n] = Σ_i bf16(act[i]) · W[n, i]     n < N, i < K = I
//
// Each block computes the whole x row itself (qvl_norm_gemv: the row's sum of squares, 256
// threads, exactly as qvl_rmsnorm/qvl_add_rmsnorm sum it, so h is bit for bit theirs; SwiGLU:
// qvl_swiglu's expression) and keeps it in shared memory as bf16 — what MatMul would have read
// from the producer's bf16 copy — then runs qvl_gemv_body<1, 1> over its share of W's rows with
// x read from shared memory (the XS instance: at K ≥ 2048 a warp's next row's first W loads are
// issued before the current row's sums, gemv.cuh's qvl_gemv_rows_next): y is bit for bit what
// the unfused norm/SwiGLU + qvl_gemv_m1 make.
// The f32 outputs are written too, so that the ops that follow see what the unfused ops leave:
// h and its bf16 copy h_bf16 (nullable), and x's new residual, by the LAST block to finish its
// prologue (every block reads x, so x may only change once all have: a counter, cnt, which
// must be 0 before the first launch and is left 0); act and act_bf16 (nullable) by block 0.
//
// Launch: grid min(⌈N / 8⌉, 2·SMs) (the backend's fusedBlocksPerSM), block 256 (8 warps),
// static shared memory 2·QVL_FUSED_NORM_K / 2·QVL_FUSED_ACT_K bytes for x plus the reduction
// slots (8 warps × 8 × 33 floats, 8.4 KiB); the backend uses these kernels only for one row, a
// bf16 W and K within those bounds (H ≤ 4096, I ≤ 12288), and the two ops otherwise.
// Floor: bandwidth, W's 2·N·K bytes, as qvl_gemv_m1 (2B: qkv 16.8 MB 5.6 µs, gate-up 50.3 MB
// 16.8 µs, down 25.2 MB 8.4 µs at 3.0 TB/s). The prologue adds L2 reads per block — 10·H bytes
// for the norm (20 KB at H 2048), 8·I for SwiGLU (48 KB at I 6144) — 5.4 MB / 12.7 MB over a
// 2·132-block grid, beside 16.8–50 MB of weight, and ~1 µs of latency before the weight
// stream starts; in exchange the step loses a launch (~2–4 µs of launch and dependency latency
// at batch 1) and the producer kernel's own latency.
#include "gemv.cuh"

#define QVL_FUSED_THREADS 256
#define QVL_FUSED_WARPS 8
#define QVL_FUSED_GMAX 8         // row groups per reduction (a warp takes ~2–6 rows at decode)
#define QVL_FUSED_NORM_PER 16    // norm elements per thread in registers, as norm.cu's QVL_NORM_PER
#define QVL_FUSED_NORM_K (QVL_FUSED_NORM_PER * QVL_FUSED_THREADS)  // 4096
#define QVL_FUSED_ACT_K 12288

extern "C" __global__ void __launch_bounds__(QVL_FUSED_THREADS, 2)
qvl_norm_gemv(float* __restrict__ y, float* __restrict__ h, qvl_bf16* __restrict__ h_bf16, float* __restrict__ x,
              const float* __restrict__ delta, const void* __restrict__ nw, int nw_bf16, const qvl_bf16* __restrict__ w,
              int N, int H, float eps, unsigned* __restrict__ cnt) {
    qvl_gemv_prefetch<1, QVL_FUSED_WARPS>(w, N, H);
    QVL_PDL_ENTER();
    __shared__ __align__(16) qvl_bf16 xs[QVL_FUSED_NORM_K];
    __shared__ float red[32];
    __shared__ int is_last;
    const int tid = threadIdx.x;
    // The row in registers, loaded in one round trip (norm.cu's register path, same arithmetic).
    float v[QVL_FUSED_NORM_PER], wv[QVL_FUSED_NORM_PER];
#pragma unroll
    for (int j = 0; j < QVL_FUSED_NORM_PER; j++) {
        const int i = tid + j * QVL_FUSED_THREADS;
        v[j] = 0.f;
        wv[j] = 0.f;
        if (i < H) {
            v[j] = x[i];
            if (delta) v[j] += delta[i];
            wv[j] = qvl_load_weight(nw, nw_bf16, i);
        }
    }
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < QVL_FUSED_NORM_PER; j++) ss += v[j] * v[j];
    ss = qvl_block_sum(ss, red);
    const float inv = (float)(1.0 / sqrt((double)ss / (double)H + (double)eps));
#pragma unroll
    for (int j = 0; j < QVL_FUSED_NORM_PER; j++) {
        const int i = tid + j * QVL_FUSED_THREADS;
        if (i < H) xs[i] = qvl_f32_to_bf16(wv[j] * (v[j] * inv));
    }
    // Every thread of this block is done reading x (its values went into ss): count the block;
    // the last one to get here writes the new residual and h. Nothing waits on the counter.
    __threadfence();
    __syncthreads();  // also publishes xs to the block
    if (tid == 0) {
        const unsigned prev = atomicAdd(cnt, 1u);
        is_last = prev == gridDim.x - 1;
        if (is_last) *cnt = 0u;
    }
    __syncthreads();
    if (is_last) {  // block-uniform
        __threadfence();
#pragma unroll
        for (int j = 0; j < QVL_FUSED_NORM_PER; j++) {
            const int i = tid + j * QVL_FUSED_THREADS;
            if (i < H) {
                if (delta) x[i] = v[j];
                const float o = wv[j] * (v[j] * inv);
                h[i] = o;
                if (h_bf16) h_bf16[i] = qvl_f32_to_bf16(o);
            }
        }
    }
    qvl_gemv_body<1, 1, QVL_FUSED_WARPS, QVL_FUSED_GMAX, true>(y, xs, w, N, H);
}
QVL_REGISTER(qvl_norm_gemv)

extern "C" __global__ void __launch_bounds__(QVL_FUSED_THREADS, 2)
qvl_swiglu_gemv(float* __restrict__ y, float* __restrict__ act, qvl_bf16* __restrict__ act_bf16,
                const float* __restrict__ gu, const qvl_bf16* __restrict__ w, int N, int I) {
    qvl_gemv_prefetch<1, QVL_FUSED_WARPS>(w, N, I);
    QVL_PDL_ENTER();
    __shared__ __align__(16) qvl_bf16 xs[QVL_FUSED_ACT_K];
    const bool first = blockIdx.x == 0;
#pragma unroll 4
    for (int i = threadIdx.x; i < I; i += QVL_FUSED_THREADS) {
        const float g = gu[i];
        const float u = gu[I + i];
        const float o = qvl_silu_mul(g, u);
        xs[i] = qvl_f32_to_bf16(o);
        if (first) {
            act[i] = o;
            if (act_bf16) act_bf16[i] = xs[i];
        }
    }
    __syncthreads();
    qvl_gemv_body<1, 1, QVL_FUSED_WARPS, QVL_FUSED_GMAX, true>(y, xs, w, N, I);
}
QVL_REGISTER(qvl_swiglu_gemv)

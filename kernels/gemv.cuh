// gemv.cuh — the skinny bf16 GEMM of gemv.cu as device templates, shared by the qvl_gemv_m*
// kernels (gemv.cu) and the fused decode kernels that compute their x row in shared memory
// first (fused.cu). What they compute, their loads and their floor: gemv.cu's header.
#pragma once
#include "common.cuh"

#define QVL_GEMV_WARPS 4

// qvl_dot8 adds the dot product of 8 bf16 pairs (w already widened to f) to acc.
__device__ __forceinline__ float qvl_dot8(const float* wf, uint4 xv, float acc) {
    acc = fmaf(wf[0], __uint_as_float(xv.x << 16), acc);
    acc = fmaf(wf[1], __uint_as_float(xv.x & 0xffff0000u), acc);
    acc = fmaf(wf[2], __uint_as_float(xv.y << 16), acc);
    acc = fmaf(wf[3], __uint_as_float(xv.y & 0xffff0000u), acc);
    acc = fmaf(wf[4], __uint_as_float(xv.z << 16), acc);
    acc = fmaf(wf[5], __uint_as_float(xv.z & 0xffff0000u), acc);
    acc = fmaf(wf[6], __uint_as_float(xv.w << 16), acc);
    acc = fmaf(wf[7], __uint_as_float(xv.w & 0xffff0000u), acc);
    return acc;
}

// qvl_gemv_x16 loads 16 bytes of x: through the read-only path from global memory, or with a
// plain (generic) load when x is in shared memory (XS: the fused kernels of fused.cu).
template <bool XS>
__device__ __forceinline__ uint4 qvl_gemv_x16(const uint4* p) {
    if (XS) return *p;
    return __ldg(p);
}

// qvl_gemv_chunk adds to acc[r][m] the dot products of the 8 bf16 of W row r held in w[r]
// with x row m's uint4 at column c (in uint4s; K8 = K / 8 a row).
template <int M, int R, bool XS>
__device__ __forceinline__ void qvl_gemv_chunk(float (&acc)[R][M], const uint4 (&w)[R], const uint4* x4, int K8, int c) {
    float wf[R][8];
#pragma unroll
    for (int r = 0; r < R; r++) qvl_unpack8(w[r], wf[r]);
#pragma unroll
    for (int m = 0; m < M; m++) {
        const uint4 xv = qvl_gemv_x16<XS>(x4 + (long long)m * K8 + c);
#pragma unroll
        for (int r = 0; r < R; r++) acc[r][m] = qvl_dot8(wf[r], xv, acc[r][m]);
    }
}

// qvl_gemv_round sums one round of W loads, wv[r][u] at columns c + 32·u (c = the round's
// start plus the lane), into acc.
template <int M, int R, bool XS>
__device__ __forceinline__ void qvl_gemv_round(float (&acc)[R][M], const uint4 (&wv)[R][8 / R], const uint4* x4, int K8, int c) {
#pragma unroll
    for (int u = 0; u < 8 / R; u++) {
        uint4 w[R];
#pragma unroll
        for (int r = 0; r < R; r++) w[r] = wv[r][u];
        qvl_gemv_chunk<M, R, XS>(acc, w, x4, K8, c + 32 * u);
    }
}

// qvl_gemv_tail sums the last K8 mod (32·U) uint4s of the R rows at wr (the columns from full
// on, this lane's every 32nd) into acc, after the rounds: one 16-byte load of each row at a time.
template <int M, int R, bool XS>
__device__ __forceinline__ void qvl_gemv_tail(float (&acc)[R][M], const uint4* const (&wr)[R], const uint4* x4, int K8,
                                              int full, int lane) {
    for (int i = full + lane; i < K8; i += 32) {
        uint4 wt[R];
#pragma unroll
        for (int r = 0; r < R; r++) wt[r] = __ldcs(wr[r] + i);
        qvl_gemv_chunk<M, R, XS>(acc, wt, x4, K8, i);
    }
}

// qvl_gemv_rows sets acc[r][m] to this lane's share of Σ_k x[m, k]·W[n0 + r·rs, k] (a warp's 32
// lanes together hold the sums): R consecutive rows (rs = 1), or rows rs apart (qvl_gemv_glu:
// gate row i and up row I + i). Rows past N re-read row N−1 (their sums are not stored).
// XS: x is in shared memory.
template <int M, int R, bool XS = false>
__device__ __forceinline__ void qvl_gemv_rows(float (&acc)[R][M], const qvl_bf16* __restrict__ x,
                                              const qvl_bf16* __restrict__ w, int n0, int N, int K, int lane,
                                              int rs = 1) {
    constexpr int U = 8 / R;  // chunks of 32 × 8 elements per round: R·U = 8 loads of W per lane
    const qvl_bf16* wr[R];
#pragma unroll
    for (int r = 0; r < R; r++) wr[r] = w + (long long)qvl_imin(n0 + r * rs, N - 1) * K;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < M; m++) acc[r][m] = 0.f;

    const bool vec = (K & 7) == 0 &&
                     ((reinterpret_cast<unsigned long long>(x) | reinterpret_cast<unsigned long long>(w)) & 15) == 0;
    if (vec) {
        constexpr int STEP = 32 * U;  // uint4s of a row per round
        const int K8 = K >> 3;
        const int full = K8 / STEP * STEP;  // the rounds every lane runs (the loop stays warp-uniform)
        const uint4* x4 = reinterpret_cast<const uint4*>(x);
        // Double buffering: round b+STEP's W is loaded before round b's arithmetic, so each
        // round's 8 loads per lane are issued together and in flight while the previous round
        // is summed. (Without it ptxas sinks each load to its first use, leaving one or two
        // 16-byte loads in flight per lane: checked in the sm_90 SASS of nvcc 11.8.) The
        // __syncwarp is a further scheduling fence for compilers that honour it (11.8's ptxas
        // drops it: the warp is converged, the loop being warp-uniform).
        uint4 wv[R][U];
        if (full > 0) {
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int r = 0; r < R; r++) wv[r][u] = __ldcs(reinterpret_cast<const uint4*>(wr[r]) + lane + 32 * u);
        }
        for (int b = 0; b < full; b += STEP) {
            const bool more = b + STEP < full;
            uint4 nv[R][U];
            if (more) {
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                    for (int r = 0; r < R; r++)
                        nv[r][u] = __ldcs(reinterpret_cast<const uint4*>(wr[r]) + b + STEP + lane + 32 * u);
            }
            __syncwarp();
            qvl_gemv_round<M, R, XS>(acc, wv, x4, K8, b + lane);
            if (more) {
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                    for (int r = 0; r < R; r++) wv[r][u] = nv[r][u];
            }
        }
        const uint4* w4[R];
#pragma unroll
        for (int r = 0; r < R; r++) w4[r] = reinterpret_cast<const uint4*>(wr[r]);
        qvl_gemv_tail<M, R, XS>(acc, w4, x4, K8, full, lane);
    } else {
        for (int k = lane; k < K; k += 32) {
            float wf[R];
#pragma unroll
            for (int r = 0; r < R; r++) wf[r] = qvl_bf16_to_f32(wr[r][k]);
#pragma unroll
            for (int m = 0; m < M; m++) {
                const float xf = qvl_bf16_to_f32(x[(long long)m * K + k]);
#pragma unroll
                for (int r = 0; r < R; r++) acc[r][m] = fmaf(wf[r], xf, acc[r][m]);
            }
        }
    }
}

// qvl_gemv_rows_next is qvl_gemv_rows on the vector path (K % 8 == 0, x and W 16-byte aligned)
// with the first round of W loads carried across row groups, for the fused kernels (XS: x in
// shared memory), whose warps take several row groups each. On entry wv holds this row group's
// first round (rows n0…, full > 0); in its last round, before that round's arithmetic, it issues
// the first round of the row group at nn (nn < 0: none) into wv, so that a warp's loads stay in
// flight across rows (at K 2048 a row is one round: without this a warp loads a row, waits,
// sums, stores and only then loads the next). Same loads of the current row, same sums in the
// same order: acc is bit for bit qvl_gemv_rows'. full is the uint4s of a row that the rounds
// cover (K / 8 rounded down to a multiple of 32·U), K8 = K / 8. It keeps its own load loop
// (qvl_gemv_rows' is what qvl_gemv_m*, measured on the H100, run) and shares the arithmetic:
// qvl_gemv_round and qvl_gemv_chunk (qvl_gemv_m1's sm_90 SASS is unchanged by that sharing).
template <int M, int R, bool XS>
__device__ __forceinline__ void qvl_gemv_rows_next(float (&acc)[R][M], uint4 (&wv)[R][8 / R],
                                                   const uint4* __restrict__ x4, const qvl_bf16* __restrict__ w,
                                                   int n0, int nn, int N, int K, int K8, int full, int lane) {
    constexpr int U = 8 / R;
    constexpr int STEP = 32 * U;
    const uint4* wr[R];
    const uint4* wn[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        wr[r] = reinterpret_cast<const uint4*>(w + (long long)qvl_imin(n0 + r, N - 1) * K);
        wn[r] = reinterpret_cast<const uint4*>(w + (long long)qvl_imin(qvl_imax(nn, 0) + r, N - 1) * K);
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < M; m++) acc[r][m] = 0.f;
    for (int b = 0; b < full; b += STEP) {
        const bool more = b + STEP < full;
        const bool load = more || nn >= 0;  // warp-uniform
        uint4 nv[R][U];
        if (load) {
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int r = 0; r < R; r++) nv[r][u] = __ldcs((more ? wr[r] + b + STEP : wn[r]) + lane + 32 * u);
        }
        __syncwarp();
        qvl_gemv_round<M, R, XS>(acc, wv, x4, K8, b + lane);
        if (load) {
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int r = 0; r < R; r++) wv[r][u] = nv[r][u];
        }
    }
    qvl_gemv_tail<M, R, XS>(acc, wr, x4, K8, full, lane);
}

// qvl_gemv_prefetch asks L2 for the start of this warp's first row group — the first 4 KB of
// each of its R rows of W (all of a row at K ≤ 2048), one 128-byte line per lane — so that
// under programmatic dependent launch (common.cuh's QVL_PDL_ENTER) the weight stream starts
// while the previous kernel is still running. Call it before QVL_PDL_ENTER: W is a weight,
// which no kernel writes. On the 2B's decode GEMMs a launch prefetches 8.4 MB (all of o's weight
// on qvl_gemv_m1's 2,048 warps, the first row of each of the fused kernels' 2,112 warps); a
// weight of more than 32 Mi elements (the LM head: prefetching a row for each of its 16,896
// warps would overrun the 50 MB L2) is not prefetched.
// Only the PDL build (QVL_PDL) prefetches: without PDL the weight loads follow at once.
template <int R, int WARPS>
__device__ __forceinline__ void qvl_gemv_prefetch(const qvl_bf16* __restrict__ w, int N, int K) {
#if defined(QVL_PDL)
    if ((long long)N * K > (32LL << 20)) return;
    const int lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * WARPS + (int)(threadIdx.x >> 5)) * R;
    if (lane * 128LL >= 2LL * K) return;
#pragma unroll
    for (int r = 0; r < R; r++)
        if (n0 + r < N) qvl_prefetch_l2(reinterpret_cast<const char*>(w + (long long)(n0 + r) * K) + lane * 128);
#else
    (void)w, (void)N, (void)K;
#endif
}

// qvl_gemv_groups is qvl_gemv_body's loop over the warp's row groups (blocks of WARPS warps),
// with G groups per reduction in the warp's slots sl (R·M sums a group). PIPE (XS on
// the vector path with at least one full round, K ≥ 256·U): the rows go through
// qvl_gemv_rows_next, the warp's first group's first round of W loaded up front, each next
// group's in the current group's last round. A separate instance, so that the carried loads
// are not live through the other path. GLU (qvl_gemv_glu: M = 1, R = 2, N = 2I even): group i
// is gate row i and up row I + i, and the group's output is y[i] = silu(gate) · up (and
// y_bf16[i], when not null) instead of the two sums; each sum is the one the plain instance
// makes for its row (the same loads, products and lane order).
template <int M, int R, int WARPS, int G, bool XS, bool PIPE, bool GLU = false>
__device__ __forceinline__ void qvl_gemv_groups(float* __restrict__ y, const qvl_bf16* __restrict__ x,
                                                const qvl_bf16* __restrict__ w, int N, int K, float (*sl)[33],
                                                qvl_bf16* __restrict__ y_bf16 = nullptr) {
    static_assert(!GLU || (M == 1 && R == 2 && !PIPE), "the GLU epilogue takes one x row, a gate and an up row");
    constexpr int SLOTS = R * M;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int groups = GLU ? N / 2 : (N + R - 1) / R;
    const int stride = gridDim.x * WARPS;
    const int g0 = blockIdx.x * WARPS + warp;
    constexpr int U = 8 / R;
    const int K8 = K >> 3;
    const int full = K8 / (32 * U) * (32 * U);
    uint4 wv[R][U];
    if (PIPE && g0 < groups) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++)
                wv[r][u] =
                    __ldcs(reinterpret_cast<const uint4*>(w + (long long)qvl_imin(g0 * R + r, N - 1) * K) + lane + 32 * u);
    }
    // Every bound below is the same for the warp's 32 lanes: the loops and barriers are converged.
    for (int base = g0; base < groups; base += G * stride) {
        int j = 0;
        for (; j < G && base + j * stride < groups; j++) {
            float acc[R][M];
            const int g = base + j * stride;  // this row group; the warp's next is g + stride
            if (PIPE)
                qvl_gemv_rows_next<M, R, XS>(acc, wv, reinterpret_cast<const uint4*>(x), w, g * R,
                                             g + stride < groups ? (g + stride) * R : -1, N, K, K8, full, lane);
            else if (GLU)
                qvl_gemv_rows<M, R, XS>(acc, x, w, g, N, K, lane, groups);
            else
                qvl_gemv_rows<M, R, XS>(acc, x, w, g * R, N, K, lane);
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int m = 0; m < M; m++) sl[j * SLOTS + r * M + m][lane] = acc[r][m];
        }
        __syncwarp();
        if constexpr (GLU) {
            // Lane 2·jj sums group jj's gate, lane 2·jj + 1 its up; the gate's lane writes.
            float s = 0.f;
            if (lane < j * SLOTS) {
#pragma unroll 8
                for (int i = 0; i < 32; i++) s += sl[lane][i];
            }
            const float u = __shfl_down_sync(QVL_FULL_MASK, s, 1);
            if (lane < j * SLOTS && (lane & 1) == 0) {
                const int n = base + (lane >> 1) * stride;
                const float a = qvl_silu_mul(s, u);
                y[n] = a;
                if (y_bf16) y_bf16[n] = qvl_f32_to_bf16(a);
            }
        } else if (lane < j * SLOTS) {
            float s = 0.f;
#pragma unroll 8
            for (int i = 0; i < 32; i++) s += sl[lane][i];
            const int jj = lane / SLOTS, r = (lane % SLOTS) / M, m = lane % M;
            const int n = (base + jj * stride) * R + r;
            if (n < N) y[(long long)m * N + n] = s;
        }
        __syncwarp();  // the slots are written again by the next round
    }
}

// qvl_gemv_body: each warp takes row groups (R rows) g, g + S, g + 2S, … (S = the grid's warps)
// and, every G = min(32 / (R·M), GMAX) groups, stores its lanes' R·M partial sums per group in
// shared memory, one slot of 32 (+1 padding: the reads below hit 32 banks) per sum, and lane s
// adds up slot s (in lane order, whatever G is) and writes it. That reduction costs 2 warp
// barriers per G·R·M sums instead of 5 shuffles per sum (1 per row on the GPU vs 5; in the CPU
// emulation, where each barrier is a pass of the fiber scheduler, the LM head's 151,936 rows
// would otherwise dominate a model test). Block of 32·WARPS threads; a smaller GMAX shrinks the
// shared memory (32·WARPS·33 floats at GMAX 32) for kernels whose warps take few row groups.
// XS: x is in shared memory; the warp's next row group's first round of W is then loaded
// before the current one's arithmetic (qvl_gemv_groups' PIPE).
template <int M, int R, int WARPS = QVL_GEMV_WARPS, int GMAX = 32, bool XS = false>
__device__ __forceinline__ void qvl_gemv_body(float* __restrict__ y, const qvl_bf16* __restrict__ x,
                                              const qvl_bf16* __restrict__ w, int N, int K) {
    constexpr int SLOTS = R * M;                                  // sums per row group (≤ 16)
    constexpr int G = 32 / SLOTS < GMAX ? 32 / SLOTS : GMAX;      // row groups per reduction
    __shared__ float red[WARPS][GMAX == 32 ? 32 : G * SLOTS][33];
    float(*sl)[33] = red[threadIdx.x >> 5];
    // XS (the fused kernels): on the vector path with a full round the next row group's first
    // round of W is loaded before this one's arithmetic and stores (qvl_gemv_groups' PIPE).
    const bool pipe = XS && (K & 7) == 0 &&
                      ((reinterpret_cast<unsigned long long>(x) | reinterpret_cast<unsigned long long>(w)) & 15) == 0 &&
                      (K >> 3) >= 32 * (8 / R);
    if (pipe)
        qvl_gemv_groups<M, R, WARPS, G, XS, XS>(y, x, w, N, K, sl);
    else
        qvl_gemv_groups<M, R, WARPS, G, XS, false>(y, x, w, N, K, sl);
}

// qvl_gemv_glu_body is qvl_gemv_body<1, 2> with the GLU epilogue: act[i] = silu(Σ_k x[k]·W[i, k])
// · Σ_k x[k]·W[I + i, k] for i < I = N / 2, each sum bit for bit qvl_gemv_m1's for its row.
template <int WARPS = QVL_GEMV_WARPS>
__device__ __forceinline__ void qvl_gemv_glu_body(float* __restrict__ act, qvl_bf16* __restrict__ act_bf16,
                                                  const qvl_bf16* __restrict__ x, const qvl_bf16* __restrict__ w,
                                                  int N, int K) {
    constexpr int G = 16;  // 32 / (R·M)
    __shared__ float red[WARPS][32][33];
    qvl_gemv_groups<1, 2, WARPS, G, false, false, true>(act, x, w, N, K, red[threadIdx.x >> 5], act_bf16);
}

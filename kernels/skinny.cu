// skinny.cu — the GEMMs of a batched decode step on tensor cores, split along K so that a few
// rows still spread the weight's stream over every SM.
//
//   qvl_gemm_skinny_m{16,32,64}  y[m, n] = Σ_k x[m, k] · W[n, k]    m < M ≤ 16·MT, n < N, k < K
//
// x is [M, K] bf16 row-major (MatMul's bf16 copy of its input), W is [N, K] bf16 row-major (the
// weight as loaded), y is [M, N] f32 row-major: the operands qvl_gemv and cuBLASLt get.
//
// Why: at 64 rows a decode GEMM is still a stream of its weight (the 2B's down projection: 25 MB
// of W for 1.6 GFLOP, 8.4 µs at 3.0 TB/s against 2 µs of tensor-core work), but cuBLASLt's tiles
// of 64 × 128 outputs give N = 2048 only 16 blocks for 132 SMs: the fifth H100 run measured
// 17.4 µs for it at 64 rows, 48% of the bandwidth (docs/perf-log.md). Here a block owns a
// 128-column slice of W and one of S slices of K, so N/128 · S blocks stream W at once.
//
// Launch: grid (⌈N / 128⌉, S), block 256 (8 warps), dynamic shared memory 4 stages × (128 + 16·MT)
// rows × 72 bf16 (82,944 B at MT 1, 110,592 B at MT 4: two blocks an SM on the H100), K % (64·S)
// == 0, x and W 16-byte aligned; the host picks S ≤ 8 so that the grid is one wave of one block
// an SM (runtime/cuda/skinny.go). Each stage holds a 64-wide K tile of the block's 128 W rows and
// of x's 16·MT rows (rows ≥ M zero-filled), loaded by cp.async 3 stages ahead of the math;
// ldmatrix feeds mma.sync.m16n8k16 (bf16 in, f32 accumulate): warp w owns W rows 16w … 16w+15
// (two n8 tiles) for all MT m16 tiles of x. S == 1: the block writes y. S > 1: it writes its
// f32 partial tile to part[tile][s] and counts itself on cnt[tile] (after a __threadfence); the
// last of the tile's S blocks sums the S partials in order s = 0 … S−1 (the result does not
// depend on which block is last; each float4's S loads are issued before its adds) into y and
// resets cnt[tile] to 0 for the next launch.
//
// Floor: bandwidth, 2·N·K bytes of W; x is re-read from L2 by every column tile (16·MT·K·2 B
// per tile: half of W's bytes at MT 4) and the partials add 2·S·16·MT·N·4 B of L2 traffic, of
// which the last block of each tile reads S·32 KB alone (256 KB at S 8, MT 4: ~1.5 µs). At
// 3.0 TB/s, 64 rows: qkv 4096×2048 5.6 µs, o 2048×2048 2.8 µs, gate-up 12288×2048 16.8 µs,
// down 2048×6144 8.4 µs (cuBLASLt on the H100: 8.7, 8.0, 23.8, 17.4 µs). Compute: 2·64·N·K FLOPs
// is ≤ 25% of the time at the H100's mma.sync rate.
#include "common.cuh"

#define QVL_SKINNY_BN 128     // W rows (output columns) per block
#define QVL_SKINNY_BK 64      // K per stage
#define QVL_SKINNY_STAGES 4   // cp.async pipeline depth
#define QVL_SKINNY_THREADS 256
#define QVL_SKINNY_LD 72      // shared row stride in bf16: 144 B, so ldmatrix's 8 rows hit 8 distinct 16-byte bank groups
#define QVL_SKINNY_MAX_SPLIT 8  // S ≤ 8: the last block of a tile reads S·16·MT·128·4 B of partials alone

// qvl_skinny_smem is the dynamic shared memory of the MT instance.
#define QVL_SKINNY_SMEM(MT) (QVL_SKINNY_STAGES * (QVL_SKINNY_BN + 16 * (MT)) * QVL_SKINNY_LD * 2)

// qvl_skinny_load issues the cp.async copies of K tile kt (of this block's K slice, from k0)
// into stage st: W rows n0 … n0+127 (rows ≥ N zero-filled) and x rows 0 … 16·MT−1 (rows ≥ M
// zero-filled), 8 chunks of 16 bytes a row.
template <int MT>
__device__ __forceinline__ void qvl_skinny_load(qvl_bf16* __restrict__ stage, const qvl_bf16* __restrict__ x,
                                                const qvl_bf16* __restrict__ w, int M, int N, int K, int n0, int k) {
    qvl_bf16* ws = stage;
    qvl_bf16* xs = stage + QVL_SKINNY_BN * QVL_SKINNY_LD;
#pragma unroll
    for (int i = 0; i < QVL_SKINNY_BN * 8 / QVL_SKINNY_THREADS; i++) {
        const int c = (int)threadIdx.x + i * QVL_SKINNY_THREADS, row = c >> 3, ch = c & 7;
        const bool in = n0 + row < N;
        const qvl_bf16* src = in ? w + (long long)(n0 + row) * K + k + ch * 8 : w;
        qvl_cp_async16(ws + row * QVL_SKINNY_LD + ch * 8, src, in ? 16 : 0);
    }
    for (int c = (int)threadIdx.x; c < 16 * MT * 8; c += QVL_SKINNY_THREADS) {
        const int row = c >> 3, ch = c & 7;
        const bool in = row < M;
        const qvl_bf16* src = in ? x + (long long)row * K + k + ch * 8 : x;
        qvl_cp_async16(xs + row * QVL_SKINNY_LD + ch * 8, src, in ? 16 : 0);
    }
}

// qvl_skinny_prefetch asks L2 for the block's first stages of W before QVL_PDL_ENTER (W is a
// weight: no kernel writes it), so that under programmatic dependent launch the stream starts
// during the previous kernel's tail. PDL build only.
__device__ __forceinline__ void qvl_skinny_prefetch(const qvl_bf16* __restrict__ w, int N, int K, int n0, int k0, int nk) {
#if defined(QVL_PDL)
    const int tiles = qvl_imin(nk, QVL_SKINNY_STAGES - 1);
    // A tile's row is one 128-byte line (64 bf16): thread 2r + h asks for row r's lines of
    // tiles h, h + 2, ….
    const int row = (int)threadIdx.x >> 1, half = (int)threadIdx.x & 1;
    if (n0 + row >= N) return;
    for (int t = half; t < tiles; t += 2)
        qvl_prefetch_l2(w + (long long)(n0 + row) * K + k0 + t * QVL_SKINNY_BK);
#else
    (void)w, (void)N, (void)K, (void)n0, (void)k0, (void)nk;
#endif
}

template <int MT>
__device__ __forceinline__ void qvl_gemm_skinny(float* __restrict__ y, float* __restrict__ part, unsigned* __restrict__ cnt,
                                                const qvl_bf16* __restrict__ x, const qvl_bf16* __restrict__ w, int M, int N,
                                                int K, int S) {
    constexpr int STAGE = (QVL_SKINNY_BN + 16 * MT) * QVL_SKINNY_LD;  // bf16 a stage
    QVL_DYN_SMEM(qvl_bf16, sm);
    __shared__ int is_last;
    const int tile = (int)blockIdx.x, s = (int)blockIdx.y;
    const int n0 = tile * QVL_SKINNY_BN;
    const int ks = K / S, k0 = s * ks, nk = ks / QVL_SKINNY_BK;
    const int warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;

    qvl_skinny_prefetch(w, N, K, n0, k0, nk);
    QVL_PDL_ENTER();

    float acc[MT][2][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

#pragma unroll
    for (int t = 0; t < QVL_SKINNY_STAGES - 1; t++) {
        if (t < nk) qvl_skinny_load<MT>(sm + t * STAGE, x, w, M, N, K, n0, k0 + t * QVL_SKINNY_BK);
        qvl_cp_commit();
    }
    // ldmatrix row addresses of this lane: W (B operand) matrices (n 0–7, k 0–7), (n 0–7, k 8–15),
    // (n 8–15, k 0–7), (n 8–15, k 8–15) of the warp's 16 rows; x (A operand) matrices (m 0–7, k 0–7),
    // (m 8–15, k 0–7), (m 0–7, k 8–15), (m 8–15, k 8–15) of an m16 tile.
    const int brow = warp * 16 + (lane & 7) + ((lane >> 4) << 3), bk = ((lane >> 3) & 1) * 8;
    const int arow = (lane & 7) + (((lane >> 3) & 1) << 3), ak = (lane >> 4) * 8;
    for (int kt = 0; kt < nk; kt++) {
        qvl_cp_wait<QVL_SKINNY_STAGES - 2>();  // this thread's copies of tile kt have landed
        __syncthreads();                        // everyone's have; and tile kt−1's stage is free
        const int nx = kt + QVL_SKINNY_STAGES - 1;
        if (nx < nk) qvl_skinny_load<MT>(sm + (nx % QVL_SKINNY_STAGES) * STAGE, x, w, M, N, K, n0, k0 + nx * QVL_SKINNY_BK);
        qvl_cp_commit();
        const qvl_bf16* ws = sm + (kt % QVL_SKINNY_STAGES) * STAGE;
        const qvl_bf16* xs = ws + QVL_SKINNY_BN * QVL_SKINNY_LD;
#pragma unroll
        for (int kk = 0; kk < QVL_SKINNY_BK; kk += 16) {
            unsigned b[4];
            qvl_ldmatrix_x4(b, ws + brow * QVL_SKINNY_LD + kk + bk);
            const unsigned b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
            for (int i = 0; i < MT; i++) {
                unsigned a[4];
                qvl_ldmatrix_x4(a, xs + (i * 16 + arow) * QVL_SKINNY_LD + kk + ak);
                qvl_mma_bf16(acc[i][0], a, b0);
                qvl_mma_bf16(acc[i][1], a, b1);
            }
        }
    }
    qvl_cp_wait<0>();  // only empty groups are left; retire them before the thread exits

    // The fragment of acc[i][j]: rows i·16 + g (+8 for e ≥ 2), columns n0 + 16·warp + 8·j + 2t (+1).
    // S == 1: into y. Split K: into this block's partial tile [16·MT][128] at part[tile][s];
    // then the tile's last block sums the partials.
    const int g = lane >> 2, t4 = lane & 3;
    const long long mine = ((long long)tile * S + s) * (16 * MT * QVL_SKINNY_BN);
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int m = i * 16 + g + (e >> 1) * 8, c = warp * 16 + j * 8 + 2 * t4 + (e & 1);
                if (S > 1) __stcg(part + mine + m * QVL_SKINNY_BN + c, acc[i][j][e]);
                else if (m < M && n0 + c < N) y[(long long)m * N + n0 + c] = acc[i][j][e];
            }
    if (S == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned prev = atomicAdd(&cnt[tile], 1u);
        is_last = prev == (unsigned)(S - 1);
        if (is_last) cnt[tile] = 0u;
    }
    __syncthreads();
    if (!is_last) return;  // block-uniform
    __threadfence();
    // The tile's M rows × 128 columns as float4s, each the sum of its S partials in order: the
    // S loads of a float4 are issued before its adds (S ≤ QVL_SKINNY_MAX_SPLIT, predicated).
    const float4* parts = reinterpret_cast<const float4*>(part + (long long)tile * S * (16 * MT * QVL_SKINNY_BN));
    constexpr int PSTRIDE = 16 * MT * QVL_SKINNY_BN / 4;  // float4s a partial tile
    for (int i = (int)threadIdx.x; i < M * (QVL_SKINNY_BN / 4); i += QVL_SKINNY_THREADS) {
        const int m = i / (QVL_SKINNY_BN / 4), c = (i % (QVL_SKINNY_BN / 4)) * 4;
        if (n0 + c >= N) continue;
        float4 v[QVL_SKINNY_MAX_SPLIT];
#pragma unroll
        for (int p = 0; p < QVL_SKINNY_MAX_SPLIT; p++)
            if (p < S) v[p] = __ldcg(parts + (long long)p * PSTRIDE + i);
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int p = 0; p < QVL_SKINNY_MAX_SPLIT; p++)
            if (p < S) {
                sum.x += v[p].x;
                sum.y += v[p].y;
                sum.z += v[p].z;
                sum.w += v[p].w;
            }
        float* yr = y + (long long)m * N + n0 + c;
        const float o[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int e = 0; e < 4; e++)
            if (n0 + c + e < N) yr[e] = o[e];
    }
}

#define QVL_SKINNY(MR, MT)                                                                                        \
    extern "C" __global__ void __launch_bounds__(QVL_SKINNY_THREADS, 2)                                          \
        qvl_gemm_skinny_m##MR(float* __restrict__ y, float* __restrict__ part, unsigned* __restrict__ cnt,       \
                              const qvl_bf16* __restrict__ x, const qvl_bf16* __restrict__ w, int M, int N, int K, \
                              int S) {                                                                            \
        qvl_gemm_skinny<MT>(y, part, cnt, x, w, M, N, K, S);                                                      \
    }                                                                                                             \
    QVL_REGISTER(qvl_gemm_skinny_m##MR)

QVL_SKINNY(16, 1)
QVL_SKINNY(32, 2)
QVL_SKINNY(64, 4)

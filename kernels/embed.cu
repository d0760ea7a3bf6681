// embed.cu — the fused embedding-projection: one launch writes the input hidden states of a step.
//
//   text rows:    out[i, :] = table[tokens[i], :]                           (bf16 or f32 table)
//   visual rows:  out[vis_idx[r], :] = visual[r, :]                          (precomputed Qwen3-VL rows)
//   custom rows:  out[cus_idx[r], :] = Y[e, k·H : (k+1)·H] with cus_src[r] = e·K + k, where
//                 Y = fc2(gelu(fc1(custom) + b1)) + b2 over the step's Ne proprietary embeddings
//
// Later writes win (text, then visual, then custom; within a list the later entry), exactly as
// the CPU reference writes them in order: each row's winner is settled first with atomicMax on a
// per-row source map, so every row is written once and the result does not depend on timing.
//
// Phases of the persistent launch (grid ≤ the co-resident block count, block 256 threads):
//   A  init the source map and the (e, k) → rows lists; custom rounded to bf16 (cbf)   ─ grid barrier
//   B  atomicMax the winners; push each custom row on the list of its (e, k);
//      GEMM1 tiles: mid[e, :] = bf16(gelu(cbf[e, :]·fc1ᵀ + b1))                       ─ grid barrier
//   C  GEMM2 tiles: Y = mid·fc2ᵀ + b2, each tile staged in shared memory and its rows
//      scattered (coalesced) to the rows that take them; text and visual rows copied.
// A step without visual or custom rows runs phase C's copies only (no barrier, no shared memory).
// Both GEMMs run on mma.sync m16n8k16 (bf16 in, f32 accumulate) with a 4-stage cp.async
// pipeline of K slices of 32 (one __syncthreads per slice) and ldmatrix fragment loads; 8 warps
// as 2 × 4, each (16·MI) × 32: GEMM1 on 64 × 128 tiles (MI 2), GEMM2 on 128 × 128 (MI 4; 64 × 128
// when Ne ≤ 64), tiles ordered M-fastest so that the blocks sharing a weight slab run together.
// On the 2B shape with Ne 256 that is 128 tiles per GEMM, one wave on 132 SMs. custom (f32) is
// rounded to bf16 once, in phase A, and mid is stored in bf16, as MatMul rounds its activations.
// Dynamic shared memory: QVL_EMBED_SMEM = 80 KiB (opted in by the backend; 0 without custom rows).
// cbf lives in the mid scratch after mid's Ne·hid elements rounded up to 8 (16-byte aligned).
//
// Two entries share this code (embed_run<P>), differing only in the pipeline P (EmbedPipe):
//   qvl_embed       K slices of 32, 4 stages, 80 KiB (the default);
//   qvl_embed_bk64  K slices of 64, 3 stages, 108 KiB (QVL_EMBED_BK=64; opt-in until measured):
//                   half the __syncthreads per K, 64 KiB of copies in flight per SM instead of 48.
// Both accumulate the same k16 steps in the same order, so they give the same bits.
//
// flags: bit 0 table bf16, bit 1 b1 bf16, bit 2 b2 bf16, bit 3 tanh GELU; and two debug bits
// that only the GPU benchmark's phase breakdown sets (runtime/cuda's embedPhase hook):
//   QVL_EMBED_ONLY_AB (16)  phases A and B only (GEMM1 into mid), then return: no phase C and
//                           no second grid barrier;
//   QVL_EMBED_ONLY_C  (32)  phase C only (GEMM2, the scatter, the text and visual copies), no
//                           grid barrier, on the mid, source map and (e, k) lists that the
//                           previous launch with the same arguments left in scratch and mid.
//
// The GEMM path (runtime/cuda/project.go): for many embeddings the backend runs the two GEMMs
// on cuBLASLt and the rest in three small launches sized to their data, none persistent and
// none with a grid barrier (qvl_embed's registers, ~210 for its GEMMs, allow one block an SM:
// too few loads in flight for what is a copy):
//   qvl_embed_prep   cbf = bf16(custom), 8 elements a thread (16-byte stores); srcmap = 0
//   (cuBLASLt)       h1 = cbf·fc1ᵀ (f32)
//   qvl_embed_gelu   mid[e, j] = bf16(gelu(h1[e, j] + b1[j])), GEMM1's epilogue (the expression
//                    embed_gemm1 applies to its tiles), 8 elements a thread; and the winners
//                    (embed_mark, phase B's atomicMax and index errors, without the lists)
//   (cuBLASLt)       Y = mid·fc2ᵀ (f32 [Ne, K·H], without b2)
//   qvl_embed_rows   every row from its winner (embed_copy_rows): text, visual, or custom,
//                    Y[e, k·H + c] + b2[k·H + c] (the sum GEMM2's epilogue makes), with
//                    cus_src[r] = e·K + k
// The map is zeroed and marked in different launches: the launch boundary between them (with
// fc1 in it) is the ordering that phase A's grid barrier gives the fused kernel.
//
// Rows by copy (embed_copy_rows: text and visual rows on both paths, custom rows on the GEMM
// path) move 16-byte chunks of the flattened [N, H/8] chunk grid when H % 8 == 0 and the rows
// are aligned: a thread takes U chunks a round (4 in qvl_embed, 2 in qvl_embed_rows) and issues
// their loads level by level (winner, then token or source, then data), so that U dependent
// chains are in flight, not one; otherwise a row per block.
// Floor: text rows are a gather, N·H·(2+4) bytes. The projector is FLOPs plus its weights:
// 2·Ne·(D·hid + hid·K·H) FLOPs and (D·hid + hid·K·H)·2 bytes; for 256 embeddings on the 2B
// shape (D 1024, hid 4096, K·H 8192) that is 19.3 GFLOP and 75 MB: 26 µs at 748 TFLOP/s and
// 25 µs at 3 TB/s. Issue 6's target is within 1.5× of cuBLAS running the same two GEMMs.
// The GEMM path's own launches move (Ne·D·6 + Ne·hid·6 + Ne·K·H·4 + N·H·4) bytes: 24.6 MB at
// that shape (1024 custom rows of H 2048), ~8 µs at 3 TB/s, less where L2 still holds h1 and Y.
#include "common.cuh"

#define QVL_EMBED_THREADS 256
#define EBN 128        // output tile columns: 4 warps of 32
#define ECT (EBN + 8)  // f32 row of the staged GEMM2 output tile
#define QVL_EMBED_ONLY_AB 16  // debug bit of flags: phases A and B only (see above)
#define QVL_EMBED_ONLY_C 32   // debug bit of flags: phase C only
#define QVL_EMBED_ROWS_THREADS 256  // qvl_embed_prep, qvl_embed_gelu, qvl_embed_rows
#define QVL_EMBED_ROWS_CHUNKS 4         // chunks a thread of embed_copy_rows takes a round in qvl_embed,
#define QVL_EMBED_ROWS_CUSTOM_CHUNKS 2  // and in qvl_embed_rows (≤ 64 registers: 4 blocks an SM)

// EmbedPipe is the cp.async pipeline of the GEMMs: K slices of BK_ bf16 in STAGES stages, each
// stage 256 padded rows (A, up to 128 rows, then W, 128 rows).
template <int BK_>
struct EmbedPipe {
    static_assert(BK_ == 32 || BK_ == 64, "K slices of 32 or 64");
    static constexpr int BK = BK_;                     // K slice of a pipeline stage
    static constexpr int STAGES = BK_ == 32 ? 4 : 3;   // pipeline depth
    static constexpr int LD = BK_ + 8;                 // padded smem row (bf16, 80 or 144 B): ldmatrix's
                                                       // 8 row reads hit 32 distinct banks
    static constexpr int STAGE = 256 * LD;             // bf16 per stage
    static constexpr int SMEM = STAGES * STAGE * 2;    // bytes of dynamic shared memory
    static_assert(SMEM >= 128 * ECT * 4, "GEMM2's staged f32 output tile fits in the pipeline's shared memory");
};
#define QVL_EMBED_SMEM (EmbedPipe<32>::SMEM)       // 81,920 B (runtime/cuda/kernels.go: embedSmem)
#define QVL_EMBED_BK64_SMEM (EmbedPipe<64>::SMEM)  // 110,592 B (runtime/cuda/kernels.go: embedSmemBK64)


// embed_load_stage stages rows [r0, r0 + R) × columns [k0, k0 + P::BK) of the bf16 matrix X
// [rows × Kd] (row-major) into dst (R rows of P::LD), zero past the matrix. vec (Kd % 8 == 0, X
// 16-byte aligned): cp.async, complete once the pipeline's wait retires its group; otherwise
// plain (L2) loads and shared stores, complete at the next __syncthreads.
template <class P, int R>
__device__ __forceinline__ void embed_load_stage(qvl_bf16* dst, const qvl_bf16* __restrict__ X, int rows, int Kd, int r0,
                                                 int k0, bool vec) {
    constexpr int CR = P::BK / 8;  // 16-byte chunks per row
    static_assert((R * CR) % QVL_EMBED_THREADS == 0, "stage chunks must divide among the threads");
#pragma unroll
    for (int i = 0; i < R * CR / QVL_EMBED_THREADS; i++) {
        const int c = (int)threadIdx.x + i * QVL_EMBED_THREADS;
        const int r = c / CR, kc = (c % CR) * 8;
        const int row = r0 + r, k = k0 + kc;
        const bool in = row < rows && k < Kd;
        qvl_bf16* d = dst + r * P::LD + kc;
        if (vec) {
            qvl_cp_async16(d, in ? X + (long long)row * Kd + k : X, in ? 16 : 0);
        } else {
            qvl_bf16 e[8];
#pragma unroll
            for (int j = 0; j < 8; j++) e[j] = in && k + j < Kd ? __ldcg(X + (long long)row * Kd + k + j) : (qvl_bf16)0;
            *reinterpret_cast<uint4*>(d) = make_uint4(qvl_pack_raw(e[0], e[1]), qvl_pack_raw(e[2], e[3]),
                                                      qvl_pack_raw(e[4], e[5]), qvl_pack_raw(e[6], e[7]));
        }
    }
}

// embed_gemm_tile computes acc = A[m0 .. m0 + 32·MI, :]·W[n0 .. n0 + 128, :]ᵀ over Kd (A [M × Kd],
// W [N × Kd], both bf16 row-major) for this thread's fragments: acc[mi][ni][c] is tile row
// wm·16·MI + mi·16 + g (+8 for c ≥ 2), column wn·32 + ni·8 + 2t + (c&1) (warp w: wm = w/4,
// wn = w%4; lane: g = lane/4, t = lane%4). Every thread of the block calls it; sm is the
// P::SMEM bytes of dynamic shared memory, free again when it returns (all copies landed, all
// reads done).
template <class P, int MI>
__device__ __forceinline__ void embed_gemm_tile(float (&acc)[MI][4][4], qvl_bf16* sm, const qvl_bf16* __restrict__ A, int M,
                                                const qvl_bf16* __restrict__ W, int N, int Kd, int m0, int n0, bool vec) {
    constexpr int BM = 32 * MI;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp >> 2, wn = warp & 3;
#pragma unroll
    for (int mi = 0; mi < MI; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) acc[mi][ni][0] = acc[mi][ni][1] = acc[mi][ni][2] = acc[mi][ni][3] = 0.f;
    constexpr int BK = P::BK, STAGES = P::STAGES, LD = P::LD, STAGE = P::STAGE;
    const int KT = (Kd + BK - 1) / BK;
    __syncthreads();  // the previous user of sm (a tile's epilogue) is done with it
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < KT) {
            embed_load_stage<P, BM>(sm + s * STAGE, A, M, Kd, m0, s * BK, vec);
            embed_load_stage<P, EBN>(sm + s * STAGE + 128 * LD, W, N, Kd, n0, s * BK, vec);
        }
        qvl_cp_commit();
    }
    // Lane addresses of ldmatrix: A rows lane%16 at k half lane/16; W rows (lane/16)·8 + lane%8
    // at k half (lane/8)%2 (matrices: n-fragment 2p k-lo, 2p k-hi, 2p+1 k-lo, 2p+1 k-hi).
    const int a_off = (wm * 16 * MI + (lane & 15)) * LD + (lane >> 4) * 8;
    const int b_off = 128 * LD + (wn * 32 + (lane >> 4) * 8 + (lane & 7)) * LD + ((lane >> 3) & 1) * 8;
    for (int kt = 0; kt < KT; kt++) {
        qvl_cp_wait<STAGES - 2>();  // this thread's copies of slice kt have landed
        __syncthreads();              // everyone's have, and everyone is done with slice kt-1's stage
        {
            const int pf = kt + STAGES - 1;  // refill the stage that slice kt-1 used
            if (pf < KT) {
                qvl_bf16* st = sm + (pf % STAGES) * STAGE;
                embed_load_stage<P, BM>(st, A, M, Kd, m0, pf * BK, vec);
                embed_load_stage<P, EBN>(st + 128 * LD, W, N, Kd, n0, pf * BK, vec);
            }
            qvl_cp_commit();
        }
        const qvl_bf16* st = sm + (kt % STAGES) * STAGE;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            unsigned a[MI][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < MI; mi++) qvl_ldmatrix_x4(a[mi], st + a_off + mi * 16 * LD + ks * 16);
#pragma unroll
            for (int p = 0; p < 2; p++) {
                unsigned r[4];
                qvl_ldmatrix_x4(r, st + b_off + p * 16 * LD + ks * 16);
                b[2 * p][0] = r[0], b[2 * p][1] = r[1], b[2 * p + 1][0] = r[2], b[2 * p + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) qvl_mma_bf16(acc[mi][ni], a[mi], b[ni]);
        }
    }
    qvl_cp_wait<0>();
    __syncthreads();
}

__device__ __forceinline__ float embed_gelu(float x, bool tanh_form) {
    if (tanh_form) return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
}

// embed_gemm1 runs phase B's GEMM1 tiles of this block: mid = bf16(gelu(cbf·fc1ᵀ + b1)).
template <class P>
__device__ __forceinline__ void embed_gemm1(qvl_bf16* sm, const qvl_bf16* cbf, int Ne, int D, const qvl_bf16* __restrict__ fc1,
                                            const void* __restrict__ b1, int b1_bf16, int hid, bool tanh_form, qvl_bf16* mid) {
    constexpr int MI = 2, BM = 32 * MI;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;
    const int mtiles = (Ne + BM - 1) / BM, ntiles = (hid + EBN - 1) / EBN;
    const bool vec = (D % 8) == 0 && (reinterpret_cast<unsigned long long>(fc1) & 15) == 0;
    for (int tile = blockIdx.x; tile < mtiles * ntiles; tile += gridDim.x) {
        const int m0 = (tile % mtiles) * BM, n0 = (tile / mtiles) * EBN;
        float acc[MI][4][4];
        embed_gemm_tile<P, MI>(acc, sm, cbf, Ne, fc1, hid, D, m0, n0, vec);
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    const int e = m0 + wm * 16 * MI + mi * 16 + g + (c >= 2 ? 8 : 0);
                    const int col = n0 + wn * 32 + ni * 8 + 2 * t4 + (c & 1);
                    if (e < Ne && col < hid) {
                        const float v = acc[mi][ni][c] + qvl_load_weight(b1, b1_bf16, col);
                        mid[(long long)e * hid + col] = qvl_f32_to_bf16(embed_gelu(v, tanh_form));
                    }
                }
    }
}

// embed_gemm2 runs phase C's GEMM2 tiles of this block: Y = mid·fc2ᵀ + b2, each tile staged in
// shared memory (f32, rows of ECT) and then written, one warp per BM/8 tile rows, to every
// custom row that takes it and wins its destination (srcmap), a segment of at most 128
// contiguous columns per (row, k) with coalesced stores.
template <class P, int MI>
__device__ __forceinline__ void embed_gemm2(qvl_bf16* sm, float* __restrict__ out, int H, int Nv, const int* __restrict__ cus_idx,
                                            int Ne, int hid, int K, const qvl_bf16* mid, const qvl_bf16* __restrict__ fc2,
                                            const void* __restrict__ b2, int b2_bf16, const int* srcmap, const int* head,
                                            const int* next) {
    constexpr int BM = 32 * MI, RW = BM / 8;  // RW tile rows per warp in the scatter
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;
    const int KH = K * H;
    const int mtiles = (Ne + BM - 1) / BM, ntiles = (KH + EBN - 1) / EBN;
    const bool vec = (hid % 8) == 0 && (reinterpret_cast<unsigned long long>(fc2) & 15) == 0 &&
                     (reinterpret_cast<unsigned long long>(mid) & 15) == 0;
    float* ct = reinterpret_cast<float*>(sm);
    for (int tile = blockIdx.x; tile < mtiles * ntiles; tile += gridDim.x) {
        const int m0 = (tile % mtiles) * BM, n0 = (tile / mtiles) * EBN;
        float acc[MI][4][4];
        embed_gemm_tile<P, MI>(acc, sm, mid, Ne, fc2, KH, hid, m0, n0, vec);
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int r = wm * 16 * MI + mi * 16 + g + 8 * h, cl = wn * 32 + ni * 8 + 2 * t4, col = n0 + cl;
                    const float v0 = acc[mi][ni][2 * h] + (col < KH ? qvl_load_weight(b2, b2_bf16, col) : 0.f);
                    const float v1 = acc[mi][ni][2 * h + 1] + (col + 1 < KH ? qvl_load_weight(b2, b2_bf16, col + 1) : 0.f);
                    *reinterpret_cast<float2*>(ct + r * ECT + cl) = make_float2(v0, v1);
                }
        __syncthreads();
        const int cend = qvl_imin(n0 + EBN, KH), lr = warp * RW + lane, e = m0 + lr;
        for (int k = n0 / H; k * H < cend; k++) {
            const int c0 = qvl_imax(n0, k * H), c1 = qvl_imin(cend, (k + 1) * H);
            int r = lane < RW && e < Ne ? __ldcg(&head[e * K + k]) : -1;
            while (__ballot_sync(QVL_FULL_MASK, r >= 0) != 0u) {
                int d = -1;
                if (r >= 0) {
                    const int dd = cus_idx[r];
                    if (__ldcg(&srcmap[dd]) == 1 + Nv + r) d = dd;
                }
                unsigned win = __ballot_sync(QVL_FULL_MASK, d >= 0);
                while (win != 0u) {
                    const int src = __ffs((int)win) - 1;
                    win &= win - 1u;
                    const int dd = __shfl_sync(QVL_FULL_MASK, d, src);
                    const float* row = ct + (warp * RW + src) * ECT;
                    float* dst = out + (long long)dd * H;
                    for (int c = c0 + lane; c < c1; c += 32) dst[c - k * H] = row[c - n0];
                }
                if (r >= 0) r = __ldcg(&next[r]);
            }
        }
    }
}

__device__ __forceinline__ bool embed_aligned16(const void* p) { return (reinterpret_cast<unsigned long long>(p) & 15) == 0; }

// embed_u4_floats reads 8 floats from their bits in two uint4.
__device__ __forceinline__ void embed_u4_floats(const uint4 (&u)[2], float* f) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        f[4 * h] = __uint_as_float(u[h].x), f[4 * h + 1] = __uint_as_float(u[h].y);
        f[4 * h + 2] = __uint_as_float(u[h].z), f[4 * h + 3] = __uint_as_float(u[h].w);
    }
}

// embed_mark settles each row's winner: srcmap[d] (zero before) becomes the largest of 1 + r
// over the visual rows r with vis_idx[r] = d and 1 + Nv + r over the custom rows r with
// cus_idx[r] = d and a valid cus_src[r], raising QVL_ERR_VISUAL_IDX, _CUSTOM_IDX and
// _CUSTOM_SRC for bad entries (which then write nothing). With head, each custom row is also
// pushed on the list of its (e, k) (the fused path's GEMM2 scatter; head -1 before).
__device__ __forceinline__ void embed_mark(int* srcmap, int N, const int* __restrict__ vis_idx, int Nv,
                                           const int* __restrict__ cus_idx, const int* __restrict__ cus_src, int Nc,
                                           int NeK, int* head, int* next, unsigned* err) {
    const long long gstride = (long long)gridDim.x * blockDim.x, gtid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long r = gtid; r < Nv; r += gstride) {
        const int d = vis_idx[r];
        if (d < 0 || d >= N) qvl_raise(err, QVL_ERR_VISUAL_IDX);
        else atomicMax(&srcmap[d], (int)(1 + r));
    }
    for (long long r = gtid; r < Nc; r += gstride) {
        const int d = cus_idx[r], src = cus_src[r];
        if (d < 0 || d >= N) {
            qvl_raise(err, QVL_ERR_CUSTOM_IDX);
        } else if (src < 0 || src >= NeK) {
            qvl_raise(err, QVL_ERR_CUSTOM_SRC);
        } else {
            atomicMax(&srcmap[d], (int)(1 + Nv + r));
            if (head != nullptr) next[r] = atomicExch(&head[src], (int)r);
        }
    }
}

// embed_copy_rows writes every row of out whose winner (srcmap, null: all text) it copies:
// text rows from the table (NaN and QVL_ERR_TOKEN for a token outside it), visual rows, and,
// with CUSTOM (the GEMM path), custom rows: row r of the custom list takes
// Y[e, k·H + c] + b2[k·H + c] with cus_src[r] = e·K + k (Y f32 [Ne, K·H]). Without CUSTOM the
// custom rows are left alone (the fused path's GEMM2 scatter writes them) and Y, b2 unused.
// Every thread of the grid calls it; any grid works.
//
// Vector form (H % 8 == 0, out, table, visual, Y and b2 16-byte aligned): the flattened
// [N, H/8] grid of 16-byte chunks, U chunks a thread a round, their loads issued level by
// level (the winners, then the tokens or sources, then the data, kept raw) before any of their
// arithmetic and stores, so that a thread has U dependent chains in flight instead of one. A
// loop of one element per thread per row made a 4096-token prefill's gather a chain of
// dependent round trips (122 µs on the H100 for 50 MB), and the GEMM path's scalar custom rows
// 70 µs for 8 MB. Otherwise a row per block.
template <int U, bool CUSTOM>
__device__ __forceinline__ void embed_copy_rows(float* __restrict__ out, int N, int H, const int* __restrict__ tokens,
                                                const void* __restrict__ table, int table_bf16, int vocab,
                                                const float* __restrict__ visual, int Nv, const int* srcmap,
                                                const int* __restrict__ cus_src, int NeK, int K, const float* __restrict__ Y,
                                                const void* __restrict__ b2, int b2_bf16, unsigned* err) {
    const int nb = gridDim.x, bid = blockIdx.x, tid = threadIdx.x;
    const long long gstride = (long long)nb * blockDim.x, gtid = (long long)bid * blockDim.x + tid;
    const long long KH = (long long)K * H;
    const bool vec = (H % 8) == 0 && embed_aligned16(out) && embed_aligned16(table) &&
                     (Nv == 0 || embed_aligned16(visual)) && (!CUSTOM || (embed_aligned16(Y) && embed_aligned16(b2)));
    if (vec) {
        // What a chunk's stage 4 does with its raw data d (and bias b).
        enum { SKIP, F32, BF16, NANS, YB2 };
        const int hc = H / 8;
        const long long total = (long long)N * hc;
        for (long long e0 = gtid; e0 < total; e0 += U * gstride) {
            // 1: the winner s (0 text, 1 + r visual r, 1 + Nv + r custom r; -1 past the end).
            int row[U], c8[U], s[U], x[U], kind[U];
#pragma unroll
            for (int j = 0; j < U; j++) {
                const long long e = e0 + (long long)j * gstride;
                row[j] = total <= 0x7fffffff ? (int)((unsigned)e / (unsigned)hc) : (int)(e / hc);
                c8[j] = (int)(e - (long long)row[j] * hc);
                s[j] = e >= total ? -1 : srcmap != nullptr ? __ldcg(&srcmap[row[j]]) : 0;
            }
            // 2: x, the token of a text row or the source e·K + k of a custom row.
#pragma unroll
            for (int j = 0; j < U; j++) {
                x[j] = 0;
                if (s[j] == 0) x[j] = tokens[row[j]];
                else if (CUSTOM && s[j] > Nv) x[j] = cus_src[s[j] - 1 - Nv];
            }
            // 3: the data, raw: no arithmetic on it here, so that no load waits for another.
            uint4 d[U][2], b[U][2];
#pragma unroll
            for (int j = 0; j < U; j++) {
                kind[j] = SKIP;
                if (s[j] == 0) {
                    if (x[j] < 0 || x[j] >= vocab) {
                        kind[j] = NANS;
                        if (c8[j] == 0) qvl_raise(err, QVL_ERR_TOKEN);
                    } else if (table_bf16) {
                        kind[j] = BF16;
                        d[j][0] = *reinterpret_cast<const uint4*>(reinterpret_cast<const qvl_bf16*>(table) +
                                                                  (long long)x[j] * H + c8[j] * 8);
                    } else {
                        kind[j] = F32;
                        const uint4* src = reinterpret_cast<const uint4*>(reinterpret_cast<const float*>(table) +
                                                                          (long long)x[j] * H + c8[j] * 8);
                        d[j][0] = src[0];
                        d[j][1] = src[1];
                    }
                } else if (s[j] > 0 && s[j] <= Nv) {
                    kind[j] = F32;
                    const uint4* src = reinterpret_cast<const uint4*>(visual + (long long)(s[j] - 1) * H + c8[j] * 8);
                    d[j][0] = src[0];
                    d[j][1] = src[1];
                } else if (CUSTOM && s[j] > Nv && x[j] >= 0 && x[j] < NeK) {  // embed_mark marks no bad source
                    kind[j] = YB2;
                    const int e = x[j] / K, k = x[j] - e * K;
                    const uint4* y = reinterpret_cast<const uint4*>(Y + e * KH + (long long)k * H + c8[j] * 8);
                    d[j][0] = y[0];
                    d[j][1] = y[1];
                    if (b2_bf16) {
                        b[j][0] = *reinterpret_cast<const uint4*>(reinterpret_cast<const qvl_bf16*>(b2) + (long long)k * H +
                                                                  c8[j] * 8);
                    } else {
                        const uint4* bp = reinterpret_cast<const uint4*>(reinterpret_cast<const float*>(b2) +
                                                                         (long long)k * H + c8[j] * 8);
                        b[j][0] = bp[0];
                        b[j][1] = bp[1];
                    }
                }
            }
            // 4: the rows' values, stored.
#pragma unroll
            for (int j = 0; j < U; j++) {
                if (kind[j] == SKIP) continue;
                float f[8];
                if (kind[j] == BF16) {
                    qvl_unpack8(d[j][0], f);
                } else if (kind[j] == NANS) {
#pragma unroll
                    for (int c = 0; c < 8; c++) f[c] = NAN;
                } else {
                    embed_u4_floats(d[j], f);
                }
                if (CUSTOM && kind[j] == YB2) {
                    float bf[8];
                    if (b2_bf16) qvl_unpack8(b[j][0], bf);
                    else embed_u4_floats(b[j], bf);
#pragma unroll
                    for (int c = 0; c < 8; c++) f[c] += bf[c];
                }
                float4* dst = reinterpret_cast<float4*>(out + (long long)row[j] * H + c8[j] * 8);
                dst[0] = make_float4(f[0], f[1], f[2], f[3]);
                dst[1] = make_float4(f[4], f[5], f[6], f[7]);
            }
        }
        return;
    }
    for (int i = bid; i < N; i += nb) {
        const int s = srcmap != nullptr ? __ldcg(&srcmap[i]) : 0;
        float* dst = out + (long long)i * H;
        if (s == 0) {
            const int tok = tokens[i];
            if (tok < 0 || tok >= vocab) {
                if (tid == 0) qvl_raise(err, QVL_ERR_TOKEN);
                for (int c = tid; c < H; c += blockDim.x) dst[c] = NAN;
                continue;
            }
            if (table_bf16) {
                const qvl_bf16* src = reinterpret_cast<const qvl_bf16*>(table) + (long long)tok * H;
                for (int c = tid; c < H; c += blockDim.x) dst[c] = qvl_bf16_to_f32(src[c]);
            } else {
                const float* src = reinterpret_cast<const float*>(table) + (long long)tok * H;
                for (int c = tid; c < H; c += blockDim.x) dst[c] = src[c];
            }
        } else if (s <= Nv) {
            const float* src = visual + (long long)(s - 1) * H;
            for (int c = tid; c < H; c += blockDim.x) dst[c] = src[c];
        } else if (CUSTOM) {
            const int src = cus_src[s - 1 - Nv];
            if (src < 0 || src >= NeK) continue;  // embed_mark marks no row with a bad source
            const int e = src / K, k = src - e * K;
            const float* y = Y + e * KH + (long long)k * H;
            for (int c = tid; c < H; c += blockDim.x) dst[c] = y[c] + qvl_load_weight(b2, b2_bf16, (long long)k * H + c);
        }
    }
}

// embed_run is the body of qvl_embed (P = EmbedPipe<32>) and qvl_embed_bk64 (EmbedPipe<64>).
template <class P>
__device__ __forceinline__ void embed_run(float* __restrict__ out, int N, int H, const int* __restrict__ tokens,
                                          const void* __restrict__ table, int vocab, const float* __restrict__ visual,
                                          const int* __restrict__ vis_idx, int Nv, const float* __restrict__ custom,
                                          const int* __restrict__ cus_idx, const int* __restrict__ cus_src, int Nc, int Ne,
                                          int D, int hid, int K, const qvl_bf16* __restrict__ fc1,
                                          const void* __restrict__ b1, const qvl_bf16* __restrict__ fc2,
                                          const void* __restrict__ b2, int flags, int* scratch, qvl_bf16* mid,
                                          unsigned* bar, unsigned* err) {
    QVL_DYN_SMEM(qvl_bf16, sm);  // P::SMEM bytes when Nc > 0; untouched otherwise
    const int table_bf16 = flags & 1, b1_bf16 = (flags >> 1) & 1, b2_bf16 = (flags >> 2) & 1;
    const bool tanh_form = (flags >> 3) & 1;
    const bool only_ab = (flags & QVL_EMBED_ONLY_AB) != 0, only_c = (flags & QVL_EMBED_ONLY_C) != 0;
    const long long gstride = (long long)gridDim.x * blockDim.x, gtid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool maps = Nv > 0 || Nc > 0;
    int* srcmap = scratch;      // [N]: 0 text, 1+r visual r, 1+Nv+r custom r
    int* head = scratch + N;    // [Ne·K]: first custom row taking (e, k), -1 none
    int* next = head + Ne * K;  // [Nc]: next custom row taking the same (e, k)
    // custom rounded to bf16, [Ne × D], after mid's Ne·hid elements rounded up to 8 (16-byte aligned)
    qvl_bf16* cbf = mid + (((long long)Ne * hid + 7) / 8) * 8;

    if (maps && !only_c) {
        for (long long i = gtid; i < N; i += gstride) srcmap[i] = 0;
        if (Nc > 0) {
            for (long long i = gtid; i < (long long)Ne * K; i += gstride) head[i] = -1;
            for (long long i = gtid; i < (long long)Ne * D; i += gstride) cbf[i] = qvl_f32_to_bf16(custom[i]);
        }
        qvl_grid_sync(bar);
        embed_mark(srcmap, N, vis_idx, Nv, cus_idx, cus_src, Nc, Ne * K, head, next, err);
        if (Nc > 0) embed_gemm1<P>(sm, cbf, Ne, D, fc1, b1, b1_bf16, hid, tanh_form, mid);
        if (!only_ab) qvl_grid_sync(bar);
    }
    if (only_ab) return;  // debug: phases A and B alone (the bit is the same for the whole grid)

    if (Nc > 0) {
        if (Ne > 64) embed_gemm2<P, 4>(sm, out, H, Nv, cus_idx, Ne, hid, K, mid, fc2, b2, b2_bf16, srcmap, head, next);
        else embed_gemm2<P, 2>(sm, out, H, Nv, cus_idx, Ne, hid, K, mid, fc2, b2, b2_bf16, srcmap, head, next);
    }
    embed_copy_rows<QVL_EMBED_ROWS_CHUNKS, false>(out, N, H, tokens, table, table_bf16, vocab, visual, Nv,
                                                  maps ? srcmap : nullptr, cus_src, Ne * K, K, nullptr, b2, b2_bf16, err);
}

// The two entries (see the header): the same parameters, QVL_PDL_ENTER() first in each.
#define QVL_EMBED_PARAMS                                                                                         \
    float *__restrict__ out, int N, int H, const int *__restrict__ tokens, const void *__restrict__ table,       \
        int vocab, const float *__restrict__ visual, const int *__restrict__ vis_idx, int Nv,                    \
        const float *__restrict__ custom, const int *__restrict__ cus_idx, const int *__restrict__ cus_src,      \
        int Nc, int Ne, int D, int hid, int K, const qvl_bf16 *__restrict__ fc1, const void *__restrict__ b1,    \
        const qvl_bf16 *__restrict__ fc2, const void *__restrict__ b2, int flags, int *scratch, qvl_bf16 *mid, \
        unsigned *bar, unsigned *err
#define QVL_EMBED_ARGS                                                                                        \
    out, N, H, tokens, table, vocab, visual, vis_idx, Nv, custom, cus_idx, cus_src, Nc, Ne, D, hid, K, fc1, b1, \
        fc2, b2, flags, scratch, mid, bar, err

extern "C" __global__ void __launch_bounds__(QVL_EMBED_THREADS, 1) qvl_embed(QVL_EMBED_PARAMS) {
    QVL_PDL_ENTER();
    embed_run<EmbedPipe<32>>(QVL_EMBED_ARGS);
}
QVL_REGISTER(qvl_embed)

extern "C" __global__ void __launch_bounds__(QVL_EMBED_THREADS, 1) qvl_embed_bk64(QVL_EMBED_PARAMS) {
    QVL_PDL_ENTER();
    embed_run<EmbedPipe<64>>(QVL_EMBED_ARGS);
}
QVL_REGISTER(qvl_embed_bk64)

// ── The GEMM path's launches (see the header), block QVL_EMBED_ROWS_THREADS, any grid. ──────

// qvl_embed_prep: cbf[i] = bf16(custom[i]) for i < n (8 a thread when both are 16-byte
// aligned), and srcmap[i] = 0 for i < N.
extern "C" __global__ void __launch_bounds__(QVL_EMBED_ROWS_THREADS)
qvl_embed_prep(qvl_bf16* __restrict__ cbf, const float* __restrict__ custom, long long n, int* __restrict__ srcmap, int N) {
    QVL_PDL_ENTER();
    const long long stride = (long long)gridDim.x * blockDim.x, t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long i = t; i < N; i += stride) srcmap[i] = 0;
    long long done = 0;
    if (embed_aligned16(cbf) && embed_aligned16(custom)) {
        done = n / 8 * 8;
        for (long long q = t; q < n / 8; q += stride) {
            const float4* x = reinterpret_cast<const float4*>(custom) + 2 * q;
            const float4 a = x[0], b = x[1];
            reinterpret_cast<uint4*>(cbf)[q] = make_uint4(qvl_pack_bf16(a.x, a.y), qvl_pack_bf16(a.z, a.w),
                                                          qvl_pack_bf16(b.x, b.y), qvl_pack_bf16(b.z, b.w));
        }
    }
    for (long long i = done + t; i < n; i += stride) cbf[i] = qvl_f32_to_bf16(custom[i]);
}
QVL_REGISTER(qvl_embed_prep)

// qvl_embed_gelu: mid[e, j] = bf16(gelu(x[e, j] + b1[j])) for e < Ne, j < hid (Ne·hid < 2^31,
// the backend checks), 8 a thread when hid % 8 == 0 and mid, x, b1 are 16-byte aligned; then
// the winners of the rows (embed_mark, without lists: qvl_embed_prep zeroed srcmap).
extern "C" __global__ void __launch_bounds__(QVL_EMBED_ROWS_THREADS)
qvl_embed_gelu(qvl_bf16* __restrict__ mid, const float* __restrict__ x, const void* __restrict__ b1, int flags, int Ne,
               int hid, int* srcmap, int N, const int* __restrict__ vis_idx, int Nv, const int* __restrict__ cus_idx,
               const int* __restrict__ cus_src, int Nc, int NeK, unsigned* err) {
    QVL_PDL_ENTER();
    const int b1_bf16 = (flags >> 1) & 1;
    const bool tanh_form = (flags >> 3) & 1;
    embed_mark(srcmap, N, vis_idx, Nv, cus_idx, cus_src, Nc, NeK, nullptr, nullptr, err);
    const int stride = gridDim.x * blockDim.x, t = blockIdx.x * blockDim.x + threadIdx.x;
    const int n = Ne * hid;
    if (hid % 8 == 0 && embed_aligned16(mid) && embed_aligned16(x) && embed_aligned16(b1)) {
        const int hc = hid / 8;
        for (int q = t; q < n / 8; q += stride) {
            const int col = (q % hc) * 8;
            const float4* xp = reinterpret_cast<const float4*>(x) + 2 * q;
            const float4 a = xp[0], c = xp[1];
            float b[8];
            if (b1_bf16) {
                qvl_unpack8(*reinterpret_cast<const uint4*>(reinterpret_cast<const qvl_bf16*>(b1) + col), b);
            } else {
                const float4* bp = reinterpret_cast<const float4*>(reinterpret_cast<const float*>(b1) + col);
                const float4 b0 = bp[0], b4 = bp[1];
                b[0] = b0.x, b[1] = b0.y, b[2] = b0.z, b[3] = b0.w, b[4] = b4.x, b[5] = b4.y, b[6] = b4.z, b[7] = b4.w;
            }
            const float v[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
            unsigned o[4];
#pragma unroll
            for (int k = 0; k < 4; k++)
                o[k] = qvl_pack_bf16(embed_gelu(v[2 * k] + b[2 * k], tanh_form), embed_gelu(v[2 * k + 1] + b[2 * k + 1], tanh_form));
            reinterpret_cast<uint4*>(mid)[q] = make_uint4(o[0], o[1], o[2], o[3]);
        }
        return;
    }
    for (int i = t; i < n; i += stride)
        mid[i] = qvl_f32_to_bf16(embed_gelu(x[i] + qvl_load_weight(b1, b1_bf16, i % hid), tanh_form));
}
QVL_REGISTER(qvl_embed_gelu)

// qvl_embed_rows: every row of out from its winner (srcmap, marked by qvl_embed_gelu), by
// embed_copy_rows with Y (f32 [Ne, K·H], mid·fc2ᵀ without b2). flags as qvl_embed's.
extern "C" __global__ void __launch_bounds__(QVL_EMBED_ROWS_THREADS, 4)
qvl_embed_rows(float* __restrict__ out, int N, int H, const int* __restrict__ tokens, const void* __restrict__ table,
               int vocab, const float* __restrict__ visual, int Nv, const int* srcmap, const int* __restrict__ cus_src,
               int NeK, int K, const float* __restrict__ Y, const void* __restrict__ b2, int flags, unsigned* err) {
    QVL_PDL_ENTER();
    embed_copy_rows<QVL_EMBED_ROWS_CUSTOM_CHUNKS, true>(out, N, H, tokens, table, flags & 1, vocab, visual, Nv, srcmap,
                                                        cus_src, NeK, K, Y, b2, (flags >> 2) & 1, err);
}
QVL_REGISTER(qvl_embed_rows)

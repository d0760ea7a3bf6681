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
//   A  init the source map and the (e, k) → rows lists                 ─ grid barrier
//   B  atomicMax the winners; push each custom row on the list of its (e, k);
//      GEMM1 tiles: mid[e, :] = bf16(gelu(custom[e, :]·fc1ᵀ + b1))       ─ grid barrier
//   C  GEMM2 tiles: Y = mid·fc2ᵀ + b2, each element scattered to the rows that take it;
//      text and visual rows copied.
// A step without visual or custom rows runs phase C's copies only (no barrier). Both GEMMs use
// 64×128 output tiles on mma.sync m16n8k16 (bf16 in, f32 accumulate), 8 warps of 32×32, K tiles
// of 32 staged through shared memory; custom (f32) is rounded to bf16 as it is staged, and mid
// is stored in bf16, as MatMul rounds its activations.
//
// Floor: text rows are a gather, N·H·(2+4) bytes. The projector is FLOPs plus its weights:
// 2·Ne·(D·hid + hid·K·H) FLOPs and (D·hid + hid·K·H)·2 bytes; for 256 embeddings on the 2B
// shape (D 1024, hid 4096, K·H 8192) that is 19.3 GFLOP and 75 MB: 26 µs at 748 TFLOP/s and
// 25 µs at 3 TB/s. Issue 6's target is within 1.5× of cuBLAS running the same two GEMMs.
#include "common.cuh"

#define QVL_EMBED_THREADS 256
#define EBM 64
#define EBN 128
#define EBK 32
#define ELD (EBK + 8)  // padded smem row (bf16): fragment loads hit 32 distinct banks

struct EmbedSmem {
    qvl_bf16 a[EBM * ELD];
    qvl_bf16 b[EBN * ELD];
};

__device__ __forceinline__ unsigned embed_ld32(const qvl_bf16* p) { return *reinterpret_cast<const unsigned*>(p); }

// gemm_tile accumulates acc = A[m0 .. m0+64, :]·W[n0 .. n0+128, :]ᵀ over Kd for this thread's
// fragments: acc[mi][ni][c] is row wm·32 + mi·16 + g (+8 for c ≥ 2), col wn·32 + ni·8 + 2t + (c&1)
// of the tile (warp w: wm = w/4, wn = w%4; lane: g = lane/4, t = lane%4). load_a(r, k) returns
// the 8 bf16 A[m0 + r][k .. k+7] as a uint4, zero past the matrix. Every thread of the block calls it.
template <class LoadA>
__device__ __forceinline__ void gemm_tile(float (&acc)[2][4][4], EmbedSmem& sm, LoadA load_a,
                                          const qvl_bf16* __restrict__ W, int N, int Kd, int n0) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) acc[mi][ni][0] = acc[mi][ni][1] = acc[mi][ni][2] = acc[mi][ni][3] = 0.f;
    const bool wvec = (Kd % 8) == 0 && (reinterpret_cast<unsigned long long>(W) & 15) == 0;
    for (int k0 = 0; k0 < Kd; k0 += EBK) {
        __syncthreads();
        {
            const int r = tid >> 2, kc = (tid & 3) * 8;
            *reinterpret_cast<uint4*>(sm.a + r * ELD + kc) = load_a(r, k0 + kc);
        }
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int r = (tid >> 2) + 64 * i, kc = (tid & 3) * 8;
            const int n = n0 + r, k = k0 + kc;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (n < N && k < Kd) {
                const qvl_bf16* src = W + (long long)n * Kd + k;
                if (wvec && k + 8 <= Kd) {
                    v = *reinterpret_cast<const uint4*>(src);
                } else {
                    qvl_bf16 e[8];
#pragma unroll
                    for (int j = 0; j < 8; j++) e[j] = k + j < Kd ? src[j] : (qvl_bf16)0;
                    v = make_uint4(qvl_pack_raw(e[0], e[1]), qvl_pack_raw(e[2], e[3]), qvl_pack_raw(e[4], e[5]),
                                   qvl_pack_raw(e[6], e[7]));
                }
            }
            *reinterpret_cast<uint4*>(sm.b + r * ELD + kc) = v;
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < EBK / 16; ks++) {
            unsigned a[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                const qvl_bf16* ap = sm.a + (wm * 32 + mi * 16 + g) * ELD + ks * 16 + 2 * t4;
                a[mi][0] = embed_ld32(ap);
                a[mi][1] = embed_ld32(ap + 8 * ELD);
                a[mi][2] = embed_ld32(ap + 8);
                a[mi][3] = embed_ld32(ap + 8 * ELD + 8);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const qvl_bf16* bp = sm.b + (wn * 32 + ni * 8 + g) * ELD + ks * 16 + 2 * t4;
                unsigned b[2];
                b[0] = embed_ld32(bp);
                b[1] = embed_ld32(bp + 8);
#pragma unroll
                for (int mi = 0; mi < 2; mi++) qvl_mma_bf16(acc[mi][ni], a[mi], b);
            }
        }
    }
}

__device__ __forceinline__ float embed_gelu(float x, bool tanh_form) {
    if (tanh_form) return 0.5f * x * (1.f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
}

extern "C" __global__ void __launch_bounds__(QVL_EMBED_THREADS, 1)
qvl_embed(float* __restrict__ out, int N, int H, const int* __restrict__ tokens, const void* __restrict__ table,
          int vocab, const float* __restrict__ visual, const int* __restrict__ vis_idx, int Nv,
          const float* __restrict__ custom, const int* __restrict__ cus_idx, const int* __restrict__ cus_src, int Nc,
          int Ne, int D, int hid, int K, const qvl_bf16* __restrict__ fc1, const void* __restrict__ b1,
          const qvl_bf16* __restrict__ fc2, const void* __restrict__ b2, int flags, int* scratch,
          qvl_bf16* mid, unsigned* bar, unsigned* err) {
    __shared__ __align__(16) EmbedSmem sm;
    const int table_bf16 = flags & 1, b1_bf16 = (flags >> 1) & 1, b2_bf16 = (flags >> 2) & 1;
    const bool tanh_form = (flags >> 3) & 1;
    const int nb = gridDim.x, bid = blockIdx.x, tid = threadIdx.x;
    const long long gstride = (long long)nb * blockDim.x, gtid = (long long)bid * blockDim.x + tid;
    const bool maps = Nv > 0 || Nc > 0;
    int* srcmap = scratch;      // [N]: 0 text, 1+r visual r, 1+Nv+r custom r
    int* head = scratch + N;    // [Ne·K]: first custom row taking (e, k), -1 none
    int* next = head + Ne * K;  // [Nc]: next custom row taking the same (e, k)
    const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;
    const int mtiles = (Ne + EBM - 1) / EBM;

    if (maps) {
        for (long long i = gtid; i < N; i += gstride) srcmap[i] = 0;
        if (Nc > 0)
            for (long long i = gtid; i < (long long)Ne * K; i += gstride) head[i] = -1;
        qvl_grid_sync(bar);
        for (long long r = gtid; r < Nv; r += gstride) {
            const int d = vis_idx[r];
            if (d < 0 || d >= N) qvl_raise(err, QVL_ERR_VISUAL_IDX);
            else atomicMax(&srcmap[d], (int)(1 + r));
        }
        for (long long r = gtid; r < Nc; r += gstride) {
            const int d = cus_idx[r], src = cus_src[r];
            if (d < 0 || d >= N) {
                qvl_raise(err, QVL_ERR_CUSTOM_IDX);
            } else if (src < 0 || src >= Ne * K) {
                qvl_raise(err, QVL_ERR_CUSTOM_SRC);
            } else {
                atomicMax(&srcmap[d], (int)(1 + Nv + r));
                next[r] = atomicExch(&head[src], (int)r);
            }
        }
        if (Nc > 0) {
            // GEMM1: mid = bf16(gelu(custom · fc1ᵀ + b1)), [Ne, hid].
            const int ntiles = (hid + EBN - 1) / EBN;
            const bool cvec = (D % 4) == 0 && (reinterpret_cast<unsigned long long>(custom) & 15) == 0;
            for (int tile = bid; tile < mtiles * ntiles; tile += nb) {
                const int m0 = (tile / ntiles) * EBM, n0 = (tile % ntiles) * EBN;
                auto load_a = [&](int r, int k) -> uint4 {
                    const int e = m0 + r;
                    float f[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
                    if (e < Ne && k < D) {
                        const float* src = custom + (long long)e * D + k;
                        if (cvec && k + 8 <= D) {
                            const float4 x0 = reinterpret_cast<const float4*>(src)[0];
                            const float4 x1 = reinterpret_cast<const float4*>(src)[1];
                            f[0] = x0.x, f[1] = x0.y, f[2] = x0.z, f[3] = x0.w;
                            f[4] = x1.x, f[5] = x1.y, f[6] = x1.z, f[7] = x1.w;
                        } else {
#pragma unroll
                            for (int j = 0; j < 8; j++) f[j] = k + j < D ? src[j] : 0.f;
                        }
                    }
                    return make_uint4(qvl_pack_bf16(f[0], f[1]), qvl_pack_bf16(f[2], f[3]), qvl_pack_bf16(f[4], f[5]),
                                      qvl_pack_bf16(f[6], f[7]));
                };
                float acc[2][4][4];
                gemm_tile(acc, sm, load_a, fc1, hid, D, n0);
#pragma unroll
                for (int mi = 0; mi < 2; mi++)
#pragma unroll
                    for (int ni = 0; ni < 4; ni++)
#pragma unroll
                        for (int c = 0; c < 4; c++) {
                            const int e = m0 + wm * 32 + mi * 16 + g + (c >= 2 ? 8 : 0);
                            const int col = n0 + wn * 32 + ni * 8 + 2 * t4 + (c & 1);
                            if (e < Ne && col < hid) {
                                const float v = acc[mi][ni][c] + qvl_load_weight(b1, b1_bf16, col);
                                mid[(long long)e * hid + col] = qvl_f32_to_bf16(embed_gelu(v, tanh_form));
                            }
                        }
            }
        }
        qvl_grid_sync(bar);
    }

    if (Nc > 0) {
        // GEMM2: Y = mid · fc2ᵀ + b2, [Ne, K·H], scattered to the rows that take each (e, k).
        const int KH = K * H;
        const int ntiles = (KH + EBN - 1) / EBN;
        const bool mvec = (hid % 8) == 0 && (reinterpret_cast<unsigned long long>(mid) & 15) == 0;
        for (int tile = bid; tile < mtiles * ntiles; tile += nb) {
            const int m0 = (tile / ntiles) * EBM, n0 = (tile % ntiles) * EBN;
            auto load_a = [&](int r, int k) -> uint4 {
                const int e = m0 + r;
                if (e >= Ne || k >= hid) return make_uint4(0u, 0u, 0u, 0u);
                const qvl_bf16* src = mid + (long long)e * hid + k;
                if (mvec && k + 8 <= hid) return __ldcg(reinterpret_cast<const uint4*>(src));
                qvl_bf16 v[8];
#pragma unroll
                for (int j = 0; j < 8; j++) v[j] = k + j < hid ? __ldcg(src + j) : (qvl_bf16)0;
                return make_uint4(qvl_pack_raw(v[0], v[1]), qvl_pack_raw(v[2], v[3]), qvl_pack_raw(v[4], v[5]),
                                  qvl_pack_raw(v[6], v[7]));
            };
            float acc[2][4][4];
            gemm_tile(acc, sm, load_a, fc2, KH, hid, n0);
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++)
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        const int e = m0 + wm * 32 + mi * 16 + g + (c >= 2 ? 8 : 0);
                        const int col = n0 + wn * 32 + ni * 8 + 2 * t4 + (c & 1);
                        if (e >= Ne || col >= KH) continue;
                        const float v = acc[mi][ni][c] + qvl_load_weight(b2, b2_bf16, col);
                        const int k = col / H, cc = col - k * H;
                        for (int r = __ldcg(&head[e * K + k]); r >= 0; r = __ldcg(&next[r])) {
                            const int d = cus_idx[r];
                            if (__ldcg(&srcmap[d]) == 1 + Nv + r) out[(long long)d * H + cc] = v;
                        }
                    }
        }
    }

    for (int i = bid; i < N; i += nb) {
        const int s = maps ? __ldcg(&srcmap[i]) : 0;
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
        }
    }
}
QVL_REGISTER(qvl_embed)

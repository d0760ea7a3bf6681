// qkv.cu — finishing the attention input projection of one layer, per token:
//
//   q heads:  q_out[n, h, :] = rope(rmsnorm(qkv[n, h, :]) · q_norm)
//   k heads:  K[slot(n), h, :] = bf16(rope(rmsnorm(qkv[n, H+h, :]) · k_norm))
//   v heads:  V[slot(n), h, :] = bf16(qkv[n, H+KV+h, :])
//
// rope is NeoX-style (halves: out[j] = a·cos − b·sin, out[j+hd/2] = b·cos + a·sin with a = x[j],
// b = x[j+hd/2]) at angle pos[n, axis[j]] · inv_freq[j]; axis[j] ∈ {0,1,2} is Qwen3-VL's
// interleaved MRoPE axis rule and inv_freq[j] = θ^(−2j/hd), both tabulated on the host (f64,
// as the CPU reference computes them). The angle is formed and reduced to [−π, π] in f64, then
// sincosf: positions reach 2.6e5 and an f32 angle would be off by 1e-2 rad there. The cache is
// bf16 in ml.KVLayout's paged HND layout: element (slot, h, d) lives at
// ((slot/bs · KV + h) · bs + slot%bs) · hd + d.
//
// Launch: grid (N tokens), block 32·nw threads (warp w handles heads w, w+nw, ...): at decode
// (N ≤ 256) nw = min(heads + 2·kv_heads, 32), one head per warp on the 2B's 32; at prefill nw = 4,
// 8 heads a warp on the 2B (runtime/cuda qkvThreads). Dynamic shared memory (nw + 1) · hd floats
// (one head buffer per warp, then cos|sin of the token). Each lane keeps its share of a head
// (d = lane + 32k, k < QVL_QKV_LANE_REGS: all of it for hd ≤ 128) in registers, fetched two of
// the warp's heads ahead: the first two heads' loads are issued before the cos/sin prologue,
// and head h + 2·nw is loaded when head h starts, so a warp has two heads of loads in flight
// while it normalises, rotates and stores (the arithmetic and its order are those of the
// one-head-at-a-time loop: the sum of squares over d in ascending order).
// Floor: bandwidth, reading (H+2KV)·hd·4 bytes and writing H·hd·4 + 2·KV·hd·2 per token: the
// 2B's 32 heads of 128 at 4096 tokens read 67.1 MB and write 50.3 MB (16.8 M and 12.6 M
// elements), 39 µs at 3 TB/s; at decode a launch.
#include "qkv.cuh"  // qvl_qkv_fetch, qvl_rope_cs, qvl_qkv_head (shared with the folded decode attention)

extern "C" __global__ void __launch_bounds__(1024)
qvl_qkv(const float* __restrict__ qkv, float* __restrict__ q_out, const void* __restrict__ qn,
        const void* __restrict__ kn, int flags, const int* __restrict__ pos, const int* __restrict__ slots,
        qvl_bf16* __restrict__ kc, qvl_bf16* __restrict__ vc, const double* __restrict__ inv_freq,
        const int* __restrict__ axis, int heads, int kv_heads, int hd, int block_size, int num_blocks, float eps,
        unsigned* err) {
    QVL_PDL_ENTER();
    QVL_DYN_SMEM(float, smem);
    const int n = blockIdx.x;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int half = hd / 2;
    float* hb = smem + w * hd;
    float* cs = smem + nw * hd;  // cos[half] then sin[half]
    const int nh = heads + 2 * kv_heads;
    const float* row = qkv + (long long)n * nh * hd;
    // The warp's first two heads are in flight while the block computes the token's cos/sin table.
    float next[QVL_QKV_LANE_REGS], after[QVL_QKV_LANE_REGS];
    if (w < nh) qvl_qkv_fetch(next, row + (long long)w * hd, lane, hd);
    if (w + nw < nh) qvl_qkv_fetch(after, row + (long long)(w + nw) * hd, lane, hd);
    const int slot = slots[n];
    const bool slot_ok = slot >= 0 && slot < num_blocks * block_size;
    if (!slot_ok && threadIdx.x == 0) qvl_raise(err, QVL_ERR_SLOT);
    const int p0 = pos[3 * n], p1 = pos[3 * n + 1], p2 = pos[3 * n + 2];
    for (int j = threadIdx.x; j < half; j += blockDim.x) qvl_rope_cs(cs, j, half, p0, p1, p2, axis, inv_freq);
    __syncthreads();
    const long long blk = slot_ok ? slot / block_size : 0, off = slot_ok ? slot % block_size : 0;
    for (int h = w; h < nh; h += nw) {  // warp-uniform
        // This head's share was fetched two heads ago; the warp's head after next is loaded now,
        // while this one is normalised, rotated and stored.
        float cur[QVL_QKV_LANE_REGS];
#pragma unroll
        for (int k = 0; k < QVL_QKV_LANE_REGS; ++k) {
            cur[k] = next[k];
            next[k] = after[k];
        }
        if (h + 2 * nw < nh) qvl_qkv_fetch(after, row + (long long)(h + 2 * nw) * hd, lane, hd);
        const float* x = row + (long long)h * hd;
        if (h >= heads + kv_heads) {
            if (slot_ok) {
                const int kvh = h - heads - kv_heads;
                qvl_bf16* dst = vc + ((blk * kv_heads + kvh) * block_size + off) * hd;
#pragma unroll
                for (int k = 0; k < QVL_QKV_LANE_REGS; ++k) {
                    const int d = lane + 32 * k;
                    if (d < hd) dst[d] = qvl_f32_to_bf16(cur[k]);
                }
                for (int d = lane + 32 * QVL_QKV_LANE_REGS; d < hd; d += 32) dst[d] = qvl_f32_to_bf16(x[d]);
            }
            continue;
        }
        const bool isq = h < heads;
        const void* wn = isq ? qn : kn;
        const int wbf = isq ? (flags & 1) : ((flags >> 1) & 1);
        qvl_qkv_head(cur, x, hb, cs, wn, wbf, lane, hd, eps, [&](int j, float o1, float o2) {
            if (isq) {
                float* dst = q_out + ((long long)n * heads + h) * hd;
                dst[j] = o1;
                dst[j + half] = o2;
            } else if (slot_ok) {
                qvl_bf16* dst = kc + ((blk * kv_heads + (h - heads)) * block_size + off) * hd;
                dst[j] = qvl_f32_to_bf16(o1);
                dst[j + half] = qvl_f32_to_bf16(o2);
            }
        });
    }
}
QVL_REGISTER(qvl_qkv)

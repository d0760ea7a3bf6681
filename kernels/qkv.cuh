// qkv.cuh — the per-head finishing of the attention input projection (RMSNorm with a per-head
// weight, then NeoX rotary embedding at the token's MRoPE angles), shared by qvl_qkv (qkv.cu)
// and the folded decode attention (attention.cu's attn_decode<…, FOLD>), so that both compute
// q and k with the same arithmetic in the same order: the same bits.
#pragma once
#include "common.cuh"

// QVL_QKV_LANE_REGS is how many elements of a head each lane holds in registers (d = lane + 32k):
// all of it for hd ≤ 128; larger heads load the rest where they are used.
#define QVL_QKV_LANE_REGS 4

// qvl_qkv_fetch loads the lane's register share of a head's row x (0 past hd).
__device__ __forceinline__ void qvl_qkv_fetch(float* v, const float* __restrict__ x, int lane, int hd) {
#pragma unroll
    for (int k = 0; k < QVL_QKV_LANE_REGS; ++k) {
        const int d = lane + 32 * k;
        v[k] = d < hd ? x[d] : 0.f;
    }
}

// qvl_rope_cs writes entry j < hd/2 of a token's rotary table: cs[j] = cos, cs[half + j] = sin
// of the angle pos[axis[j]] · inv_freq[j] (p0, p1, p2: the token's t, h, w positions), formed
// and reduced to [−π, π] in f64, then sincosf (positions reach 2.6e5 and an f32 angle would be
// off by 1e-2 rad there).
__device__ __forceinline__ void qvl_rope_cs(float* cs, int j, int half, int p0, int p1, int p2,
                                            const int* __restrict__ axis, const double* __restrict__ inv_freq) {
    const int ax = axis[j];
    const int p = ax == 1 ? p1 : (ax == 2 ? p2 : p0);
    double ang = (double)p * inv_freq[j];
    const double two_pi = 6.283185307179586476925286766559;
    ang -= rint(ang / two_pi) * two_pi;
    float s, c;
    sincosf((float)ang, &s, &c);
    cs[j] = c;
    cs[half + j] = s;
}

// qvl_qkv_head normalises and rotates one head with one warp: cur is the lane's register share
// of the head's row x (qvl_qkv_fetch), hb the warp's hd floats of scratch in shared memory, cs
// the token's rotary table, wn the norm weight (bf16 when wbf). The sum of squares runs over d
// in ascending order per lane (the registers' share first, then the rest), then a warp sum; the
// inverse RMS is formed in f64. emit(j, o1, o2) receives the rotated pair (j, j + hd/2) for
// j = lane, lane + 32, … < hd/2. Every lane of the warp calls it (it synchronises the warp).
template <class Emit>
__device__ __forceinline__ void qvl_qkv_head(const float* cur, const float* __restrict__ x, float* hb,
                                             const float* cs, const void* wn, int wbf, int lane, int hd, float eps,
                                             Emit emit) {
    const int half = hd / 2;
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < QVL_QKV_LANE_REGS; ++k) {
        const int d = lane + 32 * k;
        if (d < hd) {
            const float v = cur[k];
            hb[d] = v;
            ss += v * v;
        }
    }
    for (int d = lane + 32 * QVL_QKV_LANE_REGS; d < hd; d += 32) {
        const float v = x[d];
        hb[d] = v;
        ss += v * v;
    }
    ss = qvl_warp_sum(ss);
    const float inv = (float)(1.0 / sqrt((double)ss / (double)hd + (double)eps));
    __syncwarp();
#pragma unroll 2
    for (int j = lane; j < half; j += 32) {
        const float a = hb[j] * inv * qvl_load_weight(wn, wbf, j);
        const float b = hb[j + half] * inv * qvl_load_weight(wn, wbf, j + half);
        const float c = cs[j], s = cs[half + j];
        const float o1 = a * c - b * s, o2 = b * c + a * s;
        emit(j, o1, o2);
    }
    __syncwarp();
}

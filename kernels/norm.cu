// norm.cu — RMSNorm, and RMSNorm with the residual add fused in front of it.
//
//   qvl_rmsnorm      out[r, i] = w[i] · x[r, i] / sqrt(mean_i(x[r, :]²) + eps)
//   qvl_add_rmsnorm  x[r, :] += delta[r, :] (in place, the residual stream); then out = rmsnorm(x)
//
// w is bf16 or f32 (w_bf16). The sum of squares accumulates in f32 per thread and per block;
// 1/sqrt is taken in f64 once per row. When out_bf16 is not null the normalised row is also
// written there as bf16 (the backend's bf16 copy of out: the MatMul that consumes out reads it
// instead of launching qvl_f32_to_bf16; the bits are qvl_f32_to_bf16's).
//
// Launch: grid (rows), block 256 (one block per row; H = 2048 is 8 elements per thread). Rows up
// to 4096 are held in registers: x, delta and w are loaded in one round trip; longer rows take two
// passes.
// Floor: bandwidth. rmsnorm reads 4H and writes 4H bytes per row (+2H with out_bf16);
// add_rmsnorm reads 8H and writes 8H (+2H). At decode (a few rows) the launch, not the bytes,
// is the cost (~2 µs); at 4096 prefill rows of H = 2048, add_rmsnorm moves 151 MB with the bf16
// copy: 50 µs at 3 TB/s (the conversion it replaces moved 50 MB more in a launch of its own).
#include "common.cuh"

#define QVL_NORM_PER 16  // elements per thread kept in registers: rows up to 16·256 = 4096

template <bool ADD>
__device__ __forceinline__ void rmsnorm_row(float* __restrict__ out, float* __restrict__ x, const float* __restrict__ delta,
                                            const void* __restrict__ w, int w_bf16, int H, float eps,
                                            qvl_bf16* __restrict__ out_bf16) {
    __shared__ float red[32];
    const long long base = (long long)blockIdx.x * H;
    float* xr = x + base;
    float ss = 0.f;
    if (H <= QVL_NORM_PER * (int)blockDim.x) {  // block-uniform
        // One round trip: x, delta and w are all loaded before the first use, the row stays in
        // registers (at decode a step's rows are a few blocks, and latency is the whole cost).
        float v[QVL_NORM_PER], wv[QVL_NORM_PER];
#pragma unroll
        for (int j = 0; j < QVL_NORM_PER; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            v[j] = 0.f;
            wv[j] = 0.f;
            if (i < H) {
                v[j] = xr[i];
                if (ADD) v[j] += delta[base + i];
                wv[j] = qvl_load_weight(w, w_bf16, i);
            }
        }
#pragma unroll
        for (int j = 0; j < QVL_NORM_PER; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            if (ADD && i < H) xr[i] = v[j];
            ss += v[j] * v[j];
        }
        ss = qvl_block_sum(ss, red);
        const float inv = (float)(1.0 / sqrt((double)ss / (double)H + (double)eps));
#pragma unroll
        for (int j = 0; j < QVL_NORM_PER; j++) {
            const int i = threadIdx.x + j * blockDim.x;
            if (i < H) {
                const float o = wv[j] * (v[j] * inv);
                out[base + i] = o;
                if (out_bf16) out_bf16[base + i] = qvl_f32_to_bf16(o);
            }
        }
        return;
    }
    // Longer rows: two passes over the row.
#pragma unroll 8
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        float v = xr[i];
        if (ADD) {
            v += delta[base + i];
            xr[i] = v;
        }
        ss += v * v;
    }
    ss = qvl_block_sum(ss, red);
    const float inv = (float)(1.0 / sqrt((double)ss / (double)H + (double)eps));
#pragma unroll 8
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        const float o = qvl_load_weight(w, w_bf16, i) * (xr[i] * inv);
        out[base + i] = o;
        if (out_bf16) out_bf16[base + i] = qvl_f32_to_bf16(o);
    }
}

extern "C" __global__ void __launch_bounds__(256)
qvl_rmsnorm(float* __restrict__ out, const float* __restrict__ x, const void* __restrict__ w, int w_bf16, int H,
            float eps, qvl_bf16* __restrict__ out_bf16) {
    QVL_PDL_ENTER();
    rmsnorm_row<false>(out, const_cast<float*>(x), nullptr, w, w_bf16, H, eps, out_bf16);
}
QVL_REGISTER(qvl_rmsnorm)

extern "C" __global__ void __launch_bounds__(256)
qvl_add_rmsnorm(float* __restrict__ out, float* __restrict__ x, const float* __restrict__ delta,
                const void* __restrict__ w, int w_bf16, int H, float eps, qvl_bf16* __restrict__ out_bf16) {
    QVL_PDL_ENTER();
    rmsnorm_row<true>(out, x, delta, w, w_bf16, H, eps, out_bf16);
}
QVL_REGISTER(qvl_add_rmsnorm)

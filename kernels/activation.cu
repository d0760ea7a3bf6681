// activation.cu — SwiGLU, the Qwen3 MLP's gate.
//
//   qvl_swiglu  out[r, i] = silu(gu[r, i]) · gu[r, I + i],  silu(g) = g / (1 + e^-g)
//
// gu is the fused gate|up projection [rows, 2I]; out is [rows, I]. When out_bf16 is not null the
// result is also written there as bf16 (the backend's bf16 copy of out, which the down
// projection's MatMul reads instead of launching qvl_f32_to_bf16).
//
// Launch: grid-stride over the rows·I/V units of V elements: V = 4 (16-byte loads of gate and
// up, a 16-byte store of out, an 8-byte store of the copy) when I % 4 == 0, out and gu are
// 16-byte aligned and out_bf16 8-byte aligned; V = 1 otherwise. Each thread loads
// QVL_SWIGLU_UNROLL units (a grid stride apart) before computing any, and walks rows and columns
// by adding the stride's row and column steps (no division per element). Block 256, grid ≤
// QVL_SWIGLU_BLOCKS_PER_SM·SMs (runtime/cuda swigluGrid: one wave at the occupancy the launch
// bounds ask for). Every element is the same expression (qvl_silu_mul) on either path, so the
// result does not depend on the path or the grid.
// Floor: bandwidth, 12 bytes per output element (read 8, write 4; +2 with out_bf16): the 2B MLP
// at 4096 prefill tokens (I = 6144) moves 352 MB with the copy, 117 µs at 3 TB/s (the separate
// conversion moved 151 MB more); at decode it is one launch (~2 µs): 64 rows are 98,304 units
// of 4, one per thread.
#include "common.cuh"

#define QVL_SWIGLU_THREADS 256
#define QVL_SWIGLU_BLOCKS_PER_SM 4  // the launch bounds' minimum (≤ 64 registers); swigluBlocksPerSM in runtime/cuda
#define QVL_SWIGLU_UNROLL 4

// qvl_swiglu_step advances the unit (r, c) of a row of C units by a step of sq rows and sr < C
// columns.
__device__ __forceinline__ void qvl_swiglu_step(long long& r, int& c, int sq, int sr, int C) {
    c += sr;
    r += sq;
    if (c >= C) {
        c -= C;
        ++r;
    }
}

// qvl_swiglu_ld4 is a 16-byte read-only load (the emulation checks the alignment).
__device__ __forceinline__ float4 qvl_swiglu_ld4(const float* p) {
#if defined(QVL_SIM)
    qvlsim::check_align16(p);
#endif
    return __ldg(reinterpret_cast<const float4*>(p));
}

// qvl_swiglu_units runs the grid's share of qvl_swiglu in units of V = 1 or 4 consecutive
// elements of a row (I % V == 0, pointers aligned to V elements).
template <int V>
__device__ __forceinline__ void qvl_swiglu_units(float* __restrict__ out, const float* __restrict__ gu, int rows,
                                                 int I, qvl_bf16* __restrict__ out_bf16) {
    const int C = I / V;  // units per row
    const int S = gridDim.x * blockDim.x;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int sq = S / C, sr = S - sq * C;
    long long r = t / C;
    int c = t - (int)r * C;
    while (r < rows) {
        long long at[QVL_SWIGLU_UNROLL];  // the unit's first element in out, −1 past the last row
        float g[QVL_SWIGLU_UNROLL][V], u[QVL_SWIGLU_UNROLL][V];
#pragma unroll
        for (int k = 0; k < QVL_SWIGLU_UNROLL; ++k) {
            at[k] = -1;
            if (r < rows) {
                at[k] = r * I + (long long)c * V;
                const float* p = gu + at[k] + r * I;
                if constexpr (V == 4) {
                    const float4 a = qvl_swiglu_ld4(p), b = qvl_swiglu_ld4(p + I);
                    g[k][0] = a.x, g[k][1] = a.y, g[k][2] = a.z, g[k][3] = a.w;
                    u[k][0] = b.x, u[k][1] = b.y, u[k][2] = b.z, u[k][3] = b.w;
                } else {
                    g[k][0] = __ldg(p);
                    u[k][0] = __ldg(p + I);
                }
            }
            qvl_swiglu_step(r, c, sq, sr, C);
        }
#pragma unroll
        for (int k = 0; k < QVL_SWIGLU_UNROLL; ++k) {
            if (at[k] < 0) break;
            float o[V];
#pragma unroll
            for (int e = 0; e < V; ++e) o[e] = qvl_silu_mul(g[k][e], u[k][e]);
            if constexpr (V == 4) {
                *reinterpret_cast<float4*>(out + at[k]) = make_float4(o[0], o[1], o[2], o[3]);
                if (out_bf16) {
                    uint2 h;
                    h.x = qvl_pack_bf16(o[0], o[1]);
                    h.y = qvl_pack_bf16(o[2], o[3]);
                    *reinterpret_cast<uint2*>(out_bf16 + at[k]) = h;
                }
            } else {
                out[at[k]] = o[0];
                if (out_bf16) out_bf16[at[k]] = qvl_f32_to_bf16(o[0]);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(QVL_SWIGLU_THREADS, QVL_SWIGLU_BLOCKS_PER_SM)
qvl_swiglu(float* __restrict__ out, const float* __restrict__ gu, int rows, int I, qvl_bf16* __restrict__ out_bf16) {
    QVL_PDL_ENTER();
    if (rows <= 0 || I <= 0) return;
    const bool vec = (I & 3) == 0 && (((unsigned long long)out | (unsigned long long)gu) & 15) == 0 &&
                     ((unsigned long long)out_bf16 & 7) == 0;
    if (vec) {
        qvl_swiglu_units<4>(out, gu, rows, I, out_bf16);
    } else {
        qvl_swiglu_units<1>(out, gu, rows, I, out_bf16);
    }
}
QVL_REGISTER(qvl_swiglu)

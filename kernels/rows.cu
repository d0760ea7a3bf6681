// rows.cu — row movement and conversion.
//
//   qvl_gather_rows       out[r, :] = x[idx[r], :]                     (Gather: the logit rows)
//   qvl_scatter_add_rows  x[idx[r], :] += rows[r, :]                  (ScatterAdd: DeepStack)
//   qvl_f32_to_bf16       y[i] = bf16(x[i]), round to nearest even    (MatMul's bf16 operand)
//   qvl_spin              waits ns nanoseconds on the GPU's clock     (Hold: the profiler's gate)
//
// qvl_gather_rows also writes out_bf16[r, :] = bf16(out[r, :]) when out_bf16 is not null: the
// backend's bf16 copy of out, which the LM head's MatMul reads instead of converting. The
// conversion kernel is left for MatMul operands that no producer wrote a copy of.
//
// qvl_spin holds the stream (grid 1, block 32) so that the work queued behind it runs back to
// back once it ends: event pairs around each kernel then time the kernel, not the host's
// launch gaps.
//
// Launch: gather/scatter: grid (R), block 256, one block per row. f32_to_bf16: grid-stride,
// grid ≤ 8·SMs, block 256, 4 elements per thread per step when 16-byte aligned.
// Floor: bandwidth. Gather/scatter move R·H·4 bytes each way (scatter reads and writes x;
// gather writes R·H·2 more for the copy); the conversion reads 4 and writes 2 bytes per
// element: a 2048×6144 activation (the 2B MLP input at 2048 tokens) is 75 MB, 25 µs at
// 3 TB/s. Duplicate indices in ScatterAdd are summed with atomics (order unspecified); Gather
// has no such hazard.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
qvl_gather_rows(float* __restrict__ out, const float* __restrict__ x, const int* __restrict__ idx, int H, int xrows,
                unsigned* err, qvl_bf16* __restrict__ out_bf16) {
    QVL_PDL_ENTER();
    const int r = blockIdx.x;
    const int src = idx[r];
    float* d = out + (long long)r * H;
    qvl_bf16* db = out_bf16 ? out_bf16 + (long long)r * H : nullptr;
    const bool ok = src >= 0 && src < xrows;
    if (!ok && threadIdx.x == 0) qvl_raise(err, QVL_ERR_ROW_IDX);
    const float* s = x + (long long)(ok ? src : 0) * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) {
        const float v = ok ? s[i] : NAN;
        d[i] = v;
        if (db) db[i] = qvl_f32_to_bf16(v);
    }
}
QVL_REGISTER(qvl_gather_rows)

extern "C" __global__ void __launch_bounds__(256)
qvl_scatter_add_rows(float* __restrict__ x, const float* __restrict__ rows, const int* __restrict__ idx, int H,
                     int xrows, unsigned* err) {
    QVL_PDL_ENTER();
    const int r = blockIdx.x;
    const int dst = idx[r];
    if (dst < 0 || dst >= xrows) {
        if (threadIdx.x == 0) qvl_raise(err, QVL_ERR_ROW_IDX);
        return;
    }
    float* d = x + (long long)dst * H;
    const float* s = rows + (long long)r * H;
    for (int i = threadIdx.x; i < H; i += blockDim.x) atomicAdd(&d[i], s[i]);
}
QVL_REGISTER(qvl_scatter_add_rows)

extern "C" __global__ void __launch_bounds__(256)
qvl_f32_to_bf16(const float* __restrict__ x, qvl_bf16* __restrict__ y, long long n) {
    QVL_PDL_ENTER();
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool vec = ((reinterpret_cast<unsigned long long>(x) | reinterpret_cast<unsigned long long>(y)) & 15) == 0;
    if (vec) {
        const long long n4 = n / 4;
        for (long long i = t; i < n4; i += stride) {
            const float4 v = reinterpret_cast<const float4*>(x)[i];
            uint2 o;
            o.x = qvl_pack_bf16(v.x, v.y);
            o.y = qvl_pack_bf16(v.z, v.w);
            reinterpret_cast<uint2*>(y)[i] = o;
        }
        for (long long i = n4 * 4 + t; i < n; i += stride) y[i] = qvl_f32_to_bf16(x[i]);
        return;
    }
    for (long long i = t; i < n; i += stride) y[i] = qvl_f32_to_bf16(x[i]);
}
QVL_REGISTER(qvl_f32_to_bf16)

// One thread waits; in the emulation it busy-waits (no other thread waits on it).
extern "C" __global__ void __launch_bounds__(32) qvl_spin(long long ns) {
    QVL_PDL_ENTER();
    if (threadIdx.x != 0) return;
    const unsigned long long t0 = qvl_globaltimer_ns();
    while (qvl_globaltimer_ns() - t0 < (unsigned long long)ns) {
#if !defined(QVL_SIM)
        __nanosleep(1000);
#endif
    }
}
QVL_REGISTER(qvl_spin)

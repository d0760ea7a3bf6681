// common.cuh — helpers shared by qvl's kernels: bf16 bit conversions (exactly loader.F32ToBF16),
// warp and block reductions, the tensor-core mma.sync wrapper, the grid-wide barrier, and the
// device-side error bits that the Go backend turns into errors after a Sync.
//
// Every kernel file compiles two ways: with nvcc to PTX (the product), and with a C++ compiler
// against runtime/cuda/testdata/sim/qvl_sim.h (QVL_SIM defined), a CPU emulation of the few
// device features used here, so that the op harness can check the kernels' logic on machines
// without a GPU. Keep to the features qvl_sim.h emulates: no raw inline PTX outside this file,
// block sizes that are multiples of 32, full-warp shuffles only, and __syncthreads reached by
// every thread of a block.
#pragma once

#if defined(QVL_SIM)
#include "qvl_sim.h"
#else
// QVL_REGISTER(name) lists a kernel for the CPU emulation; on the device it is nothing.
#define QVL_REGISTER(name)
// QVL_DYN_SMEM declares a pointer of type T to the block's dynamic shared memory.
#define QVL_DYN_SMEM(T, name)                                  \
    extern __shared__ __align__(16) unsigned char qvl_dsmem_[]; \
    T* name = reinterpret_cast<T*>(qvl_dsmem_)
// QVL_SPIN_WAIT backs off inside a spin loop (the grid barrier).
#define QVL_SPIN_WAIT() __nanosleep(64)
#endif

// QVL_PDL_ENTER() is the first statement of every kernel: programmatic dependent launch (PDL,
// sm_90). Every kernel file is built twice (Makefile): kernels/X.ptx for compute_80, where the
// statement is nothing, and kernels/pdl/X.ptx for compute_90 with QVL_PDL defined, which the
// backend loads when QVL_CUDA_PDL=1 and launches with CUDA's programmatic stream serialization:
// a kernel's blocks may then be scheduled while the kernel before it on the stream still runs
// (its launch, block scheduling and prologue overlap the previous kernel's tail). There the
// statement first lets the next kernel launch (griddepcontrol.launch_dependents) and then waits
// until the previous kernel has completed and its writes are visible (griddepcontrol.wait):
// code above it may only read memory that no kernel writes (the GEMVs prefetch their weights
// there). Every kernel waits, so the ordering stays transitive along the stream. The "memory"
// clobbers keep the compiler from moving loads or stores across them (and from marking loads
// read-only, ld.global.nc: one reason the default build does not carry them).
#if defined(QVL_PDL) && !defined(QVL_SIM)
#define QVL_PDL_ENTER()                                                   \
    do {                                                                  \
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); \
        asm volatile("griddepcontrol.wait;" ::: "memory");              \
    } while (0)
#else
#define QVL_PDL_ENTER() ((void)0)
#endif

// qvl_prefetch_l2 asks L2 for the 128-byte line holding p (no register result, nothing waits
// for it); nothing in the emulation.
__device__ __forceinline__ void qvl_prefetch_l2(const void* p) {
#if defined(QVL_SIM)
    (void)p;
#else
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// qvl_globaltimer_ns reads the GPU's global nanosecond timer (the host's monotonic clock in the
// emulation).
__device__ __forceinline__ unsigned long long qvl_globaltimer_ns() {
#if defined(QVL_SIM)
    return qvlsim::now_ns();
#else
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
#endif
}

typedef unsigned short qvl_bf16;  // raw bfloat16 bits

// ── sm_80 primitives: cp.async (16 bytes, global → shared, zero-filled past src_bytes), its
// groups, ldmatrix.x4. Emulated by qvl_sim.h's block "sm_80 primitives" (which checks that
// every copy's group is waited for before its data is read).
#if !defined(QVL_SIM)
__device__ __forceinline__ void qvl_cp_async16(void* dst, const void* src, int src_bytes) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void qvl_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// qvl_cp_wait<N> lands every group of this thread but the newest N.
template <int N>
__device__ __forceinline__ void qvl_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// qvl_ldmatrix_x4: lanes 8j .. 8j+7 give the row addresses of matrix j; r[j] is this lane's part.
__device__ __forceinline__ void qvl_ldmatrix_x4(unsigned (&r)[4], const qvl_bf16* row_addr) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(row_addr);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s)
                 : "memory");
}
#else
__device__ __forceinline__ void qvl_cp_async16(void* dst, const void* src, int src_bytes) {
    qvlsim::cp_async16(dst, src, src_bytes);
}
__device__ __forceinline__ void qvl_cp_commit() { qvlsim::cp_async_commit(); }
template <int N>
__device__ __forceinline__ void qvl_cp_wait() {
    qvlsim::cp_async_wait(N);
}
__device__ __forceinline__ void qvl_ldmatrix_x4(unsigned (&r)[4], const qvl_bf16* row_addr) {
    qvlsim::ldmatrix_x4(r, row_addr);
}
#endif


// Device-side error codes. Kernels never read or write out of bounds on bad indices: they skip
// the element and raise a flag instead, err[code] = 1 (a plain store: the flag words live in
// mapped page-locked host memory, which the host reads after a stream synchronisation; the Go
// side names the codes in runtime/cuda/errors.go).
#define QVL_ERR_TOKEN 0        // EmbedProject: token id outside the table
#define QVL_ERR_VISUAL_IDX 1   // EmbedProject: visual_idx outside the step's rows
#define QVL_ERR_CUSTOM_IDX 2   // EmbedProject: custom_idx outside the step's rows
#define QVL_ERR_CUSTOM_SRC 3   // EmbedProject: custom_src outside [0, Ne*K)
#define QVL_ERR_SLOT 4         // QKV: cache slot outside the cache
#define QVL_ERR_ATTN_SEQ 5     // Attention: seq_start/ctx_len inconsistent with the block table
#define QVL_ERR_ATTN_BLOCK 6   // Attention: block table entry outside the cache
#define QVL_ERR_ROW_IDX 7      // Gather/ScatterAdd: row index outside x
#define QVL_ERR_SAMPLE 8       // TopK/Sample: bad per-row parameters
#define QVL_ERR_COUNT 16       // flag words reserved

#define QVL_FULL_MASK 0xffffffffu

// qvl_raise sets error flag code.
__device__ __forceinline__ void qvl_raise(unsigned* err, int code) { *((volatile unsigned*)(err + code)) = 1u; }

__device__ __forceinline__ int qvl_imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int qvl_imax(int a, int b) { return a > b ? a : b; }

__device__ __forceinline__ float qvl_bf16_to_f32(qvl_bf16 h) { return __uint_as_float(((unsigned)h) << 16); }

// qvl_silu_mul is SwiGLU of one element: silu(g) · u, the one expression every SwiGLU path
// computes (qvl_swiglu, qvl_swiglu_gemv, qvl_gemv_glu), so that they agree bit for bit.
__device__ __forceinline__ float qvl_silu_mul(float g, float u) { return g / (1.f + expf(-g)) * u; }

// qvl_f32_to_bf16 rounds to nearest, ties to even; NaN stays NaN (quieted), as loader.F32ToBF16.
__device__ __forceinline__ qvl_bf16 qvl_f32_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (qvl_bf16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (qvl_bf16)(u >> 16);
}

// qvl_pack_bf16 packs two floats as bf16 into one 32-bit word, lo in the low half (the element
// with the lower index, as mma.sync fragments expect).
__device__ __forceinline__ unsigned qvl_pack_bf16(float lo, float hi) {
    return (unsigned)qvl_f32_to_bf16(lo) | ((unsigned)qvl_f32_to_bf16(hi) << 16);
}

__device__ __forceinline__ unsigned qvl_pack_raw(qvl_bf16 lo, qvl_bf16 hi) {
    return (unsigned)lo | ((unsigned)hi << 16);
}

// qvl_load_weight reads element i of a weight stored as bf16 (isbf16) or f32.
__device__ __forceinline__ float qvl_load_weight(const void* w, int isbf16, long long i) {
    return isbf16 ? qvl_bf16_to_f32(reinterpret_cast<const qvl_bf16*>(w)[i]) : reinterpret_cast<const float*>(w)[i];
}

// qvl_unpack8 widens 8 bf16 held in a uint4 to floats.
__device__ __forceinline__ void qvl_unpack8(uint4 v, float* f) {
    f[0] = __uint_as_float(v.x << 16);
    f[1] = __uint_as_float(v.x & 0xffff0000u);
    f[2] = __uint_as_float(v.y << 16);
    f[3] = __uint_as_float(v.y & 0xffff0000u);
    f[4] = __uint_as_float(v.z << 16);
    f[5] = __uint_as_float(v.z & 0xffff0000u);
    f[6] = __uint_as_float(v.w << 16);
    f[7] = __uint_as_float(v.w & 0xffff0000u);
}

__device__ __forceinline__ float qvl_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QVL_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float qvl_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(QVL_FULL_MASK, v, o));
    return v;
}

// qvl_block_sum returns the sum of v over the block to every thread. red must hold 32 floats;
// every thread of the block must call it (it synchronises).
__device__ __forceinline__ float qvl_block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = qvl_warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.f;
    return qvl_warp_sum(v);
}

// qvl_mma_bf16 accumulates d += a·b for one m16n8k16 tile: a is the 16×16 row-major A fragment
// (4 words of 2 bf16), b the 16×8 column-major B fragment (2 words), d the 16×8 f32 C/D
// fragment. With g = lane/4 and t = lane%4: a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..],
// a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]; b[0] = B[2t..2t+1][g], b[1] = B[2t+8..][g];
// d[0..1] = D[g][2t..2t+1], d[2..3] = D[g+8][2t..2t+1].
#if !defined(QVL_SIM)
__device__ __forceinline__ void qvl_mma_bf16(float* d, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#else
__device__ __forceinline__ void qvl_mma_bf16(float* d, const unsigned* a, const unsigned* b) {
    qvlsim::mma_bf16_16816(d, a, b);
}
#endif

// qvl_grid_sync is a grid-wide barrier for persistent kernels whose blocks are all resident at
// once (the launch sizes the grid to co-residency). bar[0] counts arrivals and returns to 0
// after each barrier; bar[1] is a generation number. Must be zero before the first launch.
__device__ __forceinline__ void qvl_grid_sync(unsigned* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned* vb = bar;
        const unsigned gen = vb[1];
        __threadfence();
        const unsigned arrived = atomicAdd(&bar[0], 1u);
        if (arrived == gridDim.x - 1) {
            atomicExch(&bar[0], 0u);
            __threadfence();
            atomicAdd(&bar[1], 1u);
        } else {
            while (vb[1] == gen) QVL_SPIN_WAIT();
        }
        __threadfence();
    }
    __syncthreads();
}

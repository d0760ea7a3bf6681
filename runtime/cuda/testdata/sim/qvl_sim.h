// qvl_sim.h — a CPU emulation of the CUDA device features that qvl's kernels use, so that the
// op harness can run the kernels' logic on machines without a GPU.
//
// Each thread of a block is a fiber (ucontext) on one OS thread; blocks of a grid run one after
// another. A fiber runs until it reaches a synchronisation point (__syncthreads, a warp
// shuffle or vote, mma.sync, a spin wait) and then yields; a barrier completes when every live
// participant has arrived. That makes the emulation deterministic, makes function-local
// `static` variables (what __shared__ becomes) shared by the threads of the running block, and
// turns into errors what a GPU would hang on or silently get wrong: a __syncthreads that only
// some threads reach, a shuffle after some lanes exited, a deadlock. Atomics need no locking,
// since fibers only switch at synchronisation points.
//
// Races between threads of a block between two barriers, and order assumptions between
// blocks, show under the reverse and shuffle schedules (qvlsim_set_schedule, QVL_SIM_SCHEDULE
// in the Go tests): each fiber runs to its next barrier alone, in the schedule's thread order,
// so a read that the forward order happens to place after its write lands before it there.
// What it does not check: memory visibility between blocks (fences), and the real hardware's
// floating-point accumulation order inside mma.sync.
#pragma once

#include <cfloat>
#include <cmath>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <functional>

namespace qvlsim {

struct uint3_ {
    unsigned x, y, z;
};

extern uint3_* g_tid;
extern uint3_ g_bid, g_bdim, g_gdim;

// Synchronisation points (sim.cc).
void syncthreads();
void syncwarp();
void yield_spin();
// now_ns is the host's monotonic clock in nanoseconds (%globaltimer on the device; lead's block).
inline uint64_t now_ns() {
    return (uint64_t)std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch()).count();
}
uint64_t warp_exchange(uint64_t v, int src_lane);  // returns src_lane's value (src < 0: own)
unsigned warp_ballot(bool pred);
void mma_bf16_16816(float* d, const unsigned* a, const unsigned* b);
unsigned char* dyn_smem();
int lane_id();

using Invoker = std::function<void(void**)>;
struct Registrar {
    Registrar(const char* name, Invoker inv);
};

template <typename... A, std::size_t... I>
void invoke_params(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_reference_t<A>*>(p[I])...);
}

template <typename... A>
Invoker make_invoker(void (*f)(A...)) {
    return [f](void** p) { invoke_params(f, p, std::index_sequence_for<A...>{}); };
}

template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}

template <typename T>
inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

void check_mask(unsigned mask);

// ── sm_80 primitives of common.cuh (cp.async groups, ldmatrix) ──────────────────────────────
// cp_async16 is cp.async.cg.shared.global of 16 bytes with src_bytes of them read (the rest
// zero-filled; 0 reads nothing). Both addresses must be 16-byte aligned, as on the GPU. The
// source is read at issue; the shared-memory write lands, chosen per copy by a fixed hash of
// the copy's sequence number, either at issue (the earliest the hardware may write it: a
// missing barrier before a stage is refilled shows) or only when the issuing thread's
// cp_async_wait retires its group (the latest: a missing wait shows). cp_async_commit closes
// the thread's open group (possibly empty); cp_async_wait(n) lands every group but the newest n.
// A thread that exits with copies still pending is an error. The visibility rules are checked
// per 16-byte chunk (sim.cc, CpChunk): ldmatrix may read a chunk only after its copy was
// waited for and, for another thread than the issuer, a __syncthreads followed the wait; a
// cp.async may not target a chunk that another warp read since the last __syncthreads or
// that a pending copy targets.
void cp_async16(void* dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int n);
// ldmatrix_x4 is ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8j .. 8j+7 give the addresses
// of the 8 rows (16 bytes each, 16-byte aligned) of matrix j; every lane receives r[j] = the
// 32-bit word (lane%4) of row lane/4 of matrix j. Warp-synchronous.
void ldmatrix_x4(unsigned* r, const void* row_addr);
// ── end of embed.cu's primitives ──────────────────────────────────────────────────────────────

}  // namespace qvlsim

#define QVL_REGISTER(name) static qvlsim::Registrar qvl_reg_##name(#name, qvlsim::make_invoker(name));
#define QVL_DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(qvlsim::dyn_smem())
#define QVL_SPIN_WAIT() qvlsim::yield_spin()

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
// __shared__ variables are function-local statics, all placed in the section qvl_smem, which
// the scheduler poisons (0xff bytes) before every block as it does dynamic shared memory: CUDA
// leaves shared memory uninitialised, and a static would otherwise hand a block the values of
// the block before it, hiding a read before the block's own write.
#define __shared__ static __attribute__((section("qvl_smem")))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

#define threadIdx (*qvlsim::g_tid)
#define blockIdx (qvlsim::g_bid)
#define blockDim (qvlsim::g_bdim)
#define gridDim (qvlsim::g_gdim)

struct uint4 {
    unsigned x, y, z, w;
};
struct uint2 {
    unsigned x, y;
};
struct int4 {
    int x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};
struct float2 {
    float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

inline void __syncthreads() { qvlsim::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    qvlsim::check_mask(mask);
    qvlsim::syncwarp();
}
inline void __threadfence() { __asm__ __volatile__("" ::: "memory"); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    qvlsim::check_mask(mask);
    return qvlsim::from_bits<T>(qvlsim::warp_exchange(qvlsim::to_bits(v), qvlsim::lane_id() ^ (lane_mask & 31)));
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src) {
    qvlsim::check_mask(mask);
    return qvlsim::from_bits<T>(qvlsim::warp_exchange(qvlsim::to_bits(v), src & 31));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta) {
    qvlsim::check_mask(mask);
    int src = qvlsim::lane_id() - (int)delta;
    return qvlsim::from_bits<T>(qvlsim::warp_exchange(qvlsim::to_bits(v), src < 0 ? -1 : src));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
    qvlsim::check_mask(mask);
    int src = qvlsim::lane_id() + (int)delta;
    return qvlsim::from_bits<T>(qvlsim::warp_exchange(qvlsim::to_bits(v), src > 31 ? -1 : src));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    qvlsim::check_mask(mask);
    return qvlsim::warp_ballot(pred != 0);
}

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }

inline float __uint_as_float(unsigned u) { return qvlsim::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return (unsigned)qvlsim::to_bits(f); }
inline float __int_as_float(int i) { return qvlsim::from_bits<float>((uint32_t)i); }
inline int __float_as_int(float f) { return (int)(uint32_t)qvlsim::to_bits(f); }
inline long long __double_as_longlong(double d) { return (long long)qvlsim::to_bits(d); }
inline double __longlong_as_double(long long v) { return qvlsim::from_bits<double>((uint64_t)v); }

template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
template <typename T>
inline void __stcg(T* p, T v) { *p = v; }
// gemv.cu (qvl_gemv_m*): the evict-first load of the weights is a plain load here.
template <typename T>
inline T __ldcs(const T* p) { return *p; }

// Atomics: fibers switch only at synchronisation points, so plain read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
    T old = *p;
    if (v > old) *p = v;
    return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
    T old = *p;
    if (v < old) *p = v;
    return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <typename T>
inline T atomicOr(T* p, T v) {
    T old = *p;
    *p = old | v;
    return old;
}
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}

// ── sampling.cu's primitives ──────────────────────────────────────────────────────────────────
namespace qvlsim {
// check_align16 reports a 16-byte vector load (float4, uint4) from an address that is not
// 16-byte aligned, which faults on the GPU.
void check_align16(const void* p);
// syncthreads_count is bar.red.popc: a block barrier that returns to every thread the number of
// the block's threads that arrived with pred != 0.
int syncthreads_count(int pred);
}  // namespace qvlsim
inline int __syncthreads_count(int pred) { return qvlsim::syncthreads_count(pred); }
// ── end of sampling.cu's primitives ───────────────────────────────────────────────────────────

#ifndef INFINITY
#define INFINITY (__builtin_inff())
#endif
#ifndef NAN
#define NAN (__builtin_nanf(""))
#endif

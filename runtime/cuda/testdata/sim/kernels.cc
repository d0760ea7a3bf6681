// kernels.cc — compiles qvl's kernels (kernels/*.cu) for the CPU emulation of qvl_sim.h.
// The .cu files are included as they are; QVL_REGISTER lists each kernel for qvlsim_launch.
#include "activation.cu"
#include "attention.cu"
#include "embed.cu"
#include "fused.cu"  // qvl_norm_gemv, qvl_swiglu_gemv (norm / SwiGLU fused in front of qvl_gemv_m1)
#include "gemv.cu"  // qvl_gemv_m1..m8 (skinny bf16 GEMM for decode)
#include "norm.cu"
#include "qkv.cu"
#include "rows.cu"
#include "sampling.cu"
#include "skinny.cu"  // qvl_gemm_skinny_m16/32/64 (batched decode GEMMs on tensor cores, split K)

// Probes of TestSimScheduleFindsRaces: kernels with the races that the emulation's reverse and
// shuffle schedules must expose (qvlsim_set_schedule). They are not qvl kernels: the backend's
// kernel table does not list them. salt differs between launches, so values that a function-
// local static (__shared__) keeps from an earlier launch never pass for this launch's.

// A block's threads read a shared value that thread 0 stores, with no __syncthreads between.
__global__ void qvlsim_probe_smem_race(float* out, int salt) {
    __shared__ float s;
    if (threadIdx.x == 0) s = (float)(salt + (int)blockIdx.x);
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
QVL_REGISTER(qvlsim_probe_smem_race)

// Each odd lane reads the even lane below it, with no __syncwarp between (lanes assumed in step).
__global__ void qvlsim_probe_warp_race(float* out, int salt) {
    __shared__ float s[1024];
    s[threadIdx.x] = (float)(salt + (int)threadIdx.x);
    out[threadIdx.x] = s[threadIdx.x & ~1u];
}
QVL_REGISTER(qvlsim_probe_warp_race)

// Block b reads what block b−1 wrote to global memory (blocks assumed to run in order).
__global__ void qvlsim_probe_block_order(int* cells, int salt) {
    if (threadIdx.x != 0) return;
    if (blockIdx.x == 0) cells[0] = salt;
    else cells[blockIdx.x] = cells[blockIdx.x - 1] + 1;
}
QVL_REGISTER(qvlsim_probe_block_order)

// A block reads a shared value before any of its threads stores it (what an earlier block
// stored there must not show through: the scheduler poisons shared memory before each block).
__global__ void qvlsim_probe_smem_uninit(float* out, int salt) {
    __shared__ float s;
    const float seen = s;
    __syncthreads();
    if (threadIdx.x == 0) s = (float)(salt + (int)blockIdx.x);
    out[blockIdx.x * blockDim.x + threadIdx.x] = seen;
}
QVL_REGISTER(qvlsim_probe_smem_uninit)

// Test kernel for bindings/cuda's programmatic dependent launch (LaunchKernelEx):
// y[i] = mul * y[i] + 1 for i < n, after letting the next kernel launch and waiting for the
// previous one. A chain of launches composes exactly only if every kernel sees the one before
// it complete: a missing wait shows as a wrong count of applications.
//
// Regenerate the PTX (Debian 12 nvcc 11.8; griddepcontrol needs sm_90):
//
//	nvcc -arch=compute_90 -ptx -o pdl.ptx pdl.cu
extern "C" __global__ void pdl_step(float *y, unsigned int n, float mul) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = mul * y[i] + 1.0f;
    }
}

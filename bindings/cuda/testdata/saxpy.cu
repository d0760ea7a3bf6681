// Test kernel for bindings/cuda: y[i] = a*x[i] + y[i] for i < n.
// The parameters mix sizes (8-byte pointers, 4-byte float and uint) to check
// that cuda.Args packs each one where the kernel reads it.
//
// Regenerate the PTX (Debian 12 nvcc 11.8; the driver JIT-compiles it for
// sm_80 and newer, including the H100's sm_90):
//
//	nvcc -arch=compute_80 -ptx -o saxpy.ptx saxpy.cu
extern "C" __global__ void saxpy(float *y, const float *x, float a, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = a * x[i] + y[i];
    }
}

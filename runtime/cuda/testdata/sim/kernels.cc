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

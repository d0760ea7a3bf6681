//go:build cgo

// fast_avx2.c: the kernels compiled for AVX2 + FMA (256-bit vectors). The functions carry the
// target themselves, so the package builds with plain CFLAGS and runs them only where cpuid
// says they work.

#if defined(__x86_64__)

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,bmi2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi2")
#endif

#define VL 8
#define MR 6
#define KERN qvl_kern_avx2
#include "fast_kern.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif

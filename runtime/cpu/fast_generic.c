//go:build cgo

// fast_generic.c: the kernels compiled for the baseline instruction set of the target (SSE2 on
// x86-64, NEON on arm64, plain scalar code elsewhere): the fallback on every CPU.

#define VL 4
#define MR 4
#define KERN qvl_kern_generic
#include "fast_kern.h"

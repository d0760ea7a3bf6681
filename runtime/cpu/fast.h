// fast.h declares qvl's C kernels for the CPU backend (see fast_cgo.go and
// docs/decisions/cpu-kernels.md).
//
// Every op exists once as generic C (fast_kern.h) compiled at three instruction-set levels:
// portable C (any compiler/target), AVX2+FMA and AVX-512; the bf16 dot-product GEMM needs
// AVX512_BF16. qvl_detect picks the best level with cpuid; callers may force a lower one
// (the tests run every level they can).

#ifndef QVL_FAST_H
#define QVL_FAST_H

#include <stddef.h>
#include <stdint.h>

// Instruction-set levels.
enum {
	QVL_GENERIC = 0,    // portable C (vector extensions lowered to the baseline ISA)
	QVL_AVX2 = 1,       // AVX2 + FMA, 256-bit
	QVL_AVX512 = 2,     // AVX-512 F/BW/VL/DQ, 512-bit
	QVL_AVX512BF16 = 3, // AVX-512 plus vdpbf16ps
};

// Matmul precision modes.
enum {
	QVL_MM_EXACT = 0, // f32 FMA on bf16 weights widened exactly (the default)
	QVL_MM_BF16 = 1,  // activations rounded to bf16, vdpbf16ps (about 1e-3 relative error)
	QVL_MM_HILO = 2,  // activations split into two bf16 terms, two vdpbf16ps (about 2^-17)
};

// qvl_detect returns the best level this CPU and OS support.
int qvl_detect(void);

// A thread pool; the calling thread takes part in every job.
typedef struct qvl_pool qvl_pool;

// qvl_pool_new starts threads-1 workers (threads >= 2); NULL on failure.
qvl_pool *qvl_pool_new(int threads);
// qvl_pool_threads returns the number of threads that run a job (1 for a NULL pool).
int qvl_pool_threads(const qvl_pool *p);

// A task processes items [lo, hi) of a job.
typedef void (*qvl_task)(void *arg, int64_t lo, int64_t hi);

// qvl_parallel runs fn over [0, n) in chunks of grain items spread over the pool (and the caller).
// A NULL pool, or one that another thread is using, runs everything on the caller.
void qvl_parallel(qvl_pool *p, qvl_task fn, void *arg, int64_t n, int64_t grain);

// qvl_nop is an empty C function, used to measure the cost of a cgo call.
void qvl_nop(void);

// qvl_pool_overhead runs `reps` empty jobs of n items and returns nothing; used to time dispatch.
void qvl_pool_overhead(qvl_pool *p, int reps, int64_t n);

// Ops. w/norm weights are bf16 (wbf16 != 0) or f32. Every pointer must be valid for the sizes
// given; out buffers are fully written.

// out[n, m] = x[n, k] . w[m, k]^T. xbuf is scratch of qvl_matmul_scratch bytes.
void qvl_matmul(qvl_pool *p, int level, int mode, float *out, const float *x, const void *w, int wbf16,
                int64_t n, int64_t k, int64_t m, void *xbuf);
// qvl_matmul_scratch is the scratch qvl_matmul needs, in bytes.
size_t qvl_matmul_scratch(int level, int mode, int wbf16, int64_t n, int64_t k);

// RMSNorm of rows of width h; when delta is not NULL, x += delta first (in place).
void qvl_rmsnorm(qvl_pool *p, int level, float *out, float *x, const float *delta, const void *w, int wbf16,
                 int64_t rows, int64_t h, float eps);

// out[r, i] = silu(gu[r, i]) * gu[r, inter + i].
void qvl_swiglu(qvl_pool *p, int level, float *out, const float *gu, int64_t rows, int64_t inter);

// QKV finish: per-head RMSNorm + rotary (cs holds [n][cos hd/2, sin hd/2] in f64), q to qout,
// k and v to the paged cache at slots.
void qvl_qkv(qvl_pool *p, int level, const float *qkv, float *qout, const void *qnw, const void *knw, int wbf16q,
             int wbf16k, const double *cs, const int32_t *slots, float *kc, float *vc, int64_t n, int64_t nh,
             int64_t nkv, int64_t hd, float eps, int64_t bs);

// Causal paged attention (see ml.AttnArgs).
void qvl_attention(qvl_pool *p, int level, float *out, const float *q, const float *kc, const float *vc,
                   const int32_t *seq_start, const int32_t *ctx_len, const int32_t *tables, int64_t max_blocks,
                   int64_t nseq, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t bs);

// qvl_probe streams n bf16 values, widens them to f32 and takes their dot product with a small
// vector; the result only keeps the compiler from dropping the loop.
double qvl_probe(qvl_pool *p, int level, const uint16_t *data, int64_t n);

// qvl_peak runs the GEMM micro-kernel of the mode on cache-resident data for iters k-steps per
// thread and returns the number of floating-point operations done.
double qvl_peak(qvl_pool *p, int level, int mode, int64_t iters);

// Per-level kernel tables (fast_generic.c, fast_avx2.c, fast_avx512.c).
typedef struct {
	void (*gemv)(float *out, const float *x, const void *w, int wbf16, int64_t n, int64_t k, int64_t m,
	             int64_t j0, int64_t j1);
	// gemm_panels multiplies x packed by pack_x (row groups of mr) by rows j0..j1 of w (whole
	// panels of nr rows, but for the last one of w).
	void (*gemm_panels)(float *out, const float *xp, const void *w, int wbf16, int64_t n, int64_t k, int64_t m,
	                    int64_t j0, int64_t j1);
	void (*pack_x)(float *xp, const float *x, int64_t n, int64_t k, int64_t g0, int64_t g1);
	int64_t nr, mr; // GEMM panel width (rows of w) and height (rows of x)
	void (*rmsnorm_rows)(float *out, float *x, const float *delta, const void *w, int wbf16, int64_t r0,
	                     int64_t r1, int64_t h, float eps);
	void (*swiglu_rows)(float *out, const float *gu, int64_t r0, int64_t r1, int64_t inter);
	void (*qkv_rows)(const float *qkv, float *qout, const void *qnw, const void *knw, int wbf16q, int wbf16k,
	                 const double *cs, const int32_t *slots, float *kc, float *vc, int64_t r0, int64_t r1,
	                 int64_t nh, int64_t nkv, int64_t hd, float eps, int64_t bs);
	void (*attn_item)(float *out, const float *q, const float *kc, const float *vc, const int32_t *table,
	                  int64_t i0, int64_t i1, int64_t g0, int64_t g1, int64_t qlen, int64_t ctx, int64_t kvh,
	                  int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t bs, float *work);
	void (*attn_split)(float *part, const float *q, const float *kc, const float *vc, const int32_t *table,
	                   int64_t b0, int64_t b1, int64_t qlen, int64_t ctx, int64_t nh, int64_t nkv, int64_t hd,
	                   float scale, int64_t bs, float *work);
	int64_t lanes; // floats per vector
	double (*probe)(const uint16_t *data, int64_t n);
	double (*peak)(int64_t iters);
} qvl_kern;

extern const qvl_kern qvl_kern_generic;
#if defined(__x86_64__)
extern const qvl_kern qvl_kern_avx2;
extern const qvl_kern qvl_kern_avx512;
// bf16 dot-product GEMM (fast_avx512.c); split is 1 (bf16) or 2 (hi+lo). qvl_split_bf16 packs
// row groups g0..g1 of x as bf16 pairs: group g at xb + g*8*kp*split (uint32 units) holds
// [kp][8] pairs of the rounded values, then with split 2 [kp][8] pairs of the remainders.
void qvl_gemm_panels_dp(float *out, const uint32_t *xb, int64_t n, int64_t kp, const uint16_t *w, int64_t k,
                        int64_t m, int64_t j0, int64_t j1, int split);
void qvl_split_bf16(uint32_t *xb, const float *x, int64_t n, int64_t k, int split, int64_t g0, int64_t g1);
double qvl_peak_dp(int64_t iters, int split);
#endif

// Scratch per thread for the attention kernel: at least floats.
float *qvl_scratch(size_t floats);

#endif

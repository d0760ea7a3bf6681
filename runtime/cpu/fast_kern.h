// fast_kern.h: qvl's CPU kernels written once with GCC/Clang vector extensions and included by
// fast_generic.c, fast_avx2.c and fast_avx512.c, each of which sets
//
//	VL      floats per vector (4, 8 or 16)
//	MR      x rows of a GEMM micro-tile (its width is NR = 2*VL rows of w)
//	KERN    the name of the qvl_kern table to define
//
// and the target (instruction set) of the functions. Everything here is static; only the table
// escapes. Accumulation is f32 for dot products (bf16 weights are widened exactly) and f64 for the
// norms, as in the plain-Go reference.

#include <math.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <string.h>

#include "fast.h"

// Vector helpers are always inlined, so the ABI of passing wide vectors never applies.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define NR (2 * VL)
#define KC 256
#define INLINE static inline __attribute__((always_inline))
// UNROLL fully unrolls a loop over a small compile-time count, so that arrays of vectors
// indexed by it stay in registers.
#define UNROLL _Pragma("GCC unroll 16")

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef uint32_t vu __attribute__((vector_size(VL * 4)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));
typedef double vd __attribute__((vector_size(VL * 8)));
typedef float vf_u __attribute__((vector_size(VL * 4), aligned(4), __may_alias__));
typedef uint16_t vh_u __attribute__((vector_size(VL * 2), aligned(2), __may_alias__));

INLINE vf ld(const float *p) { return *(const vf_u *)p; }
INLINE void st(float *p, vf v) { *(vf_u *)p = v; }
#if VL == 16
INLINE vf splat(float s) { return (vf){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }
#elif VL == 8
INLINE vf splat(float s) { return (vf){s, s, s, s, s, s, s, s}; }
#else
INLINE vf splat(float s) { return (vf){s, s, s, s}; }
#endif
// ldh loads VL bf16 values and widens them (exactly) to f32.
#if VL == 16 && defined(__AVX512F__)
INLINE vf ldh(const uint16_t *p) {
	return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
}
#elif VL == 8 && defined(__AVX2__)
INLINE vf ldh(const uint16_t *p) {
	return (vf)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
}
#else
INLINE vf ldh(const uint16_t *p) {
	vh h = *(const vh_u *)p;
	vu u = __builtin_convertvector(h, vu);
	return (vf)(u << 16);
}
#endif
// ldw loads VL weights starting at element i of a bf16 (BF=1) or f32 (BF=0) array.
INLINE vf ldw(const void *w, const int BF, int64_t i) {
	return BF ? ldh((const uint16_t *)w + i) : ld((const float *)w + i);
}
INLINE float bf16f(uint16_t h) {
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}
INLINE float ldw1(const void *w, const int BF, int64_t i) {
	return BF ? bf16f(((const uint16_t *)w)[i]) : ((const float *)w)[i];
}
INLINE vf vsel(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
INLINE vf vmax(vf a, vf b) { return vsel(a > b, a, b); }

// hsum adds the lanes of v by halving (without taking v's address, which would keep an
// accumulator out of registers).
#if defined(__has_builtin) && __has_builtin(__builtin_shufflevector)
typedef float h4 __attribute__((vector_size(16)));
INLINE float hsum(vf v) {
#if VL == 16
	typedef float h8 __attribute__((vector_size(32)));
	h8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
	       __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
	h4 c = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
#elif VL == 8
	h4 c = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
	h4 c = v;
#endif
	return (c[0] + c[2]) + (c[1] + c[3]);
}
#else
INLINE float hsum(vf v) {
	float s = 0;
	for (int i = 0; i < VL; i++) {
		s += v[i];
	}
	return s;
}
#endif

INLINE float hmax(vf v) {
	float m = v[0];
	for (int i = 1; i < VL; i++) {
		m = v[i] > m ? v[i] : m;
	}
	return m;
}

// vexp is e^x with about 1 ulp of error (Cephes expf); x below -87.3 gives 0.
INLINE vf vexp(vf x) {
	const vf hi = splat(88.3762626647949f), lo = splat(-87.3365447504f);
	vi under = x < lo;
	x = vsel(x > hi, hi, x);
	x = vsel(under, lo, x);
	const vf magic = splat(12582912.0f); // 1.5 * 2^23: adding it rounds to an integer
	vf t = x * splat(1.44269504088896341f);
	vf n = (t + magic) - magic;
	vf r = x - n * splat(0.693359375f);
	r = r - n * splat(-2.12194440e-4f);
	vf p = splat(1.9875691500E-4f);
	p = p * r + splat(1.3981999507E-3f);
	p = p * r + splat(8.3334519073E-3f);
	p = p * r + splat(4.1665795894E-2f);
	p = p * r + splat(1.6666665459E-1f);
	p = p * r + splat(5.0000001201E-1f);
	vf y = p * (r * r) + r + splat(1.0f);
	vi ni = __builtin_convertvector(n, vi);
	y = (vf)((vi)y + (ni << 23));
	return vsel(under, splat(0), y);
}

// ---- matmul: GEMV for few rows of x ----------------------------------------------------------

// gemv_tile computes out[i, j..j+R) = x[i] . w[j..j+R) for the NX x rows i0..i0+NX. Streaming
// R weight rows side by side keeps enough memory requests in flight to run at the bandwidth of
// a plain streaming loop (the probe): one row at a time reaches about 85% of it on Zen 4.
INLINE void gemv_tile(float *out, const float *x, const void *w, const int BF, const int NX, const int R, int64_t k,
                      int64_t m, int64_t i0, int64_t j) {
	vf acc[8][4]; // R <= 8, NX <= 4; fixed sizes let GCC keep them in registers
	UNROLL for (int r = 0; r < R; r++) {
		UNROLL for (int i = 0; i < NX; i++) {
			acc[r][i] = splat(0);
		}
	}
	int64_t c = 0;
	for (; c + VL <= k; c += VL) {
		vf xv[4];
		UNROLL for (int i = 0; i < NX; i++) {
			xv[i] = ld(x + (i0 + i) * k + c);
		}
		UNROLL for (int r = 0; r < R; r++) {
			vf wv = ldw(w, BF, (j + r) * k + c);
			UNROLL for (int i = 0; i < NX; i++) {
				acc[r][i] += wv * xv[i];
			}
		}
	}
	UNROLL for (int r = 0; r < R; r++) {
		UNROLL for (int i = 0; i < NX; i++) {
			float s = hsum(acc[r][i]);
			for (int64_t cc = c; cc < k; cc++) {
				s += x[(i0 + i) * k + cc] * ldw1(w, BF, (j + r) * k + cc);
			}
			out[(i0 + i) * m + j + r] = s;
		}
	}
}

// Weight rows per GEMV tile for one or two x rows, and for three or four (register budget).
#if VL == 16
#define GR12 8
#define GR34 4
#else
#define GR12 4
#define GR34 2
#endif

INLINE void gemv_nx(float *out, const float *x, const void *w, const int BF, const int NX, const int R, int64_t k,
                    int64_t m, int64_t i0, int64_t j0, int64_t j1) {
	int64_t j = j0;
	for (; j + R <= j1; j += R) {
		gemv_tile(out, x, w, BF, NX, R, k, m, i0, j);
	}
	for (; j < j1; j++) {
		gemv_tile(out, x, w, BF, NX, 1, k, m, i0, j);
	}
}

// gemv_bf computes columns j0..j1 of out for all n (few) x rows, x rows in groups of up to 4.
INLINE void gemv_bf(float *out, const float *x, const void *w, const int BF, int64_t n, int64_t k, int64_t m,
                    int64_t j0, int64_t j1) {
	for (int64_t i = 0; i < n; i += 4) {
		switch (n - i) {
		case 1: gemv_nx(out, x, w, BF, 1, GR12, k, m, i, j0, j1); break;
		case 2: gemv_nx(out, x, w, BF, 2, GR12, k, m, i, j0, j1); break;
		case 3: gemv_nx(out, x, w, BF, 3, GR34, k, m, i, j0, j1); break;
		default: gemv_nx(out, x, w, BF, 4, GR34, k, m, i, j0, j1); break;
		}
	}
}

static void gemv(float *out, const float *x, const void *w, int wbf16, int64_t n, int64_t k, int64_t m,
                 int64_t j0, int64_t j1) {
	if (wbf16) {
		gemv_bf(out, x, w, 1, n, k, m, j0, j1);
	} else {
		gemv_bf(out, x, w, 0, n, k, m, j0, j1);
	}
}

// ---- matmul: GEMM panels for many rows of x --------------------------------------------------

// pack_panel widens rows j0..j0+nr (nr <= NR) of w, columns kc..kc+kb, into pk[c][r] (f32, NR
// wide, rows past nr zero).
#ifndef PACK_PANEL
INLINE void pack_panel_bf(float *pk, const void *w, const int BF, int64_t k, int64_t j0, int64_t nr, int64_t kc,
                          int64_t kb) {
	for (int64_t r = 0; r < NR; r++) {
		if (r < nr) {
			for (int64_t c = 0; c < kb; c++) {
				pk[c * NR + r] = ldw1(w, BF, (j0 + r) * k + kc + c);
			}
		} else {
			for (int64_t c = 0; c < kb; c++) {
				pk[c * NR + r] = 0;
			}
		}
	}
}
static void pack_panel(float *pk, const void *w, int wbf16, int64_t k, int64_t j0, int64_t nr, int64_t kc,
                       int64_t kb) {
	if (wbf16) {
		pack_panel_bf(pk, w, 1, k, j0, nr, kc, kb);
	} else {
		pack_panel_bf(pk, w, 0, k, j0, nr, kc, kb);
	}
}
#endif

// pack_x copies row groups g0..g1 of x into xp: group g holds rows g*MR ... g*MR+MR-1 as
// [k][MR] (rows past n are zero), so that the micro-kernel's broadcasts of one k step read one
// cache line instead of MR rows a page apart (which also share L1 sets).
static void pack_x(float *xp, const float *x, int64_t n, int64_t k, int64_t g0, int64_t g1) {
	for (int64_t g = g0; g < g1; g++) {
		float *dst = xp + g * MR * k;
		int64_t rows = n - g * MR < MR ? n - g * MR : MR;
		const float *src = x + g * MR * k;
		for (int64_t c = 0; c < k; c++) {
			UNROLL for (int r = 0; r < MR; r++) {
				dst[c * MR + r] = r < rows ? src[r * k + c] : 0;
			}
		}
	}
}

// ukernel accumulates the packed rows xp ([kb][MR], rows i0..i0+MRc) times the packed panel pk
// ([kb][NR]) into out[i0.., j0..j0+nr); first selects whether out starts from zero.
INLINE void ukernel(const int MRc, float *out, const float *xp, const float *pk, int64_t m, int64_t i0, int64_t j0,
                    int64_t nr, int64_t kb, int first) {
	vf a0[MR], a1[MR];
	float tile[MR][NR];
	if (first) {
		UNROLL for (int r = 0; r < MRc; r++) {
			a0[r] = splat(0);
			a1[r] = splat(0);
		}
	} else if (nr == NR) {
		UNROLL for (int r = 0; r < MRc; r++) {
			a0[r] = ld(out + (i0 + r) * m + j0);
			a1[r] = ld(out + (i0 + r) * m + j0 + VL);
		}
	} else {
		UNROLL for (int r = 0; r < MRc; r++) {
			for (int c = 0; c < NR; c++) {
				tile[r][c] = c < nr ? out[(i0 + r) * m + j0 + c] : 0;
			}
			a0[r] = ld(tile[r]);
			a1[r] = ld(tile[r] + VL);
		}
	}
	for (int64_t c = 0; c < kb; c++) {
		vf w0 = ld(pk + c * NR), w1 = ld(pk + c * NR + VL);
		UNROLL for (int r = 0; r < MRc; r++) {
			vf xb = splat(xp[c * MR + r]);
			a0[r] += xb * w0;
			a1[r] += xb * w1;
		}
	}
	if (nr == NR) {
		UNROLL for (int r = 0; r < MRc; r++) {
			st(out + (i0 + r) * m + j0, a0[r]);
			st(out + (i0 + r) * m + j0 + VL, a1[r]);
		}
	} else {
		UNROLL for (int r = 0; r < MRc; r++) {
			st(tile[r], a0[r]);
			st(tile[r] + VL, a1[r]);
			for (int c = 0; c < nr; c++) {
				out[(i0 + r) * m + j0 + c] = tile[r][c];
			}
		}
	}
}

static void ukernel_n(int mr, float *out, const float *xp, const float *pk, int64_t m, int64_t i0, int64_t j0,
                      int64_t nr, int64_t kb, int first) {
	switch (mr) {
#define UK(c)                                                                                        \
	case c: ukernel(c, out, xp, pk, m, i0, j0, nr, kb, first); break;
	UK(1) UK(2) UK(3) UK(4)
#if MR > 4
	UK(5) UK(6)
#endif
#if MR > 6
	UK(7) UK(8)
#endif
#undef UK
	}
}

static _Thread_local float pack_buf[KC * NR] __attribute__((aligned(64)));

// gemm_panels computes out[:, j0..j1) for all n rows of x, packed by pack_x into xp: for each
// k block, every panel of NR weight rows in [j0, j1) is packed and run against all of x. Going
// over the panels inside the k block keeps that block of x (n x KC) in L2 for all of them.
static void gemm_panels(float *out, const float *xp, const void *w, int wbf16, int64_t n, int64_t k, int64_t m,
                        int64_t j0, int64_t j1) {
	float *pk = pack_buf;
	for (int64_t kc = 0; kc < k; kc += KC) {
		int64_t kb = k - kc < KC ? k - kc : KC;
		for (int64_t j = j0; j < j1; j += NR) {
			int64_t nr = j1 - j < NR ? j1 - j : NR;
			pack_panel(pk, w, wbf16, k, j, nr, kc, kb);
			int64_t i = 0;
			for (; i + MR <= n; i += MR) {
				ukernel(MR, out, xp + i * k + kc * MR, pk, m, i, j, nr, kb, kc == 0);
			}
			if (i < n) {
				ukernel_n((int)(n - i), out, xp + i * k + kc * MR, pk, m, i, j, nr, kb, kc == 0);
			}
		}
	}
}

// peak runs the GEMM micro-kernel on cache-resident data: iters k-steps of an MR x NR tile.
static double peak(int64_t iters) {
	static _Thread_local float xs[MR * KC] __attribute__((aligned(64)));
	static _Thread_local float outs[MR * NR] __attribute__((aligned(64)));
	for (int i = 0; i < MR * KC; i++) {
		xs[i] = 1e-3f * (float)(i % 7);
	}
	for (int i = 0; i < KC * NR; i++) {
		pack_buf[i] = 1e-3f * (float)(i % 5);
	}
	int64_t reps = iters / KC;
	for (int64_t r = 0; r < reps; r++) {
		ukernel(MR, outs, xs, pack_buf, NR, 0, 0, NR, KC, r == 0);
	}
	return 2.0 * MR * NR * KC * (double)reps + outs[0] * 0;
}

// ---- norms and activations -------------------------------------------------------------------

// widen and narrow convert between f32 and f64 vectors (macros: a function taking a wide f64
// vector by value makes GCC print ABI notes).
#define widen(v) __builtin_convertvector((v), vd)
#define narrow(v) __builtin_convertvector((v), vf)

// sumsq is the sum of squares of x[0..h) in f64.
INLINE double sumsq(const float *x, int64_t h) {
	vd acc = {0};
	int64_t i = 0;
	for (; i + VL <= h; i += VL) {
		vd d = widen(ld(x + i));
		acc += d * d;
	}
	double ss = 0;
	for (int l = 0; l < VL; l++) {
		ss += acc[l];
	}
	for (; i < h; i++) {
		ss += (double)x[i] * (double)x[i];
	}
	return ss;
}

INLINE void rmsnorm_row(float *out, const float *x, const void *w, const int BF, int64_t h, float eps) {
	double inv = 1 / sqrt(sumsq(x, h) / (double)h + (double)eps);
	vd vinv = (vd){0} + inv;
	int64_t i = 0;
	for (; i + VL <= h; i += VL) {
		st(out + i, narrow(widen(ldw(w, BF, i)) * widen(ld(x + i)) * vinv));
	}
	for (; i < h; i++) {
		out[i] = (float)((double)ldw1(w, BF, i) * (double)x[i] * inv);
	}
}

static void rmsnorm_rows(float *out, float *x, const float *delta, const void *w, int wbf16, int64_t r0, int64_t r1,
                         int64_t h, float eps) {
	for (int64_t r = r0; r < r1; r++) {
		float *xr = x + r * h;
		if (delta != NULL) {
			const float *dr = delta + r * h;
			int64_t i = 0;
			for (; i + VL <= h; i += VL) {
				st(xr + i, ld(xr + i) + ld(dr + i));
			}
			for (; i < h; i++) {
				xr[i] += dr[i];
			}
		}
		if (wbf16) {
			rmsnorm_row(out + r * h, xr, w, 1, h, eps);
		} else {
			rmsnorm_row(out + r * h, xr, w, 0, h, eps);
		}
	}
}

static void swiglu_rows(float *out, const float *gu, int64_t r0, int64_t r1, int64_t inter) {
	for (int64_t r = r0; r < r1; r++) {
		const float *g = gu + 2 * r * inter, *u = g + inter;
		float *o = out + r * inter;
		int64_t i = 0;
		for (; i + VL <= inter; i += VL) {
			vf gv = ld(g + i);
			st(o + i, gv / (splat(1) + vexp(-gv)) * ld(u + i));
		}
		for (; i < inter; i++) {
			double gv = g[i];
			o[i] = (float)(gv / (1 + exp(-gv)) * (double)u[i]);
		}
	}
}

// ---- QKV: per-head RMSNorm + rotary + cache write --------------------------------------------

// head_norm_rope normalises head x (hd values) with weight w and rotates it by the angles whose
// cosines and sines are cs[0..hd/2) and cs[hd/2..hd), in f64 as the reference does.
INLINE void head_norm_rope(float *dst, const float *x, const void *w, const int BF, const double *cs, int64_t hd,
                           float eps) {
	double inv = 1 / sqrt(sumsq(x, hd) / (double)hd + (double)eps);
	vd vinv = (vd){0} + inv;
	int64_t half = hd / 2, i = 0;
	const double *cosv = cs, *sinv = cs + half;
	for (; i + VL <= half; i += VL) {
		vd a = widen(ld(x + i)) * vinv * widen(ldw(w, BF, i));
		vd b = widen(ld(x + i + half)) * vinv * widen(ldw(w, BF, i + half));
		vd c, s;
		memcpy(&c, cosv + i, sizeof c);
		memcpy(&s, sinv + i, sizeof s);
		st(dst + i, narrow(a * c - b * s));
		st(dst + i + half, narrow(b * c + a * s));
	}
	for (; i < half; i++) {
		double a = (double)x[i] * inv * (double)ldw1(w, BF, i);
		double b = (double)x[i + half] * inv * (double)ldw1(w, BF, i + half);
		double c = cosv[i], s = sinv[i];
		dst[i] = (float)(a * c - b * s);
		dst[i + half] = (float)(b * c + a * s);
	}
}

static void qkv_rows(const float *qkv, float *qout, const void *qnw, const void *knw, int wbf16q, int wbf16k,
                     const double *cs, const int32_t *slots, float *kc, float *vc, int64_t r0, int64_t r1, int64_t nh,
                     int64_t nkv, int64_t hd, float eps, int64_t bs) {
	int64_t width = (nh + 2 * nkv) * hd;
	for (int64_t t = r0; t < r1; t++) {
		const float *row = qkv + t * width;
		const double *c = cs + t * hd;
		for (int64_t h = 0; h < nh; h++) {
			if (wbf16q) {
				head_norm_rope(qout + (t * nh + h) * hd, row + h * hd, qnw, 1, c, hd, eps);
			} else {
				head_norm_rope(qout + (t * nh + h) * hd, row + h * hd, qnw, 0, c, hd, eps);
			}
		}
		int64_t slot = slots[t], block = slot / bs, off = slot % bs;
		for (int64_t h = 0; h < nkv; h++) {
			int64_t o = ((block * nkv + h) * bs + off) * hd;
			if (wbf16k) {
				head_norm_rope(kc + o, row + (nh + h) * hd, knw, 1, c, hd, eps);
			} else {
				head_norm_rope(kc + o, row + (nh + h) * hd, knw, 0, c, hd, eps);
			}
			memcpy(vc + o, row + (nh + nkv + h) * hd, (size_t)hd * sizeof(float));
		}
	}
}

// ---- paged attention -------------------------------------------------------------------------

// attn_block folds keys t0..t0+nk of one cache block into the running softmax state of one
// query vector: max *mx, sum *l, and unnormalised output o[hd]. HD > 0 fixes the head size at
// compile time (a multiple of VL); HD == 0 handles any hd.
INLINE void attn_block(const int HD, float *o, float *mx, float *l, const float *qv, const float *K, const float *V,
                       int64_t nk, int64_t hd_rt, float scale, float *sc) {
	const int64_t hd = HD > 0 ? HD : hd_rt;
	float m_old = *mx, m_new = m_old;
	for (int64_t t = 0; t < nk; t++) {
		const float *kt = K + t * hd;
		float s;
		if (HD > 0) {
			vf acc0 = splat(0), acc1 = splat(0);
			int64_t d = 0;
			for (; d + 2 * VL <= HD; d += 2 * VL) {
				acc0 += ld(qv + d) * ld(kt + d);
				acc1 += ld(qv + d + VL) * ld(kt + d + VL);
			}
			for (; d < HD; d += VL) {
				acc0 += ld(qv + d) * ld(kt + d);
			}
			s = hsum(acc0 + acc1);
		} else {
			vf acc = splat(0);
			int64_t d = 0;
			for (; d + VL <= hd; d += VL) {
				acc += ld(qv + d) * ld(kt + d);
			}
			s = hsum(acc);
			for (; d < hd; d++) {
				s += qv[d] * kt[d];
			}
		}
		s *= scale;
		sc[t] = s;
		m_new = s > m_new ? s : m_new;
	}
	// p_t = e^(s_t - m_new), in vectors of VL (the padding lanes become 0).
	float sum = 0;
	for (int64_t t = 0; t < nk; t += VL) {
		vf s = ld(sc + t) - splat(m_new);
		vi valid = (vi){0};
		for (int i = 0; i < VL; i++) {
			valid[i] = t + i < nk ? -1 : 0;
		}
		vf p = vsel(valid, vexp(s), splat(0));
		st(sc + t, p);
		sum += hsum(p);
	}
	float alpha = m_old == -INFINITY ? 0 : expf(m_old - m_new);
	*l = *l * alpha + sum;
	*mx = m_new;
	if (HD > 0) {
		vf acc[128 / VL]; // HD <= 128
		UNROLL for (int d = 0; d < HD / VL; d++) {
			acc[d] = ld(o + d * VL) * splat(alpha);
		}
		for (int64_t t = 0; t < nk; t++) {
			vf p = splat(sc[t]);
			const float *vt = V + t * HD;
			UNROLL for (int d = 0; d < HD / VL; d++) {
				acc[d] += p * ld(vt + d * VL);
			}
		}
		UNROLL for (int d = 0; d < HD / VL; d++) {
			st(o + d * VL, acc[d]);
		}
	} else {
		for (int64_t d = 0; d < hd; d++) {
			o[d] *= alpha;
		}
		for (int64_t t = 0; t < nk; t++) {
			float p = sc[t];
			const float *vt = V + t * hd;
			int64_t d = 0;
			for (; d + VL <= hd; d += VL) {
				st(o + d, ld(o + d) + splat(p) * ld(vt + d));
			}
			for (; d < hd; d++) {
				o[d] += p * vt[d];
			}
		}
	}
}

// attn_rows runs, one query vector at a time, query rows i0..i1 (indices within the sequence,
// whose rows start at q) of heads g0..g1 of the group that shares KV head kvh: the decode path,
// where a tile holds only a few query vectors. work: nq*(hd+2) + bs + VL floats.
INLINE void attn_rows(const int HD, float *out, const float *q, const float *kc, const float *vc,
                      const int32_t *table, int64_t i0, int64_t i1, int64_t g0, int64_t g1, int64_t qlen, int64_t ctx,
                      int64_t kvh, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t bs, float *work) {
	int64_t group = nh / nkv, ng = g1 - g0, nq = (i1 - i0) * ng;
	float *o = work, *mx = o + nq * hd, *l = mx + nq, *sc = l + nq;
	for (int64_t j = 0; j < nq * hd; j++) {
		o[j] = 0;
	}
	for (int64_t j = 0; j < nq; j++) {
		mx[j] = -INFINITY;
		l[j] = 0;
	}
	int64_t last = ctx - qlen + i1 - 1; // position of the tile's last row
	for (int64_t b = 0; b * bs <= last; b++) {
		int64_t t0 = b * bs;
		int64_t base = ((int64_t)table[b] * nkv + kvh) * bs * hd;
		const float *K = kc + base, *V = vc + base;
		if ((b + 1) * bs <= last) {
			// The cache is cold in decode (the weights stream through L3 between layers), and the
			// next block is elsewhere in memory: ask for it while this one is computed.
			int64_t next = ((int64_t)table[b + 1] * nkv + kvh) * bs * hd;
			for (int64_t o = 0; o < bs * hd; o += 16) {
				__builtin_prefetch(kc + next + o);
				__builtin_prefetch(vc + next + o);
			}
		}
		for (int64_t i = i0; i < i1; i++) {
			int64_t nk = ctx - qlen + i - t0 + 1;
			if (nk <= 0) {
				continue;
			}
			if (nk > bs) {
				nk = bs;
			}
			for (int64_t g = g0; g < g1; g++) {
				int64_t j = (i - i0) * ng + g - g0, h = kvh * group + g;
				attn_block(HD, o + j * hd, mx + j, l + j, q + (i * nh + h) * hd, K, V, nk, hd, scale, sc);
			}
		}
	}
	for (int64_t i = i0; i < i1; i++) {
		for (int64_t g = g0; g < g1; g++) {
			int64_t j = (i - i0) * ng + g - g0, h = kvh * group + g;
			float inv = 1 / l[j];
			float *dst = out + (i * nh + h) * hd;
			for (int64_t d = 0; d < hd; d++) {
				dst[d] = o[j * hd + d] * inv;
			}
		}
	}
}

// KNMAX keys are scored at once by attn_chunk: one accumulator vector each.
#if VL == 16
#define KNMAX 16
#else
#define KNMAX 8
#endif

// attn_chunk folds KN keys (rows of K and V, hd apart) into the running softmax state of VL
// query vectors held across the lanes: qt[d] (scaled queries), ot[d] (unnormalised outputs),
// m and l. Lanes whose position qpos is below a key's position kpos0+t are masked.
INLINE void attn_chunk(const int KN, const int64_t hd, const float *qt, float *ot, vf *m, vf *l, vi qpos, int32_t kpos0,
                       const float *K, const float *V) {
	vf s[KNMAX];
	UNROLL for (int t = 0; t < KN; t++) {
		s[t] = splat(0);
	}
	for (int64_t d = 0; d < hd; d++) {
		vf qv = ld(qt + d * VL);
		UNROLL for (int t = 0; t < KN; t++) {
			s[t] += splat(K[t * hd + d]) * qv;
		}
	}
	vf mx = *m;
	UNROLL for (int t = 0; t < KN; t++) {
		vi masked = qpos < ((vi){0} + (kpos0 + t));
		s[t] = vsel(masked, splat(-INFINITY), s[t]);
		mx = vmax(mx, s[t]);
	}
	vf alpha = vexp(*m - mx);
	vf sum = splat(0);
	UNROLL for (int t = 0; t < KN; t++) {
		s[t] = vexp(s[t] - mx);
		sum += s[t];
	}
	*l = *l * alpha + sum;
	*m = mx;
	for (int64_t d = 0; d < hd; d++) {
		vf acc = ld(ot + d * VL) * alpha;
		UNROLL for (int t = 0; t < KN; t++) {
			acc += s[t] * splat(V[t * hd + d]);
		}
		st(ot + d * VL, acc);
	}
}

// attn_lanes runs up to VL query vectors (rows i0..i1 x heads g0..g1) with one vector lane each,
// so that scoring a key and accumulating its value are FMAs over the lanes: the prefill path.
// work: 2*hd*VL floats.
INLINE void attn_lanes(const int HD, float *out, const float *q, const float *kc, const float *vc,
                       const int32_t *table, int64_t i0, int64_t i1, int64_t g0, int64_t g1, int64_t qlen, int64_t ctx,
                       int64_t kvh, int64_t nh, int64_t nkv, int64_t hd_rt, float scale, int64_t bs, float *work) {
	const int64_t hd = HD > 0 ? HD : hd_rt;
	int64_t group = nh / nkv, ng = g1 - g0, nq = (i1 - i0) * ng;
	float *qt = work, *ot = qt + hd * VL;
	vi qpos;
	for (int64_t j = 0; j < VL; j++) {
		if (j < nq) {
			int64_t i = i0 + j / ng, h = kvh * group + g0 + j % ng;
			qpos[j] = (int32_t)(ctx - qlen + i);
			const float *qv = q + (i * nh + h) * hd;
			for (int64_t d = 0; d < hd; d++) {
				qt[d * VL + j] = qv[d] * scale;
			}
		} else {
			qpos[j] = INT32_MAX;
			for (int64_t d = 0; d < hd; d++) {
				qt[d * VL + j] = 0;
			}
		}
	}
	for (int64_t d = 0; d < hd * VL; d++) {
		ot[d] = 0;
	}
	vf m = splat(-INFINITY), l = splat(0);
	int64_t last = ctx - qlen + i1 - 1;
	for (int64_t b = 0; b * bs <= last; b++) {
		int64_t t0 = b * bs, nk = last - t0 + 1 < bs ? last - t0 + 1 : bs;
		int64_t base = ((int64_t)table[b] * nkv + kvh) * bs * hd;
		const float *K = kc + base, *V = vc + base;
		for (int64_t t = 0; t < nk;) {
			int64_t rem = nk - t;
			int32_t kp = (int32_t)(t0 + t);
			if (rem >= KNMAX) {
				attn_chunk(KNMAX, hd, qt, ot, &m, &l, qpos, kp, K + t * hd, V + t * hd);
				t += KNMAX;
			} else if (rem >= 4) {
				attn_chunk(4, hd, qt, ot, &m, &l, qpos, kp, K + t * hd, V + t * hd);
				t += 4;
			} else {
				attn_chunk(1, hd, qt, ot, &m, &l, qpos, kp, K + t * hd, V + t * hd);
				t += 1;
			}
		}
	}
	for (int64_t j = 0; j < nq; j++) {
		int64_t i = i0 + j / ng, h = kvh * group + g0 + j % ng;
		float inv = 1 / l[j];
		float *dst = out + (i * nh + h) * hd;
		for (int64_t d = 0; d < hd; d++) {
			dst[d] = ot[d * VL + j] * inv;
		}
	}
}

// attn_split folds cache blocks b0..b1 of one sequence into partial softmax states of all its
// (few) query rows and all heads: the decode path. Splitting the context rather than the heads
// lets each thread stream whole blocks (every KV head of a block is contiguous) and keeps both
// threads busy at any head count. part[(i*nh + h)*(hd+2) ...] receives o[hd], then m and l.
INLINE void attn_split_t(const int HD, float *part, const float *q, const float *kc, const float *vc,
                         const int32_t *table, int64_t b0, int64_t b1, int64_t qlen, int64_t ctx, int64_t nh,
                         int64_t nkv, int64_t hd, float scale, int64_t bs, float *work) {
	int64_t group = nh / nkv, nq = qlen * nh, sw = hd + 2;
	for (int64_t j = 0; j < nq; j++) {
		float *st = part + j * sw;
		for (int64_t d = 0; d < hd; d++) {
			st[d] = 0;
		}
		st[hd] = -INFINITY;
		st[hd + 1] = 0;
	}
	int64_t blk = nkv * bs * hd; // floats of one block across KV heads
	for (int64_t b = b0; b < b1; b++) {
		int64_t t0 = b * bs;
		const float *Kb = kc + (int64_t)table[b] * blk, *Vb = vc + (int64_t)table[b] * blk;
		if (b + 1 < b1) {
			// Start the next block, which lies elsewhere in memory, before the prefetchers find it.
			const float *nk = kc + (int64_t)table[b + 1] * blk, *nv = vc + (int64_t)table[b + 1] * blk;
			for (int64_t o = 0; o < 512 && o < blk; o += 16) {
				__builtin_prefetch(nk + o);
				__builtin_prefetch(nv + o);
			}
		}
		for (int64_t kvh = 0; kvh < nkv; kvh++) {
			const float *K = Kb + kvh * bs * hd, *V = Vb + kvh * bs * hd;
			for (int64_t i = 0; i < qlen; i++) {
				int64_t nk = ctx - qlen + i - t0 + 1;
				if (nk <= 0) {
					continue;
				}
				if (nk > bs) {
					nk = bs;
				}
				for (int64_t g = 0; g < group; g++) {
					int64_t h = kvh * group + g;
					float *st = part + (i * nh + h) * sw;
					attn_block(HD, st, st + hd, st + hd + 1, q + (i * nh + h) * hd, K, V, nk, hd, scale, work);
				}
			}
		}
	}
}

static void attn_split(float *part, const float *q, const float *kc, const float *vc, const int32_t *table, int64_t b0,
                       int64_t b1, int64_t qlen, int64_t ctx, int64_t nh, int64_t nkv, int64_t hd, float scale,
                       int64_t bs, float *work) {
	switch (hd) {
	case 64:
		attn_split_t(64, part, q, kc, vc, table, b0, b1, qlen, ctx, nh, nkv, hd, scale, bs, work);
		break;
	case 128:
		attn_split_t(128, part, q, kc, vc, table, b0, b1, qlen, ctx, nh, nkv, hd, scale, bs, work);
		break;
	default:
		attn_split_t(0, part, q, kc, vc, table, b0, b1, qlen, ctx, nh, nkv, hd, scale, bs, work);
	}
}

// attn_item runs one work item: q and out point at the sequence's first row. Tiles with at least
// VL/2 query vectors take the lane path, smaller ones (decode) the per-query path.
static void attn_item(float *out, const float *q, const float *kc, const float *vc, const int32_t *table, int64_t i0,
                      int64_t i1, int64_t g0, int64_t g1, int64_t qlen, int64_t ctx, int64_t kvh, int64_t nh,
                      int64_t nkv, int64_t hd, float scale, int64_t bs, float *work) {
	if ((i1 - i0) * (g1 - g0) >= VL / 2) {
		switch (hd) {
		case 64:
			attn_lanes(64, out, q, kc, vc, table, i0, i1, g0, g1, qlen, ctx, kvh, nh, nkv, hd, scale, bs, work);
			break;
		case 128:
			attn_lanes(128, out, q, kc, vc, table, i0, i1, g0, g1, qlen, ctx, kvh, nh, nkv, hd, scale, bs, work);
			break;
		default:
			attn_lanes(0, out, q, kc, vc, table, i0, i1, g0, g1, qlen, ctx, kvh, nh, nkv, hd, scale, bs, work);
		}
		return;
	}
	switch (hd) {
	case 64:
		attn_rows(64, out, q, kc, vc, table, i0, i1, g0, g1, qlen, ctx, kvh, nh, nkv, hd, scale, bs, work);
		break;
	case 128:
		attn_rows(128, out, q, kc, vc, table, i0, i1, g0, g1, qlen, ctx, kvh, nh, nkv, hd, scale, bs, work);
		break;
	default:
		attn_rows(0, out, q, kc, vc, table, i0, i1, g0, g1, qlen, ctx, kvh, nh, nkv, hd, scale, bs, work);
	}
}

// ---- bandwidth probe -------------------------------------------------------------------------

static double probe(const uint16_t *data, int64_t n) {
	float xs[1024] __attribute__((aligned(64)));
	for (int i = 0; i < 1024; i++) {
		xs[i] = 1.0f / (float)(i + 1);
	}
	vf a0 = splat(0), a1 = splat(0), a2 = splat(0), a3 = splat(0);
	int64_t i = 0;
	for (; i + 4 * VL <= n; i += 4 * VL) {
		const float *xv = xs + (i & 1023 & ~(int64_t)(4 * VL - 1));
		a0 += ldh(data + i) * ld(xv);
		a1 += ldh(data + i + VL) * ld(xv + VL);
		a2 += ldh(data + i + 2 * VL) * ld(xv + 2 * VL);
		a3 += ldh(data + i + 3 * VL) * ld(xv + 3 * VL);
	}
	double s = hsum((a0 + a1) + (a2 + a3));
	for (; i < n; i++) {
		s += bf16f(data[i]);
	}
	return s;
}

const qvl_kern KERN = {
	.gemv = gemv,
	.gemm_panels = gemm_panels,
	.pack_x = pack_x,
	.nr = NR,
	.mr = MR,
	.rmsnorm_rows = rmsnorm_rows,
	.swiglu_rows = swiglu_rows,
	.qkv_rows = qkv_rows,
	.attn_item = attn_item,
	.attn_split = attn_split,
	.lanes = VL,
	.probe = probe,
	.peak = peak,
};

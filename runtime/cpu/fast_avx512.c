//go:build cgo

// fast_avx512.c: the kernels compiled for AVX-512 (F, BW, VL, DQ), plus the GEMM that uses
// AVX512_BF16's vdpbf16ps. Functions carry their target themselves (no special CFLAGS); the
// dispatcher runs them only where cpuid and the OS allow.

#if defined(__x86_64__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "fast.h"

#define T512 "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi2")
#endif

// tr16 transposes a 16x16 block of 32-bit values held in r[0..15].
static inline __attribute__((always_inline)) void tr16(__m512 r[16]) {
	__m512 t[16];
	for (int i = 0; i < 8; i++) {
		t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
		t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
	}
	__m512 u[16];
	for (int j = 0; j < 4; j++) {
		__m512d a = _mm512_castps_pd(t[4 * j]), b = _mm512_castps_pd(t[4 * j + 1]);
		__m512d c = _mm512_castps_pd(t[4 * j + 2]), d = _mm512_castps_pd(t[4 * j + 3]);
		u[4 * j + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
		u[4 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
		u[4 * j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
		u[4 * j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
	}
	for (int c = 0; c < 4; c++) {
		__m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
		__m512 v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
		__m512 w0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
		__m512 w1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
		r[c] = _mm512_shuffle_f32x4(v0, w0, 0x88);
		r[8 + c] = _mm512_shuffle_f32x4(v0, w0, 0xdd);
		r[4 + c] = _mm512_shuffle_f32x4(v1, w1, 0x88);
		r[12 + c] = _mm512_shuffle_f32x4(v1, w1, 0xdd);
	}
}

static inline __attribute__((always_inline)) float bf16_to_f32(uint16_t h) {
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

// pack_panel widens rows j0..j0+nr of w (columns kc..kc+kb) into pk[c][32], 16x16 blocks at a time.
#define PACK_PANEL
static void pack_panel(float *pk, const void *w, int wbf16, int64_t k, int64_t j0, int64_t nr, int64_t kc,
                       int64_t kb) {
	const uint16_t *wh = w;
	const float *wf = w;
	for (int64_t rb = 0; rb < 32; rb += 16) {
		int64_t c = 0;
		for (; c + 16 <= kb; c += 16) {
			__m512 r[16];
			for (int i = 0; i < 16; i++) {
				int64_t row = j0 + rb + i;
				if (rb + i >= nr) {
					r[i] = _mm512_setzero_ps();
				} else if (wbf16) {
					__m256i h = _mm256_loadu_si256((const __m256i *)(wh + row * k + kc + c));
					r[i] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
				} else {
					r[i] = _mm512_loadu_ps(wf + row * k + kc + c);
				}
			}
			tr16(r);
			for (int i = 0; i < 16; i++) {
				_mm512_store_ps(pk + (c + i) * 32 + rb, r[i]);
			}
		}
		for (; c < kb; c++) {
			for (int i = 0; i < 16; i++) {
				int64_t row = j0 + rb + i;
				float v = 0;
				if (rb + i < nr) {
					v = wbf16 ? bf16_to_f32(wh[row * k + kc + c]) : wf[row * k + kc + c];
				}
				pk[c * 32 + rb + i] = v;
			}
		}
	}
}

#define VL 16
#define MR 8
#define KERN qvl_kern_avx512
#include "fast_kern.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ---- GEMM with vdpbf16ps ---------------------------------------------------------------------

#define TBF T512 ",avx512bf16"
#define DPINLINE static inline __attribute__((always_inline, target(TBF)))
#define DPFUNC __attribute__((target(TBF)))

#define KCP 512 // pairs of k per panel block (1024 values of k; the packed panel is 64 KB)

// pack_pairs copies rows j0..j0+nr of bf16 w, pairs p0..p0+pb (values 2*p0 ...), into
// pk[p][32] as 32-bit pairs; a pair past k gets a zero partner.
DPINLINE void pack_pairs(uint32_t *pk, const uint16_t *w, int64_t k, int64_t j0, int64_t nr, int64_t p0, int64_t pb) {
	int64_t full = k / 2; // pairs with both values inside k
	for (int64_t rb = 0; rb < 32; rb += 16) {
		int64_t p = 0;
		for (; p + 16 <= pb && p0 + p + 16 <= full; p += 16) {
			__m512 r[16];
			for (int i = 0; i < 16; i++) {
				if (rb + i >= nr) {
					r[i] = _mm512_setzero_ps();
				} else {
					r[i] = _mm512_loadu_ps((const float *)(w + (j0 + rb + i) * k + 2 * (p0 + p)));
				}
			}
			tr16(r);
			for (int i = 0; i < 16; i++) {
				_mm512_store_ps((float *)(pk + (p + i) * 32 + rb), r[i]);
			}
		}
		for (; p < pb; p++) {
			for (int i = 0; i < 16; i++) {
				uint32_t v = 0;
				if (rb + i < nr) {
					const uint16_t *row = w + (j0 + rb + i) * k;
					int64_t c = 2 * (p0 + p);
					v = row[c];
					if (c + 1 < k) {
						v |= (uint32_t)row[c + 1] << 16;
					}
				}
				pk[p * 32 + rb + i] = v;
			}
		}
	}
}

// ukr_dp accumulates MRc rows of packed bf16 pairs xg ([pb][8] from pair p0; with SPLIT 2 the
// low parts follow lo pairs later) against a packed panel pk into out[i0.., j0..j0+nr).
DPINLINE void ukr_dp(const int MRc, const int SPLIT, float *out, const uint32_t *xg, int64_t lo, const uint32_t *pk,
                     int64_t m, int64_t i0, int64_t j0, int64_t nr, int64_t pb, int first) {
	__m512 a0[8], a1[8];
	float tile[8][32] __attribute__((aligned(64)));
	_Pragma("GCC unroll 8") for (int r = 0; r < MRc; r++) {
		if (first) {
			a0[r] = _mm512_setzero_ps();
			a1[r] = _mm512_setzero_ps();
		} else if (nr == 32) {
			a0[r] = _mm512_loadu_ps(out + (i0 + r) * m + j0);
			a1[r] = _mm512_loadu_ps(out + (i0 + r) * m + j0 + 16);
		} else {
			for (int c = 0; c < 32; c++) {
				tile[r][c] = c < nr ? out[(i0 + r) * m + j0 + c] : 0;
			}
			a0[r] = _mm512_load_ps(tile[r]);
			a1[r] = _mm512_load_ps(tile[r] + 16);
		}
	}
	for (int64_t p = 0; p < pb; p++) {
		__m512bh w0 = (__m512bh)_mm512_load_si512((const void *)(pk + p * 32));
		__m512bh w1 = (__m512bh)_mm512_load_si512((const void *)(pk + p * 32 + 16));
		_Pragma("GCC unroll 8") for (int r = 0; r < MRc; r++) {
			__m512bh xv = (__m512bh)_mm512_set1_epi32((int)xg[p * 8 + r]);
			a0[r] = _mm512_dpbf16_ps(a0[r], xv, w0);
			a1[r] = _mm512_dpbf16_ps(a1[r], xv, w1);
			if (SPLIT == 2) {
				__m512bh xl = (__m512bh)_mm512_set1_epi32((int)xg[lo + p * 8 + r]);
				a0[r] = _mm512_dpbf16_ps(a0[r], xl, w0);
				a1[r] = _mm512_dpbf16_ps(a1[r], xl, w1);
			}
		}
	}
	_Pragma("GCC unroll 8") for (int r = 0; r < MRc; r++) {
		if (nr == 32) {
			_mm512_storeu_ps(out + (i0 + r) * m + j0, a0[r]);
			_mm512_storeu_ps(out + (i0 + r) * m + j0 + 16, a1[r]);
		} else {
			_mm512_store_ps(tile[r], a0[r]);
			_mm512_store_ps(tile[r] + 16, a1[r]);
			for (int c = 0; c < nr; c++) {
				out[(i0 + r) * m + j0 + c] = tile[r][c];
			}
		}
	}
}

DPINLINE void ukr_dp_any(const int SPLIT, int mr, float *out, const uint32_t *xg, int64_t lo, const uint32_t *pk,
                         int64_t m, int64_t i0, int64_t j0, int64_t nr, int64_t pb, int first) {
	switch (mr) {
#define UK(c)                                                                                        \
	case c: ukr_dp(c, SPLIT, out, xg, lo, pk, m, i0, j0, nr, pb, first); break;
		UK(1) UK(2) UK(3) UK(4) UK(5) UK(6) UK(7) UK(8)
#undef UK
	}
}

static _Thread_local uint32_t pack_dp[KCP * 32] __attribute__((aligned(64)));

// gemm_panels_dp computes out[:, j0..j1) from x packed by qvl_split_bf16, k block outside the
// panels (see gemm_panels in fast_kern.h).
DPINLINE void gemm_panels_dp(const int SPLIT, float *out, const uint32_t *xb, int64_t n, int64_t kp,
                             const uint16_t *w, int64_t k, int64_t m, int64_t j0, int64_t j1) {
	int64_t gs = SPLIT * 8 * kp; // uint32 per row group
	for (int64_t p0 = 0; p0 < kp; p0 += KCP) {
		int64_t pb = kp - p0 < KCP ? kp - p0 : KCP;
		for (int64_t j = j0; j < j1; j += 32) {
			int64_t nr = j1 - j < 32 ? j1 - j : 32;
			pack_pairs(pack_dp, w, k, j, nr, p0, pb);
			int64_t i = 0;
			for (; i + 8 <= n; i += 8) {
				ukr_dp(8, SPLIT, out, xb + (i / 8) * gs + p0 * 8, 8 * kp, pack_dp, m, i, j, nr, pb, p0 == 0);
			}
			if (i < n) {
				ukr_dp_any(SPLIT, (int)(n - i), out, xb + (i / 8) * gs + p0 * 8, 8 * kp, pack_dp, m, i, j, nr, pb,
				           p0 == 0);
			}
		}
	}
}

DPFUNC void qvl_gemm_panels_dp(float *out, const uint32_t *xb, int64_t n, int64_t kp, const uint16_t *w, int64_t k,
                               int64_t m, int64_t j0, int64_t j1, int split) {
	if (split == 2) {
		gemm_panels_dp(2, out, xb, n, kp, w, k, m, j0, j1);
	} else {
		gemm_panels_dp(1, out, xb, n, kp, w, k, m, j0, j1);
	}
}

static inline uint16_t rne_bf16(float f) {
	uint32_t u;
	memcpy(&u, &f, 4);
	return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

#define SPLIT_CHUNK 256 // pairs converted per row before interleaving

DPFUNC void qvl_split_bf16(uint32_t *xb, const float *x, int64_t n, int64_t k, int split, int64_t g0, int64_t g1) {
	int64_t kp = (k + 1) / 2;
	uint16_t hi[8][2 * SPLIT_CHUNK] __attribute__((aligned(64)));
	uint16_t lo[8][2 * SPLIT_CHUNK] __attribute__((aligned(64)));
	for (int64_t g = g0; g < g1; g++) {
		uint32_t *dh = xb + g * split * 8 * kp, *dl = dh + 8 * kp;
		for (int64_t p0 = 0; p0 < kp; p0 += SPLIT_CHUNK) {
			int64_t pb = kp - p0 < SPLIT_CHUNK ? kp - p0 : SPLIT_CHUNK;
			for (int r = 0; r < 8; r++) {
				int64_t row = g * 8 + r;
				int64_t c = 0, c0 = 2 * p0, cn = 2 * pb; // values c0 .. c0+cn of the row
				if (row < n) {
					const float *xr = x + row * k + c0;
					for (; c + 16 <= cn && c0 + c + 16 <= k; c += 16) {
						__m512 v = _mm512_loadu_ps(xr + c);
						__m256bh h = _mm512_cvtneps_pbh(v);
						_mm256_store_si256((__m256i *)(hi[r] + c), (__m256i)h);
						if (split == 2) {
							__m512 hv = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
							_mm256_store_si256((__m256i *)(lo[r] + c), (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(v, hv)));
						}
					}
				}
				for (; c < cn; c++) {
					float v = row < n && c0 + c < k ? x[row * k + c0 + c] : 0;
					uint16_t h = rne_bf16(v);
					hi[r][c] = h;
					lo[r][c] = rne_bf16(v - bf16_to_f32(h));
				}
			}
			for (int64_t p = 0; p < pb; p++) {
				for (int r = 0; r < 8; r++) {
					uint32_t v;
					memcpy(&v, hi[r] + 2 * p, 4);
					dh[(p0 + p) * 8 + r] = v;
					if (split == 2) {
						memcpy(&v, lo[r] + 2 * p, 4);
						dl[(p0 + p) * 8 + r] = v;
					}
				}
			}
		}
	}
}

DPFUNC double qvl_peak_dp(int64_t iters, int split) {
	static _Thread_local uint32_t xs[8 * 2 * KCP] __attribute__((aligned(64)));
	static _Thread_local float outs[8 * 32] __attribute__((aligned(64)));
	for (int i = 0; i < 8 * 2 * KCP; i++) {
		xs[i] = 0x3c003c00u; // bf16 pairs (1/128, 1/128)
	}
	for (int i = 0; i < KCP * 32; i++) {
		pack_dp[i] = 0x3c003c00u;
	}
	int64_t reps = iters / (2 * KCP);
	for (int64_t r = 0; r < reps; r++) {
		if (split == 2) {
			ukr_dp(8, 2, outs, xs, 8 * KCP, pack_dp, 32, 0, 0, 32, KCP, r == 0);
		} else {
			ukr_dp(8, 1, outs, xs, 0, pack_dp, 32, 0, 0, 32, KCP, r == 0);
		}
	}
	// FLOPs of the useful product: 2 per multiply-add of the 8 x 32 x (2*KCP) tile.
	return 2.0 * 8 * 32 * 2 * KCP * (double)reps + outs[0] * 0;
}

#endif

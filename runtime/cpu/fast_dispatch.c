//go:build cgo

// fast_dispatch.c: cpuid detection and the op entry points, which split each op into work
// items for the thread pool and run the kernels of the chosen instruction-set level.

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "fast.h"

#if defined(__x86_64__)
#include <cpuid.h>

static uint64_t xgetbv0(void) {
	uint32_t lo, hi;
	__asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}
#endif

int qvl_detect(void) {
#if defined(__x86_64__)
	unsigned a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d)) {
		return QVL_GENERIC;
	}
	int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
	if (!osxsave || !avx) {
		return QVL_GENERIC;
	}
	uint64_t xcr0 = xgetbv0();
	if ((xcr0 & 0x6) != 0x6) { // XMM and YMM state
		return QVL_GENERIC;
	}
	if (__get_cpuid_max(0, NULL) < 7) {
		return QVL_GENERIC;
	}
	__cpuid_count(7, 0, a, b, c, d);
	int avx2 = (b >> 5) & 1;
	int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1;
	unsigned max7 = a;
	int level = QVL_GENERIC;
	if (avx2 && fma) {
		level = QVL_AVX2;
	}
	if (level == QVL_AVX2 && f && dq && bw && vl && (xcr0 & 0xe0) == 0xe0) { // opmask, ZMM state
		level = QVL_AVX512;
		if (max7 >= 1) {
			__cpuid_count(7, 1, a, b, c, d);
			if ((a >> 5) & 1) {
				level = QVL_AVX512BF16;
			}
		}
	}
	return level;
#else
	return QVL_GENERIC;
#endif
}

static const qvl_kern *kern(int level) {
#if defined(__x86_64__)
	if (level >= QVL_AVX512) {
		return &qvl_kern_avx512;
	}
	if (level == QVL_AVX2) {
		return &qvl_kern_avx2;
	}
#endif
	(void)level;
	return &qvl_kern_generic;
}

// ---- matmul ----------------------------------------------------------------------------------

// x rows up to which the matmul streams the weights once per group of 4 x rows (GEMV); above it
// the weights are packed in panels and multiplied as a GEMM. Measured on Zen 4 with 2 threads
// (2048 x 12288 bf16, exact, best of 5, both paths in one build each): GEMV / GEMM
// n = 16 4.9 / 8.1 ms, 32 9.1 / 11.9, 64 17.2 / 19.3, 128 33.7 / 34.0, 256 66.0 / 63.6; and on
// the 2B model's batched decode at context 256, batch 16 371-387 / 598-615 ms per step, batch
// 32 665-688 / 961-967. (With one thread and 12 as the bound, n = 32 had favoured the GEMM.)
#ifndef GEMV_MAX
#define GEMV_MAX 128
#endif

// In exact mode with bf16 weights the GEMV also beats the packed f32 GEMM above GEMV_MAX, up to
// GEMV_EXACT_MAX x rows: each thread keeps a 64-row chunk of the weights (256 KB at k 2048) in
// L2 while x streams past it, where the GEMM re-reads packed x panels and its micro-kernel ran at
// ~0.82 of the probe's peak. Measured on Zen 4 with 2 threads, exact, back to back in one hour:
// 2048 x 12288, GEMV / GEMM GFLOP/s: n = 136 205-213 / 171-186, 192 197-200 / 187-189, 256
// 209-211 / 190-192, 512 202-213 / 188-204, 2048 179 / 168; the 2B's 512-token prefill 67.5 /
// 69.0 tok/s against 61.1 / 63.4 (peak share 0.88-0.89 against 0.82). The bound is the largest
// row count measured; the bf16 and hi-lo modes keep GEMV_MAX (their vdpbf16ps GEMM is faster).
#ifndef GEMV_EXACT_MAX
#define GEMV_EXACT_MAX 2048
#endif

typedef struct {
	const qvl_kern *kr;
	float *out;
	const float *x;
	const void *w;
	int wbf16;
	int64_t n, k, m;
	float *xp;    // x packed in row groups (f32 GEMM)
	uint32_t *xb; // x packed as bf16 pairs (vdpbf16ps GEMM)
	int64_t kp;
	int split;
	int64_t gp; // weight panels per GEMM work item
} mm_args;

static void gemv_task(void *vp, int64_t lo, int64_t hi) {
	mm_args *a = vp;
	a->kr->gemv(a->out, a->x, a->w, a->wbf16, a->n, a->k, a->m, lo, hi);
}

static void pack_task(void *vp, int64_t lo, int64_t hi) {
	mm_args *a = vp;
	a->kr->pack_x(a->xp, a->x, a->n, a->k, lo, hi);
}

// A GEMM work item is a group of gp weight panels (nr rows each), run k block by k block.
static void gemm_task(void *vp, int64_t lo, int64_t hi) {
	mm_args *a = vp;
	for (int64_t g = lo; g < hi; g++) {
		int64_t j0 = g * a->gp * a->kr->nr, j1 = j0 + a->gp * a->kr->nr;
		a->kr->gemm_panels(a->out, a->xp, a->w, a->wbf16, a->n, a->k, a->m, j0, j1 < a->m ? j1 : a->m);
	}
}

#if defined(__x86_64__)
static void split_task(void *vp, int64_t lo, int64_t hi) {
	mm_args *a = vp;
	qvl_split_bf16(a->xb, a->x, a->n, a->k, a->split, lo, hi);
}

static void dp_task(void *vp, int64_t lo, int64_t hi) {
	mm_args *a = vp;
	for (int64_t g = lo; g < hi; g++) {
		int64_t j0 = g * a->gp * 32, j1 = j0 + a->gp * 32;
		qvl_gemm_panels_dp(a->out, a->xb, a->n, a->kp, a->w, a->k, a->m, j0, j1 < a->m ? j1 : a->m, a->split);
	}
}
#endif

// panel_group is how many weight panels one GEMM work item takes: up to 8, so that a block of x
// read from L2 serves 8 panels (one panel at a time read all of x from L3 for each panel, and
// ran at 70-77% of the micro-kernel's peak in a 2B prefill), but at least 4 items per thread
// for the dynamic schedule to balance.
static int64_t panel_group(int64_t panels, int threads) {
	int64_t g = panels / (4 * (int64_t)threads);
	return g < 1 ? 1 : g > 8 ? 8 : g;
}

// use_gemv reports whether a product of n x rows streams the weights (GEMV) instead of packing
// them (GEMM).
static int use_gemv(int mode, int wbf16, int64_t n) {
	return n <= GEMV_MAX || (mode == QVL_MM_EXACT && wbf16 && n <= GEMV_EXACT_MAX);
}

// use_dp reports whether a product runs on the vdpbf16ps GEMM.
static int use_dp(int level, int mode, int wbf16, int64_t n) {
	return n > GEMV_MAX && mode != QVL_MM_EXACT && level >= QVL_AVX512BF16 && wbf16;
}

size_t qvl_matmul_scratch(int level, int mode, int wbf16, int64_t n, int64_t k) {
	if (use_gemv(mode, wbf16, n)) {
		return 0;
	}
	if (use_dp(level, mode, wbf16, n)) {
		int64_t split = mode == QVL_MM_HILO ? 2 : 1;
		return (size_t)((n + 7) / 8 * 8 * ((k + 1) / 2) * split * 4);
	}
	int64_t mr = kern(level)->mr;
	return (size_t)((n + mr - 1) / mr * mr * k * 4);
}

void qvl_matmul(qvl_pool *p, int level, int mode, float *out, const float *x, const void *w, int wbf16, int64_t n,
                int64_t k, int64_t m, void *xbuf) {
	mm_args a = {.kr = kern(level), .out = out, .x = x, .w = w, .wbf16 = wbf16, .n = n, .k = k, .m = m};
	if (use_gemv(mode, wbf16, n)) {
		qvl_parallel(p, gemv_task, &a, m, 64);
		return;
	}
#if defined(__x86_64__)
	if (use_dp(level, mode, wbf16, n)) {
		a.xb = xbuf;
		a.kp = (k + 1) / 2;
		a.split = mode == QVL_MM_HILO ? 2 : 1;
		a.gp = panel_group((m + 31) / 32, qvl_pool_threads(p));
		qvl_parallel(p, split_task, &a, (n + 7) / 8, 1);
		qvl_parallel(p, dp_task, &a, ((m + 31) / 32 + a.gp - 1) / a.gp, 1);
		return;
	}
#endif
	(void)mode;
	int64_t panels = (m + a.kr->nr - 1) / a.kr->nr;
	a.xp = xbuf;
	a.gp = panel_group(panels, qvl_pool_threads(p));
	qvl_parallel(p, pack_task, &a, (n + a.kr->mr - 1) / a.kr->mr, 1);
	qvl_parallel(p, gemm_task, &a, (panels + a.gp - 1) / a.gp, 1);
}

// ---- norms, activations, QKV -----------------------------------------------------------------

typedef struct {
	const qvl_kern *kr;
	float *out, *x;
	const float *delta;
	const void *w;
	int wbf16;
	int64_t h;
	float eps;
} norm_args;

static void norm_task(void *vp, int64_t lo, int64_t hi) {
	norm_args *a = vp;
	a->kr->rmsnorm_rows(a->out, a->x, a->delta, a->w, a->wbf16, lo, hi, a->h, a->eps);
}

void qvl_rmsnorm(qvl_pool *p, int level, float *out, float *x, const float *delta, const void *w, int wbf16,
                 int64_t rows, int64_t h, float eps) {
	norm_args a = {.kr = kern(level), .out = out, .x = x, .delta = delta, .w = w, .wbf16 = wbf16, .h = h, .eps = eps};
	qvl_parallel(p, norm_task, &a, rows, 4);
}

typedef struct {
	const qvl_kern *kr;
	float *out;
	const float *gu;
	int64_t inter;
} swiglu_args;

static void swiglu_task(void *vp, int64_t lo, int64_t hi) {
	swiglu_args *a = vp;
	a->kr->swiglu_rows(a->out, a->gu, lo, hi, a->inter);
}

void qvl_swiglu(qvl_pool *p, int level, float *out, const float *gu, int64_t rows, int64_t inter) {
	swiglu_args a = {.kr = kern(level), .out = out, .gu = gu, .inter = inter};
	qvl_parallel(p, swiglu_task, &a, rows, 2);
}

typedef struct {
	const qvl_kern *kr;
	const float *qkv;
	float *qout;
	const void *qnw, *knw;
	int wbf16q, wbf16k;
	const double *cs;
	const int32_t *slots;
	float *kc, *vc;
	int64_t nh, nkv, hd, bs;
	float eps;
} qkv_args;

static void qkv_task(void *vp, int64_t lo, int64_t hi) {
	qkv_args *a = vp;
	a->kr->qkv_rows(a->qkv, a->qout, a->qnw, a->knw, a->wbf16q, a->wbf16k, a->cs, a->slots, a->kc, a->vc, lo, hi,
	                a->nh, a->nkv, a->hd, a->eps, a->bs);
}

void qvl_qkv(qvl_pool *p, int level, const float *qkv, float *qout, const void *qnw, const void *knw, int wbf16q,
             int wbf16k, const double *cs, const int32_t *slots, float *kc, float *vc, int64_t n, int64_t nh,
             int64_t nkv, int64_t hd, float eps, int64_t bs) {
	qkv_args a = {.kr = kern(level), .qkv = qkv, .qout = qout, .qnw = qnw, .knw = knw, .wbf16q = wbf16q,
	              .wbf16k = wbf16k, .cs = cs, .slots = slots, .kc = kc, .vc = vc, .nh = nh, .nkv = nkv, .hd = hd,
	              .bs = bs, .eps = eps};
	qvl_parallel(p, qkv_task, &a, n, 4);
}

// ---- attention -------------------------------------------------------------------------------

// An attention work item is either a tile (query rows i0..i1 x heads g0..g1 of KV head kvh, run
// to completion) or a split (cache blocks i0..i1 of a sequence with few query rows, for all its
// rows and heads, leaving partial softmax states at part to be merged).
typedef struct {
	int32_t seq, i0, i1, g0, g1, kvh;
	int64_t part; // split items: offset of their states in the partial buffer; -1 for tiles
} attn_item_t;

typedef struct {
	const qvl_kern *kr;
	float *out;
	const float *q, *kc, *vc;
	const int32_t *seq_start, *ctx_len, *tables;
	int64_t max_blocks, nh, nkv, hd, bs;
	float scale;
	const attn_item_t *items;
	float *part;
	size_t work;
} attn_args;

static void attn_task(void *vp, int64_t lo, int64_t hi) {
	attn_args *a = vp;
	float *work = qvl_scratch(a->work);
	if (work == NULL) {
		abort(); // out of memory for a few kilobytes of scratch
	}
	for (int64_t it = lo; it < hi; it++) {
		const attn_item_t *e = &a->items[it];
		int64_t r0 = a->seq_start[e->seq], qlen = a->seq_start[e->seq + 1] - r0;
		const int32_t *table = a->tables + e->seq * a->max_blocks;
		if (e->part >= 0) {
			a->kr->attn_split(a->part + e->part, a->q + r0 * a->nh * a->hd, a->kc, a->vc, table, e->i0, e->i1, qlen,
			                  a->ctx_len[e->seq], a->nh, a->nkv, a->hd, a->scale, a->bs, work);
			continue;
		}
		a->kr->attn_item(a->out + r0 * a->nh * a->hd, a->q + r0 * a->nh * a->hd, a->kc, a->vc, table, e->i0, e->i1,
		                 e->g0, e->g1, qlen, a->ctx_len[e->seq], e->kvh, a->nh, a->nkv, a->hd, a->scale, a->bs, work);
	}
}

// attn_merge combines the partial states of splits (stride floats apart) into out rows.
static void attn_merge(float *out, const float *part, int64_t splits, int64_t stride, int64_t nq, int64_t hd) {
	for (int64_t j = 0; j < nq; j++) {
		float mx = -INFINITY;
		for (int64_t s = 0; s < splits; s++) {
			float m = part[s * stride + j * (hd + 2) + hd];
			mx = m > mx ? m : mx;
		}
		float *dst = out + j * hd, l = 0;
		for (int64_t d = 0; d < hd; d++) {
			dst[d] = 0;
		}
		for (int64_t s = 0; s < splits; s++) {
			const float *st = part + s * stride + j * (hd + 2);
			if (st[hd + 1] == 0) {
				continue; // no key of this split is visible to the row
			}
			float w = expf(st[hd] - mx);
			l += st[hd + 1] * w;
			for (int64_t d = 0; d < hd; d++) {
				dst[d] += st[d] * w;
			}
		}
		float inv = 1 / l;
		for (int64_t d = 0; d < hd; d++) {
			dst[d] *= inv;
		}
	}
}

void qvl_attention(qvl_pool *p, int level, float *out, const float *q, const float *kc, const float *vc,
                   const int32_t *seq_start, const int32_t *ctx_len, const int32_t *tables, int64_t max_blocks,
                   int64_t nseq, int64_t nh, int64_t nkv, int64_t hd, float scale, int64_t bs) {
	const qvl_kern *kr = kern(level);
	// A tile holds up to one vector's lanes of query vectors: rows x heads of one KV group.
	int64_t group = nh / nkv, lanes = kr->lanes;
	int64_t hc = group < lanes ? group : lanes;     // heads per tile
	int64_t qt = group < lanes ? lanes / group : 1; // rows per tile
	int64_t hchunks = (group + hc - 1) / hc;
	int64_t maxsplits = 4 * qvl_pool_threads(p);
	// A sequence whose query vectors fill less than half a vector (decode) is split over its blocks.
	int64_t count = 0, partlen = 0;
	for (int64_t s = 0; s < nseq; s++) {
		int64_t ql = seq_start[s + 1] - seq_start[s], nb = (ctx_len[s] + bs - 1) / bs;
		if (ql == 0) {
			continue;
		}
		if (ql * group < lanes / 2) {
			int64_t splits = nb < maxsplits ? nb : maxsplits;
			count += splits;
			partlen += splits * ql * nh * (hd + 2);
		} else {
			count += (ql + qt - 1) / qt * nkv * hchunks;
		}
	}
	if (count == 0) {
		return;
	}
	attn_item_t *items = malloc((size_t)count * sizeof *items);
	float *part = partlen > 0 ? malloc((size_t)partlen * sizeof *part) : NULL;
	if (items == NULL || (partlen > 0 && part == NULL)) {
		abort();
	}
	// Tiles first, later (longer) ones before earlier ones, so that the dynamic schedule ends on
	// short items; then the splits.
	int64_t c = 0;
	for (int64_t s = 0; s < nseq; s++) {
		int64_t ql = seq_start[s + 1] - seq_start[s];
		if (ql == 0 || ql * group < lanes / 2) {
			continue;
		}
		for (int64_t t = (ql + qt - 1) / qt - 1; t >= 0; t--) {
			int64_t i1 = (t + 1) * qt < ql ? (t + 1) * qt : ql;
			for (int64_t h = 0; h < nkv; h++) {
				for (int64_t g = 0; g < group; g += hc) {
					int64_t g1 = g + hc < group ? g + hc : group;
					items[c++] = (attn_item_t){.seq = (int32_t)s, .i0 = (int32_t)(t * qt), .i1 = (int32_t)i1,
					                           .g0 = (int32_t)g, .g1 = (int32_t)g1, .kvh = (int32_t)h, .part = -1};
				}
			}
		}
	}
	int64_t off = 0;
	for (int64_t s = 0; s < nseq; s++) {
		int64_t ql = seq_start[s + 1] - seq_start[s], nb = (ctx_len[s] + bs - 1) / bs;
		if (ql == 0 || ql * group >= lanes / 2) {
			continue;
		}
		int64_t splits = nb < maxsplits ? nb : maxsplits;
		for (int64_t k = 0; k < splits; k++) {
			items[c++] = (attn_item_t){.seq = (int32_t)s, .i0 = (int32_t)(nb * k / splits),
			                           .i1 = (int32_t)(nb * (k + 1) / splits), .part = off};
			off += ql * nh * (hd + 2);
		}
	}
	attn_args a = {.kr = kr, .out = out, .q = q, .kc = kc, .vc = vc, .seq_start = seq_start,
	               .ctx_len = ctx_len, .tables = tables, .max_blocks = max_blocks, .nh = nh, .nkv = nkv, .hd = hd,
	               .bs = bs, .scale = scale, .items = items, .part = part,
	               .work = (size_t)((2 * hd + 4) * lanes + bs + 32)};
	qvl_parallel(p, attn_task, &a, count, 1);
	// Merge the splits of each split sequence (their items are in sequence order).
	for (int64_t it = 0; it < count; it++) {
		const attn_item_t *e = &items[it];
		if (e->part < 0 || e->i0 != 0) {
			continue;
		}
		int64_t r0 = seq_start[e->seq], ql = seq_start[e->seq + 1] - r0, nb = (ctx_len[e->seq] + bs - 1) / bs;
		int64_t splits = nb < maxsplits ? nb : maxsplits;
		attn_merge(out + r0 * nh * hd, part + e->part, splits, ql * nh * (hd + 2), ql * nh, hd);
	}
	free(part);
	free(items);
}

// ---- probes ----------------------------------------------------------------------------------

typedef struct {
	const qvl_kern *kr;
	const uint16_t *data;
	int64_t n, chunk;
	_Atomic double sum;
	int level, mode;
	int64_t iters;
	_Atomic double flops;
} probe_args;

static void probe_task(void *vp, int64_t lo, int64_t hi) {
	probe_args *a = vp;
	double s = 0;
	for (int64_t c = lo; c < hi; c++) {
		int64_t from = c * a->chunk, len = a->n - from < a->chunk ? a->n - from : a->chunk;
		s += a->kr->probe(a->data + from, len);
	}
	double old = atomic_load(&a->sum);
	while (!atomic_compare_exchange_weak(&a->sum, &old, old + s)) {
	}
}

double qvl_probe(qvl_pool *p, int level, const uint16_t *data, int64_t n) {
	probe_args a = {.kr = kern(level), .data = data, .n = n, .chunk = 1 << 16};
	atomic_init(&a.sum, 0);
	atomic_init(&a.flops, 0);
	qvl_parallel(p, probe_task, &a, (n + a.chunk - 1) / a.chunk, 16);
	return atomic_load(&a.sum);
}

static void peak_task(void *vp, int64_t lo, int64_t hi) {
	probe_args *a = vp;
	double f = 0;
	for (int64_t i = lo; i < hi; i++) {
#if defined(__x86_64__)
		if (a->mode != QVL_MM_EXACT && a->level >= QVL_AVX512BF16) {
			f += qvl_peak_dp(a->iters, a->mode == QVL_MM_HILO ? 2 : 1);
			continue;
		}
#endif
		f += a->kr->peak(a->iters);
	}
	double old = atomic_load(&a->flops);
	while (!atomic_compare_exchange_weak(&a->flops, &old, old + f)) {
	}
}

double qvl_peak(qvl_pool *p, int level, int mode, int64_t iters) {
	probe_args a = {.kr = kern(level), .level = level, .mode = mode, .iters = iters};
	atomic_init(&a.sum, 0);
	atomic_init(&a.flops, 0);
	qvl_parallel(p, peak_task, &a, qvl_pool_threads(p), 1);
	return atomic_load(&a.flops);
}

//go:build cgo

// fast_pool.c: a small thread pool for the C kernels. The caller of a job takes part in it, so
// a pool of T threads starts T-1 workers. Idle workers spin for a short while (ops of one
// forward step follow each other within microseconds) and then sleep on a condition variable.

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "fast.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() ((void)0)
#endif

// How long an idle worker spins before it sleeps.
#define SPIN_NS 200000

struct qvl_pool {
	int threads;
	pthread_t *tids;
	pthread_mutex_t mu; // guards sleeping on cv and the generation bump
	pthread_cond_t cv;
	pthread_mutex_t busy; // held by the thread that owns the pool for a job

	_Atomic uint64_t gen;   // job generation; a bump announces a job
	_Atomic uint32_t state; // CLOSED bit | number of workers inside the current job
	_Atomic int64_t next;   // next item to hand out
	qvl_task fn;
	void *arg;
	int64_t n, grain;
};

// A worker joins a job only while it is open; once the caller has run out of chunks it closes
// the job and waits only for the workers that joined. A worker that wakes late (descheduled by
// the OS, or asleep) therefore never delays the caller.
#define CLOSED 0x80000000u

static int64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

// run_chunks takes chunks of the current job until none are left.
static void run_chunks(qvl_pool *p, qvl_task fn, void *arg, int64_t n, int64_t grain) {
	for (;;) {
		int64_t lo = atomic_fetch_add_explicit(&p->next, grain, memory_order_relaxed);
		if (lo >= n) {
			return;
		}
		int64_t hi = lo + grain < n ? lo + grain : n;
		fn(arg, lo, hi);
	}
}

static void *worker(void *vp) {
	qvl_pool *p = vp;
	uint64_t seen = 0;
	for (;;) {
		uint64_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
		if (g == seen) {
			int64_t until = now_ns() + SPIN_NS;
			int i = 0;
			while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
				cpu_relax();
				if (++i % 256 == 0 && now_ns() > until) {
					pthread_mutex_lock(&p->mu);
					while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
						pthread_cond_wait(&p->cv, &p->mu);
					}
					pthread_mutex_unlock(&p->mu);
					break;
				}
			}
		}
		seen = g;
		uint32_t st = atomic_load_explicit(&p->state, memory_order_relaxed);
		int joined = 0;
		while (!(st & CLOSED)) {
			if (atomic_compare_exchange_weak_explicit(&p->state, &st, st + 1, memory_order_acquire,
			                                          memory_order_relaxed)) {
				joined = 1;
				break;
			}
		}
		if (!joined) {
			continue;
		}
		run_chunks(p, p->fn, p->arg, p->n, p->grain);
		atomic_fetch_sub_explicit(&p->state, 1, memory_order_release);
	}
	return NULL;
}

qvl_pool *qvl_pool_new(int threads) {
	if (threads < 2) {
		return NULL;
	}
	qvl_pool *p = calloc(1, sizeof *p);
	if (p == NULL) {
		return NULL;
	}
	p->threads = threads;
	p->tids = calloc((size_t)threads - 1, sizeof *p->tids);
	if (p->tids == NULL) {
		free(p);
		return NULL;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	pthread_mutex_init(&p->busy, NULL);
	for (int i = 0; i < threads - 1; i++) {
		if (pthread_create(&p->tids[i], NULL, worker, p) != 0) {
			// Workers already started keep waiting for jobs that never come; with none started
			// the pool is unusable, otherwise it runs with fewer threads.
			if (i == 0) {
				free(p->tids);
				free(p);
				return NULL;
			}
			p->threads = i + 1;
			break;
		}
		pthread_detach(p->tids[i]);
	}
	return p;
}

int qvl_pool_threads(const qvl_pool *p) { return p == NULL ? 1 : p->threads; }

void qvl_parallel(qvl_pool *p, qvl_task fn, void *arg, int64_t n, int64_t grain) {
	if (n <= 0) {
		return;
	}
	if (grain < 1) {
		grain = 1;
	}
	if (p == NULL || n <= grain || pthread_mutex_trylock(&p->busy) != 0) {
		fn(arg, 0, n);
		return;
	}
	p->fn = fn;
	p->arg = arg;
	p->n = n;
	p->grain = grain;
	atomic_store_explicit(&p->next, 0, memory_order_relaxed);
	atomic_store_explicit(&p->state, 0, memory_order_release); // open
	pthread_mutex_lock(&p->mu);
	atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	run_chunks(p, fn, arg, n, grain);
	atomic_fetch_or_explicit(&p->state, CLOSED, memory_order_acq_rel);
	while ((atomic_load_explicit(&p->state, memory_order_acquire) & ~CLOSED) != 0) {
		cpu_relax();
	}
	pthread_mutex_unlock(&p->busy);
}

void qvl_nop(void) {}

static void nop_task(void *arg, int64_t lo, int64_t hi) {
	(void)arg;
	(void)lo;
	(void)hi;
}

void qvl_pool_overhead(qvl_pool *p, int reps, int64_t n) {
	for (int i = 0; i < reps; i++) {
		qvl_parallel(p, nop_task, NULL, n, 1);
	}
}

static _Thread_local float *scratch_buf;
static _Thread_local size_t scratch_len;

float *qvl_scratch(size_t floats) {
	if (floats > scratch_len) {
		free(scratch_buf);
		size_t n = floats < 4096 ? 4096 : floats;
		scratch_buf = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
		scratch_len = scratch_buf == NULL ? 0 : n;
	}
	return scratch_buf;
}

// sampling.cu — batched top-k and sampling over logits [B, V], S blocks per row, no full sort.
//
//   qvl_topk    ids/vals[r, :k[r]] = the k[r] largest logits of row r, best first, ties by lower
//               id; NaN never selected (rows with fewer non-NaN entries pad with id −1, −inf).
//   qvl_sample  out[r] = one token of row r under (temperature, top_k, top_p, min_p, u) with
//               ml.DeviceSampler's semantics (the CPU reference is runtime/sample): greedy is the
//               argmax (lowest id on ties); unfiltered rows draw by inverse CDF over all tokens in
//               id order; filtered rows keep the shortest best-first prefix allowed by top-k,
//               min-p (weight ≥ min_p·best) and top-p (mass ≥ top_p of the top-k mass) and draw
//               by inverse CDF over it best first, the draw being u·(kept mass). Weights are
//               exp((x − max)/T) in f64, as the reference computes them (f32 weights flip min-p
//               decisions near the cut: 2 of 151,936 tokens in a flat row did).
//
// Fast path (top-k with k ≤ 1024, and every sampling row with 1 ≤ top_k ≤ 1024): two passes,
// each row split into S contiguous slices of its float4s, one block per slice (select_fast).
//   1. Each thread takes the max of its share of the slice (16-byte loads, 8 in flight per
//      thread, no atomics); the block max of those is the slice max. The k-th largest of the
//      1024 thread maxes, T0, found by a 32-step bisection on order-preserving keys with
//      __syncthreads_count, is a lower bound of the slice's k-th largest value and so of the
//      row's (the thread maxes are k entries of the row).
//   2. The slice's entries ≥ T0 are collected into shared memory (a ballot per 16 entries; one
//      shared atomic per warp that holds any), at most QVL_CAND_MAX of them.
//   With S = 1 they are bitonic-sorted by (value, −id) and the best k are the answer. With
//   S > 1 each block writes its count, T0, slice max and candidates to global scratch and the
//   last block of the row to finish (an arrival counter per row after a __threadfence, put
//   back to 0 by that block, as the decode attention's split-K merge) keeps the candidates ≥
//   the best of the S bounds, sorts them and goes on alone; the row max is the max of the
//   slice maxes. For i.i.d. logits each slice yields barely more than k candidates and the
//   merge barely more than k (top-k 50 of 151,936: about 51, as the row's top 50 seldom share
//   a thread). Greedy rows split the same way: per-slice argmax, merged by the last block.
// Fallback (k > 1024, or more than QVL_CAND_MAX candidates in a slice or after the merge: many
// ties, flat rows, k near 1024): one block (the row's last, or its first when k > 1024) runs an
// exact radix select over the whole row on the same keys (FlashInfer and PyTorch's top-k do the
// same): four passes of 8-bit digits histogram the row in shared memory and narrow the k-th
// largest key T; one more pass collects the keys > T and the lowest-id ties = T (a radix select
// on ids breaks ties when there are more ties than places); a bitonic sort orders the ≤ 1024
// winners. Sampling uses the same machinery: with top-k ≤ 1024 (or a top-p/min-p prefix that
// ends inside the best 1024) the kept prefix is sorted in shared memory and its prefix sums are
// a block scan; longer prefixes use "mass selects", radix selects driven by per-bin probability
// mass instead of counts, so nothing larger than 1024 is ever sorted. Unfiltered sampling (the
// row's first block alone) is one argmax pass, one pass of per-thread chunk sums, a block scan
// and a scan of one chunk.
//
// Parameters: six 32-bit words per row: temperature, top_k (an int; 0 = all), top_p, min_p
// (floats) and the draw u as an f64 in the last two. Split scratch (unused when S = 1): done[B]
// arrival counters (0 between launches), meta[B·S·4] words, cand[B·S·QVL_CAND_MAX] entries.
// Launch: grid (B, S), block 1024, ~28 KiB static shared memory, 64 registers: one block per
// SM. The backend (splitRows, runtime/cuda/sampler.go) fills one wave: S = ⌊SMs / B⌋, at most 8,
// slices of ≥ 16,384 logits; 64 rows on the H100's 132 SMs: S = 2, batch 1: S = 8.
// Floor: each row is read once, 4·V bytes: 64 × 151936 logits are 38.9 MB, 13 µs from DRAM at
// 3 TB/s (the batch fits in H100's 50 MB L2, so the second pass, and a benchmark's repeats, hit
// L2). The fast path reads each row twice. One block per row (S = 1) measured 31.5 µs on the
// H100 for top-k 20 + top-p 0.8 over 64 × 151,936: one SM streamed 2 × 608 KB at ~50 GB/s
// (64 KB in flight per SM at ~1.2 µs of loaded L2 latency), 68 SMs idle. With S = 2, 128 SMs
// stream 304 KB per pass each with 128 KB in flight in pass 1; a pass is then bound by L2's
// bandwidth for the batch (~7 µs) or one SM's (~6 µs), plus ~5 µs of in-block work (bisection,
// sort, scans) and ~1.5 µs of merge: about 19 µs (issue 6's target: 25 µs).
#include "common.cuh"

#define QVL_SAMPLE_THREADS 1024
#define QVL_TOPK_MAX 1024
#define QVL_CAND_MAX 2048  // fast-path candidates held in shared memory

struct SelState {
    unsigned hist[256];
    double mass[256];
    unsigned long long sortbuf[QVL_CAND_MAX];
    double incl[QVL_TOPK_MAX];
    double red_d[32];
    float red_f[32];
    int red_i[32];
    unsigned bc_u[4];
    double bc_d[2];
    unsigned cnt;
    unsigned last;  // split rows: this block is the last of its row to finish (last_of_row)
};

// qvl_key maps a float to an unsigned key with the same order; NaN maps to 0 (excluded) and
// −0 to +0's key, so that equal values have equal keys.
__device__ __forceinline__ unsigned qvl_key(float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0u;
    if (u == 0x80000000u) u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// qvl_key_value inverts qvl_key for a key other than 0.
__device__ __forceinline__ float qvl_key_value(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// RowSpan splits a row for 16-byte loads: head (< 4 entries) up to the first 16-byte boundary,
// nvec float4s, then the tail entries from tail0 (< 4). Entry id of float4 j, component c:
// head + 4·j + c. A block reads the slice [j0, j1) of the float4s, plus the head when it owns
// slice 0 and the tail when it owns the last slice (one block per row: the whole row).
struct RowSpan {
    const float* row;
    const float4* vec;
    int V, head, nvec, tail0;
    int j0, j1;
    bool own_head, own_tail;
};

// row_span is slice sl of S of the row: the float4s are split into S contiguous runs whose
// sizes differ by at most one.
__device__ __forceinline__ RowSpan row_span(const float* row, int V, int sl, int S) {
    RowSpan s;
    s.row = row;
    s.V = V;
    const int mis = (int)((reinterpret_cast<size_t>(row) >> 2) & 3);
    s.head = qvl_imin((4 - mis) & 3, V);
    s.nvec = (V - s.head) >> 2;
    s.tail0 = s.head + 4 * s.nvec;
    s.vec = reinterpret_cast<const float4*>(row + s.head);
    s.j0 = (int)((long long)s.nvec * sl / S);
    s.j1 = (int)((long long)s.nvec * (sl + 1) / S);
    s.own_head = sl == 0;
    s.own_tail = sl == S - 1;
    return s;
}

// qvl_ld4 is a 16-byte read-only load (the emulation checks the alignment).
__device__ __forceinline__ float4 qvl_ld4(const float4* p) {
#if defined(QVL_SIM)
    qvlsim::check_align16(p);
#endif
    return __ldg(p);
}

__device__ __forceinline__ float qvl_nanf() { return __int_as_float(0x7fffffff); }

// thread_max is the largest non-NaN entry of this thread's share of the block's slice (NaN if
// none).
// fmaxf returns the other operand when one is NaN. The slice is read QVL_LOADS float4s per
// thread at a time (predicated, so that the last round is one round of loads too).
#define QVL_LOADS 8
__device__ float thread_max(const RowSpan& s) {
    const int tid = threadIdx.x, bd = blockDim.x;
    const float4 none = make_float4(qvl_nanf(), qvl_nanf(), qvl_nanf(), qvl_nanf());
    float m = qvl_nanf();
    if (s.own_head && tid < s.head) m = s.row[tid];
    for (int j = s.j0 + tid; j < s.j1; j += QVL_LOADS * bd) {
        float4 a[QVL_LOADS];
#pragma unroll
        for (int u = 0; u < QVL_LOADS; u++) a[u] = j + u * bd < s.j1 ? qvl_ld4(s.vec + j + u * bd) : none;
#pragma unroll
        for (int u = 0; u < QVL_LOADS; u++) m = fmaxf(m, fmaxf(fmaxf(a[u].x, a[u].y), fmaxf(a[u].z, a[u].w)));
    }
    if (s.own_tail && tid < s.V - s.tail0) m = fmaxf(m, s.row[s.tail0 + tid]);
    return m;
}

// block_max_f returns to every thread the largest non-NaN v of the block (NaN if none).
__device__ __forceinline__ float block_max_f(float v, SelState& st) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(QVL_FULL_MASK, v, o));
    __syncthreads();
    if (lane == 0) st.red_f[w] = v;
    __syncthreads();
    v = lane < nw ? st.red_f[lane] : qvl_nanf();
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(QVL_FULL_MASK, v, o));
    return v;
}

// kth_thread_key returns the k-th largest of the threads' keys (0 when fewer than k threads
// hold a key other than 0): the largest T with #{threads: key ≥ T} ≥ k, bit by bit.
__device__ __forceinline__ unsigned kth_thread_key(unsigned key, unsigned k) {
    unsigned T = 0u;
    for (int b = 31; b >= 0; b--) {
        const unsigned c = T | (1u << b);
        if ((unsigned)__syncthreads_count(key >= c) >= k) T = c;
    }
    return T;
}

// push_entry appends the sort entry e = key << 32 | ~id to st.sortbuf for the lanes with pred
// (one atomic per warp); every lane of the warp calls it. Entries past QVL_CAND_MAX are
// counted, not stored.
__device__ __forceinline__ void push_entry(bool pred, unsigned long long e, SelState& st) {
    const unsigned b = __ballot_sync(QVL_FULL_MASK, pred);
    if (b == 0u) return;
    const int lane = threadIdx.x & 31, leader = __ffs((int)b) - 1;
    unsigned base = 0u;
    if (lane == leader) base = atomicAdd(&st.cnt, (unsigned)__popc(b));
    base = __shfl_sync(QVL_FULL_MASK, base, leader);
    if (pred) {
        const unsigned pos = base + (unsigned)__popc(b & ((1u << lane) - 1u));
        if (pos < QVL_CAND_MAX) st.sortbuf[pos] = e;
    }
}

// push_cand is push_entry of (key(v), id).
__device__ __forceinline__ void push_cand(bool pred, float v, int id, SelState& st) {
    push_entry(pred, ((unsigned long long)qvl_key(v) << 32) | (unsigned long long)(~(unsigned)id), st);
}

// bitonic_desc sorts st.sortbuf[0 .. P) (P a power of two) in descending order; every thread
// calls it; it ends with a barrier.
__device__ void bitonic_desc(unsigned P, SelState& st) {
    for (unsigned size = 2u; size <= P; size <<= 1) {
        for (unsigned stride = size >> 1; stride > 0u; stride >>= 1) {
            __syncthreads();
            for (unsigned i = threadIdx.x; i < P; i += blockDim.x) {
                const unsigned l = i ^ stride;
                if (l > i) {
                    const unsigned long long a = st.sortbuf[i], b = st.sortbuf[l];
                    const bool first = (i & size) == 0u;
                    if (first ? a < b : a > b) {
                        st.sortbuf[i] = b;
                        st.sortbuf[l] = a;
                    }
                }
            }
        }
    }
    __syncthreads();
}

// collect_cands is the fast path's pass 2 over the block's slice: the entries with key ≥ T0
// go to st.sortbuf, unsorted (the first QVL_CAND_MAX of them); it returns their number, which
// may exceed QVL_CAND_MAX. Every thread calls it; it ends with a barrier.
__device__ unsigned collect_cands(const RowSpan& s, unsigned T0, SelState& st) {
    const float f0 = T0 == 0u ? -INFINITY : qvl_key_value(T0);  // key(x) ≥ T0 ⇔ x ≥ f0 for x not NaN
    const int tid = threadIdx.x, lane = tid & 31, bd = blockDim.x;
    if (tid == 0) st.cnt = 0u;
    __syncthreads();
    if (tid < 32) {  // the head and tail entries: warp 0, lanes 0–3 and 8–11
        int id = -1;
        if (s.own_head && lane < s.head) id = lane;
        else if (s.own_tail && lane >= 8 && lane - 8 < s.V - s.tail0) id = s.tail0 + lane - 8;
        const float v = id >= 0 ? s.row[id] : qvl_nanf();
        push_cand(v >= f0, v, id, st);
    }
    const float4 none = make_float4(qvl_nanf(), qvl_nanf(), qvl_nanf(), qvl_nanf());
    for (int jw = s.j0 + tid - lane; jw < s.j1; jw += 4 * bd) {  // uniform in each warp
        float4 a[4];
        bool any = false;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int j = jw + u * bd + lane;
            a[u] = j < s.j1 ? qvl_ld4(s.vec + j) : none;
        }
#pragma unroll
        for (int u = 0; u < 4; u++) any |= (a[u].x >= f0) | (a[u].y >= f0) | (a[u].z >= f0) | (a[u].w >= f0);
        if (__ballot_sync(QVL_FULL_MASK, any) == 0u) continue;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int id = s.head + 4 * (jw + u * bd + lane);
            push_cand(a[u].x >= f0, a[u].x, id, st);
            push_cand(a[u].y >= f0, a[u].y, id + 1, st);
            push_cand(a[u].z >= f0, a[u].z, id + 2, st);
            push_cand(a[u].w >= f0, a[u].w, id + 3, st);
        }
    }
    __syncthreads();
    const unsigned C = st.cnt;
    __syncthreads();
    return C;
}

// sort_cands sorts the C candidates in st.sortbuf best first when they fit (C ≤ QVL_CAND_MAX)
// and returns C. Every thread calls it with the same C.
__device__ unsigned sort_cands(unsigned C, SelState& st) {
    if (C > QVL_CAND_MAX) return C;
    unsigned P = 1u;
    while (P < C) P <<= 1;
    for (unsigned i = C + threadIdx.x; i < P; i += blockDim.x) st.sortbuf[i] = 0ull;
    bitonic_desc(P, st);
    return C;
}

// last_of_row counts this block's arrival at its row's counter *done (S blocks per row) and
// returns true, to every thread, in the last block to arrive, which puts the counter back to
// 0 for the next launch. The CUDA programming guide's threadfence reduction, as the decode
// attention's split-K merge (attention.cu): every thread's global writes are made visible to
// the device before thread 0 counts the block, and the last block fences again before it
// reads the others' writes (through L2, __ldcg). Every thread calls it.
__device__ bool last_of_row(unsigned* done, unsigned S, SelState& st) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned prev = atomicAdd(done, 1u);
        const bool last = prev == S - 1u;
        if (last) *done = 0u;
        st.last = last ? 1u : 0u;
    }
    __syncthreads();
    const bool last = st.last != 0u;
    if (last) __threadfence();
    return last;
}

#define QVL_NOT_LAST 0xffffffffu

// select_fast is the fast path's selection of row r (k ≤ QVL_TOPK_MAX) by the gridDim.y blocks
// of the row (S; blockIdx.y is this block's slice). Each block takes its slice's thread maxes
// (pass 1), their k-th largest T0 (a lower bound of the slice's k-th largest entry, and so of
// the row's: the thread maxes are k entries of the row) and the slice's entries ≥ T0 (pass 2).
// With S = 1 those are the row's candidates. With S > 1 each block writes its count, T0, slice
// max and (when they fit) candidates to meta/cand; the last block of the row to finish keeps
// the entries ≥ B = max of the S bounds (a bound too, and the best of them), and the others
// return QVL_NOT_LAST (they must return at once). In the block that goes on, the result is as
// one block's: st.sortbuf holds the candidates best first and the count is returned (≥ min(k,
// #non-NaN entries); every entry ≥ the row's k-th largest is one), or a count > QVL_CAND_MAX
// when they do not fit (then nothing useful is in st.sortbuf: the caller takes the exact path
// over the whole row). *mx is the row's largest non-NaN value (NaN if none).
// Scratch (S > 1): meta[4·(r·S + q) + {0, 1, 2}] = count, T0, max bits of slice q; cand[(r·S +
// q)·QVL_CAND_MAX + i] its candidates; done[r] is 0 between launches.
__device__ unsigned select_fast(const float* row, int V, unsigned k, int r, unsigned* done, unsigned* meta,
                                unsigned long long* cand, SelState& st, float* mx) {
    const int S = (int)gridDim.y, sl = (int)blockIdx.y, tid = threadIdx.x, bd = blockDim.x;
    const RowSpan s = row_span(row, V, sl, S);
    const float tmax = thread_max(s);
    const float bmax = block_max_f(tmax, st);
    const unsigned T0 = kth_thread_key(qvl_key(tmax), k);
    unsigned C = collect_cands(s, T0, st);
    if (S == 1) {
        *mx = bmax;
        return sort_cands(C, st);
    }
    const long long me = (long long)r * S + sl;
    if (C <= QVL_CAND_MAX) {  // an overflowing slice sends the row to the exact path: no use storing
        unsigned long long* mine = cand + me * QVL_CAND_MAX;
        for (unsigned i = tid; i < C; i += bd) mine[i] = st.sortbuf[i];
    }
    if (tid == 0) {
        meta[4 * me] = C;
        meta[4 * me + 1] = T0;
        meta[4 * me + 2] = __float_as_uint(bmax);
    }
    if (!last_of_row(done + r, (unsigned)S, st)) return QVL_NOT_LAST;
    // The merge reads every slice's results from L2, its own included; every thread reads the
    // same S metas, so what follows is uniform in the block.
    unsigned B = 0u;
    bool over = false;
    float m = qvl_nanf();
    for (int q = 0; q < S; q++) {
        const unsigned* mq = meta + 4 * ((long long)r * S + q);
        const unsigned Cq = __ldcg(mq), Tq = __ldcg(mq + 1);
        over |= Cq > QVL_CAND_MAX;
        B = Tq > B ? Tq : B;
        m = fmaxf(m, __uint_as_float(__ldcg(mq + 2)));
    }
    *mx = m;
    if (over) return QVL_CAND_MAX + 1u;
    if (tid == 0) st.cnt = 0u;
    __syncthreads();
    for (int q = 0; q < S; q++) {
        const long long rq = (long long)r * S + q;
        const unsigned Cq = __ldcg(meta + 4 * rq);
        const unsigned long long* cq = cand + rq * QVL_CAND_MAX;
        for (unsigned i0 = 0u; i0 < Cq; i0 += bd) {  // uniform: every warp calls push_entry
            const unsigned i = i0 + tid;
            const unsigned long long e = i < Cq ? __ldcg(cq + i) : 0ull;
            push_entry(i < Cq && (unsigned)(e >> 32) >= B, e, st);
        }
    }
    __syncthreads();
    C = st.cnt;
    __syncthreads();
    return sort_cands(C, st);
}

// radix_select finds, among i < V with key(i) != 0, the k-th largest key T (k is clamped to the
// number of such keys, returned in *nn; T = 0 when there are none). *eq is the number of keys
// equal to T and *rank = k − #(keys > T), so 1 ≤ rank ≤ eq. Every thread must call it.
template <class KeyFn>
__device__ unsigned radix_select(KeyFn key, int V, unsigned k, SelState& st, unsigned* eq, unsigned* rank,
                                 unsigned* nn) {
    unsigned prefix = 0u, mask = 0u, kk = k, e = 0u;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) st.hist[b] = 0u;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            const unsigned kv = key(i);
            if (kv != 0u && (kv & mask) == prefix) atomicAdd(&st.hist[(kv >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            const int lane = threadIdx.x;
            unsigned local = 0u;
#pragma unroll
            for (int j = 0; j < 8; j++) local += st.hist[255 - 8 * lane - j];
            unsigned inc = local;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned v = __shfl_up_sync(QVL_FULL_MASK, inc, o);
                if (lane >= o) inc += v;
            }
            const unsigned total = __shfl_sync(QVL_FULL_MASK, inc, 31);
            unsigned want = kk;
            if (shift == 24) {
                want = kk < total ? kk : total;
                if (lane == 0) st.bc_u[3] = total;
            }
            if (want == 0u) {
                if (lane == 0) st.bc_u[0] = 0u, st.bc_u[1] = 0u, st.bc_u[2] = 0u;
            } else {
                const unsigned exc = inc - local;
                if (exc < want && want <= inc) {
                    unsigned c = exc;
                    for (int j = 0; j < 8; j++) {
                        const int b = 255 - 8 * lane - j;
                        const unsigned h = st.hist[b];
                        if (c + h >= want) {
                            st.bc_u[0] = (unsigned)b;
                            st.bc_u[1] = want - c;
                            st.bc_u[2] = h;
                            break;
                        }
                        c += h;
                    }
                }
            }
        }
        __syncthreads();
        if (shift == 24 && st.bc_u[3] == 0u) {
            *eq = 0u, *rank = 0u, *nn = 0u;
            __syncthreads();
            return 0u;
        }
        prefix |= st.bc_u[0] << shift;
        mask |= 255u << shift;
        kk = st.bc_u[1];
        e = st.bc_u[2];
        if (shift == 24) *nn = st.bc_u[3];
        __syncthreads();
    }
    *eq = e;
    *rank = kk;
    return prefix;
}

// mass_select walks keys from the largest down and finds the key T at which the running mass
// (weights wt(i) of keys != 0) first reaches X (≥ X, or > X when strict), ties counted one by
// one: mass(keys > T) + j·w_T < X ≤ mass(keys > T) + (j+1)·w_T for the j-th tie (0-based, in
// id order). It returns false when the whole mass does not reach X; otherwise it sets *T,
// *cnt_above (keys > T), *eq (keys equal to T) and *j. The bins are walked by one thread, in
// order, so that "reached" is decided on one consistent sequence of sums. It serves only the
// rare sampling rows whose kept prefix is longer than 1024 tokens.
template <class KeyFn, class WFn>
__device__ bool mass_select(KeyFn key, WFn wt, int V, double X, bool strict, SelState& st, unsigned* T,
                            unsigned* cnt_above, unsigned* eq, unsigned* j) {
    unsigned prefix = 0u, mask = 0u, ca = 0u, e = 0u;
    double base = 0.0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) st.hist[b] = 0u, st.mass[b] = 0.0;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            const unsigned kv = key(i);
            if (kv != 0u && (kv & mask) == prefix) {
                const unsigned b = (kv >> shift) & 255u;
                atomicAdd(&st.hist[b], 1u);
                atomicAdd(&st.mass[b], (double)wt(i));
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double c = base;
            unsigned cc = ca;
            int hit = -1, last = -1;
            double c_last = base;
            unsigned cc_last = ca;
            for (int b = 255; b >= 0; b--) {
                const unsigned h = st.hist[b];
                if (h == 0u) continue;
                const double m = st.mass[b];
                if (strict ? c + m > X : c + m >= X) {
                    hit = b;
                    break;
                }
                last = b, c_last = c, cc_last = cc;
                c += m;
                cc += h;
            }
            if (hit < 0 && shift < 24 && last >= 0) {
                // Rounding: the bin chosen above reached X but its sub-bins summed in another
                // order fall short; the crossing is at the end of the last non-empty sub-bin.
                hit = last, c = c_last, cc = cc_last;
            }
            st.bc_u[0] = hit < 0 ? 256u : (unsigned)hit;
            st.bc_u[1] = cc;
            st.bc_u[2] = hit < 0 ? 0u : st.hist[hit];
            st.bc_d[0] = c;
        }
        __syncthreads();
        const unsigned d = st.bc_u[0];
        if (d == 256u) {
            __syncthreads();
            return false;
        }
        prefix |= d << shift;
        mask |= 255u << shift;
        ca = st.bc_u[1];
        e = st.bc_u[2];
        base = st.bc_d[0];
        __syncthreads();
    }
    // Every element with key T has the same weight: read it at the lowest such index.
    if (threadIdx.x == 0) st.cnt = 0xffffffffu;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (key(i) == prefix) atomicMin(&st.cnt, (unsigned)i);
    __syncthreads();
    const double wT = (double)wt((int)st.cnt);
    __syncthreads();
    long long jj = 0;
    if (wT > 0.0) {
        const double need = (X - base) / wT;
        jj = strict ? (long long)floor(need) : (long long)ceil(need) - 1;
    }
    if (jj > (long long)e - 1) jj = (long long)e - 1;
    if (jj < 0) jj = 0;
    *T = prefix;
    *cnt_above = ca;
    *eq = e;
    *j = (unsigned)jj;
    return true;
}

// nth_tie returns the j-th (0-based) lowest index i with key(i) == T, of eq such indices.
template <class KeyFn>
__device__ int nth_tie(KeyFn key, int V, unsigned T, unsigned eq, unsigned j, SelState& st) {
    if (eq <= 1u || j == 0u) {
        if (threadIdx.x == 0) st.cnt = 0xffffffffu;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += blockDim.x)
            if (key(i) == T) atomicMin(&st.cnt, (unsigned)i);
        __syncthreads();
        const int id = (int)st.cnt;
        __syncthreads();
        return id;
    }
    unsigned e2, r2, n2;
    const unsigned t2 = radix_select([&](int i) -> unsigned { return key(i) == T ? ~(unsigned)i : 0u; }, V, j + 1u, st,
                                     &e2, &r2, &n2);
    return (int)~t2;
}

// collect_sorted writes the k best keys as (key << 32 | ~id) into st.sortbuf[0 .. k), sorted
// best first, given T, the tie rank and the count of ties from radix_select.
template <class KeyFn>
__device__ void collect_sorted(KeyFn key, int V, unsigned T, unsigned k, unsigned rank, unsigned eq, SelState& st) {
    unsigned idT = 0xffffffffu;
    if (rank < eq) idT = (unsigned)nth_tie(key, V, T, eq, rank - 1u, st);
    if (threadIdx.x == 0) st.cnt = 0u;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const unsigned kv = key(i);
        if (kv > T || (kv == T && kv != 0u && (unsigned)i <= idT)) {
            const unsigned pos = atomicAdd(&st.cnt, 1u);
            if (pos < QVL_TOPK_MAX) st.sortbuf[pos] = ((unsigned long long)kv << 32) | (unsigned long long)(~(unsigned)i);
        }
    }
    __syncthreads();
    unsigned P = 1u;
    while (P < k) P <<= 1;
    for (unsigned i = k + threadIdx.x; i < P; i += blockDim.x) st.sortbuf[i] = 0ull;
    bitonic_desc(P, st);
}

// block_scan_incl returns the inclusive prefix sum of v over the block's threads in order.
__device__ __forceinline__ double block_scan_incl(double v, SelState& st) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const double t = __shfl_up_sync(QVL_FULL_MASK, v, o);
        if (lane >= o) v += t;
    }
    __syncthreads();
    if (lane == 31) st.red_d[w] = v;
    __syncthreads();
    if (w == 0) {
        double x = lane < nw ? st.red_d[lane] : 0.0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double t = __shfl_up_sync(QVL_FULL_MASK, x, o);
            if (lane >= o) x += t;
        }
        st.red_d[lane] = x;
    }
    __syncthreads();
    if (w > 0) v += st.red_d[w - 1];
    return v;
}

__device__ __forceinline__ double block_sum_d(double v, SelState& st) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QVL_FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) st.red_d[w] = v;
    __syncthreads();
    v = lane < nw ? st.red_d[lane] : 0.0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QVL_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ unsigned block_sum_u(unsigned v, SelState& st) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QVL_FULL_MASK, v, o);
    __syncthreads();
    if (lane == 0) st.red_i[w] = (int)v;
    __syncthreads();
    v = lane < nw ? (unsigned)st.red_i[lane] : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(QVL_FULL_MASK, v, o);
    return v;
}

// block_argmax returns (to every thread) the largest non-NaN value of the block's slice and its
// lowest index; with none larger than −inf it returns (−inf, 0), as the CPU's argmax does. Each
// thread scans its entries in increasing id order (head, its float4s, tail), so a strict >
// keeps the lowest id; QVL_LOADS float4s per thread are loaded at a time.
__device__ __forceinline__ void block_argmax(const RowSpan& s, SelState& st, float* bv, int* bi) {
    const int tid = threadIdx.x, bd = blockDim.x;
    const float4 none = make_float4(qvl_nanf(), qvl_nanf(), qvl_nanf(), qvl_nanf());
    float v = -INFINITY;
    int id = 0;
    if (s.own_head && tid < s.head) {
        const float x = s.row[tid];
        if (x > v) v = x, id = tid;
    }
    for (int j = s.j0 + tid; j < s.j1; j += QVL_LOADS * bd) {
        float4 a[QVL_LOADS];
#pragma unroll
        for (int u = 0; u < QVL_LOADS; u++) a[u] = j + u * bd < s.j1 ? qvl_ld4(s.vec + j + u * bd) : none;
#pragma unroll
        for (int u = 0; u < QVL_LOADS; u++) {
            const int i = s.head + 4 * (j + u * bd);
            if (a[u].x > v) v = a[u].x, id = i;
            if (a[u].y > v) v = a[u].y, id = i + 1;
            if (a[u].z > v) v = a[u].z, id = i + 2;
            if (a[u].w > v) v = a[u].w, id = i + 3;
        }
    }
    if (s.own_tail && tid < s.V - s.tail0) {
        const float x = s.row[s.tail0 + tid];
        if (x > v) v = x, id = s.tail0 + tid;
    }
    if (v == -INFINITY) id = 0x7fffffff;
    const int lane = tid & 31, w = tid >> 5, nw = bd >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(QVL_FULL_MASK, v, o);
        const int oi = __shfl_xor_sync(QVL_FULL_MASK, id, o);
        if (ov > v || (ov == v && oi < id)) v = ov, id = oi;
    }
    __syncthreads();
    if (lane == 0) st.red_f[w] = v, st.red_i[w] = id;
    __syncthreads();
    v = lane < nw ? st.red_f[lane] : -INFINITY;
    id = lane < nw ? st.red_i[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(QVL_FULL_MASK, v, o);
        const int oi = __shfl_xor_sync(QVL_FULL_MASK, id, o);
        if (ov > v || (ov == v && oi < id)) v = ov, id = oi;
    }
    *bv = v;
    *bi = v == -INFINITY ? 0 : id;
}

extern "C" __global__ void __launch_bounds__(QVL_SAMPLE_THREADS, 1)
qvl_topk(const float* __restrict__ logits, int V, const int* __restrict__ kvec, int maxK, int* __restrict__ ids,
         float* __restrict__ vals, unsigned* __restrict__ done, unsigned* __restrict__ meta,
         unsigned long long* __restrict__ cand, unsigned* err) {
    QVL_PDL_ENTER();
    __shared__ __align__(16) SelState st;
    const int r = blockIdx.x;
    const float* row = logits + (long long)r * V;
    const int k = kvec[r];
    if (k <= 0) return;  // the row's S blocks all return: its counter is not touched
    if (k > maxK || k > QVL_TOPK_MAX) {
        if (threadIdx.x == 0 && blockIdx.y == 0) qvl_raise(err, QVL_ERR_SAMPLE);
        return;
    }
    float mx;
    unsigned keff = select_fast(row, V, (unsigned)k, r, done, meta, cand, st, &mx);
    if (keff == QVL_NOT_LAST) return;
    if (keff > QVL_CAND_MAX) {
        auto key = [&](int i) -> unsigned { return qvl_key(row[i]); };
        unsigned eq, rank, nn;
        const unsigned T = radix_select(key, V, (unsigned)k, st, &eq, &rank, &nn);
        keff = nn;
        if (qvl_imin(k, (int)nn) > 0) collect_sorted(key, V, T, (unsigned)qvl_imin(k, (int)nn), rank, eq, st);
    }
    if (keff > (unsigned)k) keff = (unsigned)k;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        int id = -1;
        float v = -INFINITY;
        if ((unsigned)j < keff) {
            id = (int)~(unsigned)(st.sortbuf[j] & 0xffffffffull);
            v = row[id];
        }
        ids[(long long)r * maxK + j] = id;
        vals[(long long)r * maxK + j] = v;
    }
}
QVL_REGISTER(qvl_topk)


// sample_sorted draws from the n best-first candidates in st.sortbuf whose prefix sums are in
// st.incl: keep = the shortest prefix of the first lm candidates whose mass reaches topp·z
// (else lm); the draw is the first j < keep whose prefix sum exceeds u·W(keep−1), else keep−1.
__device__ int sample_sorted(unsigned lm, double z, float topp, double u, SelState& st) {
    const int tid = threadIdx.x;
    if (tid == 0) st.bc_u[0] = lm;
    __syncthreads();
    const double xp = (double)topp * z;
    if ((unsigned)tid < lm && st.incl[tid] >= xp) atomicMin(&st.bc_u[0], (unsigned)tid + 1u);
    __syncthreads();
    const unsigned keep = st.bc_u[0];
    const double target = u * st.incl[keep - 1];
    if (tid == 0) st.bc_u[1] = keep - 1u;
    __syncthreads();
    if ((unsigned)tid < keep && st.incl[tid] > target) atomicMin(&st.bc_u[1], (unsigned)tid);
    __syncthreads();
    const int id = (int)~(unsigned)(st.sortbuf[st.bc_u[1]] & 0xffffffffull);
    __syncthreads();
    return id;
}

// mass_of_best returns the mass of the best `count` tokens (count ≥ 1): keys above the count-th
// largest key T plus rank of its ties, all of which weigh the same. *TT, *eqT and *rankT describe T.
template <class KeyFn, class WFn>
__device__ double mass_of_best(KeyFn key, WFn wt, int V, unsigned count, SelState& st, unsigned* TT, unsigned* eqT,
                               unsigned* rankT) {
    unsigned nn;
    const unsigned T = radix_select(key, V, count, st, eqT, rankT, &nn);
    double s = 0.0;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (key(i) > T) s += (double)wt(i);
    s = block_sum_d(s, st);
    if (threadIdx.x == 0) st.cnt = 0xffffffffu;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (key(i) == T) atomicMin(&st.cnt, (unsigned)i);
    __syncthreads();
    const double wT = st.cnt == 0xffffffffu ? 0.0 : (double)wt((int)st.cnt);
    __syncthreads();
    *TT = T;
    return s + (double)(*rankT) * wT;
}

extern "C" __global__ void __launch_bounds__(QVL_SAMPLE_THREADS, 1)
qvl_sample(const float* __restrict__ logits, int V, const float* __restrict__ params, int* __restrict__ out,
           unsigned* __restrict__ done, unsigned* __restrict__ meta, unsigned long long* __restrict__ cand,
           unsigned* err) {
    QVL_PDL_ENTER();
    __shared__ __align__(16) SelState st;
    const int r = blockIdx.x, tid = threadIdx.x, S = (int)gridDim.y, sl = (int)blockIdx.y;
    const float* row = logits + (long long)r * V;
    const float* p = params + 6 * r;  // temperature, top_k (int bits), top_p, min_p, u (f64)
    const float temp = p[0], topp_in = p[2], minp = p[3];
    const int topk = __float_as_int(p[1]);
    const double u = *reinterpret_cast<const double*>(p + 4);
    const bool greedy = temp == 0.f || topk == 1;
    const bool bad = !(temp > 0.f) || topk < 0 || !(u >= 0.0 && u < 1.0);
    const bool filtered = topk > 0 || (topp_in > 0.f && topp_in < 1.f) || minp > 0.f;
    const double invT = 1.0 / (double)temp;

    // Which blocks of the row work depends on the row's parameters only, so it is the same in
    // the row's S blocks: greedy rows and fast-path rows use them all; the other rows are
    // sampled by the row's first block alone (the others return and leave the counter be).
    if (greedy) {
        float bv;
        int bi;
        block_argmax(row_span(row, V, sl, S), st, &bv, &bi);
        if (S == 1) {
            if (tid == 0) out[r] = bi;
            return;
        }
        const long long me = (long long)r * S + sl;
        if (tid == 0) {
            meta[4 * me] = __float_as_uint(bv);
            meta[4 * me + 1] = (unsigned)bi;
        }
        if (!last_of_row(done + r, (unsigned)S, st)) return;
        if (tid == 0) {  // slices in id order: a strict > keeps the lowest id of the best value
            float best = -INFINITY;
            int id = 0;
            for (int q = 0; q < S; q++) {
                const unsigned* mq = meta + 4 * ((long long)r * S + q);
                const float v = __uint_as_float(__ldcg(mq));
                if (v > best) best = v, id = (int)__ldcg(mq + 1);
            }
            out[r] = id;
        }
        return;
    }
    if (bad || !filtered) {
        if (sl > 0) return;
        const RowSpan s = row_span(row, V, 0, 1);
        float mf;
        int best;
        block_argmax(s, st, &mf, &best);
        if (bad) {
            if (tid == 0) {
                qvl_raise(err, QVL_ERR_SAMPLE);
                out[r] = best;
            }
            return;
        }
        const double m = (double)mf;
        auto wt = [&](int i) -> double {
            const float v = row[i];
            return v == v ? exp(((double)v - m) * invT) : 0.0;
        };
        // Unfiltered: inverse CDF over all tokens in id order, one contiguous chunk per thread.
        const int chunk = (V + (int)blockDim.x - 1) / (int)blockDim.x;
        const int lo = qvl_imin(V, tid * chunk), hi = qvl_imin(V, lo + chunk);
        double sum = 0.0;
        int last = -1;
        for (int i = lo; i < hi; i++) {
            const double w = wt(i);
            sum += w;
            if (w != 0.0) last = i;
        }
        const double inc = block_scan_incl(sum, st);
        st.incl[tid] = inc;
        if (tid == 0) st.red_i[0] = -1, st.bc_u[0] = 0xffffffffu;
        __syncthreads();
        atomicMax(&st.red_i[0], last);
        const double target = u * st.incl[blockDim.x - 1];
        if (inc > target) atomicMin(&st.bc_u[0], (unsigned)tid);
        __syncthreads();
        const int lastnz = st.red_i[0] >= 0 ? st.red_i[0] : 0;
        const unsigned owner = st.bc_u[0];
        if (owner == 0xffffffffu) {
            if (tid == 0) out[r] = lastnz;
        } else if ((unsigned)tid == owner) {
            double acc = tid == 0 ? 0.0 : st.incl[tid - 1];
            int res = lastnz;
            for (int i = lo; i < V; i++) {
                const double w = wt(i);
                if (w == 0.0) continue;
                acc += w;
                if (acc > target) {
                    res = i;
                    break;
                }
            }
            out[r] = res;
        }
        return;
    }

    // Filtered: k, top-p (1 when off) and min-p select a best-first prefix.
    const unsigned k = topk > 0 ? (unsigned)qvl_imin(topk, V) : (unsigned)V;
    const float topp = (topp_in > 0.f && topp_in < 1.f) ? topp_in : 1.f;
    // The best min(k, 1024) candidates, sorted, with their prefix sums. With k ≤ 1024 the fast
    // path (the row's S blocks; the last to finish goes on) usually finds them (then every
    // candidate that can be kept is among them, so nn, the number of non-NaN tokens, is not
    // needed); otherwise the exact radix select by one block over the whole row.
    const unsigned kc = k < QVL_TOPK_MAX ? k : QVL_TOPK_MAX;
    unsigned n = 0u, nn = 0u;
    bool have = false;
    float mx;  // the row max (pass 1)
    if (k <= QVL_TOPK_MAX) {
        const unsigned C = select_fast(row, V, k, r, done, meta, cand, st, &mx);
        if (C == QVL_NOT_LAST) return;
        if (C <= QVL_CAND_MAX) {
            have = true;
            n = C < k ? C : k;
            nn = C;  // ≥ n; exact when the bound was −inf (every non-NaN token a candidate)
        }
    } else {
        if (sl > 0) return;
        mx = block_max_f(thread_max(row_span(row, V, 0, 1)), st);
    }
    const double m = mx == mx ? (double)mx : -(double)INFINITY;
    auto key = [&](int i) -> unsigned { return qvl_key(row[i]); };
    auto wt = [&](int i) -> double {
        const float v = row[i];
        return v == v ? exp(((double)v - m) * invT) : 0.0;
    };
    if (!have) {
        unsigned eq, rank;
        const unsigned T = radix_select(key, V, kc, st, &eq, &rank, &nn);
        n = kc < nn ? kc : nn;
        if (n > 0u) collect_sorted(key, V, T, n, rank, eq, st);
    }
    if (n == 0u) {
        if (tid == 0) out[r] = 0;  // every logit is NaN: the argmax's answer
        return;
    }
    double w = 0.0;
    if ((unsigned)tid < n) w = wt((int)~(unsigned)(st.sortbuf[tid] & 0xffffffffull));
    const double inc = block_scan_incl(w, st);
    if ((unsigned)tid < n) st.incl[tid] = inc;
    const unsigned nm = block_sum_u(((unsigned)tid < n && w >= (double)minp) ? 1u : 0u, st);
    __syncthreads();
    // The candidates hold every token that can be kept when they are the whole top-k or every
    // non-NaN token.
    const bool complete = k <= QVL_TOPK_MAX || nn <= QVL_TOPK_MAX;
    // z: the mass of the top-k set, which top-p measures against.
    double z;
    if (complete) {
        z = st.incl[n - 1];  // the candidates are the whole top-k set (or every non-NaN token)
    } else if (k >= (unsigned)V) {
        double s = 0.0;
        for (int i = tid; i < V; i += blockDim.x) s += (double)wt(i);
        z = block_sum_d(s, st);
    } else {
        unsigned Tk, eqk, rk;
        z = mass_of_best(key, wt, V, k, st, &Tk, &eqk, &rk);
    }
    unsigned lm = n;
    bool in_smem = complete;
    if (minp > 0.f) {
        lm = nm > 0u ? nm : 1u;
        if (lm < n) in_smem = true;  // the min-p cut ends inside the candidates
    }
    if (!in_smem) {
        // Does the top-p prefix end inside the candidates?
        if (tid == 0) st.bc_u[2] = 0u;
        __syncthreads();
        if ((unsigned)tid < lm && st.incl[tid] >= (double)topp * z) st.bc_u[2] = 1u;
        __syncthreads();
        in_smem = st.bc_u[2] != 0u;
        __syncthreads();
    }
    if (in_smem) {
        const int id = sample_sorted(lm, z, topp, u, st);
        if (tid == 0) out[r] = id;
        return;
    }

    // General path: the kept prefix is longer than 1024 tokens.
    unsigned keep = k < nn ? k : nn;
    if (minp > 0.f) {
        unsigned cnt = 0u;
        for (int i = tid; i < V; i += blockDim.x)
            if (key(i) != 0u && wt(i) >= minp) cnt++;
        cnt = block_sum_u(cnt, st);
        if (cnt < 1u) cnt = 1u;
        if (cnt < keep) keep = cnt;
    }
    if (topp < 1.f) {
        unsigned Tp, cap, eqp, jp;
        if (mass_select(key, wt, V, (double)topp * z, false, st, &Tp, &cap, &eqp, &jp)) {
            const unsigned lp = cap + jp + 1u;
            if (lp < keep) keep = lp;
        }
    }
    unsigned TL, eqL, rL;
    const double total = mass_of_best(key, wt, V, keep, st, &TL, &eqL, &rL);
    unsigned Td, cad, eqd, jd;
    const bool hit = mass_select(key, wt, V, u * total, true, st, &Td, &cad, &eqd, &jd);
    int id;
    if (hit && cad + jd < keep) id = nth_tie(key, V, Td, eqd, jd, st);
    else id = nth_tie(key, V, TL, eqL, rL - 1u, st);
    if (tid == 0) out[r] = id;
}
QVL_REGISTER(qvl_sample)

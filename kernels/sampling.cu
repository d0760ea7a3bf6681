// sampling.cu — batched top-k and sampling over logits [B, V], one block per row, no full sort.
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
// Fast path (top-k with k ≤ 1024, and every sampling row with 1 ≤ top_k ≤ 1024): two passes.
//   1. Each thread takes the max of its share of the row (16-byte loads, no atomics); the block
//      max of those is the row max. The k-th largest of the 1024 thread maxes, T0, found by a
//      32-step bisection on order-preserving keys with __syncthreads_count, is a lower bound of
//      the row's k-th largest value (the thread maxes are k entries of the row).
//   2. The entries ≥ T0 are collected into shared memory (a ballot per 16 entries; one shared
//      atomic per warp that holds any), at most QVL_CAND_MAX of them, and bitonic-sorted by
//      (value, −id): the best k are the answer. For i.i.d. logits the candidates are barely more
//      than k (top-k 50 of 151,936: about 51, as the row's top 50 seldom share a thread).
// Fallback (k > 1024, or more than QVL_CAND_MAX candidates: many ties, flat rows, k near 1024):
// an exact radix select on the same keys (FlashInfer and PyTorch's top-k do the same): four
// passes of 8-bit digits histogram the row in shared memory and narrow the k-th largest key T;
// one more pass collects the keys > T and the lowest-id ties = T (a radix select on ids breaks
// ties when there are more ties than places); a bitonic sort orders the ≤ 1024 winners.
// Sampling uses the same machinery: with top-k ≤ 1024 (or a top-p/min-p prefix that ends
// inside the best 1024) the kept prefix is sorted in shared memory and its prefix sums are a
// block scan; longer prefixes use "mass selects", radix selects driven by per-bin probability
// mass instead of counts, so nothing larger than 1024 is ever sorted. Greedy rows are one
// argmax pass; unfiltered sampling is one pass of per-thread chunk sums, a block scan and a
// scan of one chunk.
//
// Parameters: six 32-bit words per row: temperature, top_k (an int; 0 = all), top_p, min_p
// (floats) and the draw u as an f64 in the last two.
// Launch: grid (B), block 1024, ~28 KiB static shared memory.
// Floor: each row is read once, 4·V bytes: 64 × 151936 logits are 38.9 MB, 13 µs from DRAM at
// 3 TB/s (the batch fits in H100's 50 MB L2, so the second pass, and a benchmark's repeats, hit
// L2). The fast path reads each row twice: one block streams its 608 KB row per pass, so a pass
// is bound by one SM's load bandwidth (~64 B/clock from L2, ~5 µs) or L2's (~7 µs for the batch);
// with the in-block work (bisection, sort, scans, ~2 µs) about 15 µs for top-k 20 + top-p over
// 64 × 151,936 (issue 6's target: 25 µs).
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
// head + 4·j + c.
struct RowSpan {
    const float* row;
    const float4* vec;
    int V, head, nvec, tail0;
};

__device__ __forceinline__ RowSpan row_span(const float* row, int V) {
    RowSpan s;
    s.row = row;
    s.V = V;
    const int mis = (int)((reinterpret_cast<size_t>(row) >> 2) & 3);
    s.head = qvl_imin((4 - mis) & 3, V);
    s.nvec = (V - s.head) >> 2;
    s.tail0 = s.head + 4 * s.nvec;
    s.vec = reinterpret_cast<const float4*>(row + s.head);
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

// thread_max is the largest non-NaN entry of this thread's share of the row (NaN if none):
// fmaxf returns the other operand when one is NaN.
__device__ float thread_max(const RowSpan& s) {
    const int tid = threadIdx.x, bd = blockDim.x;
    float m = qvl_nanf();
    if (tid < s.head) m = s.row[tid];
    int j = tid;
    for (; j + 3 * bd < s.nvec; j += 4 * bd) {
        const float4 a = qvl_ld4(s.vec + j), b = qvl_ld4(s.vec + j + bd), c = qvl_ld4(s.vec + j + 2 * bd),
                     d = qvl_ld4(s.vec + j + 3 * bd);
        m = fmaxf(m, fmaxf(fmaxf(a.x, a.y), fmaxf(a.z, a.w)));
        m = fmaxf(m, fmaxf(fmaxf(b.x, b.y), fmaxf(b.z, b.w)));
        m = fmaxf(m, fmaxf(fmaxf(c.x, c.y), fmaxf(c.z, c.w)));
        m = fmaxf(m, fmaxf(fmaxf(d.x, d.y), fmaxf(d.z, d.w)));
    }
    for (; j < s.nvec; j += bd) {
        const float4 a = qvl_ld4(s.vec + j);
        m = fmaxf(m, fmaxf(fmaxf(a.x, a.y), fmaxf(a.z, a.w)));
    }
    if (tid < s.V - s.tail0) m = fmaxf(m, s.row[s.tail0 + tid]);
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

// push_cand appends (key(v), id) to st.sortbuf for the lanes with pred (one atomic per warp);
// every lane of the warp calls it. Entries past QVL_CAND_MAX are counted, not stored.
__device__ __forceinline__ void push_cand(bool pred, float v, int id, SelState& st) {
    const unsigned b = __ballot_sync(QVL_FULL_MASK, pred);
    if (b == 0u) return;
    const int lane = threadIdx.x & 31, leader = __ffs((int)b) - 1;
    unsigned base = 0u;
    if (lane == leader) base = atomicAdd(&st.cnt, (unsigned)__popc(b));
    base = __shfl_sync(QVL_FULL_MASK, base, leader);
    if (pred) {
        const unsigned pos = base + (unsigned)__popc(b & ((1u << lane) - 1u));
        if (pos < QVL_CAND_MAX) st.sortbuf[pos] = ((unsigned long long)qvl_key(v) << 32) | (unsigned long long)(~(unsigned)id);
    }
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

// fast_candidates is the fast path's selection given this thread's max tmax (pass 1): it finds
// T0, collects the entries ≥ T0 (pass 2) and, when they fit, sorts them best first into
// st.sortbuf and returns their number (≥ min(k, #non-NaN entries), all the entries ≥ the k-th
// largest); otherwise it returns a number > QVL_CAND_MAX and st.sortbuf holds nothing useful.
// *all is set when T0 = 0, i.e. the candidates are every non-NaN entry. Every thread calls it.
__device__ unsigned fast_candidates(const RowSpan& s, float tmax, unsigned k, SelState& st, bool* all) {
    const unsigned T0 = kth_thread_key(qvl_key(tmax), k);
    *all = T0 == 0u;
    const float f0 = T0 == 0u ? -INFINITY : qvl_key_value(T0);  // key(x) ≥ T0 ⇔ x ≥ f0 for x not NaN
    const int tid = threadIdx.x, lane = tid & 31, bd = blockDim.x;
    if (tid == 0) st.cnt = 0u;
    __syncthreads();
    if (tid < 32) {  // the head and tail entries: warp 0, lanes 0–3 and 8–11
        int id = -1;
        if (lane < s.head) id = lane;
        else if (lane >= 8 && lane - 8 < s.V - s.tail0) id = s.tail0 + lane - 8;
        const float v = id >= 0 ? s.row[id] : qvl_nanf();
        push_cand(v >= f0, v, id, st);
    }
    const float4 none = make_float4(qvl_nanf(), qvl_nanf(), qvl_nanf(), qvl_nanf());
    for (int j0 = tid - lane; j0 < s.nvec; j0 += 4 * bd) {  // uniform in each warp
        float4 a[4];
        bool any = false;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int j = j0 + u * bd + lane;
            a[u] = j < s.nvec ? qvl_ld4(s.vec + j) : none;
        }
#pragma unroll
        for (int u = 0; u < 4; u++) any |= (a[u].x >= f0) | (a[u].y >= f0) | (a[u].z >= f0) | (a[u].w >= f0);
        if (__ballot_sync(QVL_FULL_MASK, any) == 0u) continue;
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int id = s.head + 4 * (j0 + u * bd + lane);
            push_cand(a[u].x >= f0, a[u].x, id, st);
            push_cand(a[u].y >= f0, a[u].y, id + 1, st);
            push_cand(a[u].z >= f0, a[u].z, id + 2, st);
            push_cand(a[u].w >= f0, a[u].w, id + 3, st);
        }
    }
    __syncthreads();
    const unsigned C = st.cnt;
    if (C > QVL_CAND_MAX) {
        __syncthreads();
        return C;
    }
    unsigned P = 1u;
    while (P < C) P <<= 1;
    for (unsigned i = C + tid; i < P; i += bd) st.sortbuf[i] = 0ull;
    bitonic_desc(P, st);
    return C;
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

// block_argmax returns (to every thread) the largest non-NaN value and its lowest index; with
// none larger than −inf it returns (−inf, 0), as the CPU's argmax does. Each thread scans its
// entries in increasing id order (head, its float4s, tail), so a strict > keeps the lowest id.
__device__ __forceinline__ void block_argmax(const RowSpan& s, SelState& st, float* bv, int* bi) {
    const int tid = threadIdx.x, bd = blockDim.x;
    float v = -INFINITY;
    int id = 0;
    if (tid < s.head) {
        const float x = s.row[tid];
        if (x > v) v = x, id = tid;
    }
    for (int j = tid; j < s.nvec; j += bd) {
        const float4 a = qvl_ld4(s.vec + j);
        const int i = s.head + 4 * j;
        if (a.x > v) v = a.x, id = i;
        if (a.y > v) v = a.y, id = i + 1;
        if (a.z > v) v = a.z, id = i + 2;
        if (a.w > v) v = a.w, id = i + 3;
    }
    if (tid < s.V - s.tail0) {
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
         float* __restrict__ vals, unsigned* err) {
    __shared__ __align__(16) SelState st;
    const int r = blockIdx.x;
    const float* row = logits + (long long)r * V;
    const int k = kvec[r];
    if (k <= 0) return;
    if (k > maxK || k > QVL_TOPK_MAX) {
        if (threadIdx.x == 0) qvl_raise(err, QVL_ERR_SAMPLE);
        return;
    }
    const RowSpan s = row_span(row, V);
    bool all;
    unsigned keff = fast_candidates(s, thread_max(s), (unsigned)k, st, &all);
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
           unsigned* err) {
    __shared__ __align__(16) SelState st;
    const int r = blockIdx.x, tid = threadIdx.x;
    const float* row = logits + (long long)r * V;
    const float* p = params + 6 * r;  // temperature, top_k (int bits), top_p, min_p, u (f64)
    const float temp = p[0], topp_in = p[2], minp = p[3];
    const int topk = __float_as_int(p[1]);
    const double u = *reinterpret_cast<const double*>(p + 4);
    const RowSpan s = row_span(row, V);
    const bool greedy = temp == 0.f || topk == 1;
    const bool bad = !(temp > 0.f) || topk < 0 || !(u >= 0.0 && u < 1.0);
    const bool filtered = topk > 0 || (topp_in > 0.f && topp_in < 1.f) || minp > 0.f;
    const double invT = 1.0 / (double)temp;

    if (greedy || bad || !filtered) {
        float mf;
        int best;
        block_argmax(s, st, &mf, &best);
        if (greedy) {
            if (tid == 0) out[r] = best;
            return;
        }
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

    // Filtered: k, top-p (1 when off) and min-p select a best-first prefix. Pass 1: the row max.
    const float tmax = thread_max(s);
    const float mx = block_max_f(tmax, st);
    const double m = mx == mx ? (double)mx : -(double)INFINITY;
    auto key = [&](int i) -> unsigned { return qvl_key(row[i]); };
    auto wt = [&](int i) -> double {
        const float v = row[i];
        return v == v ? exp(((double)v - m) * invT) : 0.0;
    };
    const unsigned k = topk > 0 ? (unsigned)qvl_imin(topk, V) : (unsigned)V;
    const float topp = (topp_in > 0.f && topp_in < 1.f) ? topp_in : 1.f;
    // The best min(k, 1024) candidates, sorted, with their prefix sums. With k ≤ 1024 the fast
    // path usually finds them (then every candidate that can be kept is among them, so nn, the
    // number of non-NaN tokens, is not needed); otherwise the exact radix select.
    const unsigned kc = k < QVL_TOPK_MAX ? k : QVL_TOPK_MAX;
    unsigned n = 0u, nn = 0u;
    bool have = false;
    if (k <= QVL_TOPK_MAX) {
        bool all;
        const unsigned C = fast_candidates(s, tmax, k, st, &all);
        if (C <= QVL_CAND_MAX) {
            have = true;
            n = C < k ? C : k;
            nn = C;  // ≥ n; exact when all
        }
    }
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

// sampling.cu — batched top-k and sampling over logits [B, V], one block per row, no full sort.
//
//   qvl_topk    ids/vals[r, :k[r]] = the k[r] largest logits of row r, best first, ties by lower
//               id; NaN never selected (rows with fewer non-NaN entries pad with id −1, −inf).
//   qvl_sample  out[r] = one token of row r under (temperature, top_k, top_p, min_p, u) with
//               ml.DeviceSampler's semantics (the CPU reference is runtime/sample): greedy is the
//               argmax (lowest id on ties); unfiltered rows draw by inverse CDF over all tokens in
//               id order; filtered rows keep the shortest best-first prefix allowed by top-k,
//               min-p (weight ≥ min_p·best) and top-p (mass ≥ top_p of the top-k mass) and draw
//               by inverse CDF over it best first, the draw being u·(kept mass).
//
// Selection is a radix select on order-preserving 32-bit keys (FlashInfer and PyTorch's top-k
// do the same): four passes of 8-bit digits histogram the row in shared memory and narrow the
// k-th largest key T; one more pass collects the keys > T and the lowest-id ties = T (a radix
// select on ids breaks ties when there are more ties than places); a bitonic sort orders the
// ≤ 1024 winners. Sampling uses the same machinery: with top-k ≤ 1024 (or a top-p/min-p
// prefix that ends inside the best 1024) the kept prefix is sorted in shared memory and its
// prefix sums are a block scan; longer prefixes use "mass selects", radix selects driven by
// per-bin probability mass instead of counts, so nothing larger than 1024 is ever sorted.
// Unfiltered sampling is one pass of per-thread chunk sums, a block scan and a scan of one chunk.
//
// Parameters: six 32-bit words per row: temperature, top_k (an int; 0 = all), top_p, min_p
// (floats) and the draw u as an f64 in the last two.
// Launch: grid (B), block 1024, ~21 KiB static shared memory.
// Floor: each row is read from DRAM once, 4·V bytes: 64 × 151936 logits are 38.9 MB, 13 µs at
// 3 TB/s; the select's other passes hit L2 (the batch's logits fit in H100's 50 MB L2). The
// typical top-k/top-p row costs 5 passes (about 25 µs for the batch today, issue 6's target).
#include "common.cuh"

#define QVL_SAMPLE_THREADS 1024
#define QVL_TOPK_MAX 1024

struct SelState {
    unsigned hist[256];
    double mass[256];
    unsigned long long sortbuf[QVL_TOPK_MAX];
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
// none larger than −inf it returns (−inf, 0), as the CPU's argmax does.
__device__ __forceinline__ void block_argmax(const float* row, int V, SelState& st, float* bv, int* bi) {
    float v = -INFINITY;
    int id = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float x = row[i];
        if (x > v) v = x, id = i;
    }
    if (v == -INFINITY) id = 0x7fffffff;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
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
    auto key = [&](int i) -> unsigned { return qvl_key(row[i]); };
    unsigned eq, rank, nn;
    const unsigned T = radix_select(key, V, (unsigned)k, st, &eq, &rank, &nn);
    const unsigned keff = (unsigned)k < nn ? (unsigned)k : nn;
    if (keff > 0u) collect_sorted(key, V, T, keff, rank, eq, st);
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
    float m;
    int best;
    block_argmax(row, V, st, &m, &best);
    if (temp == 0.f || topk == 1) {
        if (tid == 0) out[r] = best;
        return;
    }
    if (!(temp > 0.f) || topk < 0 || !(u >= 0.0 && u < 1.0)) {
        if (tid == 0) {
            qvl_raise(err, QVL_ERR_SAMPLE);
            out[r] = best;
        }
        return;
    }
    const float invT = 1.f / temp;
    auto key = [&](int i) -> unsigned { return qvl_key(row[i]); };
    auto wt = [&](int i) -> float {
        const float v = row[i];
        return v == v ? expf((v - m) * invT) : 0.f;
    };

    if (!(topk > 0 || (topp_in > 0.f && topp_in < 1.f) || minp > 0.f)) {
        // Unfiltered: inverse CDF over all tokens in id order, one contiguous chunk per thread.
        const int chunk = (V + (int)blockDim.x - 1) / (int)blockDim.x;
        const int lo = qvl_imin(V, tid * chunk), hi = qvl_imin(V, lo + chunk);
        double s = 0.0;
        int last = -1;
        for (int i = lo; i < hi; i++) {
            const float w = wt(i);
            s += (double)w;
            if (w != 0.f) last = i;
        }
        const double inc = block_scan_incl(s, st);
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
                const float w = wt(i);
                if (w == 0.f) continue;
                acc += (double)w;
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
    // The best min(k, 1024) candidates, sorted, with their prefix sums.
    const unsigned kc = k < QVL_TOPK_MAX ? k : QVL_TOPK_MAX;
    unsigned eq, rank, nn;
    const unsigned T = radix_select(key, V, kc, st, &eq, &rank, &nn);
    const unsigned n = kc < nn ? kc : nn;
    if (n == 0u) {
        if (tid == 0) out[r] = best;
        return;
    }
    collect_sorted(key, V, T, n, rank, eq, st);
    double w = 0.0;
    if ((unsigned)tid < n) w = (double)wt((int)~(unsigned)(st.sortbuf[tid] & 0xffffffffull));
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

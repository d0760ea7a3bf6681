// attention.cu — causal paged attention with grouped KV heads over ml.KVLayout's bf16 cache.
//
// Sequence s owns query rows seq_start[s] .. seq_start[s+1]-1, its last qlen tokens: query j
// sits at position ctx−qlen+j and attends to cache positions 0 .. ctx−qlen+j, found through the
// block table (slot = table[t/bs]·bs + t%bs; element (slot, h, d) at ((slot/bs·KV + h)·bs +
// slot%bs)·hd + d). out[row, h, :] = Σ_t softmax_t(scale·q·k_t) v_t with KV head h/(H/KV).
//
// Every kernel also writes out_bf16 = bf16(out) (qvl_f32_to_bf16's bits) when out_bf16 is not
// null: the backend's bf16 copy of out, which the o-projection's MatMul reads instead of
// launching a conversion.
//
// Kernels (the backend launches decode and prefill together on a mixed step; each skips the
// sequences of the other kind):
//
//   qvl_attn_decode_hd{32,64,128,256}_g{1,2,4,8}  sequences with qlen = 1 (vLLM paged_attention_v2
//       shape). Grid (KV heads, sequences, partitions), block 128. One block reads one KV head's
//       pages of one context partition (part tokens, ≤ 1024 for g ≤ 2, else ≤ 512) once for all g ≤ G query heads of
//       its group. hd/8 lanes hold one token (16-byte loads, 8 dims per lane), 32/(hd/8) tokens
//       per warp step; scores go to shared memory, softmax is exact within the partition, and
//       with one partition the block writes the output directly. With several, it writes its
//       normalised partial output and (max, sum), and the last block of its (sequence, KV head)
//       to finish merges them: out = Σ_p e^{m_p−M} l_p o_p / Σ_p e^{m_p−M} l_p (vLLM
//       merge_attn_states, which used to be a launch of its own). "Last" is counted with an
//       atomic per (sequence, KV head) after a __threadfence (the CUDA programming guide's
//       threadfence reduction); the merging block reads the partials through L2 (__ldcg) and
//       puts the counter back to 0 for the next launch. The backend picks part so that the
//       grid has ≥ 2 blocks per SM when it can (batch 1 at context 512 on 132 SMs splits into
//       16 partitions of 32). Batch 1 is a chain of dependent round trips, kept short: the row,
//       context and the partition's block-table entries are read together; q, the first warp
//       step's keys and — when the partition fits one warp step of the block (single pass,
//       ≤ NW·TPW·DU tokens: 64 at hd 128) — its values (cp.async into shared memory, no
//       registers held) together; the merging block copies the partial outputs into shared
//       memory while it reads the (m, l). Same arithmetic in the same order as the plain loops.
//   qvl_attn_decode_pipe_hd128_g{1,2,4,8}  the same with pipelined loops (attn_decode's PIPE; the
//       backend launches them when QVL_CUDA_ATTN_PIPE=1): each warp step's keys or values are
//       copied into shared memory by cp.async while the warp computes the step before, and the
//       values' first steps are in flight through the softmax. Bit for bit the plain kernel.
//   qvl_attn_decode_fold_hd128_g{1,2,4,8}  the plain kernel with qvl_qkv folded in (attn_decode's
//       FOLD; the backend launches them for decode-only steps when QVL_CUDA_QKV_FOLD=1): q is
//       finished from the raw qkv rows in each block, and the new token's k and v are written to
//       the cache by the block whose partition holds it. Bit for bit qvl_qkv then the plain kernel.
//   qvl_attn_prefill_hd{32,64,128}  sequences with qlen ≥ 2 (FlashAttention-2 on mma.sync
//       m16n8k16 bf16 → f32). Grid (⌈max qlen/64⌉, heads, sequences), block 128 (4 warps × 16
//       query rows), dynamic shared memory (64 + 2·64)·(hd+8)·2 bytes (Q, K, V tiles; 52 KiB at
//       hd 128, opted in at load). Q is scaled by scale·log2 e and rounded to bf16; K/V tiles of
//       64 tokens are gathered from the pages through the block table (all of a thread's loads
//       in flight at once); S = Q·Kᵀ, causal mask,
//       online softmax in exp2, O += P·V with P rounded to bf16; chunked prefill over a cached
//       prefix is the same loop starting at position 0.
//   qvl_attn_generic  any head_dim ≤ 256 and any group size: one warp per (row, head), online
//       softmax token by token. The fallback for shapes the templates do not cover.
//
// Floor. Decode is bandwidth: it reads 2·ctx·KV·hd·2 bytes per sequence and layer (2B, ctx
// 512: 2 MiB), 0.7 µs at 3 TB/s; batch 64 at ctx 512 reads 134 MB per layer, 45 µs (1.25 ms
// over 28 layers: as much as a third of the weights' 3.44 GB). Prefill is tensor-core FLOPs:
// 2·2·hd·H·Σ_rows(position+1) per layer; 8 sequences of 512 on the 2B shape is 8.6 GFLOP per
// layer, 11.5 µs at the 748 TFLOP/s bf16 anchor (mma.sync without wgmma reaches perhaps 60% of it).
#include "qkv.cuh"  // common.cuh, and the per-head q/k finishing of qvl_qkv (the FOLD variant)

#define QVL_DECODE_THREADS 128
#define QVL_DECODE_MAX_PART 1024  // the largest partition of any instance (qvl_decode_max_part)
#define QVL_PREFILL_THREADS 128

__device__ __forceinline__ unsigned qvl_ld32(const qvl_bf16* p) { return *reinterpret_cast<const unsigned*>(p); }

// qvl_decode_max_part is the largest partition (and the most partitions) of a decode instance
// with groups of up to GMAX query heads: 1024 tokens for GMAX ≤ 2, 512 above. The scores of a
// partition (lg, GMAX × max part floats) and its pages (tb) are static shared memory, which
// must stay under 48 KB: hd128_g8 takes 47 KB at 512. The backend's decodeMaxPartFor says the
// same. Why 1024: at batch 64 the 2B's grid has 512 blocks with one partition, enough for the
// GPU, and a context just past 512 (every decode step after a 512-token prompt) otherwise
// takes a second, nearly empty partition and the merge.
template <int GMAX>
__host__ __device__ constexpr int qvl_decode_max_part() {
    return GMAX <= 2 ? 1024 : 512;
}


// PIPE selects the pipelined loops (qvl_attn_decode_pipe_hd128_g*, opt-in: QVL_CUDA_ATTN_PIPE=1).
// A warp's keys and values are one sequence of 2·nst steps; every step goes global → shared
// memory by cp.async into one of two stages of the block's vsm (step k into stage k & 1; each
// lane reads back only the 16-byte chunks it copied, so no barrier guards them). The first two
// steps are issued before q is in shared memory; step k+2 is issued as soon as step k has been
// read back and consumed, so step k+1 is in flight while the warp computes step k, and the
// values' first two steps are in flight through the softmax. A single-pass partition issues its
// keys and values together, as the plain kernel does. The score and value loops are the plain
// kernel's arithmetic in the same order, bit for bit.
// QvlFold is the QKV input of the folded decode (attn_decode's FOLD): the per-head norm weights
// (bf16 when flags bit 0 for qn, bit 1 for kn), each row's (t, h, w) positions and cache slot,
// the rotary table (inv_freq, axis; qvl_qkv's), the norm epsilon, and the K and V caches to
// write the new token into. Empty (unused) otherwise.
struct QvlFold {
    const void* qn;
    const void* kn;
    int flags;
    const int* pos;
    const int* slots;
    const double* inv_freq;
    const int* axis;
    float eps;
    qvl_bf16* kw;  // the caches, written (attn_decode's kc and vc: never read back there)
    qvl_bf16* vw;
};

// FOLD (qvl_attn_decode_fold_hd128_g*, opt-in: QVL_CUDA_QKV_FOLD=1) folds qvl_qkv into the
// decode: q is then the raw qkv rows [N, (heads + 2·kv_heads)·HD], and each block computes its
// g query heads from its sequence's row — RMSNorm with qn and rope at the row's positions, by
// qkv.cuh's functions, the arithmetic and order of qvl_qkv — into qs (scaled as the plain kernel
// scales the loaded q). The block whose partition holds the new token (position ctx−1) also
// finishes that token's k (norm with kn, rope) and v for its KV head, writes them to the cache
// at the row's slot as bf16 (as qvl_qkv does), and takes that token's key and value from its own
// shared-memory copy (knv) instead of the cache: its loads need not see its own stores. Block
// (KV head 0, partition 0) raises QVL_ERR_SLOT for a slot outside the cache (nothing is written
// then). Plain loops only (not PIPE); bit for bit qvl_qkv followed by the plain kernel.
template <int HD, int GMAX, bool PIPE, bool FOLD>
__device__ __forceinline__ void attn_decode(float* __restrict__ out, qvl_bf16* __restrict__ out_bf16,
                                            const float* __restrict__ q, const qvl_bf16* __restrict__ kc,
                                            const qvl_bf16* __restrict__ vc, const int* __restrict__ seq_start,
                                            const int* __restrict__ ctx_len, const int* __restrict__ tables,
                                            int max_blocks, int heads, int kv_heads, int bs, int num_blocks, float scale,
                                            int part, int nparts, float* pout, float* pml, unsigned* cnt,
                                            unsigned* err, const QvlFold fo) {
    static_assert(!(FOLD && PIPE), "the folded decode has plain loops");
    constexpr int TPG = HD / 8;    // lanes per token
    constexpr int TPW = 32 / TPG;  // tokens per warp step
    constexpr int NW = QVL_DECODE_THREADS / 32;
    // Loads in flight per lane: 8 at head sizes ≤ 128 (64 B/lane), 4 at 256 or groups of 8 (more
    // registers).
    constexpr int DU = (HD >= 256 || GMAX >= 8) ? 4 : 8;
    constexpr int NV = DU * GMAX;  // partial dot products per lane and warp step
    constexpr int STEP = NW * TPW * DU;  // tokens of one warp step of the whole block
    constexpr int LOG_TPG = HD == 32 ? 2 : HD == 64 ? 3 : HD == 128 ? 4 : 5;
    static_assert((1 << LOG_TPG) == TPG, "TPG is a power of two");
    __shared__ __align__(16) float qs[GMAX][HD];
    constexpr int MAXP = qvl_decode_max_part<GMAX>();
    static_assert(MAXP <= QVL_DECODE_MAX_PART, "QVL_DECODE_MAX_PART bounds every instance");
    __shared__ int tb[MAXP + 1];  // the partition's block-table entries
    __shared__ float lg[GMAX][MAXP];
    __shared__ float red[NW][GMAX];
    __shared__ float stat[2][GMAX];
    __shared__ __align__(16) float accs_[NW][GMAX][HD];  // each warp's partial outputs (not PIPE)
    __shared__ float mst[2][GMAX];  // merge: [1] = Σ_p weights
    // vsm holds one warp step of the block (SLOTS chunks: lane l's u-th at (w·DU + u)·32 + l):
    // single pass, the values; PIPE, two such stages, step k's in stage k & 1. PIPE keeps accs
    // in the stages, which are free by then (a barrier first), and never references accs_.
    constexpr int SLOTS = NW * DU * 32;
    __shared__ uint4 vsm[(PIPE ? 2 : 1) * SLOTS];
    __shared__ int is_last;
    __shared__ __align__(16) qvl_bf16 knv[FOLD ? 2 * HD : 8];  // FOLD: the new token's k, then its v
    static_assert(!PIPE || sizeof(accs_) <= sizeof(vsm), "accs fits the stages");
    float(*accs)[GMAX][HD] = accs_;
    if constexpr (PIPE) accs = reinterpret_cast<float(*)[GMAX][HD]>(vsm);

    const int kvh = blockIdx.x, s = blockIdx.y, p = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int g = heads / kv_heads;
    // Batch 1 is latency: each dependent global round trip costs ~1 µs against 0.7 µs of bytes,
    // so the block issues its reads as early as their addresses allow. The sequence's row, its
    // context and the partition's block-table entries go out together (the entries of tokens
    // t0 .. t0+part−1, bounded by the table row's max_blocks: those past the context are read
    // and never used); q, the first warp step's keys and (single pass) values go out together
    // once those are back.
    const int row = seq_start[s];
    const int qlen = seq_start[s + 1] - row;
    const int ctx = ctx_len[s];
    const int t0 = p * part;
    const int* table = tables + (long long)s * max_blocks;
    // Token t sits in page table[t/bs] at offset t%bs (shifts when bs is a power of two: a
    // division per token was a fifth of the kernel's instructions). The partition's pages are
    // read into shared memory once.
    const bool pow2 = (bs & (bs - 1)) == 0;
    const int shift = __ffs(bs) - 1;
    const int pg0 = pow2 ? (t0 >> shift) : (t0 / bs);
    // part ≤ MAXP: the pages fit tb (≤ part/bs + 1); a bad part is raised below.
    const bool part_ok = part >= 1 && part <= MAXP;
    if (part_ok) {
        const int tl = t0 + part - 1;  // the partition's last token if the context covers it
        const int pend = qvl_imin(max_blocks, (pow2 ? (tl >> shift) : (tl / bs)) + 1);
        for (int i = tid; pg0 + i < pend; i += QVL_DECODE_THREADS) tb[i] = table[pg0 + i];
    }
    if (qlen != 1) return;
    int fslot = 0;
    bool fslot_ok = false;
    if constexpr (FOLD) {
        fslot = fo.slots[row];
        fslot_ok = fslot >= 0 && fslot < num_blocks * bs;
        if (!fslot_ok && kvh == 0 && p == 0 && tid == 0) qvl_raise(err, QVL_ERR_SLOT);
    }
    // ctx > nparts·part: the launch's context bound (MaxCtxLen) is below this sequence's context.
    // nparts > MAXP: the merge's weights would not fit lg (the backend refuses it);
    // !part_ok: the pages would not fit tb (the backend does not launch it).
    if (!part_ok || ctx < 1 || ctx > max_blocks * bs || ctx > nparts * part || nparts > MAXP) {
        if (tid == 0) qvl_raise(err, QVL_ERR_ATTN_SEQ);
        return;
    }
    if (t0 >= ctx) return;
    const int t1 = qvl_imin(ctx, t0 + part);
    // This thread's elements of q (the loop "i = tid; i < GMAX·HD; i += threads"), held in
    // registers until the first warp step's loads are out.
    constexpr int QI = (GMAX * HD + QVL_DECODE_THREADS - 1) / QVL_DECODE_THREADS;
    float qv[QI];
    if constexpr (!FOLD) {
#pragma unroll
        for (int k = 0; k < QI; k++) {
            const int i = tid + k * QVL_DECODE_THREADS, gi = i / HD, d = i % HD;
            qv[k] = 0.f;
            if (i < GMAX * HD && gi < g) qv[k] = q[((long long)row * heads + kvh * g + gi) * HD + d];
        }
    } else {
        // The row's rotary table goes into lg and each warp's scratch into accs (both written
        // only after the barrier below). Warp w finishes tasks w, w + NW, …: the g query heads
        // (into qs, scaled), then, in the new token's partition, its k and its v (into knv and
        // the cache).
        constexpr int HALF = HD / 2;
        float* cs = &lg[0][0];
        float* hbuf = &accs_[w][0][0];
        const int nh = heads + 2 * kv_heads;
        const float* xrow = q + (long long)row * nh * HD;
        const int p0 = fo.pos[3 * row], p1 = fo.pos[3 * row + 1], p2 = fo.pos[3 * row + 2];
        for (int j = tid; j < HALF; j += QVL_DECODE_THREADS) qvl_rope_cs(cs, j, HALF, p0, p1, p2, fo.axis, fo.inv_freq);
        for (int i = g * HD + tid; i < GMAX * HD; i += QVL_DECODE_THREADS) qs[i / HD][i % HD] = 0.f;
        __syncthreads();  // cs
        const bool last = t1 == ctx;  // block-uniform
        const long long dst = fslot_ok ? (((long long)(fslot / bs) * kv_heads + kvh) * bs + fslot % bs) * HD : 0;
        const int ntask = g + (last ? 2 : 0);
        for (int task = w; task < ntask; task += NW) {  // warp-uniform
            const int h = task < g ? kvh * g + task : task == g ? heads + kvh : heads + kv_heads + kvh;
            const float* x = xrow + (long long)h * HD;
            float cur[QVL_QKV_LANE_REGS];
            qvl_qkv_fetch(cur, x, lane, HD);
            if (task < g) {
                qvl_qkv_head(cur, x, hbuf, cs, fo.qn, fo.flags & 1, lane, HD, fo.eps, [&](int j, float o1, float o2) {
                    qs[task][j] = o1 * scale;
                    qs[task][j + HALF] = o2 * scale;
                });
            } else if (task == g) {
                qvl_qkv_head(cur, x, hbuf, cs, fo.kn, (fo.flags >> 1) & 1, lane, HD, fo.eps,
                             [&](int j, float o1, float o2) {
                                 const qvl_bf16 b1 = qvl_f32_to_bf16(o1), b2 = qvl_f32_to_bf16(o2);
                                 knv[j] = b1;
                                 knv[j + HALF] = b2;
                                 if (fslot_ok) {
                                     fo.kw[dst + j] = b1;
                                     fo.kw[dst + j + HALF] = b2;
                                 }
                             });
            } else {
#pragma unroll
                for (int k = 0; k < QVL_QKV_LANE_REGS; ++k) {
                    const int d = lane + 32 * k;
                    if (d < HD) {
                        const qvl_bf16 b = qvl_f32_to_bf16(cur[k]);
                        knv[HD + d] = b;
                        if (fslot_ok) fo.vw[dst + d] = b;
                    }
                }
                for (int d = lane + 32 * QVL_QKV_LANE_REGS; d < HD; d += 32) {
                    const qvl_bf16 b = qvl_f32_to_bf16(x[d]);
                    knv[HD + d] = b;
                    if (fslot_ok) fo.vw[dst + d] = b;
                }
            }
        }
    }
    __syncthreads();  // tb
    // kv_at returns the cache offset of token t's slice for this lane, or −1 when its page is
    // outside the cache.
    auto kv_at = [&](int t) -> long long {
        const int pgi = pow2 ? (t >> shift) : (t / bs);
        const int off = pow2 ? (t & (bs - 1)) : (t - pgi * bs);
        const int blk = tb[pgi - pg0];
        if (blk < 0 || blk >= num_blocks) return -1;
        return (((long long)blk * kv_heads + kvh) * bs + off) * HD;
    };
    const int sub = lane / TPG, c = lane % TPG;
    // addrs fills at[u] with kv_at of the warp step's tokens base + u·TPW + sub (−1 past t1).
    auto addrs = [&](int base, long long(&at)[DU]) {
#pragma unroll
        for (int u = 0; u < DU; u++) {
            const int t = base + u * TPW + sub;
            at[u] = t < t1 ? kv_at(t) : -1;
        }
    };
    // keys loads a warp step's keys into kv (DU 16-byte loads in flight per lane) and, when
    // vals, copies its values into vsm (cp.async: no registers held).
    const int base0 = t0 + w * TPW * DU;
    uint4 kv[DU];
    auto keys = [&](int base, bool vals) {
        long long at[DU];
        addrs(base, at);
#pragma unroll
        for (int u = 0; u < DU; u++) {
            kv[u] = make_uint4(0u, 0u, 0u, 0u);
            if (at[u] >= 0) {
                if constexpr (FOLD) {
                    if (base + u * TPW + sub == ctx - 1) {  // the new token (FOLD): its key from knv,
                        kv[u] = *reinterpret_cast<const uint4*>(knv + c * 8);  // and pv its value
                        continue;
                    }
                }
                kv[u] = *reinterpret_cast<const uint4*>(kc + at[u] + c * 8);
                if (vals) qvl_cp_async16(&vsm[(w * DU + u) * 32 + lane], vc + at[u] + c * 8, 16);
            }
        }
        if (vals) qvl_cp_commit();
    };
    // The first warp step's keys go out before q is in shared memory, and its values with them
    // when the partition fits one step of the block (single pass: batch 1's partitions of ≤
    // STEP tokens), rather than after the softmax.
    const bool one = t1 - t0 <= STEP;  // block-uniform
    // PIPE: this warp's steps of each pass (nst, warp-uniform) are steps k = 0 .. nst−1 (keys)
    // and nst .. 2·nst−1 (values) of one sequence; issue(k) copies step k's chunks into stage
    // k & 1 and commits them as one group (an empty group past the last step, so that
    // qvl_cp_wait<1> always lands step k when step k+1's group is the newest). It returns the
    // mask of the chunks it copied (bit u: at[u] ≥ 0); mk and mk1 are steps k's and k+1's.
    const int nst = base0 < t1 ? (t1 - base0 + STEP - 1) / STEP : 0;
    auto issue = [&](int k) -> unsigned {
        unsigned m = 0;
        if (k < 2 * nst) {
            const bool val = k >= nst;
            long long at[DU];
            addrs(base0 + (val ? k - nst : k) * STEP, at);
            const qvl_bf16* src = val ? vc : kc;
            uint4* dst = vsm + (k & 1) * SLOTS + w * DU * 32 + lane;
#pragma unroll
            for (int u = 0; u < DU; u++) {
                if (at[u] >= 0) {
                    qvl_cp_async16(dst + u * 32, src + at[u] + c * 8, 16);
                    m |= 1u << u;
                }
            }
        }
        qvl_cp_commit();
        return m;
    };
    unsigned mk = 0, mk1 = 0;
    if constexpr (PIPE) {
        mk = issue(0);
        mk1 = issue(1);  // single pass: the values
    } else {
        keys(base0, one);
    }
    if constexpr (!FOLD) {
#pragma unroll
        for (int k = 0; k < QI; k++) {
            const int i = tid + k * QVL_DECODE_THREADS, gi = i / HD, d = i % HD;
            if (i < GMAX * HD) qs[gi][d] = gi < g ? qv[k] * scale : 0.f;
        }
    }
    __syncthreads();  // qs
    float qr[GMAX][8];
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++)
#pragma unroll
        for (int j = 0; j < 8; j++) qr[gi][j] = qs[gi][c * 8 + j];
    // After the transposed reduction below, a lane holds NH of the warp step's NV dot products,
    // always the same (u, gi) pairs: indices hb .. hb+NH−1 (u = index / GMAX, gi = index % GMAX);
    // when NV < TPG several lanes hold each and only "writer" lanes store it.
    constexpr int NH = NV >= TPG ? NV / TPG : 1;
    int hb = 0;
    bool writer = true;
#pragma unroll
    for (int lvl = 0; lvl < LOG_TPG; lvl++) {
        const int o = TPG >> (lvl + 1);
        if ((NV >> lvl) >= 2) {
            if (lane & o) hb += (NV >> lvl) >> 1;
        } else if (lane & o) {
            writer = false;
        }
    }
    float mxh[NH];
#pragma unroll
    for (int j = 0; j < NH; j++) mxh[j] = -INFINITY;

    // Scores: lg[gi][t - t0] = scale · q_gi · k_t. Each warp step covers DU·TPW tokens: every
    // lane issues its DU 16-byte key loads before using them, so that DU loads per lane are in
    // flight at once. The TPG lanes of a token then sum their NV partial dot products with a
    // transposed reduction (each shuffle level halves the values a lane holds: NV/2 + NV/4 + …
    // shuffles instead of NV·log2 TPG).
    // score scores the warp step at base from the keys in kv.
    auto score = [&](int base) {
        float pd[NV];
#pragma unroll
        for (int u = 0; u < DU; u++) {
            float kf[8];
            qvl_unpack8(kv[u], kf);
#pragma unroll
            for (int gi = 0; gi < GMAX; gi++) {
                float dot = 0.f;
#pragma unroll
                for (int j = 0; j < 8; j++) dot += qr[gi][j] * kf[j];
                pd[u * GMAX + gi] = dot;
            }
        }
#pragma unroll
        for (int lvl = 0; lvl < LOG_TPG; lvl++) {
            const int o = TPG >> (lvl + 1);
            const int cur = NV >> lvl;
            if (cur >= 2) {
                const int half = cur >> 1;
                const bool upper = (lane & o) != 0;
#pragma unroll
                for (int j = 0; j < NV / 2; j++) {
                    if (j < half) {
                        const float send = upper ? pd[j] : pd[j + half];
                        const float keep = upper ? pd[j + half] : pd[j];
                        pd[j] = keep + __shfl_xor_sync(QVL_FULL_MASK, send, o);
                    }
                }
            } else {
                pd[0] += __shfl_xor_sync(QVL_FULL_MASK, pd[0], o);
            }
        }
#pragma unroll
        for (int j = 0; j < NH; j++) {
            const int idx = hb + j, u = idx / GMAX, gi = idx % GMAX;
            const int t = base + u * TPW + sub;
            if (t < t1) {
                const bool valid = kv_at(t) >= 0;
                if (!valid && writer) qvl_raise(err, QVL_ERR_ATTN_BLOCK);
                if (writer) lg[gi][t - t0] = valid ? pd[j] : -INFINITY;
                if (valid) mxh[j] = fmaxf(mxh[j], pd[j]);
            }
        }
    };
    if constexpr (PIPE) {
        // Step k's keys are read back from its stage, and step k+2's chunks go into that stage
        // once they are consumed: step k+1 stays in flight while the warp computes.
        for (int k = 0; k < nst; k++) {
            qvl_cp_wait<1>();
            // Every chunk is read and those not copied are zeroed after: loads under a branch
            // each took ptxas from 84 to 123 registers at hd 128, g 2.
            const uint4* sk = vsm + (k & 1) * SLOTS + w * DU * 32 + lane;
#pragma unroll
            for (int u = 0; u < DU; u++) {
                const uint4 x = sk[u * 32];
                const bool on = (mk >> u) & 1u;
                kv[u] = make_uint4(on ? x.x : 0u, on ? x.y : 0u, on ? x.z : 0u, on ? x.w : 0u);
            }
            score(base0 + k * STEP);
            mk = mk1;
            mk1 = issue(k + 2);
        }
    } else {
        // The first step is peeled (its keys are in kv already), so that no key registers stay
        // live around the loop.
        if (base0 < t1) score(base0);  // warp-uniform
        for (int base = base0 + STEP; base < t1; base += STEP) {
            keys(base, false);
            score(base);
        }
    }
    float mx[GMAX];
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++) {
        mx[gi] = -INFINITY;
#pragma unroll
        for (int j = 0; j < NH; j++)  // a select, not a branch: mx stays in registers (never NaN)
            mx[gi] = fmaxf(mx[gi], (hb + j) % GMAX == gi ? mxh[j] : -INFINITY);
    }
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++) {
        const float m = qvl_warp_max(mx[gi]);
        if (lane == 0) red[w][gi] = m;
    }
    __syncthreads();
    if (tid < GMAX) {
        float m = -INFINITY;
        for (int ww = 0; ww < NW; ww++) m = fmaxf(m, red[ww][tid]);
        stat[0][tid] = m;
    }
    __syncthreads();
    // Probabilities (unnormalised) and their sums.
    float ls[GMAX];
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++) ls[gi] = 0.f;
    for (int i = tid; i < t1 - t0; i += QVL_DECODE_THREADS) {
#pragma unroll
        for (int gi = 0; gi < GMAX; gi++) {
            if (gi < g) {
                const float e = expf(lg[gi][i] - stat[0][gi]);
                lg[gi][i] = e;
                ls[gi] += e;
            }
        }
    }
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++) {
        const float sm = qvl_warp_sum(ls[gi]);
        if (lane == 0) red[w][gi] = sm;
    }
    __syncthreads();
    if (tid < GMAX) {
        float l = 0.f;
        for (int ww = 0; ww < NW; ww++) l += red[ww][tid];
        stat[1][tid] = l;
    }
    __syncthreads();
    // Values: acc[gi][j] = Σ_t p_gi,t · v_t[c·8 + j] over this lane's tokens.
    float acc[GMAX][8];
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[gi][j] = 0.f;
    // pv accumulates the warp step at base, its values read from vsm (single pass: each lane
    // reads back only what it copied) or from the cache (DU loads in flight, as above).
    auto pv = [&](int base, bool from_vsm) {
        long long at[DU];
        addrs(base, at);
        uint4 vv[DU];
#pragma unroll
        for (int u = 0; u < DU; u++) {
            vv[u] = make_uint4(0u, 0u, 0u, 0u);
            if (at[u] >= 0) {
                if constexpr (FOLD) {
                    if (base + u * TPW + sub == ctx - 1) {  // the new token (FOLD): its value from knv
                        vv[u] = *reinterpret_cast<const uint4*>(knv + HD + c * 8);
                        continue;
                    }
                }
                vv[u] = from_vsm ? vsm[(w * DU + u) * 32 + lane] : *reinterpret_cast<const uint4*>(vc + at[u] + c * 8);
            }
        }
#pragma unroll
        for (int u = 0; u < DU; u++) {
            if (at[u] >= 0) {
                const int t = base + u * TPW + sub;
                float vf[8];
                qvl_unpack8(vv[u], vf);
#pragma unroll
                for (int gi = 0; gi < GMAX; gi++) {
                    const float pr = lg[gi][t - t0];
#pragma unroll
                    for (int j = 0; j < 8; j++) acc[gi][j] += pr * vf[j];
                }
            }
        }
    };
    if constexpr (PIPE) {
        for (int k = nst; k < 2 * nst; k++) {
            qvl_cp_wait<1>();
            const int base = base0 + (k - nst) * STEP;
            const uint4* sv = vsm + (k & 1) * SLOTS + w * DU * 32 + lane;
#pragma unroll
            for (int u = 0; u < DU; u++) {
                if ((mk >> u) & 1u) {
                    const int t = base + u * TPW + sub;
                    float vf[8];
                    qvl_unpack8(sv[u * 32], vf);
#pragma unroll
                    for (int gi = 0; gi < GMAX; gi++) {
                        const float pr = lg[gi][t - t0];
#pragma unroll
                        for (int j = 0; j < 8; j++) acc[gi][j] += pr * vf[j];
                    }
                }
            }
            mk = mk1;
            mk1 = issue(k + 2);
        }
    } else if (one) {  // block-uniform
        qvl_cp_wait<0>();
        if (base0 < t1) pv(base0, true);  // warp-uniform
    } else {
        for (int base = base0; base < t1; base += STEP) pv(base, false);
    }
#pragma unroll
    for (int gi = 0; gi < GMAX; gi++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int o = 16; o >= TPG; o >>= 1) acc[gi][j] += __shfl_xor_sync(QVL_FULL_MASK, acc[gi][j], o);
    if constexpr (PIPE) __syncthreads();  // every warp is done with the stages that accs reuses
    if (lane < TPG) {
#pragma unroll
        for (int gi = 0; gi < GMAX; gi++)
#pragma unroll
            for (int j = 0; j < 8; j++) accs[w][gi][c * 8 + j] = acc[gi][j];
    }
    __syncthreads();
    for (int i = tid; i < g * HD; i += QVL_DECODE_THREADS) {
        const int gi = i / HD, d = i % HD;
        float o = 0.f;
#pragma unroll
        for (int ww = 0; ww < NW; ww++) o += accs[ww][gi][d];
        const float l = stat[1][gi];
        const int h = kvh * g + gi;
        if (nparts == 1) {
            const long long oi = ((long long)row * heads + h) * HD + d;
            const float v = o / l;
            out[oi] = v;
            if (out_bf16) out_bf16[oi] = qvl_f32_to_bf16(v);
        } else {
            const long long pi = ((long long)row * heads + h) * nparts + p;
            pout[pi * HD + d] = o / l;
            if (d == 0) {
                pml[2 * pi] = stat[0][gi];
                pml[2 * pi + 1] = l;
            }
        }
    }
    if (nparts == 1) return;  // block-uniform

    // Split-K: the last of the np blocks of (s, kvh) to get here merges the partitions. Each
    // thread makes its partial results visible to the whole device before thread 0 counts
    // the block; the counter goes back to 0 for the next launch (the blocks with t0 ≥ ctx
    // returned above and are not counted).
    const int np = (ctx + part - 1) / part;
    unsigned* done = cnt + (long long)s * kv_heads + kvh;
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        const unsigned prev = atomicAdd(done, 1u);
        is_last = prev == (unsigned)(np - 1);
        if (is_last) *done = 0u;
    }
    __syncthreads();
    if (!is_last) return;  // block-uniform
    __threadfence();
    // The partial outputs of the first npf partitions are copied into shared memory (vsm, done
    // with: pos[pp][gi][d]) by cp.async while the (m, l) are read: their addresses do not depend
    // on the weights, and the copies hold no registers. The rest are read in the last loop.
    constexpr int MPF = NW * DU * 32 * 4 / (GMAX * HD);  // vsm's floats per (gi, d): 16 at hd 128, g 2
    static_assert(MPF >= 1, "vsm holds one partition's outputs");
    float* pos = reinterpret_cast<float*>(vsm);
    const int npf = qvl_imin(np, MPF), q4 = g * HD / 4;
    // A lane's first partition's (m, l) of its warp's first head (m0, l0; below for the others)
    // go out first; a warp without a head (w ≥ g) reads nothing.
    auto ml0 = [&](int gi, float& m0, float& l0) {
        const long long pi = ((long long)row * heads + kvh * g + gi) * nparts + lane;
        m0 = -INFINITY;
        l0 = 0.f;
        if (gi < g && lane < np) {
            m0 = __ldcg(pml + 2 * pi);
            l0 = __ldcg(pml + 2 * pi + 1);
        }
    };
    float m0, l0;
    ml0(w, m0, l0);
    for (int i = tid; i < npf * q4; i += QVL_DECODE_THREADS) {
        const int pp = i / q4, e = 4 * (i - pp * q4), gi = e / HD, d = e % HD;
        qvl_cp_async16(pos + pp * g * HD + e, pout + (((long long)row * heads + kvh * g + gi) * nparts + pp) * HD + d, 16);
    }
    qvl_cp_commit();
    // The merge reads every partition's (m, l) and output in parallel: warp w takes heads
    // w, w+NW, ...; its lanes read the partitions' (m, l) side by side, reduce M and the weight
    // sum with shuffles and leave each partition's weight e^{m_p−M}·l_p / Σ in lg (free now;
    // np ≤ MAXP because the backend keeps ctx ≤ MAXP partitions of ≤ MAXP). A
    // loop of one L2 read at a time per partition used to take ~20 µs at 16 partitions. A lane
    // keeps its first partition's (m, l) from the first read (m0, l0): one round trip when
    // np ≤ 32.
    for (int gi = w; gi < g; gi += NW) {  // warp-uniform
        const long long base = ((long long)row * heads + kvh * g + gi) * nparts;
        if (gi != w) ml0(gi, m0, l0);
        float m = -INFINITY;
        for (int pp = lane; pp < np; pp += 32) m = fmaxf(m, pp == lane ? m0 : __ldcg(pml + 2 * (base + pp)));
        m = qvl_warp_max(m);
        float wsum = 0.f;
        for (int pp = lane; pp < np; pp += 32) {
            const float mp = pp == lane ? m0 : __ldcg(pml + 2 * (base + pp));
            const float lp = pp == lane ? l0 : __ldcg(pml + 2 * (base + pp) + 1);
            const float wp = expf(mp - m) * lp;
            lg[gi][pp] = wp;
            wsum += wp;
        }
        wsum = qvl_warp_sum(wsum);
        if (lane == 0) mst[1][gi] = wsum;
    }
    qvl_cp_wait<0>();
    __syncthreads();  // lg, mst, pos
    for (int i = tid; i < g * HD; i += QVL_DECODE_THREADS) {
        const int gi = i / HD, d = i % HD;
        const int h = kvh * g + gi;
        const long long base = ((long long)row * heads + h) * nparts;
        float o = 0.f;
        for (int pp = 0; pp < npf; pp++) o += lg[gi][pp] * pos[pp * g * HD + i];
#pragma unroll 8
        for (int pp = npf; pp < np; pp++) o += lg[gi][pp] * __ldcg(pout + (base + pp) * HD + d);
        const long long oi = ((long long)row * heads + h) * HD + d;
        const float v = o / mst[1][gi];
        out[oi] = v;
        if (out_bf16) out_bf16[oi] = qvl_f32_to_bf16(v);
    }
}

#define QVL_DECODE_ARGS                                                                                              \
    float *__restrict__ out, qvl_bf16 *__restrict__ out_bf16, const float *__restrict__ q,                           \
        const qvl_bf16 *__restrict__ kc, const qvl_bf16 *__restrict__ vc, const int *__restrict__ seq_start,        \
        const int *__restrict__ ctx_len, const int *__restrict__ tables, int max_blocks, int heads, int kv_heads,    \
        int bs, int num_blocks, float scale, int part, int nparts, float *pout, float *pml, unsigned *cnt,          \
        unsigned *err

// QVL_DECODE_BOUNDS(NAME, HD, G, PIPE, bounds...) defines NAME, attn_decode<HD, G, PIPE>, with
// __launch_bounds__(bounds...).
#define QVL_DECODE_BOUNDS(NAME, HD, G, PIPE, ...)                                                                  \
    extern "C" __global__ void __launch_bounds__(__VA_ARGS__) NAME(QVL_DECODE_ARGS) {                               \
        QVL_PDL_ENTER();                                                                                            \
        attn_decode<HD, G, PIPE, false>(out, out_bf16, q, kc, vc, seq_start, ctx_len, tables, max_blocks, heads,    \
                                        kv_heads, bs, num_blocks, scale, part, nparts, pout, pml, cnt, err,         \
                                        QvlFold());                                                                 \
    }                                                                                                               \
    QVL_REGISTER(NAME)
#define QVL_DECODE(HD, G) QVL_DECODE_BOUNDS(qvl_attn_decode_hd##HD##_g##G, HD, G, false, QVL_DECODE_THREADS)
// Groups of 8 ask for 4 blocks an SM (≤ 128 registers): left to itself ptxas 11.8 gives
// hd128_g8 168 (3 blocks). hd128_g2 (plain and folded: the 2B's decode) asks for 6: with the
// 1024-token partitions' shared memory ptxas took 123 and 127 registers (4 blocks), with the
// bound 80 and no spills (6 blocks, 34 KB of shared memory each). The others keep ptxas's own
// choice (asking for 1 block or for 4 makes it take ~125 registers where it now takes 72–80).
#define QVL_DECODE_G8(HD) QVL_DECODE_BOUNDS(qvl_attn_decode_hd##HD##_g8, HD, 8, false, QVL_DECODE_THREADS, 4)
// The pipelined variant, qvl_attn_decode_pipe_hd<HD>_g<G> (the Qwen3-VL shapes only: hd 128,
// groups 1 to 8); the bounds as above.
#define QVL_DECODE_PIPE(HD, G, ...) QVL_DECODE_BOUNDS(qvl_attn_decode_pipe_hd##HD##_g##G, HD, G, true, __VA_ARGS__)

QVL_DECODE(32, 1)
QVL_DECODE(32, 2)
QVL_DECODE(32, 4)
QVL_DECODE_G8(32)
QVL_DECODE(64, 1)
QVL_DECODE(64, 2)
QVL_DECODE(64, 4)
QVL_DECODE_G8(64)
QVL_DECODE(128, 1)
QVL_DECODE_BOUNDS(qvl_attn_decode_hd128_g2, 128, 2, false, QVL_DECODE_THREADS, 6)
QVL_DECODE(128, 4)
QVL_DECODE_G8(128)
QVL_DECODE(256, 1)
QVL_DECODE(256, 2)
QVL_DECODE(256, 4)
QVL_DECODE_PIPE(128, 1, QVL_DECODE_THREADS)
QVL_DECODE_PIPE(128, 2, QVL_DECODE_THREADS)
QVL_DECODE_PIPE(128, 4, QVL_DECODE_THREADS)
QVL_DECODE_PIPE(128, 8, QVL_DECODE_THREADS, 4)

// QVL_DECODE_FOLD(HD, G, bounds...) defines qvl_attn_decode_fold_hd<HD>_g<G>, attn_decode<HD, G,
// false, FOLD>: QVL_DECODE_ARGS with q the raw qkv rows, then QvlFold's inputs (the caches' write
// pointers are kc and vc). The Qwen3-VL shapes only (hd 128, groups 1 to 8: the file is built
// twice, and every instance is PTX); the bounds as the plain kernel's.
#define QVL_DECODE_FOLD(HD, G, ...)                                                                                \
    extern "C" __global__ void __launch_bounds__(__VA_ARGS__) qvl_attn_decode_fold_hd##HD##_g##G(                  \
        QVL_DECODE_ARGS, const void* __restrict__ qn, const void* __restrict__ kn, int flags,                      \
        const int* __restrict__ pos, const int* __restrict__ slots, const double* __restrict__ inv_freq,           \
        const int* __restrict__ axis, float eps) {                                                                 \
        QVL_PDL_ENTER();                                                                                           \
        const QvlFold fo = {qn, kn, flags, pos, slots, inv_freq, axis, eps, const_cast<qvl_bf16*>(kc),             \
                            const_cast<qvl_bf16*>(vc)};                                                            \
        attn_decode<HD, G, false, true>(out, out_bf16, q, kc, vc, seq_start, ctx_len, tables, max_blocks, heads,   \
                                        kv_heads, bs, num_blocks, scale, part, nparts, pout, pml, cnt, err, fo);   \
    }                                                                                                              \
    QVL_REGISTER(qvl_attn_decode_fold_hd##HD##_g##G)

QVL_DECODE_FOLD(128, 1, QVL_DECODE_THREADS)
QVL_DECODE_FOLD(128, 2, QVL_DECODE_THREADS, 6)
QVL_DECODE_FOLD(128, 4, QVL_DECODE_THREADS)
QVL_DECODE_FOLD(128, 8, QVL_DECODE_THREADS, 4)

template <int HD>
__device__ __forceinline__ void attn_prefill(float* __restrict__ out, qvl_bf16* __restrict__ out_bf16,
                                             const float* __restrict__ q, const qvl_bf16* __restrict__ kc,
                                             const qvl_bf16* __restrict__ vc,
                                             const int* __restrict__ seq_start, const int* __restrict__ ctx_len,
                                             const int* __restrict__ tables, int max_blocks, int heads, int kv_heads,
                                             int bs, int num_blocks, float scale_log2, unsigned* err) {
    constexpr int BQ = 64, BKV = 64, LD = HD + 8, NT = QVL_PREFILL_THREADS;
    QVL_DYN_SMEM(qvl_bf16, sm);
    qvl_bf16* Qs = sm;
    qvl_bf16* Ks = sm + BQ * LD;
    qvl_bf16* Vs = Ks + BKV * LD;
    const int qt = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int row0 = seq_start[s], qlen = seq_start[s + 1] - row0;
    if (qlen < 2) return;
    const int q0 = qt * BQ;
    if (q0 >= qlen) return;
    const int ctx = ctx_len[s];
    if (ctx < qlen || ctx > max_blocks * bs) {
        if (tid == 0) qvl_raise(err, QVL_ERR_ATTN_SEQ);
        return;
    }
    const int kvh = h / (heads / kv_heads);
    const int* table = tables + (long long)s * max_blocks;

    for (int e = tid; e < BQ * (HD / 4); e += NT) {
        const int r = e / (HD / 4), c4 = e % (HD / 4);
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (q0 + r < qlen) v = *reinterpret_cast<const float4*>(q + ((long long)(row0 + q0 + r) * heads + h) * HD + c4 * 4);
        uint2 pk;
        pk.x = qvl_pack_bf16(v.x * scale_log2, v.y * scale_log2);
        pk.y = qvl_pack_bf16(v.z * scale_log2, v.w * scale_log2);
        *reinterpret_cast<uint2*>(Qs + r * LD + c4 * 4) = pk;
    }
    const int r0 = warp * 16 + g, r1 = r0 + 8;
    const int base_pos = ctx - qlen;
    const int pos0 = q0 + r0 < qlen ? base_pos + q0 + r0 : -1;
    const int pos1 = q0 + r1 < qlen ? base_pos + q0 + r1 : -1;
    const int kv_end = base_pos + qvl_imin(qlen, q0 + BQ);

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    // K/V tiles: each thread issues all its PER 16-byte loads of K and of V before storing any
    // (one round trip per tile where a loop of dependent loads cost PER). Prefetching the next
    // tile into registers during the math as well took 254 registers (2 blocks an SM instead of
    // 3 at 164); the other resident blocks hide the round trip instead.
    constexpr int PER = BKV * (HD / 8) / NT;
    static_assert(PER * NT == BKV * (HD / 8), "the tile divides among the threads");
    const bool pow2 = (bs & (bs - 1)) == 0;
    const int shift = __ffs(bs) - 1;
    uint4 kn[PER], vn[PER];
    auto fetch = [&](int kvs) {
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int e = tid + i * NT, r = e / (HD / 8), c = e % (HD / 8);
            const int t = kvs + r;
            kn[i] = make_uint4(0u, 0u, 0u, 0u);
            vn[i] = make_uint4(0u, 0u, 0u, 0u);
            if (t < kv_end) {
                const int pgi = pow2 ? (t >> shift) : (t / bs);
                const int blk = table[pgi];
                if (blk >= 0 && blk < num_blocks) {
                    const int off = pow2 ? (t & (bs - 1)) : (t - pgi * bs);
                    const long long at = (((long long)blk * kv_heads + kvh) * bs + off) * HD + c * 8;
                    kn[i] = *reinterpret_cast<const uint4*>(kc + at);
                    vn[i] = *reinterpret_cast<const uint4*>(vc + at);
                } else {
                    qvl_raise(err, QVL_ERR_ATTN_BLOCK);
                }
            }
        }
    };
    for (int kv0 = 0; kv0 < kv_end; kv0 += BKV) {
        fetch(kv0);
        __syncthreads();  // the previous tile is consumed (and, the first time, Q is stored)
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int e = tid + i * NT, r = e / (HD / 8), c = e % (HD / 8);
            *reinterpret_cast<uint4*>(Ks + r * LD + c * 8) = kn[i];
            *reinterpret_cast<uint4*>(Vs + r * LD + c * 8) = vn[i];
        }
        __syncthreads();

        float sc[BKV / 8][4];
#pragma unroll
        for (int i = 0; i < BKV / 8; i++) sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
            unsigned a[4];
            a[0] = qvl_ld32(Qs + r0 * LD + kk * 16 + 2 * t4);
            a[1] = qvl_ld32(Qs + r1 * LD + kk * 16 + 2 * t4);
            a[2] = qvl_ld32(Qs + r0 * LD + kk * 16 + 8 + 2 * t4);
            a[3] = qvl_ld32(Qs + r1 * LD + kk * 16 + 8 + 2 * t4);
#pragma unroll
            for (int nt = 0; nt < BKV / 8; ++nt) {
                const qvl_bf16* kr = Ks + (nt * 8 + g) * LD + kk * 16 + 2 * t4;
                unsigned b[2];
                b[0] = qvl_ld32(kr);
                b[1] = qvl_ld32(kr + 8);
                qvl_mma_bf16(sc[nt], a, b);
            }
        }
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int nt = 0; nt < BKV / 8; ++nt) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int col = kv0 + nt * 8 + 2 * t4 + j;
                if (col > pos0) sc[nt][j] = -INFINITY;
                if (col > pos1) sc[nt][2 + j] = -INFINITY;
                mx0 = fmaxf(mx0, sc[nt][j]);
                mx1 = fmaxf(mx1, sc[nt][2 + j]);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(QVL_FULL_MASK, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(QVL_FULL_MASK, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(QVL_FULL_MASK, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(QVL_FULL_MASK, mx1, 2));
        const float mu0 = mx0 == -INFINITY ? 0.f : mx0;
        const float mu1 = mx1 == -INFINITY ? 0.f : mx1;
        const float al0 = exp2f(m0 - mu0), al1 = exp2f(m1 - mu1);
        m0 = mx0;
        m1 = mx1;
        l0 *= al0;
        l1 *= al1;
#pragma unroll
        for (int i = 0; i < HD / 8; i++) {
            o[i][0] *= al0;
            o[i][1] *= al0;
            o[i][2] *= al1;
            o[i][3] *= al1;
        }
#pragma unroll
        for (int nt = 0; nt < BKV / 8; ++nt) {
            sc[nt][0] = exp2f(sc[nt][0] - mu0);
            sc[nt][1] = exp2f(sc[nt][1] - mu0);
            sc[nt][2] = exp2f(sc[nt][2] - mu1);
            sc[nt][3] = exp2f(sc[nt][3] - mu1);
            l0 += sc[nt][0] + sc[nt][1];
            l1 += sc[nt][2] + sc[nt][3];
        }
#pragma unroll
        for (int kk = 0; kk < BKV / 16; ++kk) {
            unsigned a[4];
            a[0] = qvl_pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
            a[1] = qvl_pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
            a[2] = qvl_pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            a[3] = qvl_pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
            for (int nt = 0; nt < HD / 8; ++nt) {
                const qvl_bf16* vr = Vs + (kk * 16 + 2 * t4) * LD + nt * 8 + g;
                unsigned b[2];
                b[0] = qvl_pack_raw(vr[0], vr[LD]);
                b[1] = qvl_pack_raw(vr[8 * LD], vr[9 * LD]);
                qvl_mma_bf16(o[nt], a, b);
            }
        }
    }
    l0 += __shfl_xor_sync(QVL_FULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(QVL_FULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(QVL_FULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(QVL_FULL_MASK, l1, 2);
    if (pos0 >= 0) {
        const long long oi = ((long long)(row0 + q0 + r0) * heads + h) * HD + 2 * t4;
#pragma unroll
        for (int nt = 0; nt < HD / 8; ++nt) {
            const float a = o[nt][0] / l0, b = o[nt][1] / l0;
            out[oi + nt * 8] = a;
            out[oi + nt * 8 + 1] = b;
            if (out_bf16) *reinterpret_cast<unsigned*>(out_bf16 + oi + nt * 8) = qvl_pack_bf16(a, b);
        }
    }
    if (pos1 >= 0) {
        const long long oi = ((long long)(row0 + q0 + r1) * heads + h) * HD + 2 * t4;
#pragma unroll
        for (int nt = 0; nt < HD / 8; ++nt) {
            const float a = o[nt][2] / l1, b = o[nt][3] / l1;
            out[oi + nt * 8] = a;
            out[oi + nt * 8 + 1] = b;
            if (out_bf16) *reinterpret_cast<unsigned*>(out_bf16 + oi + nt * 8) = qvl_pack_bf16(a, b);
        }
    }
}

#define QVL_PREFILL(HD)                                                                                           \
    extern "C" __global__ void __launch_bounds__(QVL_PREFILL_THREADS) qvl_attn_prefill_hd##HD(                    \
        float* __restrict__ out, qvl_bf16* __restrict__ out_bf16, const float* __restrict__ q,                    \
        const qvl_bf16* __restrict__ kc, const qvl_bf16* __restrict__ vc, const int* __restrict__ seq_start,     \
        const int* __restrict__ ctx_len, const int* __restrict__ tables, int max_blocks, int heads, int kv_heads, \
        int bs, int num_blocks, float scale_log2, unsigned* err) {                                                \
        QVL_PDL_ENTER();                                                                                          \
        attn_prefill<HD>(out, out_bf16, q, kc, vc, seq_start, ctx_len, tables, max_blocks, heads, kv_heads, bs,   \
                         num_blocks, scale_log2, err);                                                            \
    }                                                                                                             \
    QVL_REGISTER(qvl_attn_prefill_hd##HD)

QVL_PREFILL(32)
QVL_PREFILL(64)
QVL_PREFILL(128)

extern "C" __global__ void __launch_bounds__(32)
qvl_attn_generic(float* __restrict__ out, qvl_bf16* __restrict__ out_bf16, const float* __restrict__ q,
                 const qvl_bf16* __restrict__ kc, const qvl_bf16* __restrict__ vc, const int* __restrict__ seq_start, const int* __restrict__ ctx_len,
                 const int* __restrict__ tables, int max_blocks, int num_seqs, int heads, int kv_heads, int hd, int bs,
                 int num_blocks, float scale, unsigned* err) {
    QVL_PDL_ENTER();
    const int r = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {  // the last sequence whose first row is ≤ r
        const int mid = (lo + hi + 1) / 2;
        if (seq_start[mid] <= r) lo = mid;
        else hi = mid - 1;
    }
    const int s = lo;
    const int row0 = seq_start[s], qlen = seq_start[s + 1] - row0, ctx = ctx_len[s];
    if (r < row0 || r >= row0 + qlen || ctx < qlen || ctx > max_blocks * bs) {
        if (lane == 0) qvl_raise(err, QVL_ERR_ATTN_SEQ);
        return;
    }
    const int pos = ctx - qlen + (r - row0);
    const int kvh = h / (heads / kv_heads);
    const int* table = tables + (long long)s * max_blocks;
    float qv[8], acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        qv[i] = d < hd ? q[((long long)r * heads + h) * hd + d] * scale : 0.f;
        acc[i] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    for (int t = 0; t <= pos; t++) {
        const int blk = table[t / bs];
        if (blk < 0 || blk >= num_blocks) {
            if (lane == 0) qvl_raise(err, QVL_ERR_ATTN_BLOCK);
            continue;
        }
        const long long off = (((long long)blk * kv_heads + kvh) * bs + t % bs) * hd;
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int d = lane + 32 * i;
            if (d < hd) dot += qv[i] * qvl_bf16_to_f32(kc[off + d]);
        }
        dot = qvl_warp_sum(dot);
        const float mn = fmaxf(m, dot);
        const float al = expf(m - mn), pe = expf(dot - mn);
        l = l * al + pe;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int d = lane + 32 * i;
            if (d < hd) acc[i] = acc[i] * al + pe * qvl_bf16_to_f32(vc[off + d]);
        }
        m = mn;
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int d = lane + 32 * i;
        if (d < hd) {
            const long long oi = ((long long)r * heads + h) * hd + d;
            const float v = acc[i] / l;
            out[oi] = v;
            if (out_bf16) out_bf16[oi] = qvl_f32_to_bf16(v);
        }
    }
}
QVL_REGISTER(qvl_attn_generic)

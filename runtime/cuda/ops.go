package cuda

import (
	"fmt"
	"math"
	"os"
	"sync/atomic"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// Thread counts of the kernels (the .cu files' launch bounds).
const (
	normThreads = 256
	rowThreads  = 256
	qkvMaxWarps = 32
	// qkvDecodeTokens is the most tokens a launch of qvl_qkv gets a warp per head for.
	qkvDecodeTokens = 256
	qkvPrefillWarps = 4
	attnThreads     = 128
	embedThreads    = 256
	sampleThreads   = 1024
	decodeMaxPart   = 1024 // attention.cu's QVL_DECODE_MAX_PART; per instance decodeMaxPartFor
	decodeMinPart   = 32
	prefillTile     = 64
	genericMaxHead  = 256
)

func isBF16(t ml.Tensor) bool { return t.DType() == ml.BF16 }

// envEmbedBK picks the K slice of EmbedProject's GEMMs: "64" launches qvl_embed_bk64 (K slices
// of 64 in 3 stages, 108 KiB of shared memory) instead of qvl_embed (32 in 4, 80 KiB); unset
// or "32" keeps qvl_embed. It is read once, when a backend opens. Opt-in until a GPU run has
// measured it: the GPU benchmark times both kernels whatever it says (bench_test.go).
const envEmbedBK = "QVL_EMBED_BK"

// embedBK64FromEnv reports whether envEmbedBK asks for K slices of 64; a value other than
// unset, 32 and 64 is an error.
func embedBK64FromEnv() (bool, error) {
	switch v := os.Getenv(envEmbedBK); v {
	case "", "32":
		return false, nil
	case "64":
		return true, nil
	default:
		return false, fmt.Errorf("cuda: %s=%q: want 32 or 64", envEmbedBK, v)
	}
}

// embedPhase selects the phases a launch of qvl_embed runs (kernels/embed.cu's header): all
// of them, except in the GPU benchmark's breakdown (bench_test.go), which sets
// Backend.embedPhase; the product never does.
type embedPhase int

const (
	// embedAllPhases runs the whole kernel.
	embedAllPhases embedPhase = iota
	// embedOnlyAB runs phases A and B (source map, lists, GEMM1 into mid) and stops.
	embedOnlyAB
	// embedOnlyC runs phase C alone (GEMM2, the scatter, the copies), without a grid barrier,
	// on the mid, source map and lists that the previous launch with the same arguments left.
	embedOnlyC
)

// Debug bits of qvl_embed's flags (QVL_EMBED_ONLY_AB, QVL_EMBED_ONLY_C).
const (
	embedFlagOnlyAB = 16
	embedFlagOnlyC  = 32
)

// EmbedProject implements ml.Backend. Steps with custom embeddings take one of two paths
// (embedUsesGEMMs): the fused one, a single launch of qvl_embed (kernels/embed.cu; qvl_embed_bk64
// with QVL_EMBED_BK=64) that runs the projector's GEMMs on its own tensor-core tiles, or the
// GEMM path (project.go), which runs them on cuBLASLt and the rest in three small launches.
func (b *Backend) EmbedProject(out ml.Tensor, a ml.EmbedArgs) error {
	const op = "EmbedProject"
	if err := ml.CheckEmbed(out, a); err != nil {
		return err
	}
	if err := b.owns(op, out, a.Tokens, a.Table, a.Visual, a.VisualIdx, a.Custom, a.CustomIdx, a.CustomSrc); err != nil {
		return err
	}
	n, h := a.Tokens.Shape()[0], a.Table.Shape()[1]
	vocab := a.Table.Shape()[0]
	if n == 0 || h == 0 {
		return nil
	}
	nv := 0
	if a.VisualIdx != nil {
		nv = a.VisualIdx.Shape()[0]
	}
	nc, ne, d, hid, k := 0, 0, 0, 0, 0
	var p *ml.Projector
	if a.CustomIdx != nil && a.CustomIdx.Shape()[0] > 0 {
		p = a.Projector
		if err := b.owns(op, p.FC1, p.B1, p.FC2, p.B2); err != nil {
			return err
		}
		nc, ne = a.CustomIdx.Shape()[0], a.Custom.Shape()[0]
		hid, d, k = p.FC1.Shape()[0], p.FC1.Shape()[1], p.K
		if ne == 0 {
			return fmt.Errorf("%s: %d custom rows but no custom embeddings", op, nc)
		}
	}
	flags := 0
	if isBF16(a.Table) {
		flags |= 1
	}
	switch b.embedPhase {
	case embedOnlyAB:
		flags |= embedFlagOnlyAB
	case embedOnlyC:
		flags |= embedFlagOnlyC
	}
	kernel, kernelSmem := kEmbed, embedSmem
	if b.embedBK64 {
		kernel, kernelSmem = kEmbedBK64, embedSmemBK64
	}
	maps := nv > 0 || nc > 0
	grid := min(n, 4*b.info.sms)
	if maps {
		grid = b.info.persistent
	}
	return b.dev.do(func() error {
		b.stale(out)
		var fc1, fc2, b1, b2 uintptr
		if nc > 0 {
			var err error
			if fc1, err = b.bf16Ptr(p.FC1.(*Tensor)); err != nil {
				return err
			}
			if fc2, err = b.bf16Ptr(p.FC2.(*Tensor)); err != nil {
				return err
			}
			b1, b2 = ptr(p.B1), ptr(p.B2)
			if isBF16(p.B1) {
				flags |= 2
			}
			if isBF16(p.B2) {
				flags |= 4
			}
			if p.TanhGELU {
				flags |= 8
			}
		}
		if err := b.ensure(&b.embedInts, 4*(n+ne*k+nc)); err != nil {
			return err
		}
		if nc > 0 && b.embedUsesGEMMs(ne) {
			return b.embedGEMMPath(embedPtrs{out: ptr(out), tokens: ptr(a.Tokens), table: ptr(a.Table), visual: ptr(a.Visual),
				visualIdx: ptr(a.VisualIdx), custom: ptr(a.Custom), customIdx: ptr(a.CustomIdx), customSrc: ptr(a.CustomSrc)},
				embedGEMMArgs{n: n, h: h, vocab: vocab, nv: nv, nc: nc, ne: ne, d: d, hid: hid, k: k,
					fc1: fc1, b1: b1, fc2: fc2, b2: b2, flags: flags})
		}
		smem := 0
		if nc > 0 {
			// mid [ne × hid] bf16, then custom rounded to bf16 [ne × d] from the next 16-byte boundary.
			if err := b.ensure(&b.embedMid, 2*((ne*hid+7)/8*8+ne*d)); err != nil {
				return err
			}
			smem = kernelSmem
		}
		b.a.reset().ptr(ptr(out)).i32(n).i32(h).ptr(ptr(a.Tokens)).ptr(ptr(a.Table)).i32(vocab).
			ptr(ptr(a.Visual)).ptr(ptr(a.VisualIdx)).i32(nv).
			ptr(ptr(a.Custom)).ptr(ptr(a.CustomIdx)).ptr(ptr(a.CustomSrc)).i32(nc).i32(ne).i32(d).i32(hid).i32(k).
			ptr(fc1).ptr(b1).ptr(fc2).ptr(b2).i32(flags).
			ptr(b.embedInts.p).ptr(b.embedMid.p).ptr(b.bar).ptr(b.dev.errFlags())
		return b.launch(kernel, d1(max(grid, 1)), d1(embedThreads), smem)
	})
}

// MatMul implements ml.Backend: x rounded to bf16 is multiplied by a bf16 w (f32 accumulation)
// with qvl_gemv when x has at most gemvMaxRows rows (decode steps; gemv.go) and with cuBLASLt
// otherwise; an f32 w takes an f32 GEMM on x as it is. The bf16 x is the copy its producer
// wrote (copies.go) when that is current, else qvl_f32_to_bf16 makes it in a scratch buffer.
func (b *Backend) MatMul(out, x, w ml.Tensor) error {
	if err := ml.CheckMatMul(out, x, w); err != nil {
		return err
	}
	if err := b.owns("MatMul", out, x, w); err != nil {
		return err
	}
	n, k, m := x.Shape()[0], x.Shape()[1], w.Shape()[0]
	if n == 0 || m == 0 {
		return nil
	}
	return b.dev.do(func() error {
		// x's copy is looked up before out's goes stale (the GEMM writes out after reading x).
		xc, ok := b.currentCopy(x)
		b.stale(out)
		if k == 0 {
			return b.dev.memset32(ptr(out), 0, n*m)
		}
		if !isBF16(w) {
			return b.linear(n, m, k, false, ptr(x), ptr(w), ptr(out))
		}
		if ok {
			return b.matmulBF16(n, m, k, xc, ptr(w), ptr(out))
		}
		if err := b.ensure(&b.xbf, 2*n*k); err != nil {
			return err
		}
		if err := b.convertBF16(ptr(x), b.xbf.p, n*k); err != nil {
			return err
		}
		return b.matmulBF16(n, m, k, b.xbf.p, ptr(w), ptr(out))
	})
}

// RMSNorm implements ml.Backend (qvl_rmsnorm, one block per row).
func (b *Backend) RMSNorm(out, x, w ml.Tensor, eps float32) error {
	if err := ml.CheckRMSNorm(out, x, w); err != nil {
		return err
	}
	if err := b.owns("RMSNorm", out, x, w); err != nil {
		return err
	}
	rows, h := x.Shape()[0], x.Shape()[1]
	if rows == 0 || h == 0 {
		return nil
	}
	return b.dev.do(func() error {
		obf, err := b.copyFor(out)
		if err != nil {
			return err
		}
		b.a.reset().ptr(ptr(out)).ptr(ptr(x)).ptr(ptr(w)).flag(isBF16(w)).i32(h).f32(eps).ptr(obf)
		if err := b.launch(kRMSNorm, d1(rows), d1(normThreads), 0); err != nil {
			return err
		}
		b.produced(out, obf)
		return nil
	})
}

// AddRMSNorm implements ml.Backend (qvl_add_rmsnorm, one block per row).
func (b *Backend) AddRMSNorm(out, x, delta, w ml.Tensor, eps float32) error {
	if err := ml.CheckAddRMSNorm(out, x, delta, w); err != nil {
		return err
	}
	if err := b.owns("AddRMSNorm", out, x, delta, w); err != nil {
		return err
	}
	rows, h := x.Shape()[0], x.Shape()[1]
	if rows == 0 || h == 0 {
		return nil
	}
	return b.dev.do(func() error {
		// x is written in place (the residual sum) before out: if they share memory, out's
		// normalised values, and their copy, are what stays.
		b.stale(x)
		obf, err := b.copyFor(out)
		if err != nil {
			return err
		}
		b.a.reset().ptr(ptr(out)).ptr(ptr(x)).ptr(ptr(delta)).ptr(ptr(w)).flag(isBF16(w)).i32(h).f32(eps).ptr(obf)
		if err := b.launch(kAddRMSNorm, d1(rows), d1(normThreads), 0); err != nil {
			return err
		}
		b.produced(out, obf)
		return nil
	})
}

// SwiGLU implements ml.Backend (qvl_swiglu).
func (b *Backend) SwiGLU(out, gu ml.Tensor) error {
	if err := ml.CheckSwiGLU(out, gu); err != nil {
		return err
	}
	if err := b.owns("SwiGLU", out, gu); err != nil {
		return err
	}
	rows, inter := out.Shape()[0], out.Shape()[1]
	if rows == 0 || inter == 0 {
		return nil
	}
	return b.dev.do(func() error {
		obf, err := b.copyFor(out)
		if err != nil {
			return err
		}
		b.a.reset().ptr(ptr(out)).ptr(ptr(gu)).i32(rows).i32(inter).ptr(obf)
		grid := swigluGrid(rows, inter, swigluVector(ptr(out), ptr(gu), obf, inter), b.info.sms)
		if err := b.launch(kSwiGLU, d1(grid), d1(rowThreads), 0); err != nil {
			return err
		}
		b.produced(out, obf)
		return nil
	})
}

// swigluBlocksPerSM is qvl_swiglu's resident blocks per multiprocessor, the minimum its launch
// bounds ask for (QVL_SWIGLU_BLOCKS_PER_SM in kernels/activation.cu: ≤ 64 registers).
const swigluBlocksPerSM = 4

// swigluVector reports whether qvl_swiglu takes its 4-element path for these pointers (out,
// gu, and the bf16 copy obf or 0) and intermediate size: the kernel's own test, so that the
// grid counts the units the kernel walks.
func swigluVector(out, gu, obf uintptr, inter int) bool {
	return inter%4 == 0 && (out|gu)%16 == 0 && obf%8 == 0
}

// swigluGrid is qvl_swiglu's grid: a 256-thread block per 256 units (4 elements each on the
// vector path, 1 otherwise), at most swigluBlocksPerSM a multiprocessor, so that a prefill's
// grid-stride blocks are all resident at once (more would leave a second, partial wave) and a
// decode step's rows take one unit a thread.
func swigluGrid(rows, inter int, vector bool, sms int) int {
	units := rows * inter
	if vector {
		units /= 4
	}
	return max(1, min((units+rowThreads-1)/rowThreads, swigluBlocksPerSM*sms))
}

// ScatterAdd implements ml.Backend (qvl_scatter_add_rows; duplicate indices add up).
func (b *Backend) ScatterAdd(x, rows, idx ml.Tensor) error {
	if err := ml.CheckScatterAdd(x, rows, idx); err != nil {
		return err
	}
	if err := b.owns("ScatterAdd", x, rows, idx); err != nil {
		return err
	}
	r, h := rows.Shape()[0], x.Shape()[1]
	if r == 0 || h == 0 {
		return nil
	}
	return b.dev.do(func() error {
		b.stale(x)
		b.a.reset().ptr(ptr(x)).ptr(ptr(rows)).ptr(ptr(idx)).i32(h).i32(x.Shape()[0]).ptr(b.dev.errFlags())
		return b.launch(kScatterAdd, d1(r), d1(rowThreads), 0)
	})
}

// Gather implements ml.Backend (qvl_gather_rows).
func (b *Backend) Gather(out, x, idx ml.Tensor) error {
	if err := ml.CheckGather(out, x, idx); err != nil {
		return err
	}
	if err := b.owns("Gather", out, x, idx); err != nil {
		return err
	}
	r, h := idx.Shape()[0], x.Shape()[1]
	if r == 0 || h == 0 {
		return nil
	}
	return b.dev.do(func() error {
		obf, err := b.copyFor(out)
		if err != nil {
			return err
		}
		b.a.reset().ptr(ptr(out)).ptr(ptr(x)).ptr(ptr(idx)).i32(h).i32(x.Shape()[0]).ptr(b.dev.errFlags()).ptr(obf)
		if err := b.launch(kGather, d1(r), d1(rowThreads), 0); err != nil {
			return err
		}
		b.produced(out, obf)
		return nil
	})
}

// QKV implements ml.Backend (qvl_qkv, one block per token).
func (b *Backend) QKV(qkv ml.Tensor, a ml.QKVArgs) error {
	const op = "QKV"
	if err := ml.CheckQKV(qkv, a); err != nil {
		return err
	}
	if err := b.owns(op, qkv, a.Q, a.QNorm, a.KNorm, a.Pos, a.Slots, a.K, a.V); err != nil {
		return err
	}
	if a.K.DType() != ml.BF16 || a.V.DType() != ml.BF16 {
		return fmt.Errorf("%s: the CUDA cache must be bf16, got k %s and v %s", op, a.K.DType(), a.V.DType())
	}
	n := qkv.Shape()[0]
	if n == 0 {
		return nil
	}
	flags := 0
	if isBF16(a.QNorm) {
		flags |= 1
	}
	if isBF16(a.KNorm) {
		flags |= 2
	}
	hd, l := a.HeadDim, a.Layout
	return b.dev.do(func() error {
		b.stale(a.Q)
		tab, err := b.ropeTable(a.Rope, hd)
		if err != nil {
			return err
		}
		half := hd / 2
		b.a.reset().ptr(ptr(qkv)).ptr(ptr(a.Q)).ptr(ptr(a.QNorm)).ptr(ptr(a.KNorm)).i32(flags).
			ptr(ptr(a.Pos)).ptr(ptr(a.Slots)).ptr(ptr(a.K)).ptr(ptr(a.V)).ptr(tab).ptr(tab + uintptr(8*half)).
			i32(a.Heads).i32(a.KVHeads).i32(hd).i32(l.BlockSize).i32(l.NumBlocks).f32(a.Eps).ptr(b.dev.errFlags())
		threads := qkvThreads(n, a.Heads+2*a.KVHeads)
		smem := (threads/32 + 1) * hd * 4
		return b.launch(kQKV, d1(n), d1(threads), smem)
	})
}

// qkvThreads is qvl_qkv's block size for n tokens of heads heads (q, k and v together). A
// decode step's few tokens get one warp per head (up to 32 warps), so that every head's loads
// are in flight at once: on the H100 that took the batch-64 step's qkv from 355 to 207 µs. A
// prefill's thousands of blocks get 4 warps, as measured before that change: the prefill
// benchmark went from ~130.5k to ~125k tokens/s in the run that brought 1024-thread blocks to
// every step (their cos/sin table is computed by 64 threads while the rest wait, and only two
// such blocks fit an SM).
func qkvThreads(n, heads int) int {
	if n > qkvDecodeTokens {
		return 32 * qkvPrefillWarps
	}
	return 32 * min(heads, qkvMaxWarps)
}

// envAttnPipe set to 1 makes decode attention launch the pipelined instances where they exist
// (qvl_attn_decode_pipe_hd128_g*: each warp's next step of keys or values is in flight while it
// computes, and the values' first steps through the softmax; bit for bit the plain kernel). It
// is read once, at start-up. Off by default until a GPU run has measured it (written and checked
// on the CPU emulation only); the GPU benchmark's attention rows time both kernels whatever it
// says, the op tests run both, and scripts/gpu-check.sh's opt-in goldens, benchmark and 2B run
// have it on.
const envAttnPipe = "QVL_CUDA_ATTN_PIPE"

// attnPipeOn is set when envAttnPipe is "1".
var attnPipeOn atomic.Bool

func init() { attnPipeOn.Store(os.Getenv(envAttnPipe) == "1") }

// decodePipe reports whether Attention launches the pipelined decode instances: b.attnPipe
// when set (tests and the benchmark), else envAttnPipe.
func (b *Backend) decodePipe() bool {
	if b.attnPipe != 0 {
		return b.attnPipe > 0
	}
	return attnPipeOn.Load()
}

// decodeMaxPartFor is the largest partition, and the most partitions, of the decode instances
// for groups of g query heads (attention.cu's qvl_decode_max_part): 1024 tokens up to groups of
// 2, 512 above (their scores' shared memory would pass 48 KB).
func decodeMaxPartFor(g int) int {
	if g <= 2 {
		return 1024
	}
	return 512
}

// decodePartition chooses the split-K partition of decode attention: maxPart tokens
// (decodeMaxPartFor), halved (down to decodeMinPart) while the grid would have fewer than two
// blocks per SM, so that a small batch still spreads its context over the GPU. A large batch
// keeps whole contexts of up to maxPart in one block each: at batch 64 on the 2B the sixth H100
// run's decode steps, at contexts just past 512, split every sequence into a 512-token
// partition and a nearly empty one plus the merge (~71 µs a layer against 56.8 µs at exactly
// 512, one partition).
func decodePartition(kvHeads, seqs, ctx, sms, maxPart int) (part, nparts int) {
	part = maxPart
	for part > decodeMinPart && kvHeads*seqs*((ctx+part-1)/part) < 2*sms {
		part /= 2
	}
	return part, max(1, (ctx+part-1)/part)
}

// decodeSplit chooses the split-K partition of a decode launch over nb sequences of n query
// rows and context bound maxCtx (decodePartition, or b.decodePart when set) and makes the
// scratch of its merge ready: the partial outputs, their (max, sum) and the zeroed arrival
// counters. Run inside do.
func (b *Backend) decodeSplit(op string, n, nb, heads, kvHeads, hd, maxCtx int) (part, nparts int, err error) {
	maxPart := decodeMaxPartFor(heads / kvHeads)
	if b.decodeMaxPart > 0 {
		maxPart = min(maxPart, b.decodeMaxPart)
	}
	part, nparts = decodePartition(kvHeads, nb, maxCtx, b.info.sms, maxPart)
	if b.decodePart > 0 {
		part = min(b.decodePart, maxPart)
		nparts = (maxCtx + part - 1) / part
	}
	if nparts > maxPart {
		// The kernel's merge keeps one weight per partition in an array of maxPart entries.
		return 0, 0, fmt.Errorf("%s: context %d is above the decode kernel's %d tokens", op, maxCtx, maxPart*maxPart)
	}
	if nparts > 1 {
		if err := b.ensure(&b.part, 4*n*heads*nparts*hd); err != nil {
			return 0, 0, err
		}
		if err := b.ensure(&b.partML, 8*n*heads*nparts); err != nil {
			return 0, 0, err
		}
		// One arrival counter per (sequence, KV head); zero between launches.
		if err := b.ensureZeroed(&b.partDone, 4*nb*kvHeads); err != nil {
			return 0, 0, err
		}
	}
	return part, nparts, nil
}

// Attention implements ml.Backend: qvl_attn_decode_* for sequences with one query row (split-K
// when the context spans several partitions, merged by the last block of each sequence and KV
// head, in the same launch) and qvl_attn_prefill_* (tensor cores) for the others;
// qvl_attn_generic for shapes the templates do not cover. Every kernel writes out's bf16 copy.
func (b *Backend) Attention(out, q ml.Tensor, a ml.AttnArgs) error {
	const op = "Attention"
	if err := ml.CheckAttention(out, q, a); err != nil {
		return err
	}
	if err := b.owns(op, out, q, a.K, a.V, a.SeqStart, a.CtxLen, a.BlockTables); err != nil {
		return err
	}
	if a.K.DType() != ml.BF16 || a.V.DType() != ml.BF16 {
		return fmt.Errorf("%s: the CUDA cache must be bf16, got k %s and v %s", op, a.K.DType(), a.V.DType())
	}
	n, nb := q.Shape()[0], a.NumSeqs
	if n == 0 || nb == 0 {
		return nil
	}
	hd, l := a.HeadDim, a.Layout
	if hd > genericMaxHead {
		return fmt.Errorf("%s: head_dim %d is above the supported %d", op, hd, genericMaxHead)
	}
	maxBlocks := a.BlockTables.Shape()[1]
	ctxBound := maxBlocks * l.BlockSize
	maxCtx := a.MaxCtxLen
	if maxCtx <= 0 || maxCtx > ctxBound {
		maxCtx = ctxBound
	}
	maxQ := a.MaxQueryLen
	if maxQ <= 0 || maxQ > n {
		maxQ = n
	}
	g := a.Heads / a.KVHeads
	dec, okDec := decodeKernel(hd, g)
	if pipe, ok := decodePipeKernel(hd, g); ok && b.decodePipe() {
		dec = pipe
	}
	pre, okPre := prefillKernel(hd)
	generic := !okDec || (maxQ > 1 && !okPre)
	errs := b.dev.errFlags()
	var obf uintptr
	common := func() *kargs {
		return b.a.reset().ptr(ptr(out)).ptr(obf).ptr(ptr(q)).ptr(ptr(a.K)).ptr(ptr(a.V)).ptr(ptr(a.SeqStart)).
			ptr(ptr(a.CtxLen)).ptr(ptr(a.BlockTables)).i32(maxBlocks)
	}
	return b.dev.do(func() error {
		var err error
		if obf, err = b.copyFor(out); err != nil {
			return err
		}
		if generic {
			common().i32(nb).i32(a.Heads).i32(a.KVHeads).i32(hd).i32(l.BlockSize).i32(l.NumBlocks).f32(a.Scale).ptr(errs)
			if err := b.launch(kAttnGeneric, dim3{n, a.Heads, 1}, d1(32), 0); err != nil {
				return err
			}
			b.produced(out, obf)
			return nil
		}
		part, nparts, err := b.decodeSplit(op, n, nb, a.Heads, a.KVHeads, hd, maxCtx)
		if err != nil {
			return err
		}
		common().i32(a.Heads).i32(a.KVHeads).i32(l.BlockSize).i32(l.NumBlocks).f32(a.Scale).i32(part).i32(nparts).
			ptr(b.part.p).ptr(b.partML.p).ptr(b.partDone.p).ptr(errs)
		if err := b.launch(dec, dim3{a.KVHeads, nb, nparts}, d1(attnThreads), 0); err != nil {
			return err
		}
		if maxQ > 1 {
			common().i32(a.Heads).i32(a.KVHeads).i32(l.BlockSize).i32(l.NumBlocks).f32(a.Scale * math.Log2E).ptr(errs)
			grid := dim3{(maxQ + prefillTile - 1) / prefillTile, a.Heads, nb}
			if err := b.launch(pre, grid, d1(attnThreads), prefillSmem(hd)); err != nil {
				return err
			}
		}
		b.produced(out, obf)
		return nil
	})
}

package cuda

import (
	"fmt"
	"os"
	"sync/atomic"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// The folded decode op (ml.QKVAttender) on attention.cu's attn_decode<…, FOLD>.
//
// At decode each layer runs qvl_qkv (per-head norm and rope of q and k, k and v into the cache)
// and then the decode attention, which reads q back: one launch (~2–4 µs of latency at batch 1
// on the H100) and q's round trip through memory. qvl_attn_decode_fold_hd128_g* compute each
// block's query heads from the raw qkv row (qkv.cuh's functions: qvl_qkv's arithmetic in its
// order), and the block whose partition holds the new token also finishes that token's k and v,
// writes them to the cache and uses its own copy of them. Bit for bit qvl_qkv followed by the
// plain decode kernel (the attention output and the cache); Q is left unwritten. Steps with a
// prefill row, other head sizes and groups above 8 run the two ops.

// envQKVFold is the environment variable that, set to 0, turns the folded decode off; it is
// read once, when the package loads. On by default since the sixth H100 run (commit 0a9af8d,
// docs/perf-log.md): in one process, decode steps with graphs were 5.7% faster at batch 1 and
// 2.1% faster at batch 64 with it than without, and its op tests and the goldens passed on the
// GPU. The ablation of the benchmark keeps timing the steps without it.
const envQKVFold = "QVL_CUDA_QKV_FOLD"

// qkvFoldOn is set unless envQKVFold is "0" (tests set it to compare both paths).
var qkvFoldOn atomic.Bool

func init() { qkvFoldOn.Store(os.Getenv(envQKVFold) != "0") }

// foldHeadDim is the head size of the folded decode instances,
// qvl_attn_decode_fold_hd128_g{1,2,4,8}: Qwen3-VL's.
const foldHeadDim = 128

// kFoldFirst is the first folded decode instance (group decodeGroups[0]), after the pipelined ones.
var kFoldFirst = kDecodePipeFirst + kernelID(len(decodeGroups))

// foldKernel returns the folded decode instance for head size hd and group size g (the
// smallest instantiated group ≥ g), or false when none covers them.
func foldKernel(hd, g int) (kernelID, bool) { return groupKernel(kFoldFirst, foldHeadDim, hd, g) }

// foldable reports whether QKVAttention runs as one folded launch: the fold is on, every one of
// the n rows is its own sequence's single query row (a decode-only step: n = NumSeqs and
// MaxQueryLen 1), both ops describe the same heads, cache and layout, and a folded instance
// exists for the head size and group.
func foldable(n int, qa ml.QKVArgs, aa ml.AttnArgs) (kernelID, bool) {
	if !qkvFoldOn.Load() || n == 0 || n != aa.NumSeqs || aa.MaxQueryLen != 1 {
		return 0, false
	}
	if qa.Heads != aa.Heads || qa.KVHeads != aa.KVHeads || qa.HeadDim != aa.HeadDim || qa.Layout != aa.Layout ||
		ptr(qa.K) != ptr(aa.K) || ptr(qa.V) != ptr(aa.V) || aa.KVHeads <= 0 || aa.Heads%aa.KVHeads != 0 {
		return 0, false
	}
	return foldKernel(aa.HeadDim, aa.Heads/aa.KVHeads)
}

// QKVAttention implements ml.QKVAttender: one launch of qvl_attn_decode_fold_hd128_g* for a
// decode-only step unless envQKVFold is "0" (qa.Q is then left unwritten), else QKV and Attention.
func (b *Backend) QKVAttention(out, qkv ml.Tensor, qa ml.QKVArgs, aa ml.AttnArgs) error {
	const op = "QKVAttention"
	if err := ml.CheckQKV(qkv, qa); err != nil {
		return err
	}
	if err := ml.CheckAttention(out, qa.Q, aa); err != nil {
		return err
	}
	k, ok := foldable(qkv.Shape()[0], qa, aa)
	if !ok {
		return ml.QKVAttentionOps(b, out, qkv, qa, aa)
	}
	if err := b.owns(op, out, qkv, qa.Q, qa.QNorm, qa.KNorm, qa.Pos, qa.Slots, qa.K, qa.V, aa.SeqStart, aa.CtxLen,
		aa.BlockTables); err != nil {
		return err
	}
	if qa.K.DType() != ml.BF16 || qa.V.DType() != ml.BF16 {
		return fmt.Errorf("%s: the CUDA cache must be bf16, got k %s and v %s", op, qa.K.DType(), qa.V.DType())
	}
	n, nb, hd, l := qkv.Shape()[0], aa.NumSeqs, aa.HeadDim, aa.Layout
	maxBlocks := aa.BlockTables.Shape()[1]
	maxCtx := aa.MaxCtxLen
	if ctxBound := maxBlocks * l.BlockSize; maxCtx <= 0 || maxCtx > ctxBound {
		maxCtx = ctxBound
	}
	flags := 0
	if isBF16(qa.QNorm) {
		flags |= 1
	}
	if isBF16(qa.KNorm) {
		flags |= 2
	}
	return b.dev.do(func() error {
		obf, err := b.copyFor(out)
		if err != nil {
			return err
		}
		tab, err := b.ropeTable(qa.Rope, hd)
		if err != nil {
			return err
		}
		part, nparts, err := b.decodeSplit(op, n, nb, aa.Heads, aa.KVHeads, hd, maxCtx)
		if err != nil {
			return err
		}
		b.a.reset().ptr(ptr(out)).ptr(obf).ptr(ptr(qkv)).ptr(ptr(aa.K)).ptr(ptr(aa.V)).ptr(ptr(aa.SeqStart)).
			ptr(ptr(aa.CtxLen)).ptr(ptr(aa.BlockTables)).i32(maxBlocks).
			i32(aa.Heads).i32(aa.KVHeads).i32(l.BlockSize).i32(l.NumBlocks).f32(aa.Scale).i32(part).i32(nparts).
			ptr(b.part.p).ptr(b.partML.p).ptr(b.partDone.p).ptr(b.dev.errFlags()).
			ptr(ptr(qa.QNorm)).ptr(ptr(qa.KNorm)).i32(flags).ptr(ptr(qa.Pos)).ptr(ptr(qa.Slots)).
			ptr(tab).ptr(tab + uintptr(8*(hd/2))).f32(qa.Eps)
		if err := b.launch(k, dim3{aa.KVHeads, nb, nparts}, d1(attnThreads), 0); err != nil {
			return err
		}
		b.produced(out, obf)
		return nil
	})
}

var _ ml.QKVAttender = (*Backend)(nil)

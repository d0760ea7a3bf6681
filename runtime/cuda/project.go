package cuda

import (
	"fmt"
	"math"
)

// The projector's GEMM path of EmbedProject. qvl_embed computes the projection of the custom
// embeddings, Y = fc2(gelu(fc1(custom) + b1)) + b2, on its own mma.sync tiles inside one
// persistent launch: no launches in between, but on the H100 it took 117 µs for 256 embeddings
// of the 2B's projector, where cuBLASLt ran the same two GEMMs in 44 µs (its kernels use
// Hopper's wgmma and TMA, which the compute_80 PTX cannot). So from embedGEMMMinNe embeddings
// on, the backend runs the GEMMs on cuBLASLt and the rest in three launches of kernels/embed.cu
// sized to their data (no persistent grid, no grid barrier):
//
//	cbf = bf16(custom); srcmap = 0          qvl_embed_prep
//	h1  = cbf·fc1ᵀ                          cuBLASLt, f32 out
//	mid = bf16(gelu(h1 + b1)); winners      qvl_embed_gelu (GEMM1's epilogue in qvl_embed; the
//	                                        atomicMax of each row's visual and custom writers)
//	Y   = mid·fc2ᵀ                          cuBLASLt, f32 out
//	rows: text, visual, Y[e, k·H:(k+1)·H] + b2   qvl_embed_rows
//
// The arithmetic is qvl_embed's (bf16 operands, f32 accumulation, the same epilogues) up to the
// order in which the GEMMs sum over K, so the two paths agree to f32 rounding of those sums;
// text and visual rows, the winners and the device errors are the same.

// embedPath is EmbedProject's choice of path for custom embeddings.
type embedPath int

const (
	// embedAuto picks by the number of embeddings (embedUsesGEMMs).
	embedAuto embedPath = iota
	// embedFused always launches qvl_embed alone.
	embedFused
	// embedGEMMs always takes the GEMM path.
	embedGEMMs
)

// embedGEMMMinNe is the number of custom embeddings in a step from which the GEMM path runs.
// Below it the projector's weights (75 MB for the 2B, read once either way) still dominate, but
// the fused kernel saves four launches; the bound is a guess until a GPU measures both paths at
// small Ne (the benchmark measures them at 256).
const embedGEMMMinNe = 16

// Blocks an SM of the GEMM path's kernels (kernels/embed.cu, block embedThreads): qvl_embed_prep
// and qvl_embed_gelu take ≤ 32 registers, qvl_embed_rows ≤ 64 (its launch bounds), so that many
// blocks are resident at once: each grid is at most one such wave.
const (
	embedPrepBlocksPerSM = 8
	embedRowsBlocksPerSM = 4
)

// embedUsesGEMMs reports whether a step with ne custom embeddings takes the GEMM path.
func (b *Backend) embedUsesGEMMs(ne int) bool {
	if b.embedPhase != embedAllPhases {
		return false // the benchmark's phase breakdown of the fused kernel
	}
	switch b.embedPath {
	case embedFused:
		return false
	case embedGEMMs:
		return true
	}
	return ne >= embedGEMMMinNe
}

// embedGEMMArgs are what the GEMM path takes beyond EmbedProject's tensors: the step's sizes
// (n rows of h, vocab, nv visual and nc custom rows, ne embeddings of d, projector hidden size
// hid, k rows an embedding), the bf16 weights fc1 and fc2, the biases b1 and b2, and qvl_embed's
// flags (bit 0 table bf16, 1 b1 bf16, 2 b2 bf16, 3 tanh GELU).
type embedGEMMArgs struct {
	n, h, vocab, nv, nc, ne, d, hid, k int
	fc1, b1, fc2, b2                   uintptr
	flags                              int
}

// embedGrid is the grid of a GEMM-path kernel for work items (a thread each): enough blocks
// for one item a thread, at most perSM blocks an SM.
func (b *Backend) embedGrid(work, perSM int) int {
	return max(1, min((work+embedThreads-1)/embedThreads, perSM*b.info.sms))
}

// embedGEMMPath queues the GEMM path's five launches (see above) writing out (f32 [n, h]) from
// the tensors in t (EmbedProject's arguments, as device addresses: out, tokens, table, visual,
// visual_idx, custom, custom_idx, custom_src). Run inside do.
func (b *Backend) embedGEMMPath(t embedPtrs, g embedGEMMArgs) error {
	kh := g.k * g.h
	// qvl_embed_gelu indexes mid with 32-bit integers; the GEMMs take int sizes.
	if int64(g.ne)*int64(max(g.hid, kh)) > math.MaxInt32 {
		return fmt.Errorf("EmbedProject: %d custom embeddings × %d projector outputs exceed the GEMM path's 2^31 elements",
			g.ne, max(g.hid, kh))
	}
	// embedMid: mid (bf16 [ne, hid]) then cbf (bf16 [ne, d]) from the next 256-byte boundary;
	// embedF32: h1 (f32 [ne, hid]) and later Y (f32 [ne, kh]): h1 is read before Y is written;
	// embedInts: the source map (i32 [n]; EmbedProject sized it).
	midBytes := (2*g.ne*g.hid + 255) &^ 255
	if err := b.ensure(&b.embedMid, midBytes+2*g.ne*g.d); err != nil {
		return err
	}
	if err := b.ensure(&b.embedF32, 4*g.ne*max(g.hid, kh)); err != nil {
		return err
	}
	mid, cbf, f32, srcmap := b.embedMid.p, b.embedMid.p+uintptr(midBytes), b.embedF32.p, b.embedInts.p

	b.a.reset().ptr(cbf).ptr(t.custom).i64(int64(g.ne * g.d)).ptr(srcmap).i32(g.n)
	if err := b.launch(kEmbedPrep, d1(b.embedGrid(max((g.ne*g.d+7)/8, g.n), embedPrepBlocksPerSM)), d1(embedThreads), 0); err != nil {
		return err
	}
	if err := b.linear(g.ne, g.hid, g.d, true, cbf, g.fc1, f32); err != nil {
		return err
	}
	b.a.reset().ptr(mid).ptr(f32).ptr(g.b1).i32(g.flags).i32(g.ne).i32(g.hid).
		ptr(srcmap).i32(g.n).ptr(t.visualIdx).i32(g.nv).ptr(t.customIdx).ptr(t.customSrc).i32(g.nc).i32(g.ne * g.k).
		ptr(b.dev.errFlags())
	work := max((g.ne*g.hid+7)/8, g.nv+g.nc)
	if err := b.launch(kEmbedGelu, d1(b.embedGrid(work, embedPrepBlocksPerSM)), d1(embedThreads), 0); err != nil {
		return err
	}
	if err := b.linear(g.ne, kh, g.hid, true, mid, g.fc2, f32); err != nil {
		return err
	}
	b.a.reset().ptr(t.out).i32(g.n).i32(g.h).ptr(t.tokens).ptr(t.table).i32(g.vocab).ptr(t.visual).i32(g.nv).
		ptr(srcmap).ptr(t.customSrc).i32(g.ne * g.k).i32(g.k).ptr(f32).ptr(g.b2).i32(g.flags).ptr(b.dev.errFlags())
	return b.launch(kEmbedRows, d1(b.embedGrid(g.n*((g.h+7)/8), embedRowsBlocksPerSM)), d1(embedThreads), 0)
}

// embedPtrs are the device addresses of EmbedProject's tensors (0 for an absent one).
type embedPtrs struct {
	out, tokens, table, visual, visualIdx, custom, customIdx, customSrc uintptr
}

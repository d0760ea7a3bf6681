package cuda

// The projector's GEMM path of EmbedProject. qvl_embed computes the projection of the custom
// embeddings, Y = fc2(gelu(fc1(custom) + b1)) + b2, on its own mma.sync tiles inside one
// persistent launch: no launches in between, but on the H100 it took 117 µs for 256 embeddings
// of the 2B's projector, where cuBLASLt ran the same two GEMMs in 44 µs (its kernels use
// Hopper's wgmma and TMA, which the compute_80 PTX cannot). So from embedGEMMMinNe embeddings
// on, the backend runs the GEMMs on cuBLASLt and keeps qvl_embed for what it alone does (the
// winners of each row, the scatter of the custom rows, the text and visual rows):
//
//	cbf = bf16(custom)                      qvl_f32_to_bf16
//	h1  = cbf·fc1ᵀ                          cuBLASLt, f32 out
//	mid = bf16(gelu(h1 + b1))               qvl_embed_gelu (GEMM1's epilogue in qvl_embed)
//	Y   = mid·fc2ᵀ                          cuBLASLt, f32 out
//	rows: Y[e, k·H:(k+1)·H] + b2            qvl_embed with QVL_EMBED_Y_GIVEN
//
// The arithmetic is qvl_embed's (bf16 operands, f32 accumulation, the same epilogues) up to the
// order in which the GEMMs sum over K, so the two paths agree to f32 rounding of those sums.

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

// projectGEMMs queues the GEMM path's first four steps for ne embeddings of d (custom, f32
// [ne, d]) through a projector of hidden size hid and kh = K·H outputs (fc1, fc2 bf16; b1 as
// flags bit 1 says; GELU form flags bit 3) and returns the device address of Y (f32 [ne, kh],
// without b2), which stays valid until the next EmbedProject. Run inside do.
func (b *Backend) projectGEMMs(custom uintptr, ne, d, hid, kh int, fc1, b1, fc2 uintptr, flags int) (uintptr, error) {
	// embedMid: mid (bf16 [ne, hid]) then cbf (bf16 [ne, d]) from the next 256-byte boundary;
	// embedF32: h1 (f32 [ne, hid]) and later Y (f32 [ne, kh]): h1 is read before Y is written.
	midBytes := (2*ne*hid + 255) &^ 255
	if err := b.ensure(&b.embedMid, midBytes+2*ne*d); err != nil {
		return 0, err
	}
	if err := b.ensure(&b.embedF32, 4*ne*max(hid, kh)); err != nil {
		return 0, err
	}
	mid, cbf, f32 := b.embedMid.p, b.embedMid.p+uintptr(midBytes), b.embedF32.p
	if err := b.convertBF16(custom, cbf, ne*d); err != nil {
		return 0, err
	}
	if err := b.linear(ne, hid, d, true, cbf, fc1, f32); err != nil {
		return 0, err
	}
	b.a.reset().ptr(mid).ptr(f32).ptr(b1).i32((flags >> 1) & 1).i32((flags >> 3) & 1).i32(ne).i32(hid)
	grid := max(1, min((ne*hid+rowThreads-1)/rowThreads, 8*b.info.sms))
	if err := b.launch(kEmbedGelu, d1(grid), d1(rowThreads), 0); err != nil {
		return 0, err
	}
	if err := b.linear(ne, kh, hid, true, mid, fc2, f32); err != nil {
		return 0, err
	}
	return f32, nil
}

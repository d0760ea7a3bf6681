package cuda

import (
	"fmt"
	"math"
)

// kernelID indexes the kernel table.
type kernelID int

// kernelSpec is a kernel's name and signature: one letter per parameter, p a pointer, i an int,
// f a float, l a long long. The signature is checked at every launch against what the launch
// site packed, and, by a test, against the .entry declarations of the embedded PTX.
type kernelSpec struct {
	name, sig string
	// smem is the largest dynamic shared memory the kernel is launched with (0: none).
	smem func(hd int) int
	// optional kernels are opt-in variants: a device that cannot give them smem still opens
	// (the backend refuses the opt-in instead).
	optional bool
}

const (
	kGather kernelID = iota
	kScatterAdd
	kF32ToBF16
	kRMSNorm
	kAddRMSNorm
	kSwiGLU
	kQKV
	kAttnGeneric
	kEmbed
	kEmbedBK64 // qvl_embed with K slices of 64 (QVL_EMBED_BK=64, ops.go)
	kEmbedGelu // qvl_embed_gelu: GEMM1's epilogue and the rows' winners on the GEMM path (project.go)
	kEmbedPrep // qvl_embed_prep: the GEMM path's bf16 custom embeddings and cleared source map
	kEmbedRows // qvl_embed_rows: the GEMM path's rows (text, visual, Y + b2)
	kTopK
	kSample
	kSpin
	kPrefill32
	kPrefill64
	kPrefill128
	kGemv1 // qvl_gemv_m1 … qvl_gemv_m8: kGemv1 + rows − 1 (gemv.go)
	kGemv2
	kGemv3
	kGemv4
	kGemv5
	kGemv6
	kGemv7
	kGemv8
	kNormGemv   // qvl_norm_gemv (fused.go)
	kSwiGLUGemv // qvl_swiglu_gemv (fused.go)
	kGemvGLU    // qvl_gemv_glu: the gate-up projection with SwiGLU as its epilogue (glu.go)
	kSkinny16   // qvl_gemm_skinny_m16, m32, m64 (skinny.go)
	kSkinny32
	kSkinny64
	kDecodeFirst // the decode instances follow (decodeHeadDims × decodeGroups), then the pipelined and the folded ones
)

// decodeHeadDims and decodeGroups are the template instances of qvl_attn_decode_hd*_g*
// (hd 256 stops at group 4: group 8 would need 56 KiB of static shared memory).
var (
	decodeHeadDims = []int{32, 64, 128, 256}
	decodeGroups   = []int{1, 2, 4, 8}
)

// decodePipeHeadDim is the head size of the pipelined decode instances,
// qvl_attn_decode_pipe_hd128_g{1,2,4,8} (attention.cu's PIPE, opt-in: envAttnPipe): Qwen3-VL's.
const decodePipeHeadDim = 128

// decodeBuilt reports whether attention.cu instantiates qvl_attn_decode_hd<hd>_g<g>.
func decodeBuilt(hd, g int) bool { return hd != 256 || g != 8 }

// kDecodePipeFirst is the first pipelined decode instance (group decodeGroups[0]), right after
// the plain ones.
var kDecodePipeFirst = func() kernelID {
	id := kDecodeFirst
	for _, hd := range decodeHeadDims {
		for _, g := range decodeGroups {
			if decodeBuilt(hd, g) {
				id++
			}
		}
	}
	return id
}()

const (
	sigDecode  = "ppppppppiiiiifiipppp"
	sigFold    = sigDecode + "ppippppf" // qvl_attn_decode_fold_*: then qn, kn, flags, pos, slots, inv_freq, axis, eps
	sigPrefill = "ppppppppiiiiifp"
	sigEmbed   = "piippippipppiiiiippppipppp"
	sigSkinny  = "pppppiiii"
)

// embedSmem is qvl_embed's dynamic shared memory when it projects custom embeddings
// (QVL_EMBED_SMEM of kernels/embed.cu: 4 pipeline stages of 256 rows of 40 bf16), and
// embedSmemBK64 qvl_embed_bk64's (QVL_EMBED_BK64_SMEM: 3 stages of 256 rows of 72 bf16).
const (
	embedSmem     = 4 * 256 * 40 * 2
	embedSmemBK64 = 3 * 256 * 72 * 2
)

// prefillSmem is the dynamic shared memory of qvl_attn_prefill_hd*: Q, K and V tiles of 64
// rows of hd+8 bf16.
func prefillSmem(hd int) int { return (64 + 2*64) * (hd + 8) * 2 }

// kernelTable lists every kernel the backend launches, indexed by kernelID.
var kernelTable = func() []kernelSpec {
	t := []kernelSpec{
		kGather:      {name: "qvl_gather_rows", sig: "pppiipp"},
		kScatterAdd:  {name: "qvl_scatter_add_rows", sig: "pppiip"},
		kF32ToBF16:   {name: "qvl_f32_to_bf16", sig: "ppl"},
		kRMSNorm:     {name: "qvl_rmsnorm", sig: "pppiifp"},
		kAddRMSNorm:  {name: "qvl_add_rmsnorm", sig: "ppppiifp"},
		kSwiGLU:      {name: "qvl_swiglu", sig: "ppiip"},
		kQKV:         {name: "qvl_qkv", sig: "ppppippppppiiiiifp"},
		kAttnGeneric: {name: "qvl_attn_generic", sig: "ppppppppiiiiiiifp"},
		kEmbed:       {name: "qvl_embed", sig: sigEmbed, smem: func(int) int { return embedSmem }},
		kEmbedBK64:   {name: "qvl_embed_bk64", sig: sigEmbed, smem: func(int) int { return embedSmemBK64 }, optional: true},
		kEmbedGelu:   {name: "qvl_embed_gelu", sig: "pppiiipipippiip"},
		kEmbedPrep:   {name: "qvl_embed_prep", sig: "pplpi"},
		kEmbedRows:   {name: "qvl_embed_rows", sig: "piippipippiippip"},
		kTopK:        {name: "qvl_topk", sig: "pipipppppp"},
		kSample:      {name: "qvl_sample", sig: "pipppppp"},
		kSpin:        {name: "qvl_spin", sig: "l"},
		kPrefill32:   {name: "qvl_attn_prefill_hd32", sig: sigPrefill, smem: prefillSmem},
		kPrefill64:   {name: "qvl_attn_prefill_hd64", sig: sigPrefill, smem: prefillSmem},
		kPrefill128:  {name: "qvl_attn_prefill_hd128", sig: sigPrefill, smem: prefillSmem},
		kGemv1:       {name: "qvl_gemv_m1", sig: "pppii"},
		kGemv2:       {name: "qvl_gemv_m2", sig: "pppii"},
		kGemv3:       {name: "qvl_gemv_m3", sig: "pppii"},
		kGemv4:       {name: "qvl_gemv_m4", sig: "pppii"},
		kGemv5:       {name: "qvl_gemv_m5", sig: "pppii"},
		kGemv6:       {name: "qvl_gemv_m6", sig: "pppii"},
		kGemv7:       {name: "qvl_gemv_m7", sig: "pppii"},
		kGemv8:       {name: "qvl_gemv_m8", sig: "pppii"},
		kNormGemv:    {name: "qvl_norm_gemv", sig: "ppppppipiifp"},
		kSwiGLUGemv:  {name: "qvl_swiglu_gemv", sig: "pppppii"},
		kGemvGLU:     {name: "qvl_gemv_glu", sig: "ppppii"},
		kSkinny16:    {name: "qvl_gemm_skinny_m16", sig: sigSkinny, smem: func(int) int { return skinnySmem(1) }, optional: true},
		kSkinny32:    {name: "qvl_gemm_skinny_m32", sig: sigSkinny, smem: func(int) int { return skinnySmem(2) }, optional: true},
		kSkinny64:    {name: "qvl_gemm_skinny_m64", sig: sigSkinny, smem: func(int) int { return skinnySmem(4) }, optional: true},
	}
	for _, hd := range decodeHeadDims {
		for _, g := range decodeGroups {
			if decodeBuilt(hd, g) {
				t = append(t, kernelSpec{name: fmt.Sprintf("qvl_attn_decode_hd%d_g%d", hd, g), sig: sigDecode})
			}
		}
	}
	for _, v := range []struct {
		kind, sig string
		hd        int
	}{{"pipe", sigDecode, decodePipeHeadDim}, {"fold", sigFold, foldHeadDim}} {
		for _, g := range decodeGroups {
			t = append(t, kernelSpec{name: fmt.Sprintf("qvl_attn_decode_%s_hd%d_g%d", v.kind, v.hd, g), sig: v.sig})
		}
	}
	return t
}()

// decodeKernel returns the decode instance for head size hd and group size g (the smallest
// instantiated group ≥ g), or false when none covers them.
func decodeKernel(hd, g int) (kernelID, bool) {
	id := kDecodeFirst
	for _, h := range decodeHeadDims {
		for _, gm := range decodeGroups {
			if !decodeBuilt(h, gm) {
				continue
			}
			if h == hd && g <= gm {
				return id, true
			}
			id++
		}
	}
	return 0, false
}

// decodePipeKernel returns the pipelined decode instance for head size hd and group size g
// (the smallest instantiated group ≥ g), or false when none covers them (hd other than
// decodePipeHeadDim).
func decodePipeKernel(hd, g int) (kernelID, bool) {
	return groupKernel(kDecodePipeFirst, decodePipeHeadDim, hd, g)
}

// groupKernel returns, among the decode variants instantiated for head size only (one per
// decodeGroups entry from first on), the one for group size g (the smallest group ≥ g), or
// false when hd is not only or no group covers g.
func groupKernel(first kernelID, only, hd, g int) (kernelID, bool) {
	if hd != only {
		return 0, false
	}
	for i, gm := range decodeGroups {
		if g <= gm {
			return first + kernelID(i), true
		}
	}
	return 0, false
}

// prefillKernel returns the prefill instance for head size hd.
func prefillKernel(hd int) (kernelID, bool) {
	switch hd {
	case 32:
		return kPrefill32, true
	case 64:
		return kPrefill64, true
	case 128:
		return kPrefill128, true
	}
	return 0, false
}

// maxKernelArgs is the most parameters a kernel takes (the driver binding's limit is 32).
const maxKernelArgs = 32

// kargs packs kernel parameters without allocating: each value sits in an 8-byte slot, as
// cuLaunchKernel's kernelParams expect (the driver reads the low 4 bytes of a slot for a 4-byte
// parameter on the little-endian machines CUDA runs on). kinds records what was packed, for
// the signature check.
type kargs struct {
	n     int
	vals  [maxKernelArgs]uint64
	kinds [maxKernelArgs]byte
	err   error
}

func (a *kargs) reset() *kargs {
	a.n, a.err = 0, nil
	return a
}

func (a *kargs) push(kind byte, v uint64) *kargs {
	if a.n == maxKernelArgs {
		if a.err == nil {
			a.err = fmt.Errorf("more than %d kernel arguments", maxKernelArgs)
		}
		return a
	}
	a.vals[a.n], a.kinds[a.n] = v, kind
	a.n++
	return a
}

// ptr adds a device pointer (0 is the null pointer).
func (a *kargs) ptr(p uintptr) *kargs { return a.push('p', uint64(p)) }

// i32 adds an int; values outside the int32 range are an error at launch.
func (a *kargs) i32(v int) *kargs {
	if v < math.MinInt32 || v > math.MaxInt32 {
		if a.err == nil {
			a.err = fmt.Errorf("kernel argument %d = %d does not fit an int", a.n, v)
		}
	}
	return a.push('i', uint64(uint32(int32(v))))
}

// f32 adds a float.
func (a *kargs) f32(v float32) *kargs { return a.push('f', uint64(math.Float32bits(v))) }

// i64 adds a long long.
func (a *kargs) i64(v int64) *kargs { return a.push('l', uint64(v)) }

// flag adds an int that is 1 when b holds.
func (a *kargs) flag(b bool) *kargs {
	if b {
		return a.i32(1)
	}
	return a.i32(0)
}

// check reports a packing error or a mismatch with the kernel's signature.
func (a *kargs) check(k kernelSpec) error {
	if a.err != nil {
		return fmt.Errorf("%s: %w", k.name, a.err)
	}
	if a.n != len(k.sig) || string(a.kinds[:a.n]) != k.sig {
		return fmt.Errorf("%s: packed arguments %q do not match the kernel's signature %q", k.name, a.kinds[:a.n], k.sig)
	}
	return nil
}

// dim3 is a grid or block shape.
type dim3 struct{ x, y, z int }

func d1(x int) dim3 { return dim3{x, 1, 1} }

func (d dim3) valid() bool {
	return d.x > 0 && d.y > 0 && d.z > 0 && d.x <= math.MaxInt32 && d.y <= 65535 && d.z <= 65535
}

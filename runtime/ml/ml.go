// Package ml is the small op interface that qvl's one model definition is written against.
//
// A Backend owns memory (Tensors) and implements a dozen ops over it. The Qwen3-VL forward in
// package model calls only these ops, so the CPU reference, the fast CPU kernels and the CUDA
// kernels all compute the same function and can be compared op by op.
//
// Conventions shared by every backend:
//   - Tensors are dense and row-major; the first dimension is "rows" (tokens for activations).
//   - Activations are F32 on the host side of the interface; a backend may keep them in another
//     precision internally (the CUDA backend uses bf16 storage with f32 accumulation).
//   - Weights are BF16 (as published) or F32, stored [out, in] as PyTorch Linear stores them, so
//     MatMul computes out = x · wᵀ.
//   - Token-index tensors (ids, positions, slots, block tables) are I32.
//   - The paged KV cache layout is documented on KVLayout; every backend uses it.
package ml

import (
	"errors"
	"fmt"
	"time"
)

// DType is the element type of a backend tensor.
type DType uint8

const (
	// F32 is IEEE float32.
	F32 DType = iota
	// BF16 is bfloat16 (the upper half of a float32).
	BF16
	// I32 is int32.
	I32
)

// String returns the name of the dtype.
func (d DType) String() string {
	switch d {
	case F32:
		return "f32"
	case BF16:
		return "bf16"
	case I32:
		return "i32"
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Size is the number of bytes of one element.
func (d DType) Size() int {
	if d == BF16 {
		return 2
	}
	return 4
}

// Tensor is a dense row-major array owned by a Backend.
type Tensor interface {
	// DType is the element type.
	DType() DType
	// Shape is the size of each dimension; callers must not modify it.
	Shape() []int
}

// NumElements is the product of t's dimensions.
func NumElements(t Tensor) int {
	n := 1
	for _, d := range t.Shape() {
		n *= d
	}
	return n
}

// RowSize is the number of elements in one row (the product of all dimensions but the first).
func RowSize(t Tensor) int {
	s := t.Shape()
	n := 1
	for _, d := range s[1:] {
		n *= d
	}
	return n
}

// ErrShape is wrapped by errors about tensor shapes that do not fit an op.
var ErrShape = errors.New("shape mismatch")

// ShapeError builds an error naming the op, the operand and the two shapes.
func ShapeError(op, operand string, got []int, want string) error {
	return fmt.Errorf("%s: %s has shape %v, want %s: %w", op, operand, got, want, ErrShape)
}

// Rope describes rotary position embedding with Qwen3-VL's multimodal sections.
type Rope struct {
	// Theta is the base (rope_theta).
	Theta float64
	// Section is mrope_section [t, h, w] in frequency pairs; nil means plain 1-D RoPE on axis t.
	Section []int
	// Interleaved selects Qwen3-VL's interleaved layout (index i takes axis h when i%3==1 and
	// i < 3*Section[1], axis w when i%3==2 and i < 3*Section[2], else t); otherwise the sections
	// are contiguous chunks as in Qwen2-VL.
	Interleaved bool
}

// Axis returns which position axis (0=t, 1=h, 2=w) frequency index i (< headDim/2) uses.
func (r Rope) Axis(i int) int {
	if len(r.Section) != 3 {
		return 0
	}
	if r.Interleaved {
		switch {
		case i%3 == 1 && i < 3*r.Section[1]:
			return 1
		case i%3 == 2 && i < 3*r.Section[2]:
			return 2
		}
		return 0
	}
	switch {
	case i < r.Section[0]:
		return 0
	case i < r.Section[0]+r.Section[1]:
		return 1
	case i < r.Section[0]+r.Section[1]+r.Section[2]:
		return 2
	}
	return 0
}

// KVLayout describes the paged KV cache that every backend uses.
//
// Each layer has a K and a V tensor of shape [NumBlocks, KVHeads, BlockSize, HeadDim] ("HND"
// pages): block b of a sequence holds its tokens b*BlockSize ... b*BlockSize+BlockSize-1, and the
// BlockSize×HeadDim keys of one KV head are contiguous, so a decode kernel reads one head's page
// in a single stream. A token's cache slot is block*BlockSize + offset; element (slot, head, d) lives at
// ((block*KVHeads + head)*BlockSize + offset)*HeadDim + d. Block tables map a sequence's logical
// block index to a physical block number; every layer uses the same block numbers.
type KVLayout struct {
	NumBlocks, BlockSize, KVHeads, HeadDim int
}

// Shape is the shape of one layer's K (or V) tensor.
func (l KVLayout) Shape() []int { return []int{l.NumBlocks, l.KVHeads, l.BlockSize, l.HeadDim} }

// Offset is the element offset of (slot, head, 0) in one layer's K or V tensor.
func (l KVLayout) Offset(slot, head int) int {
	block, off := slot/l.BlockSize, slot%l.BlockSize
	return ((block*l.KVHeads+head)*l.BlockSize + off) * l.HeadDim
}

// BytesPerBlock is the memory of one block across K and V of all layers for the given element size.
func (l KVLayout) BytesPerBlock(layers, elemSize int) int {
	return 2 * layers * l.KVHeads * l.BlockSize * l.HeadDim * elemSize
}

// EmbedArgs are the inputs of the fused embedding-projection op, which writes the input hidden
// state of every token of a step: text tokens gather a row of Table; rows listed in VisualIdx take
// a precomputed Qwen3-VL embedding; rows listed in CustomIdx take one of the K tokens that the
// projector makes from a proprietary embedding. Later writes win: text, then visual, then custom.
type EmbedArgs struct {
	// Tokens is I32 [N]; every entry must be a valid row of Table (pad ids included).
	Tokens Tensor
	// Table is the token embedding table [V, H].
	Table Tensor
	// Visual is F32 [Nv, H] (nil when Nv = 0); VisualIdx I32 [Nv] is the destination row of each.
	Visual, VisualIdx Tensor
	// Custom is F32 [Ne, D], raw proprietary embeddings (nil when none); CustomIdx I32 [Nc] is a
	// destination row and CustomSrc I32 [Nc] its source e*K+k: token k of embedding e. A chunked
	// prefill may place only some of an embedding's K tokens in a step.
	Custom, CustomIdx, CustomSrc Tensor
	// Projector holds the projector weights; required when Custom is set.
	Projector *Projector
}

// Projector is the trained map from a D-dim proprietary embedding to K tokens of the hidden size:
// out = FC2·gelu(FC1·x + B1) + B2, reshaped to [K, H].
type Projector struct {
	FC1, B1, FC2, B2 Tensor
	// K is tokens per embedding; H the hidden size (FC2 has K*H rows).
	K, H int
	// TanhGELU selects the tanh approximation; the default is the exact erf form.
	TanhGELU bool
}

// QKVArgs are the inputs of the op that finishes the QKV projection: per-head RMSNorm of q and
// k, rotary embedding of q and k at each token's (t, h, w) position, q written to Q, and k and
// v written to the paged cache at each token's slot.
type QKVArgs struct {
	// Q receives [N, Heads*HeadDim].
	Q Tensor
	// QNorm and KNorm are the per-head RMSNorm weights [HeadDim].
	QNorm, KNorm Tensor
	// Pos is I32 [N, 3]: each token's t, h and w positions.
	Pos Tensor
	// Slots is I32 [N]: each token's cache slot.
	Slots Tensor
	// K and V are this layer's cache tensors (KVLayout.Shape()).
	K, V Tensor
	// Heads, KVHeads, HeadDim are the attention sizes; Eps the RMSNorm epsilon.
	Heads, KVHeads, HeadDim int
	Eps                     float32
	Rope                    Rope
	Layout                  KVLayout
}

// AttnArgs are the inputs of paged attention. Sequence s owns query rows
// SeqStart[s] ... SeqStart[s+1]-1, which are its last tokens: query row j of a sequence with
// CtxLen c and q query rows sits at position c-q+j and attends causally to cache positions
// 0 ... c-q+j through its block table.
type AttnArgs struct {
	// K and V are this layer's cache tensors.
	K, V Tensor
	// SeqStart is I32 [B+1]; CtxLen I32 [B]; BlockTables I32 [B, MaxBlocks].
	SeqStart, CtxLen, BlockTables Tensor
	// NumSeqs is B.
	NumSeqs                 int
	Heads, KVHeads, HeadDim int
	// Scale multiplies q·k (1/sqrt(HeadDim)).
	Scale float32
	// MaxQueryLen and MaxCtxLen bound the per-sequence query and context lengths of this step (launch hints).
	MaxQueryLen, MaxCtxLen int
	Layout                 KVLayout
}

// Backend is a device that holds tensors and runs qvl's ops on them. All methods are called from
// one goroutine at a time (the engine's step loop).
type Backend interface {
	// Name identifies the backend in logs ("cpu", "cpu-ref", "cuda:0 NVIDIA H100 ...").
	Name() string
	// Alloc returns a new tensor; its contents are unspecified.
	Alloc(dt DType, shape ...int) (Tensor, error)
	// Weight returns a tensor holding data, the little-endian bytes of a dtype tensor of the given
	// shape. The backend may alias data (which then must stay valid and unmodified).
	Weight(dt DType, shape []int, data []byte) (Tensor, error)
	// Free releases t (a no-op for views).
	Free(t Tensor)
	// Write copies src ([]float32 for F32/BF16 tensors, rounded for BF16; []int32 for I32) into
	// the first len(src) elements of t.
	Write(t Tensor, src any) error
	// Read copies the first len(dst) elements of t into dst ([]float32 for F32/BF16; []int32 for I32).
	Read(t Tensor, dst any) error
	// Rows is a view of rows [0, n) of t.
	Rows(t Tensor, n int) Tensor
	// KVDType is the element type this backend stores the KV cache in.
	KVDType() DType

	// EmbedProject writes out [N, H]: see EmbedArgs.
	EmbedProject(out Tensor, a EmbedArgs) error
	// MatMul computes out[N, M] = x[N, K] · w[M, K]ᵀ.
	MatMul(out, x, w Tensor) error
	// RMSNorm computes out = w ⊙ x / sqrt(mean(x²) + eps) per row.
	RMSNorm(out, x, w Tensor, eps float32) error
	// AddRMSNorm adds delta into the residual x in place, then writes out = RMSNorm(x).
	AddRMSNorm(out, x, delta, w Tensor, eps float32) error
	// QKV finishes the attention input projection of one layer from qkv [N, (Heads+2*KVHeads)*HeadDim].
	QKV(qkv Tensor, a QKVArgs) error
	// Attention writes out [N, Heads*HeadDim] from q [N, Heads*HeadDim] over the paged cache.
	Attention(out, q Tensor, a AttnArgs) error
	// SwiGLU computes out[N, I] = silu(gu[:, :I]) ⊙ gu[:, I:] from gu [N, 2I].
	SwiGLU(out, gu Tensor) error
	// ScatterAdd adds rows [R, H] into x at rows idx (I32 [R]) (DeepStack features).
	ScatterAdd(x, rows, idx Tensor) error
	// Gather writes out[r] = x[idx[r]] for idx I32 [R].
	Gather(out, x, idx Tensor) error

	// Sync waits for queued work to finish.
	Sync() error
	// Close releases the backend.
	Close() error
}

// OpTime is the time a backend spent in one op or kernel.
type OpTime struct {
	// Name is the op (CPU) or kernel (GPU) name.
	Name string
	// Calls counts launches; Total is their summed duration.
	Calls int64
	Total time.Duration
}

// Profiler is implemented by backends that can time their ops (the CPU backend with the wall
// clock, the CUDA backend with events around each kernel).
type Profiler interface {
	// SetProfiling turns timing on or off; timing may slow the backend down.
	SetProfiling(on bool)
	// Profile returns the times gathered since the last reset, largest first.
	Profile() []OpTime
	// ResetProfile clears the gathered times.
	ResetProfile()
}

// SampleParams are one row's parameters for sampling on the device.
type SampleParams struct {
	// Temperature 0 selects greedy (argmax, lowest id on ties).
	Temperature float32
	// TopK keeps the k most likely tokens (0: all); TopP the smallest best-first set reaching
	// that mass (0 or 1: all); MinP drops tokens below MinP times the best one's probability (0: off).
	TopK       int
	TopP, MinP float32
	// Uniform is the row's random draw in [0, 1), taken from the request's own seeded stream on
	// the host, so that a request's tokens do not depend on what else shares the batch.
	Uniform float64
}

// DeviceSampler is implemented by backends that sample on the device, so that only token ids
// cross to the host. Its results are checked against package sample, the CPU reference.
type DeviceSampler interface {
	// TopK writes, for each row of logits [B, V], its k[r] ≤ maxK largest entries best first
	// (ties: lower id first) into ids and vals [B, maxK]; entries past k[r] are unspecified.
	TopK(logits Tensor, k []int, maxK int, ids []int32, vals []float32) error
	// Sample draws one token per row of logits [B, V] under p[r]; filtered rows draw by inverse
	// CDF over the kept tokens best first, unfiltered rows over all tokens in id order.
	Sample(logits Tensor, p []SampleParams, out []int32) error
}

// Grapher is implemented by backends that can record the ops of a step once and replay them
// (CUDA graphs), so that per-op launch and Go overhead vanish from the decode loop. A replay
// reads the current contents of the tensors the recorded ops use, so inputs are written with
// Write before Replay.
type Grapher interface {
	// Capture records the ops that fn issues, under key, without running them. fn must use only
	// tensors that stay allocated as long as the graph.
	Capture(key uint64, fn func() error) error
	// Replay runs the ops recorded under key.
	Replay(key uint64) error
	// HasGraph reports whether key has been captured.
	HasGraph(key uint64) bool
	// DropGraphs discards every recorded graph (when the tensors they use are reallocated).
	DropGraphs()
}

// Batcher is implemented by backends whose every call costs a hand-off to another thread (the
// CUDA backend runs all driver work on one locked OS thread): Batch runs fn, and every call fn
// makes to the backend, in a single hand-off. The model runs each step inside Batch.
type Batcher interface {
	Batch(fn func() error) error
}

// NormMatMuler is implemented by backends that fuse a (residual add and) RMSNorm with the
// MatMul that consumes the normalised rows (the attention input norm and the qkv projection;
// the post-attention norm and the gate-up projection), which saves a launch and a round trip
// of the normalised rows at decode. The model calls it where the backend has it and the
// unfused ops (AddRMSNorm or RMSNorm, then MatMul) otherwise; both compute the same tensors.
type NormMatMuler interface {
	// NormMatMul adds delta into the residual x in place (delta nil: x is left as it is), writes
	// h = RMSNorm(x) with weight norm and epsilon eps, and y[N, M] = h · w[M, H]ᵀ. x, delta and
	// h are [N, H]; h must not share memory with x, delta or y.
	NormMatMul(y, h, x, delta, norm, w Tensor, eps float32) error
}

// NormMatMulOps computes NormMatMul with b's unfused ops: AddRMSNorm (RMSNorm when delta is
// nil), then MatMul. It is the fallback of the model and of the fusing backends, and the CPU
// backends' implementation.
func NormMatMulOps(b Backend, y, h, x, delta, norm, w Tensor, eps float32) error {
	if delta == nil {
		if err := b.RMSNorm(h, x, norm, eps); err != nil {
			return err
		}
	} else if err := b.AddRMSNorm(h, x, delta, norm, eps); err != nil {
		return err
	}
	return b.MatMul(y, h, w)
}

// QKVAttender is implemented by backends that fold the QKV op into decode attention (the
// per-head norm and rope of q, and the new token's k and v, computed inside the attention
// kernel), which saves a launch and q's round trip through memory per layer at decode. The
// model calls it where the backend has it and QKV, then Attention, otherwise.
type QKVAttender interface {
	// QKVAttention is QKV(qkv, qa) followed by Attention(out, qa.Q, aa): the same out and the
	// same cache contents (qa.K, qa.V), except that a fusing backend may leave qa.Q unwritten —
	// callers must not read qa.Q afterwards (the model reads q nowhere else).
	QKVAttention(out, qkv Tensor, qa QKVArgs, aa AttnArgs) error
}

// QKVAttentionOps computes QKVAttention with b's unfused ops: QKV, then Attention with
// q = qa.Q. It is the fallback of the model and of the fusing backends, and the CPU backends'
// implementation.
func QKVAttentionOps(b Backend, out, qkv Tensor, qa QKVArgs, aa AttnArgs) error {
	if err := b.QKV(qkv, qa); err != nil {
		return err
	}
	return b.Attention(out, qa.Q, aa)
}

// SwiGLUMatMulOps computes SwiGLUMatMul with b's unfused ops: SwiGLU, then MatMul.
func SwiGLUMatMulOps(b Backend, y, act, gu, w Tensor) error {
	if err := b.SwiGLU(act, gu); err != nil {
		return err
	}
	return b.MatMul(y, act, w)
}

// MLPer is implemented by backends that run a decoder layer's MLP block as one op, so that they
// can choose its fusions as a whole (the CUDA backend: at one row, SwiGLU as the gate-up GEMV's
// epilogue). The model calls it where the backend has it and MLPOps otherwise.
type MLPer interface {
	// MLP adds delta into the residual x in place, writes h = RMSNorm(x) with weight norm and
	// epsilon eps, act = SwiGLU(h · wgu[2I, H]ᵀ) and y = act · wdown[M, I]ᵀ. gu [N, 2I] is
	// scratch for the gate-up projection that a fusing backend may leave unwritten: callers must
	// not read it afterwards. x, delta and h are [N, H], act [N, I].
	MLP(y, act, gu, h, x, delta, norm, wgu, wdown Tensor, eps float32) error
}

// MLPOps computes MLP with b's ops: NormMatMul (fused where b is a NormMatMuler) into gu, then
// SwiGLUMatMul (fused where b is a SwiGLUMatMuler). It is the fallback of the model and of the
// fusing backends, and the CPU backends' implementation.
func MLPOps(b Backend, y, act, gu, h, x, delta, norm, wgu, wdown Tensor, eps float32) error {
	var err error
	if f, ok := b.(NormMatMuler); ok {
		err = f.NormMatMul(gu, h, x, delta, norm, wgu, eps)
	} else {
		err = NormMatMulOps(b, gu, h, x, delta, norm, wgu, eps)
	}
	if err != nil {
		return err
	}
	if f, ok := b.(SwiGLUMatMuler); ok {
		return f.SwiGLUMatMul(y, act, gu, wdown)
	}
	return SwiGLUMatMulOps(b, y, act, gu, wdown)
}

// SwiGLUMatMuler is implemented by backends that fuse SwiGLU with the MatMul that consumes it
// (the MLP's down projection). The model calls it where the backend has it and SwiGLU, then
// MatMul, otherwise.
type SwiGLUMatMuler interface {
	// SwiGLUMatMul writes act[N, I] = silu(gu[:, :I]) ⊙ gu[:, I:] from gu [N, 2I] and
	// y[N, M] = act · w[M, I]ᵀ. act must not share memory with gu or y.
	SwiGLUMatMul(y, act, gu, w Tensor) error
}

package cuda

import (
	"fmt"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// bf16 copies of activations.
//
// MatMul multiplies x rounded to bf16. Rounding x in a kernel of its own costs a launch per GEMM
// (4 of a decoder layer's 14 at batch 1) and a round trip of x through memory. Instead, the ops
// whose outputs feed GEMMs — RMSNorm, AddRMSNorm, SwiGLU, Attention, Gather — write a bf16
// copy beside the f32 output in the same kernel (bit for bit what qvl_f32_to_bf16 makes of
// it), and MatMul reads the copy when it is current. The ml interface does not change: the
// copy is backend state, tracked on the host in stream order.
//
// Rules, which keep a copy from ever being read stale:
//   - A copy belongs to an allocation (views share their root's) and holds as many elements.
//   - A producer marks the first NumElements(out) elements of out's copy current; every other
//     write to an f32 tensor (any op's output or in-place operand, Write, a memset) marks its
//     copy stale first. MatMul uses the copy only when its current prefix covers all of x.
//   - Current means "written in this generation"; the generation moves on when a graph is
//     captured (before the warm-up run, before recording and after it) and after each replay.
//     So a recorded MatMul only uses a copy that a producer recorded before it in the same
//     graph — true again at every replay, whatever ran in between — and after a replay nothing
//     is trusted. The warm-up and the recording start from the same state, so they make the
//     same choices, and the warm-up allocates every copy the recording needs (nothing is
//     allocated while capturing: a producer without a copy then writes none).

// bf16Copy is the bf16 copy of an f32 allocation.
type bf16Copy struct {
	ptr uintptr // device address of len bf16 values
	len int
	// valid is the number of leading elements that hold bf16(the f32 data), as of generation gen.
	valid int
	gen   uint64
}

// base returns the allocation that t looks into: t itself unless t is a view.
func (t *Tensor) base() *Tensor {
	if t.root != nil {
		return t.root
	}
	return t
}

// stale marks the bf16 copies of the given tensors (of this backend) out of date: their f32
// data is about to be written by something that does not write the copy.
func (b *Backend) stale(ts ...ml.Tensor) {
	for _, t := range ts {
		c, ok := t.(*Tensor)
		if !ok || c == nil {
			continue
		}
		if a := c.base().act; a != nil {
			a.valid = 0
		}
	}
}

// staleAll marks every copy out of date (a new generation).
func (b *Backend) staleAll() { b.copyGen++ }

// copyFor returns the device address of the bf16 copy a producer writes beside out (0 for
// none: out is not f32, is empty, or has no copy yet while a graph is captured), having marked
// the copy stale until produced confirms the write. Run inside do.
func (b *Backend) copyFor(out ml.Tensor) (uintptr, error) {
	b.stale(out)
	c, ok := out.(*Tensor)
	if !ok || c == nil || c.dt != ml.F32 || c.ptr == 0 {
		return 0, nil
	}
	r := c.base()
	if r.ptr != c.ptr {
		// Views are always a prefix of their allocation (Rows); anything else gets no copy.
		return 0, nil
	}
	if r.act != nil {
		return r.act.ptr, nil
	}
	if b.capturing {
		return 0, nil
	}
	n := ml.NumElements(r)
	p, err := b.dev.alloc(2 * n)
	if err != nil {
		return 0, fmt.Errorf("cuda: bf16 copy of %s: %w", r, err)
	}
	r.act = &bf16Copy{ptr: p, len: n}
	return p, nil
}

// produced records that the op just queued wrote the bf16 copy at p of out's first
// NumElements(out) elements (p from copyFor; 0 records nothing).
func (b *Backend) produced(out ml.Tensor, p uintptr) {
	if p == 0 {
		return
	}
	a := out.(*Tensor).base().act
	a.valid, a.gen = ml.NumElements(out), b.copyGen
}

// currentCopy returns the bf16 copy of x when it holds bf16(x) for every element of x.
func (b *Backend) currentCopy(x ml.Tensor) (uintptr, bool) {
	c, ok := x.(*Tensor)
	if !ok || c == nil || c.dt != ml.F32 || c.ptr == 0 {
		return 0, false
	}
	r := c.base()
	a := r.act
	if a == nil || r.ptr != c.ptr || a.gen != b.copyGen || a.valid < ml.NumElements(c) {
		return 0, false
	}
	return a.ptr, true
}

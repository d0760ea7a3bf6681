package cuda

import (
	"math"
	"runtime"
	"unsafe"
)

// MaxKernelArgs is the most parameters an Args holds.
const MaxKernelArgs = 32

// Args packs kernel parameters for LaunchKernel without allocating: each
// value sits in an 8-byte slot, and cuLaunchKernel's kernelParams is the
// array of pointers to those slots. The driver reads as many bytes from each
// slot as the kernel's parameter has (4 for a u32/i32/f32, 8 for a pointer),
// which is the low bytes of the slot on the little-endian machines CUDA runs
// on. Values must be added in the kernel's parameter order.
//
// Reuse one Args per call site: a.Reset().Ptr(x).Ptr(y).F32(alpha).U32(n).
// An Args is not safe for concurrent use; it may be reused as soon as
// LaunchKernel returns.
type Args struct {
	n        int
	overflow bool
	vals     [MaxKernelArgs]uint64
	ptrs     [MaxKernelArgs]uintptr
	call     [11]uintptr
	ex       launchEx
	pin      runtime.Pinner
}

// NewArgs returns an empty Args.
func NewArgs() *Args { return new(Args) }

// Reset empties a for the next launch and returns it.
func (a *Args) Reset() *Args {
	a.n = 0
	a.overflow = false
	return a
}

// Len returns the number of parameters added since the last Reset.
func (a *Args) Len() int { return a.n }

// Err reports whether more than MaxKernelArgs parameters were added;
// LaunchKernel refuses such an Args.
func (a *Args) Err() error {
	if a.overflow {
		return errArgsOverflow
	}
	return nil
}

func (a *Args) push(v uint64) *Args {
	if a.n == MaxKernelArgs {
		a.overflow = true
		return a
	}
	a.vals[a.n] = v
	a.n++
	return a
}

// Ptr adds a device pointer parameter (T* in the kernel).
func (a *Args) Ptr(p DevicePtr) *Args { return a.push(uint64(p)) }

// U32 adds an unsigned int parameter.
func (a *Args) U32(v uint32) *Args { return a.push(uint64(v)) }

// I32 adds an int parameter.
func (a *Args) I32(v int32) *Args { return a.push(uint64(uint32(v))) }

// F32 adds a float parameter.
func (a *Args) F32(v float32) *Args { return a.push(uint64(math.Float32bits(v))) }

// U64 adds an unsigned long long / size_t parameter.
func (a *Args) U64(v uint64) *Args { return a.push(v) }

// I64 adds a long long / ptrdiff_t parameter.
func (a *Args) I64(v int64) *Args { return a.push(uint64(v)) }

// kernelParams points each of the first n pointer slots at its value slot
// and returns the address of the pointer array. a must be pinned (or
// otherwise unmovable) from here until the driver call returns; a is a heap
// object because LaunchKernel pins it.
func (a *Args) kernelParams() uintptr {
	if a.n == 0 {
		return 0
	}
	for i := 0; i < a.n; i++ {
		a.ptrs[i] = uintptr(unsafe.Pointer(&a.vals[i]))
	}
	return uintptr(unsafe.Pointer(&a.ptrs[0]))
}

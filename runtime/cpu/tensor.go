// Package cpu is qvl's CPU backend. Each op has a plain-Go reference implementation (the oracle
// that every other backend is tested against, llm.c style: short loops that read like the math)
// and, where cgo is available, a C implementation with AVX2/AVX-512 kernels and threads (the
// fast path). Backend selects between them.
package cpu

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/ml"
)

// Tensor is a CPU tensor: exactly one of F32, BF16 and I32 is set, according to its dtype.
type Tensor struct {
	dt    ml.DType
	shape []int
	// F32 holds F32 elements.
	F32 []float32
	// BF16 holds BF16 elements as raw bits.
	BF16 []uint16
	// I32 holds I32 elements.
	I32  []int32
	view bool
	// owner keeps the memory the elements live in (a weight's anonymous mapping) reachable.
	owner *mapping
}

// DType implements ml.Tensor.
func (t *Tensor) DType() ml.DType { return t.dt }

// Shape implements ml.Tensor.
func (t *Tensor) Shape() []int { return t.shape }

// String describes the tensor for error messages.
func (t *Tensor) String() string { return fmt.Sprintf("%s%v", t.dt, t.shape) }

// NewTensor allocates a zeroed CPU tensor.
func NewTensor(dt ml.DType, shape ...int) *Tensor {
	t := &Tensor{dt: dt, shape: append([]int(nil), shape...)}
	n := 1
	for _, d := range shape {
		n *= d
	}
	switch dt {
	case ml.F32:
		t.F32 = make([]float32, n)
	case ml.BF16:
		t.BF16 = make([]uint16, n)
	case ml.I32:
		t.I32 = make([]int32, n)
	}
	return t
}

// FromF32 wraps data as an F32 tensor of the given shape (no copy).
func FromF32(data []float32, shape ...int) *Tensor {
	return &Tensor{dt: ml.F32, shape: append([]int(nil), shape...), F32: data}
}

// FromI32 wraps data as an I32 tensor of the given shape (no copy).
func FromI32(data []int32, shape ...int) *Tensor {
	return &Tensor{dt: ml.I32, shape: append([]int(nil), shape...), I32: data}
}

// FromBF16 wraps raw bf16 bits as a BF16 tensor of the given shape (no copy).
func FromBF16(data []uint16, shape ...int) *Tensor {
	return &Tensor{dt: ml.BF16, shape: append([]int(nil), shape...), BF16: data}
}

func numElements(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// tensorFromBytes makes a tensor over little-endian bytes, aliasing them when the platform is
// little-endian and the slice is suitably aligned.
func tensorFromBytes(dt ml.DType, shape []int, data []byte) (*Tensor, error) {
	n := numElements(shape)
	if len(data) != n*dt.Size() {
		return nil, fmt.Errorf("weight %s%v: %d bytes, want %d", dt, shape, len(data), n*dt.Size())
	}
	t := &Tensor{dt: dt, shape: append([]int(nil), shape...)}
	if n == 0 {
		return NewTensor(dt, shape...), nil
	}
	aligned := uintptr(unsafe.Pointer(&data[0]))%uintptr(dt.Size()) == 0
	switch dt {
	case ml.BF16:
		if aligned {
			t.BF16 = unsafe.Slice((*uint16)(unsafe.Pointer(&data[0])), n)
		} else {
			t.BF16 = make([]uint16, n)
			for i := range t.BF16 {
				t.BF16[i] = binary.LittleEndian.Uint16(data[2*i:])
			}
		}
	case ml.F32:
		if aligned {
			t.F32 = unsafe.Slice((*float32)(unsafe.Pointer(&data[0])), n)
		} else {
			t.F32 = make([]float32, n)
			for i := range t.F32 {
				t.F32[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
			}
		}
	case ml.I32:
		if aligned {
			t.I32 = unsafe.Slice((*int32)(unsafe.Pointer(&data[0])), n)
		} else {
			t.I32 = make([]int32, n)
			for i := range t.I32 {
				t.I32[i] = int32(binary.LittleEndian.Uint32(data[4*i:]))
			}
		}
	default:
		return nil, fmt.Errorf("weight: unsupported dtype %s", dt)
	}
	return t, nil
}

// rows returns a view of rows [0, n).
func (t *Tensor) rows(n int) *Tensor {
	rs := 1
	for _, d := range t.shape[1:] {
		rs *= d
	}
	v := &Tensor{dt: t.dt, shape: append([]int{n}, t.shape[1:]...), view: true, owner: t.owner}
	switch t.dt {
	case ml.F32:
		v.F32 = t.F32[:n*rs]
	case ml.BF16:
		v.BF16 = t.BF16[:n*rs]
	case ml.I32:
		v.I32 = t.I32[:n*rs]
	}
	return v
}

// row returns the f32 elements of weight row r as float32 into dst (converting bf16).
func (t *Tensor) rowF32(r int, dst []float32) {
	k := len(dst)
	switch t.dt {
	case ml.F32:
		copy(dst, t.F32[r*k:(r+1)*k])
	case ml.BF16:
		src := t.BF16[r*k : (r+1)*k]
		for i, b := range src {
			dst[i] = loader.BF16ToF32(b)
		}
	}
}

package loader

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
)

// NumElements returns the number of elements: the product of Shape, 1 for a
// scalar.
func (t *Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Float32 converts a BF16, F16, F32 or F64 tensor to a new []float32 in
// row-major order (F64 values are rounded to nearest).
func (t *Tensor) Float32() ([]float32, error) {
	n := t.NumElements()
	if err := t.checkLen(n); err != nil {
		return nil, err
	}
	out := make([]float32, n)
	b := t.Data
	switch t.DType {
	case BF16:
		if v, ok := viewU16(b); ok {
			o := out[:len(v)] // lets the compiler drop the bounds check
			for i, x := range v {
				o[i] = BF16ToF32(x)
			}
		} else {
			for i := range out {
				out[i] = BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
			}
		}
	case F16:
		for i := range out {
			out[i] = F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case F32:
		if v, ok := viewF32(b); ok {
			copy(out, v)
		} else {
			for i := range out {
				out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
			}
		}
	case F64:
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
		}
	default:
		return nil, fmt.Errorf("%s: tensor %q has dtype %s, want BF16, F16, F32 or F64 to read as float32", t.File, t.Name, t.DType)
	}
	return out, nil
}

// Int64s converts an I64, I32, I16, I8 or U8 tensor to a new []int64.
func (t *Tensor) Int64s() ([]int64, error) {
	n := t.NumElements()
	if err := t.checkLen(n); err != nil {
		return nil, err
	}
	out := make([]int64, n)
	b := t.Data
	switch t.DType {
	case I64:
		for i := range out {
			out[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
		}
	case I32:
		for i := range out {
			out[i] = int64(int32(binary.LittleEndian.Uint32(b[4*i:])))
		}
	case I16:
		for i := range out {
			out[i] = int64(int16(binary.LittleEndian.Uint16(b[2*i:])))
		}
	case I8:
		for i := range out {
			out[i] = int64(int8(b[i]))
		}
	case U8:
		for i := range out {
			out[i] = int64(b[i])
		}
	default:
		return nil, fmt.Errorf("%s: tensor %q has dtype %s, want I64, I32, I16, I8 or U8 to read as int64", t.File, t.Name, t.DType)
	}
	return out, nil
}

// BF16 returns the raw bfloat16 bit patterns of a BF16 tensor. When the host
// is little-endian and the data 2-byte aligned (the usual case) the result
// aliases the mapping and must not be written to; otherwise it is a copy.
func (t *Tensor) BF16() ([]uint16, error) {
	if t.DType != BF16 {
		return nil, fmt.Errorf("%s: tensor %q has dtype %s, want BF16", t.File, t.Name, t.DType)
	}
	n := t.NumElements()
	if err := t.checkLen(n); err != nil {
		return nil, err
	}
	if v, ok := viewU16(t.Data); ok {
		return v[:n:n], nil
	}
	out := make([]uint16, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(t.Data[2*i:])
	}
	return out, nil
}

// checkLen guards the conversions against a Tensor built by hand with a Data
// slice that does not match its shape.
func (t *Tensor) checkLen(n int) error {
	if !t.DType.Valid() {
		return fmt.Errorf("%s: tensor %q has invalid dtype %s", t.File, t.Name, t.DType)
	}
	for _, d := range t.Shape {
		if d < 0 {
			return fmt.Errorf("%s: tensor %q has negative dimension in shape %v", t.File, t.Name, t.Shape)
		}
	}
	if want := n * t.DType.Size(); len(t.Data) != want {
		return fmt.Errorf("%s: tensor %q holds %d bytes, want %d for shape %v of %s", t.File, t.Name, len(t.Data), want, t.Shape, t.DType)
	}
	return nil
}

// ShapeIs reports whether the tensor's shape equals dims.
func (t *Tensor) ShapeIs(dims ...int) bool { return slices.Equal(t.Shape, dims) }

package loader

import (
	"encoding/binary"
	"math"
	"unsafe"
)

// BF16ToF32 widens the bfloat16 bit pattern b to a float32 (exact).
func BF16ToF32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// F32ToBF16 rounds f to the nearest bfloat16, ties to even. Infinities stay
// infinities, values past the largest finite bfloat16 round to infinity as
// IEEE rounding requires, and a NaN stays a NaN (quieted, sign kept) even
// when its payload lives only in the discarded low bits.
func F32ToBF16(f float32) uint16 {
	bits := math.Float32bits(f)
	if bits&0x7fffffff > 0x7f800000 { // NaN
		return uint16(bits>>16) | 0x0040
	}
	bits += 0x7fff + (bits>>16)&1
	return uint16(bits >> 16)
}

// F16ToF32 widens the IEEE 754 half-precision bit pattern h to a float32
// (exact, subnormals and NaN payloads included).
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0: // signed zero
		return math.Float32frombits(sign)
	default: // subnormal: normalise
		e := uint32(113)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	}
}

// BF16Bytes encodes x as little-endian bfloat16, rounding each value to the
// nearest bfloat16 (ties to even).
func BF16Bytes(x []float32) []byte {
	out := make([]byte, 2*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint16(out[2*i:], F32ToBF16(v))
	}
	return out
}

// F32Bytes encodes x as little-endian float32.
func F32Bytes(x []float32) []byte {
	out := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
	}
	return out
}

// I64Bytes encodes x as little-endian int64.
func I64Bytes(x []int64) []byte {
	out := make([]byte, 8*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint64(out[8*i:], uint64(v))
	}
	return out
}

// littleEndianHost is true when the machine stores integers little-endian,
// as safetensors does; only then may stored bytes be viewed as Go numbers.
var littleEndianHost = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// viewU16 returns b as []uint16 without copying when the host is
// little-endian and b is 2-byte aligned; ok is false otherwise.
func viewU16(b []byte) (v []uint16, ok bool) {
	if len(b) == 0 {
		return []uint16{}, true
	}
	if !littleEndianHost || uintptr(unsafe.Pointer(&b[0]))%2 != 0 {
		return nil, false
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), len(b)/2), true
}

// viewF32 is viewU16 for float32 (4-byte alignment).
func viewF32(b []byte) (v []float32, ok bool) {
	if len(b) == 0 {
		return []float32{}, true
	}
	if !littleEndianHost || uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4), true
}

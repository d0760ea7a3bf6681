package loader

import "fmt"

// DType is the element type of a stored tensor, as named by safetensors.
type DType int

// The element types qvl reads and writes. The order is part of the API.
const (
	F32 DType = iota
	F16
	BF16
	F64
	I64
	I32
	I16
	I8
	U8
	Bool
)

var dtypeNames = [...]string{
	F32:  "F32",
	F16:  "F16",
	BF16: "BF16",
	F64:  "F64",
	I64:  "I64",
	I32:  "I32",
	I16:  "I16",
	I8:   "I8",
	U8:   "U8",
	Bool: "BOOL",
}

var dtypeSizes = [...]int{
	F32:  4,
	F16:  2,
	BF16: 2,
	F64:  8,
	I64:  8,
	I32:  4,
	I16:  2,
	I8:   1,
	U8:   1,
	Bool: 1,
}

// Valid reports whether d is one of the declared element types.
func (d DType) Valid() bool { return d >= F32 && d <= Bool }

// String returns the safetensors name of d ("F32", "BF16", "BOOL", ...), or
// "DType(n)" for a value outside the declared set.
func (d DType) String() string {
	if !d.Valid() {
		return fmt.Sprintf("DType(%d)", int(d))
	}
	return dtypeNames[d]
}

// Size returns the number of bytes per element of d, or 0 for a value outside
// the declared set.
func (d DType) Size() int {
	if !d.Valid() {
		return 0
	}
	return dtypeSizes[d]
}

// IsFloat reports whether d is a floating-point type (F16, BF16, F32, F64).
func (d DType) IsFloat() bool { return d == F16 || d == BF16 || d == F32 || d == F64 }

// ParseDType maps a safetensors dtype name ("F32", "F16", "BF16", "F64",
// "I64", "I32", "I16", "I8", "U8", "BOOL") to its DType. Names are
// case-sensitive, as in the format.
func ParseDType(s string) (DType, error) {
	for i, n := range dtypeNames {
		if n == s {
			return DType(i), nil
		}
	}
	return 0, fmt.Errorf("unknown dtype %q (want one of F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)", s)
}

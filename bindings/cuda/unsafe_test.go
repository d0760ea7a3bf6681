package cuda

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// unsafePointer and bytesAt read memory the tests know to be live (fields
// of a heap Args); they exist only to inspect what C would see.
func unsafePointer(p uintptr) unsafe.Pointer {
	return *(*unsafe.Pointer)(unsafe.Pointer(&p))
}

func bytesAt(p uintptr, n int) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafePointer(p)), n)...)
}

func libcSymbol(t *testing.T, name string) uintptr {
	t.Helper()
	lib, err := dl.Open([]string{"libc.so.6"})
	if err != nil {
		t.Skipf("no libc.so.6 to stand in for the driver: %v", err)
	}
	p, err := lib.Symbol(name)
	require.NoError(t, err)
	return p
}

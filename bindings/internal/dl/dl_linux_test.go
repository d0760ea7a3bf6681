//go:build linux

package dl

import (
	"fmt"
	"runtime"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"
)

func openLibc(t testing.TB) *Library {
	t.Helper()
	lib, err := Open([]string{"libc.so.6"})
	require.NoError(t, err)
	return lib
}

func TestCallPassesIntegersAndPointers(t *testing.T) {
	lib := openLibc(t)
	abs, err := lib.Symbol("abs")
	require.NoError(t, err)
	// A negative int travels in the low 32 bits of its register.
	require.Equal(t, uint32(12345), Call(abs, Int(-12345)))

	strlen, err := lib.Symbol("strlen")
	require.NoError(t, err)
	s := []byte("seventeen chars!!\x00")
	require.Equal(t, uint32(17), Call(strlen, uintptr(unsafe.Pointer(&s[0]))))

	// snprintf-free check of a stack argument: the 7th and 8th integer
	// arguments go on the stack on amd64 (6 registers), on arm64 the 9th.
	// memcmp ignores extra arguments, so pad with junk and check the result
	// only depends on the first three.
	memcmp, err := lib.Symbol("memcmp")
	require.NoError(t, err)
	a, b := []byte("abcd"), []byte("abce")
	r := int32(Call(memcmp, uintptr(unsafe.Pointer(&a[0])), uintptr(unsafe.Pointer(&b[0])), 4, 1, 2, 3, 4, 5, 6, 7, 8, 9))
	require.Negative(t, r)
}

func TestCallUintptrReturnsTheWholeRegister(t *testing.T) {
	lib := openLibc(t)
	labs, err := lib.Symbol("labs")
	require.NoError(t, err)
	r, ok := CallUintptr(labs, Int(-(1 << 40)))
	require.True(t, ok)
	require.Equal(t, uintptr(1<<40), r)
	_, ok = CallUintptr(0)
	require.False(t, ok)
}

// TestCallPassesManyArguments checks that every argument of a long call
// arrives, in order, including those passed on the stack: snprintf with 19
// and with MaxArgs integer arguments (cublasGemmEx takes 19, cublasLtMatmul
// 16, cuLaunchKernel 11).
func TestCallPassesManyArguments(t *testing.T) {
	lib := openLibc(t)
	snprintf, err := lib.Symbol("snprintf")
	require.NoError(t, err)
	for _, total := range []int{19, MaxArgs} {
		ints := total - 3 // buf, size, format
		format := ""
		want := ""
		args := make([]uintptr, 0, total)
		buf := make([]byte, 512)
		for i := 0; i < ints; i++ {
			format += "%d,"
			want += fmt.Sprintf("%d,", 100+i)
		}
		cformat := CString(format)
		// The addresses are stored before the call, so the buffers must be
		// pinned heap objects (a stack buffer could move).
		var pin runtime.Pinner
		pin.Pin(&buf[0])
		pin.Pin(&cformat[0])
		args = append(args, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), uintptr(unsafe.Pointer(&cformat[0])))
		for i := 0; i < ints; i++ {
			args = append(args, uintptr(100+i))
		}
		n := Call(snprintf, args...)
		require.Equal(t, uint32(len(want)), n, "%d arguments", total)
		require.Equal(t, want, string(buf[:n]), "%d arguments", total)
		pin.Unpin()
	}
}

func TestCallRefusesWhatItCannotCall(t *testing.T) {
	require.Equal(t, CallNilFunction, Call(0, 1, 2))
	lib := openLibc(t)
	abs, err := lib.Symbol("abs")
	require.NoError(t, err)
	args := make([]uintptr, MaxArgs+1)
	require.Equal(t, CallTooManyArgs, Call(abs, args...))
}

func TestCallSliceDoesNotAllocate(t *testing.T) {
	lib := openLibc(t)
	abs, err := lib.Symbol("abs")
	require.NoError(t, err)
	buf := make([]uintptr, 11)
	var r uint32
	allocs := testing.AllocsPerRun(200, func() {
		buf[0] = Int(-3)
		r = CallSlice(abs, buf)
	})
	require.Equal(t, uint32(3), r)
	require.Zero(t, allocs, "CallSlice must not allocate: it is on the kernel-launch path")
	require.Equal(t, CallNilFunction, CallSlice(0, buf))
	require.Equal(t, CallTooManyArgs, CallSlice(abs, make([]uintptr, MaxArgs+1)))
}

func TestOpenReportsEveryCandidate(t *testing.T) {
	_, err := Open([]string{"libqvl-does-not-exist.so.1", "/nonexistent/libqvl.so"})
	require.Error(t, err)
	var nf *NotFoundError
	require.ErrorAs(t, err, &nf)
	require.Equal(t, []string{"libqvl-does-not-exist.so.1", "/nonexistent/libqvl.so"}, nf.Tried)
	require.Len(t, nf.Reasons, 2)
	require.Contains(t, err.Error(), "libqvl-does-not-exist.so.1")
	require.Contains(t, err.Error(), "/nonexistent/libqvl.so")

	_, err = Open(nil)
	require.Error(t, err)
}

func TestSymbolNamesLibraryAndSymbol(t *testing.T) {
	lib := openLibc(t)
	_, err := lib.Symbol("qvl_no_such_symbol")
	require.ErrorContains(t, err, "libc.so.6")
	require.ErrorContains(t, err, "qvl_no_such_symbol")
}

func TestMaxArgsFor(t *testing.T) {
	require.Equal(t, 15, maxArgsFor("ppc64le"))
	require.Equal(t, 32, maxArgsFor("amd64"))
	require.Equal(t, 32, maxArgsFor("arm64"))
}

// BenchmarkCallSyscallN measures the per-call cost of the path the bindings
// use: a resolved address called through purego.SyscallN.
func BenchmarkCallSyscallN(b *testing.B) {
	lib := openLibc(b)
	abs, err := lib.Symbol("abs")
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		Call(abs, Int(-3))
	}
}

// BenchmarkCallSlice measures the allocation-free path used for launches.
func BenchmarkCallSlice(b *testing.B) {
	lib := openLibc(b)
	abs, err := lib.Symbol("abs")
	require.NoError(b, err)
	buf := []uintptr{Int(-3)}
	b.ReportAllocs()
	for b.Loop() {
		CallSlice(abs, buf)
	}
}

// BenchmarkCallRegisterLibFunc measures the alternative: a typed Go function
// built by purego.RegisterLibFunc (reflect.MakeFunc underneath).
func BenchmarkCallRegisterLibFunc(b *testing.B) {
	lib := openLibc(b)
	var abs func(int32) int32
	purego.RegisterLibFunc(&abs, lib.handle, "abs")
	b.ReportAllocs()
	for b.Loop() {
		abs(-3)
	}
}

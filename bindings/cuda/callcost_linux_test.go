//go:build linux

package cuda

import (
	"runtime"
	"testing"
	"unsafe"

	"github.com/ebitengine/purego"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// The benchmarks below compare the two ways purego can call a cheap driver
// function (cuDriverGetVersion: no GPU needed, just a store):
//
//   - SyscallN: the address from dlsym, called with uintptr arguments (what
//     this package does);
//   - RegisterLibFunc: a typed Go func built with reflect.MakeFunc.
//
// Run: go test -run '^$' -bench DriverGetVersion ./bindings/cuda

func BenchmarkDriverGetVersionSyscallN(b *testing.B) {
	if err := load(); err != nil {
		b.Skipf("no libcuda: %v", err)
	}
	var v int32
	b.ReportAllocs()
	for b.Loop() {
		dl.Call(api.cuDriverGetVersion, uintptr(unsafe.Pointer(&v)))
	}
	require.Positive(b, v)
}

func BenchmarkDriverGetVersionCallSlice(b *testing.B) {
	if err := load(); err != nil {
		b.Skipf("no libcuda: %v", err)
	}
	// v must be a pinned heap object: its address is stored as a uintptr
	// before the call (a stack object could move with its stack).
	v := new(int32)
	var pin runtime.Pinner
	pin.Pin(v)
	defer pin.Unpin()
	args := []uintptr{uintptr(unsafe.Pointer(v))}
	b.ReportAllocs()
	for b.Loop() {
		dl.CallSlice(api.cuDriverGetVersion, args)
	}
	require.Positive(b, *v)
}

func BenchmarkDriverGetVersionRegisterLibFunc(b *testing.B) {
	h, err := purego.Dlopen("libcuda.so.1", purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		b.Skipf("no libcuda: %v", err)
	}
	var getVersion func(*int32) int32
	purego.RegisterLibFunc(&getVersion, h, "cuDriverGetVersion")
	var v int32
	b.ReportAllocs()
	for b.Loop() {
		getVersion(&v)
	}
	require.Positive(b, v)
}

// BenchmarkLaunchKernelHostPath measures what LaunchKernel adds around the
// driver: argument packing, pinning and the call, with cuLaunchKernel
// replaced by libc's abs (Function 0 -> returns 0 = success).
func BenchmarkLaunchKernelHostPath(b *testing.B) {
	lib, err := dl.Open([]string{"libc.so.6"})
	require.NoError(b, err)
	abs, err := lib.Symbol("abs")
	require.NoError(b, err)
	saved := api.cuLaunchKernel
	api.cuLaunchKernel = abs
	defer func() { api.cuLaunchKernel = saved }()
	a := NewArgs()
	b.ReportAllocs()
	for b.Loop() {
		a.Reset().Ptr(0x1000).Ptr(0x2000).F32(2).U32(769)
		if err := LaunchKernel(0, D1(4), D1(256), 0, 0, a); err != nil {
			b.Fatal(err)
		}
	}
}

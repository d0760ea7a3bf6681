package cuda

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLaunchExLayout checks the Go mirrors of CUlaunchConfig and CUlaunchAttribute against
// cuda.h's layout (CUDA 11.8–13): the driver reads them as C structs.
func TestLaunchExLayout(t *testing.T) {
	var a launchAttribute
	assert.Equal(t, uintptr(72), unsafe.Sizeof(a))
	assert.Equal(t, uintptr(8), unsafe.Offsetof(a.value))
	var c launchConfig
	assert.Equal(t, uintptr(56), unsafe.Sizeof(c))
	assert.Equal(t, uintptr(24), unsafe.Offsetof(c.sharedMemBytes))
	assert.Equal(t, uintptr(32), unsafe.Offsetof(c.hStream))
	assert.Equal(t, uintptr(40), unsafe.Offsetof(c.attrs))
	assert.Equal(t, uintptr(48), unsafe.Offsetof(c.numAttrs))
}

// TestLaunchKernelExRefuses covers the argument errors that need no driver.
func TestLaunchKernelExRefuses(t *testing.T) {
	err := LaunchKernelEx(0, D1(1), D1(32), 0, 0, LaunchAttrs{}, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nil Args")
	a := NewArgs()
	for i := 0; i <= MaxKernelArgs; i++ {
		a.U32(1)
	}
	err = LaunchKernelEx(0, D1(1), D1(32), 0, 0, LaunchAttrs{}, a)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "more than MaxKernelArgs")
}

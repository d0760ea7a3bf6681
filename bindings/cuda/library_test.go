package cuda

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLibraryCandidatesOrder(t *testing.T) {
	triplet := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[runtime.GOARCH]
	if triplet == "" {
		triplet = multiarch(runtime.GOARCH)
	}
	assert.Equal(t, []string{
		"libcuda.so.1",
		"/usr/local/nvidia/lib64/libcuda.so.1",
		"/usr/lib/" + triplet + "/libcuda.so.1",
		"/usr/local/cuda/lib64/libcuda.so.1",
		"/usr/local/cuda/compat/libcuda.so.1",
	}, LibraryCandidates(""))
	assert.Equal(t, []string{"/opt/driver/libcuda.so.1"}, LibraryCandidates("/opt/driver/libcuda.so.1"))
	assert.Equal(t, "x86_64-linux-gnu", multiarch("amd64"))
	assert.Equal(t, "aarch64-linux-gnu", multiarch("arm64"))
}

func TestArgsPacking(t *testing.T) {
	a := NewArgs()
	a.Ptr(0x7f00_1234_5678).F32(1.5).U32(7).I32(-2).U64(1 << 40).I64(-3)
	require.Equal(t, 6, a.Len())
	require.NoError(t, a.Err())

	params := a.kernelParams()
	require.NotZero(t, params)
	ptrs := (*[MaxKernelArgs]uintptr)(unsafePointer(params))
	word := func(i int) []byte { return bytesAt(ptrs[i], 8) }
	le := func(v uint64) []byte {
		b := make([]byte, 8)
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		return b
	}
	// Each pointer addresses its own slot, and the slot's low bytes are the
	// value as the kernel reads it.
	assert.Equal(t, le(0x7f00_1234_5678), word(0))
	assert.Equal(t, le(0x3fc00000), word(1)) // 1.5f
	assert.Equal(t, le(7), word(2))
	assert.Equal(t, le(0xfffffffe), word(3)) // int32(-2): 4 meaningful bytes
	assert.Equal(t, le(1<<40), word(4))
	assert.Equal(t, le(0xfffffffffffffffd), word(5))

	a.Reset()
	require.Equal(t, 0, a.Len())
	require.Zero(t, a.kernelParams(), "no parameters means kernelParams = NULL")
}

func TestArgsOverflowIsAnErrorAtLaunch(t *testing.T) {
	a := NewArgs()
	for i := 0; i < MaxKernelArgs; i++ {
		a.U32(uint32(i))
	}
	require.NoError(t, a.Err())
	a.U32(99)
	require.Error(t, a.Err())
	require.Equal(t, MaxKernelArgs, a.Len())
	err := LaunchKernel(0, D1(1), D1(1), 0, 0, a)
	require.ErrorIs(t, err, ErrorInvalidValue)
	require.ErrorContains(t, err, "MaxKernelArgs")
	a.Reset()
	require.NoError(t, a.Err())
}

// TestLaunchPathDoesNotAllocate runs LaunchKernel against a stand-in C
// function (libc's sched_yield: returns 0 and ignores arguments), so the
// argument packing, pinning and call path are measured without a GPU.
func TestLaunchPathDoesNotAllocate(t *testing.T) {
	fn := libcSymbol(t, "sched_yield")
	saved := api.cuLaunchKernel
	api.cuLaunchKernel = fn
	defer func() { api.cuLaunchKernel = saved }()

	a := NewArgs()
	var err error
	allocs := testing.AllocsPerRun(500, func() {
		a.Reset().Ptr(0x1000).Ptr(0x2000).F32(2).U32(769)
		err = LaunchKernel(Function(0x1), D1(4), D1(256), 0, Stream(0), a)
	})
	require.NoError(t, err)
	require.Zero(t, allocs, "LaunchKernel with a reused Args must not allocate")

	graphSaved := api.cuGraphLaunch
	api.cuGraphLaunch = fn
	defer func() { api.cuGraphLaunch = graphSaved }()
	allocs = testing.AllocsPerRun(500, func() { err = GraphExec(1).Launch(0) })
	require.NoError(t, err)
	require.Zero(t, allocs, "GraphExec.Launch must not allocate")
}

// TestHelperAvailable is not a test: the subprocess tests below run the
// test binary with QVL_CUDA_HELPER=1 to call Available in a fresh process
// (Available caches its answer per process) and print the outcome.
func TestHelperAvailable(t *testing.T) {
	if os.Getenv("QVL_CUDA_HELPER") != "1" {
		t.Skip("helper process for TestAvailableInFreshProcess")
	}
	err := Available()
	fmt.Printf("AVAILABLE=%v\n", err)
	_, openErr := Open(0)
	fmt.Printf("OPEN=%v\n", openErr)
	same := (err == nil) == (openErr == nil) && (err == nil || openErr.Error() == err.Error())
	fmt.Printf("SAME=%v\n", same)
}

func runHelper(t *testing.T, env ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAvailable$", "-test.v")
	cmd.Env = append(os.Environ(), append([]string{"QVL_CUDA_HELPER=1"}, env...)...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the helper process must exit normally (no os.Exit, no crash); output:\n%s", out)
	return string(out)
}

func TestAvailableWithMissingLibraryOverride(t *testing.T) {
	out := runHelper(t, EnvLibCUDA+"=/nonexistent/qvl/libcuda.so.1")
	assert.Contains(t, out, "AVAILABLE=cuda: no usable libcuda.so.1")
	assert.Contains(t, out, "/nonexistent/qvl/libcuda.so.1")
	assert.Contains(t, out, "SAME=true")
	// The override is the only candidate tried.
	assert.NotContains(t, out, "/usr/local/nvidia/lib64")
}

// TestAvailableOnThisMachine checks the no-GPU path with whatever libcuda is
// installed (Debian's libcuda1 without a GPU answers CUDA_ERROR_NO_DEVICE),
// and on a GPU machine that Available succeeds.
func TestAvailableOnThisMachine(t *testing.T) {
	out := runHelper(t)
	if strings.Contains(out, "AVAILABLE=<nil>") {
		assert.Contains(t, out, "OPEN=<nil>")
		return
	}
	assert.Contains(t, out, "SAME=true")
	if load() != nil {
		assert.Contains(t, out, "AVAILABLE=cuda: no usable libcuda.so.1")
		return
	}
	// A driver library is present but unusable here: the reason must be a
	// named CUresult.
	assert.Regexp(t, `AVAILABLE=cuda: driver .* did not initialise: cuInit: CUDA_ERROR_[A-Z_]+ \(\d+\)|AVAILABLE=cuda: the driver reports no CUDA devices`, out)
}

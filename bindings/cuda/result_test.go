package cuda

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestErrorMessageNamesFunctionCodeAndNumber(t *testing.T) {
	err := check("cuMemAlloc_v2", 2)
	require.EqualError(t, err, "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2)")
	require.ErrorIs(t, err, ErrorOutOfMemory)
	require.NotErrorIs(t, err, ErrorNoDevice)

	var ce *Error
	require.ErrorAs(t, fmt.Errorf("loading weights: %w", err), &ce)
	assert.Equal(t, "cuMemAlloc_v2", ce.Func)
	assert.Equal(t, ErrorOutOfMemory, ce.Code)

	withDetail := &Error{Func: "cuModuleLoadDataEx", Code: ErrorInvalidPTX, Detail: "ptxas fatal: bad token"}
	assert.Equal(t, "cuModuleLoadDataEx: CUDA_ERROR_INVALID_PTX (218): ptxas fatal: bad token", withDetail.Error())

	require.NoError(t, check("cuInit", 0))
}

func TestResultNames(t *testing.T) {
	cases := map[Result]string{
		Success:                       "CUDA_SUCCESS",
		ErrorInvalidValue:             "CUDA_ERROR_INVALID_VALUE",
		ErrorStubLibrary:              "CUDA_ERROR_STUB_LIBRARY",
		ErrorNoDevice:                 "CUDA_ERROR_NO_DEVICE",
		ErrorInvalidContext:           "CUDA_ERROR_INVALID_CONTEXT",
		ErrorInvalidPTX:               "CUDA_ERROR_INVALID_PTX",
		ErrorNotReady:                 "CUDA_ERROR_NOT_READY",
		ErrorIllegalAddress:           "CUDA_ERROR_ILLEGAL_ADDRESS",
		ErrorLaunchFailed:             "CUDA_ERROR_LAUNCH_FAILED",
		ErrorStreamCaptureInvalidated: "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
		ErrorUnknown:                  "CUDA_ERROR_UNKNOWN",
		721:                           "CUDA_ERROR_TENSOR_MEMORY_LEAK",
		917:                           "CUDA_ERROR_STREAM_DETACHED",
	}
	for r, name := range cases {
		assert.Equal(t, name, r.Name(), "code %d", int32(r))
		assert.Equal(t, name+" ("+strconv.Itoa(int(r))+")", r.Error())
	}
	// A code in no table reads as a number, never as a wrong name.
	assert.Equal(t, "CUresult(4242)", Result(4242).Name())

	seen := map[string]Result{}
	for r, name := range resultNames {
		if prev, dup := seen[name]; dup {
			t.Errorf("name %s used for %d and %d", name, prev, r)
		}
		seen[name] = r
		assert.Regexp(t, `^(CUDA_SUCCESS|CUDA_ERROR_[A-Z0-9_]+|QVL_CUDA_[A-Z_]+)$`, name)
	}
}

func TestCallsBeforeLoadAreErrorsNotCrashes(t *testing.T) {
	// A zero address is what every symbol is before libcuda is loaded.
	err := check("cuMemAlloc_v2", callH(0, 1, 1, 0, 0, 0, 0))
	require.ErrorIs(t, err, ErrorSymbolNotLoaded)
	require.ErrorContains(t, err, "cuMemAlloc_v2: QVL_CUDA_SYMBOL_NOT_LOADED")
	require.ErrorContains(t, err, "call cuda.Available or cuda.Open first")
}

// TestResultNamesMatchCudaHeader checks the table against the CUresult enum
// of an installed cuda.h (Debian's nvidia-cuda-dev puts it in /usr/include).
// Newer codes may be in the table and not in an older header; every code in
// the header must be in the table with the same name.
func TestResultNamesMatchCudaHeader(t *testing.T) {
	header := ""
	for _, p := range []string{"/usr/include/cuda.h", "/usr/local/cuda/include/cuda.h"} {
		if _, err := os.Stat(p); err == nil {
			header = p
			break
		}
	}
	if header == "" {
		t.Skip("no cuda.h found in /usr/include or /usr/local/cuda/include: install nvidia-cuda-dev to run this check")
	}
	f, err := os.Open(header)
	require.NoError(t, err)
	defer f.Close()
	entry := regexp.MustCompile(`^\s*(CUDA_(?:SUCCESS|ERROR_[A-Z0-9_]+))\s*=\s*(\d+)\s*,?`)
	inEnum, count := false, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "typedef enum cudaError_enum") {
			inEnum = true
			continue
		}
		if inEnum && strings.HasPrefix(strings.TrimSpace(line), "} CUresult") {
			break
		}
		if m := entry.FindStringSubmatch(line); inEnum && m != nil {
			v, err := strconv.Atoi(m[2])
			require.NoError(t, err)
			assert.Equal(t, m[1], resultNames[Result(v)], "%s in %s", m[1], header)
			count++
		}
	}
	require.NoError(t, sc.Err())
	require.Greater(t, count, 80, "parsed too few CUresult entries from %s", header)
}

// TestResultNamesMatchDriver compares the table with cuGetErrorName of the
// loaded driver, for every code the driver knows.
func TestResultNamesMatchDriver(t *testing.T) {
	if err := load(); err != nil {
		t.Skipf("no libcuda to compare with: %v", err)
	}
	compared := 0
	for r, name := range resultNames {
		if s, ok := driverErrorString(api.cuGetErrorName, r); ok {
			assert.Equal(t, s, name, "code %d", int32(r))
			compared++
		}
	}
	require.Greater(t, compared, 50)
	assert.NotEmpty(t, ErrorNoDevice.Description())
	assert.True(t, errors.Is(&Error{Func: "x", Code: ErrorNoDevice}, ErrorNoDevice))
}

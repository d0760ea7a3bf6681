package cuda

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// EnvLibCUDA names the environment variable that, when set, is the only
// libcuda path tried.
const EnvLibCUDA = "QVL_LIBCUDA"

// ErrNoDevices is returned by Available and Open when the driver works but
// reports zero devices.
var ErrNoDevices = errors.New("cuda: the driver reports no CUDA devices")

// LibraryCandidates returns, in order, the libcuda names Available tries:
// the override if non-empty (and nothing else), else the default loader path
// first and then the directories where GPU machines and containers put the
// driver (/usr/local/nvidia/lib64 for the NVIDIA container runtime, the
// multiarch directory, the toolkit's lib64 and its forward-compat directory).
func LibraryCandidates(override string) []string {
	if override != "" {
		return []string{override}
	}
	const so = "libcuda.so.1"
	return []string{
		so,
		"/usr/local/nvidia/lib64/" + so,
		"/usr/lib/" + multiarch(runtime.GOARCH) + "/" + so,
		"/usr/local/cuda/lib64/" + so,
		"/usr/local/cuda/compat/" + so,
	}
}

// multiarch returns Debian's multiarch triplet for goarch.
func multiarch(goarch string) string {
	switch goarch {
	case "arm64":
		return "aarch64-linux-gnu"
	case "ppc64le":
		return "powerpc64le-linux-gnu"
	default:
		return "x86_64-linux-gnu"
	}
}

// driverAPI holds the resolved address of every bound driver function. A
// zero address makes dl.Call return ErrorSymbolNotLoaded instead of
// crashing, so calling before Available or Open is an error, not a fault.
type driverAPI struct {
	cuInit                      uintptr
	cuDriverGetVersion          uintptr
	cuDeviceGetCount            uintptr
	cuDeviceGet                 uintptr
	cuDeviceGetName             uintptr
	cuDeviceGetAttribute        uintptr
	cuDeviceTotalMem            uintptr
	cuDevicePrimaryCtxRetain    uintptr
	cuDevicePrimaryCtxRelease   uintptr
	cuCtxSetCurrent             uintptr
	cuCtxSynchronize            uintptr
	cuMemGetInfo                uintptr
	cuMemAlloc                  uintptr
	cuMemFree                   uintptr
	cuMemAllocHost              uintptr
	cuMemFreeHost               uintptr
	cuMemcpyHtoD                uintptr
	cuMemcpyDtoH                uintptr
	cuMemcpyDtoD                uintptr
	cuMemcpyHtoDAsync           uintptr
	cuMemcpyDtoHAsync           uintptr
	cuMemcpyDtoDAsync           uintptr
	cuMemsetD8                  uintptr
	cuMemsetD32Async            uintptr
	cuStreamCreate              uintptr
	cuStreamDestroy             uintptr
	cuStreamSynchronize         uintptr
	cuEventCreate               uintptr
	cuEventRecord               uintptr
	cuEventSynchronize          uintptr
	cuEventElapsedTime          uintptr
	cuEventDestroy              uintptr
	cuModuleLoadData            uintptr
	cuModuleLoadDataEx          uintptr
	cuModuleGetFunction         uintptr
	cuModuleUnload              uintptr
	cuFuncSetAttribute          uintptr
	cuLaunchKernel              uintptr
	cuLaunchKernelEx            uintptr
	cuStreamBeginCapture        uintptr
	cuStreamEndCapture          uintptr
	cuGraphInstantiateWithFlags uintptr
	cuGraphLaunch               uintptr
	cuGraphExecDestroy          uintptr
	cuGraphDestroy              uintptr
	cuGraphGetEdges             uintptr
	cuGetErrorName              uintptr
	cuGetErrorString            uintptr
}

type symbol struct {
	name     string
	addr     *uintptr
	required bool
}

// symbols lists the exported names bound to each field. Versioned names
// (_v2) are the ones cuda.h maps the plain names to since CUDA 3.2 / 4.0 /
// 10.1 / 11.0; drivers keep exporting them for binary compatibility.
func (a *driverAPI) symbols() []symbol {
	return []symbol{
		{"cuInit", &a.cuInit, true},
		{"cuDriverGetVersion", &a.cuDriverGetVersion, true},
		{"cuDeviceGetCount", &a.cuDeviceGetCount, true},
		{"cuDeviceGet", &a.cuDeviceGet, true},
		{"cuDeviceGetName", &a.cuDeviceGetName, false},
		{"cuDeviceGetAttribute", &a.cuDeviceGetAttribute, false},
		{"cuDeviceTotalMem_v2", &a.cuDeviceTotalMem, false},
		{"cuDevicePrimaryCtxRetain", &a.cuDevicePrimaryCtxRetain, false},
		{"cuDevicePrimaryCtxRelease_v2", &a.cuDevicePrimaryCtxRelease, false},
		{"cuCtxSetCurrent", &a.cuCtxSetCurrent, false},
		{"cuCtxSynchronize", &a.cuCtxSynchronize, false},
		{"cuMemGetInfo_v2", &a.cuMemGetInfo, false},
		{"cuMemAlloc_v2", &a.cuMemAlloc, false},
		{"cuMemFree_v2", &a.cuMemFree, false},
		{"cuMemAllocHost_v2", &a.cuMemAllocHost, false},
		{"cuMemFreeHost", &a.cuMemFreeHost, false},
		{"cuMemcpyHtoD_v2", &a.cuMemcpyHtoD, false},
		{"cuMemcpyDtoH_v2", &a.cuMemcpyDtoH, false},
		{"cuMemcpyDtoD_v2", &a.cuMemcpyDtoD, false},
		{"cuMemcpyHtoDAsync_v2", &a.cuMemcpyHtoDAsync, false},
		{"cuMemcpyDtoHAsync_v2", &a.cuMemcpyDtoHAsync, false},
		{"cuMemcpyDtoDAsync_v2", &a.cuMemcpyDtoDAsync, false},
		{"cuMemsetD8_v2", &a.cuMemsetD8, false},
		{"cuMemsetD32Async", &a.cuMemsetD32Async, false},
		{"cuStreamCreate", &a.cuStreamCreate, false},
		{"cuStreamDestroy_v2", &a.cuStreamDestroy, false},
		{"cuStreamSynchronize", &a.cuStreamSynchronize, false},
		{"cuEventCreate", &a.cuEventCreate, false},
		{"cuEventRecord", &a.cuEventRecord, false},
		{"cuEventSynchronize", &a.cuEventSynchronize, false},
		{"cuEventElapsedTime", &a.cuEventElapsedTime, false},
		{"cuEventDestroy_v2", &a.cuEventDestroy, false},
		{"cuModuleLoadData", &a.cuModuleLoadData, false},
		{"cuModuleLoadDataEx", &a.cuModuleLoadDataEx, false},
		{"cuModuleGetFunction", &a.cuModuleGetFunction, false},
		{"cuModuleUnload", &a.cuModuleUnload, false},
		{"cuFuncSetAttribute", &a.cuFuncSetAttribute, false},
		{"cuLaunchKernel", &a.cuLaunchKernel, false},
		{"cuLaunchKernelEx", &a.cuLaunchKernelEx, false},
		{"cuStreamBeginCapture_v2", &a.cuStreamBeginCapture, false},
		{"cuStreamEndCapture", &a.cuStreamEndCapture, false},
		{"cuGraphInstantiateWithFlags", &a.cuGraphInstantiateWithFlags, false},
		{"cuGraphLaunch", &a.cuGraphLaunch, false},
		{"cuGraphExecDestroy", &a.cuGraphExecDestroy, false},
		{"cuGraphDestroy", &a.cuGraphDestroy, false},
		{"cuGraphGetEdges_v2", &a.cuGraphGetEdges, false},
		{"cuGetErrorName", &a.cuGetErrorName, false},
		{"cuGetErrorString", &a.cuGetErrorString, false},
	}
}

// resolve fills a from lib. A missing required symbol fails; a missing
// optional one stays 0 (calls to it report ErrorSymbolNotLoaded) and is
// listed in the returned slice.
func (a *driverAPI) resolve(lib *dl.Library) (missing []string, err error) {
	for _, s := range a.symbols() {
		p, err := lib.Symbol(s.name)
		if err != nil {
			if s.required {
				return nil, fmt.Errorf("cuda: %s is not a usable libcuda: %w", lib.Path, err)
			}
			missing = append(missing, s.name)
			continue
		}
		*s.addr = p
	}
	return missing, nil
}

var (
	// api is written once, inside loadOnce, before anything can call a
	// driver function through it.
	api driverAPI

	loadOnce    sync.Once
	loadErr     error
	loadedLib   *dl.Library
	missingSyms []string

	initOnce sync.Once
	initErr  error
)

// load opens libcuda and resolves the symbols, once per process.
func load() error {
	loadOnce.Do(func() {
		lib, err := dl.Open(LibraryCandidates(os.Getenv(EnvLibCUDA)))
		if err != nil {
			loadErr = fmt.Errorf("cuda: no usable libcuda.so.1 (set %s to its path if it is installed elsewhere): %w", EnvLibCUDA, err)
			return
		}
		var a driverAPI
		missing, err := a.resolve(lib)
		if err != nil {
			_ = lib.Close()
			loadErr = err
			return
		}
		api = a
		loadedLib = lib
		missingSyms = missing
	})
	return loadErr
}

// LibraryPath returns the libcuda name or path that was loaded, or "" before
// a successful Available or Open.
func LibraryPath() string {
	if load() != nil {
		return ""
	}
	return loadedLib.Path
}

// MissingSymbols lists the bound driver functions that the loaded libcuda
// does not export (calls to them return ErrorSymbolNotLoaded). It is empty
// for any driver from CUDA 11.4 on.
func MissingSymbols() []string {
	if load() != nil {
		return nil
	}
	return append([]string(nil), missingSyms...)
}

// Available loads libcuda, calls cuInit and counts devices, once per process,
// and returns nil when at least one device can be used. Otherwise it returns
// an error that says why, suitable for a one-line log before falling back to
// the CPU: the library was not found, cuInit failed (the error names the
// CUresult, e.g. CUDA_ERROR_NO_DEVICE), or there are no devices. Available
// never panics and never exits the process.
func Available() error {
	initOnce.Do(func() {
		if err := load(); err != nil {
			initErr = err
			return
		}
		if err := check("cuInit", dl.Call(api.cuInit, 0)); err != nil {
			initErr = fmt.Errorf("cuda: driver %s did not initialise: %w", loadedLib.Path, err)
			return
		}
		n, err := DeviceCount()
		if err != nil {
			initErr = fmt.Errorf("cuda: %w", err)
			return
		}
		if n == 0 {
			initErr = ErrNoDevices
		}
	})
	return initErr
}

package cuda

import (
	"fmt"
	"unsafe"

	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// Result is a CUresult status code returned by every CUDA driver function.
// A Result is also an error value, so errors.Is(err, ErrorNoDevice) works
// on the *Error values this package returns.
type Result int32

// CUresult values that qvl names in code. The full table of names used in
// messages is resultNames.
const (
	// Success is CUDA_SUCCESS.
	Success Result = 0
	// ErrorInvalidValue is CUDA_ERROR_INVALID_VALUE.
	ErrorInvalidValue Result = 1
	// ErrorOutOfMemory is CUDA_ERROR_OUT_OF_MEMORY.
	ErrorOutOfMemory Result = 2
	// ErrorNotInitialized is CUDA_ERROR_NOT_INITIALIZED.
	ErrorNotInitialized Result = 3
	// ErrorDeinitialized is CUDA_ERROR_DEINITIALIZED.
	ErrorDeinitialized Result = 4
	// ErrorStubLibrary is CUDA_ERROR_STUB_LIBRARY: the loaded libcuda is the
	// toolkit's link stub, not a driver.
	ErrorStubLibrary Result = 34
	// ErrorNoDevice is CUDA_ERROR_NO_DEVICE.
	ErrorNoDevice Result = 100
	// ErrorInvalidDevice is CUDA_ERROR_INVALID_DEVICE.
	ErrorInvalidDevice Result = 101
	// ErrorInvalidImage is CUDA_ERROR_INVALID_IMAGE.
	ErrorInvalidImage Result = 200
	// ErrorInvalidContext is CUDA_ERROR_INVALID_CONTEXT: usually a driver call
	// made outside (*Device).Do.
	ErrorInvalidContext Result = 201
	// ErrorNoBinaryForGPU is CUDA_ERROR_NO_BINARY_FOR_GPU.
	ErrorNoBinaryForGPU Result = 209
	// ErrorInvalidPTX is CUDA_ERROR_INVALID_PTX.
	ErrorInvalidPTX Result = 218
	// ErrorUnsupportedPTXVersion is CUDA_ERROR_UNSUPPORTED_PTX_VERSION.
	ErrorUnsupportedPTXVersion Result = 222
	// ErrorInvalidHandle is CUDA_ERROR_INVALID_HANDLE.
	ErrorInvalidHandle Result = 400
	// ErrorNotFound is CUDA_ERROR_NOT_FOUND.
	ErrorNotFound Result = 500
	// ErrorNotReady is CUDA_ERROR_NOT_READY.
	ErrorNotReady Result = 600
	// ErrorIllegalAddress is CUDA_ERROR_ILLEGAL_ADDRESS.
	ErrorIllegalAddress Result = 700
	// ErrorLaunchOutOfResources is CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES.
	ErrorLaunchOutOfResources Result = 701
	// ErrorLaunchFailed is CUDA_ERROR_LAUNCH_FAILED.
	ErrorLaunchFailed Result = 719
	// ErrorNotSupported is CUDA_ERROR_NOT_SUPPORTED.
	ErrorNotSupported Result = 801
	// ErrorStreamCaptureInvalidated is CUDA_ERROR_STREAM_CAPTURE_INVALIDATED.
	ErrorStreamCaptureInvalidated Result = 901
	// ErrorUnknown is CUDA_ERROR_UNKNOWN.
	ErrorUnknown Result = 999

	// ErrorSymbolNotLoaded is not a driver code: this package returns it when
	// a driver function is called before libcuda was loaded (Available or
	// Open not called, or failed) or when this libcuda lacks the symbol.
	ErrorSymbolNotLoaded = Result(int32(dl.CallNilFunction))
	// ErrorTooManyArguments is not a driver code: the call needed more
	// arguments than purego passes on this platform.
	ErrorTooManyArguments = Result(int32(dl.CallTooManyArgs))
)

// resultNames maps every CUresult of CUDA 13.x cuda.h to its name.
var resultNames = map[Result]string{
	0:   "CUDA_SUCCESS",
	1:   "CUDA_ERROR_INVALID_VALUE",
	2:   "CUDA_ERROR_OUT_OF_MEMORY",
	3:   "CUDA_ERROR_NOT_INITIALIZED",
	4:   "CUDA_ERROR_DEINITIALIZED",
	5:   "CUDA_ERROR_PROFILER_DISABLED",
	6:   "CUDA_ERROR_PROFILER_NOT_INITIALIZED",
	7:   "CUDA_ERROR_PROFILER_ALREADY_STARTED",
	8:   "CUDA_ERROR_PROFILER_ALREADY_STOPPED",
	34:  "CUDA_ERROR_STUB_LIBRARY",
	36:  "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER", // CUDA 12.x/13 headers
	46:  "CUDA_ERROR_DEVICE_UNAVAILABLE",
	100: "CUDA_ERROR_NO_DEVICE",
	101: "CUDA_ERROR_INVALID_DEVICE",
	102: "CUDA_ERROR_DEVICE_NOT_LICENSED",
	200: "CUDA_ERROR_INVALID_IMAGE",
	201: "CUDA_ERROR_INVALID_CONTEXT",
	202: "CUDA_ERROR_CONTEXT_ALREADY_CURRENT",
	205: "CUDA_ERROR_MAP_FAILED",
	206: "CUDA_ERROR_UNMAP_FAILED",
	207: "CUDA_ERROR_ARRAY_IS_MAPPED",
	208: "CUDA_ERROR_ALREADY_MAPPED",
	209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
	210: "CUDA_ERROR_ALREADY_ACQUIRED",
	211: "CUDA_ERROR_NOT_MAPPED",
	212: "CUDA_ERROR_NOT_MAPPED_AS_ARRAY",
	213: "CUDA_ERROR_NOT_MAPPED_AS_POINTER",
	214: "CUDA_ERROR_ECC_UNCORRECTABLE",
	215: "CUDA_ERROR_UNSUPPORTED_LIMIT",
	216: "CUDA_ERROR_CONTEXT_ALREADY_IN_USE",
	217: "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED",
	218: "CUDA_ERROR_INVALID_PTX",
	219: "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT",
	220: "CUDA_ERROR_NVLINK_UNCORRECTABLE",
	221: "CUDA_ERROR_JIT_COMPILER_NOT_FOUND",
	222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
	223: "CUDA_ERROR_JIT_COMPILATION_DISABLED",
	224: "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY",
	225: "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC",
	226: "CUDA_ERROR_CONTAINED",
	300: "CUDA_ERROR_INVALID_SOURCE",
	301: "CUDA_ERROR_FILE_NOT_FOUND",
	302: "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND",
	303: "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED",
	304: "CUDA_ERROR_OPERATING_SYSTEM",
	400: "CUDA_ERROR_INVALID_HANDLE",
	401: "CUDA_ERROR_ILLEGAL_STATE",
	402: "CUDA_ERROR_LOSSY_QUERY",
	500: "CUDA_ERROR_NOT_FOUND",
	600: "CUDA_ERROR_NOT_READY",
	700: "CUDA_ERROR_ILLEGAL_ADDRESS",
	701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
	702: "CUDA_ERROR_LAUNCH_TIMEOUT",
	703: "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING",
	704: "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED",
	705: "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED",
	708: "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE",
	709: "CUDA_ERROR_CONTEXT_IS_DESTROYED",
	710: "CUDA_ERROR_ASSERT",
	711: "CUDA_ERROR_TOO_MANY_PEERS",
	712: "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
	713: "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
	714: "CUDA_ERROR_HARDWARE_STACK_ERROR",
	715: "CUDA_ERROR_ILLEGAL_INSTRUCTION",
	716: "CUDA_ERROR_MISALIGNED_ADDRESS",
	717: "CUDA_ERROR_INVALID_ADDRESS_SPACE",
	718: "CUDA_ERROR_INVALID_PC",
	719: "CUDA_ERROR_LAUNCH_FAILED",
	720: "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE",
	721: "CUDA_ERROR_TENSOR_MEMORY_LEAK",
	800: "CUDA_ERROR_NOT_PERMITTED",
	801: "CUDA_ERROR_NOT_SUPPORTED",
	802: "CUDA_ERROR_SYSTEM_NOT_READY",
	803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
	804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
	805: "CUDA_ERROR_MPS_CONNECTION_FAILED",
	806: "CUDA_ERROR_MPS_RPC_FAILURE",
	807: "CUDA_ERROR_MPS_SERVER_NOT_READY",
	808: "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED",
	809: "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED",
	810: "CUDA_ERROR_MPS_CLIENT_TERMINATED",
	811: "CUDA_ERROR_CDP_NOT_SUPPORTED",
	812: "CUDA_ERROR_CDP_VERSION_MISMATCH",
	900: "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
	901: "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
	902: "CUDA_ERROR_STREAM_CAPTURE_MERGE",
	903: "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED",
	904: "CUDA_ERROR_STREAM_CAPTURE_UNJOINED",
	905: "CUDA_ERROR_STREAM_CAPTURE_ISOLATION",
	906: "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT",
	907: "CUDA_ERROR_CAPTURED_EVENT",
	908: "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD",
	909: "CUDA_ERROR_TIMEOUT",
	910: "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE",
	911: "CUDA_ERROR_EXTERNAL_DEVICE",
	912: "CUDA_ERROR_INVALID_CLUSTER_SIZE",
	913: "CUDA_ERROR_FUNCTION_NOT_LOADED",
	914: "CUDA_ERROR_INVALID_RESOURCE_TYPE",
	915: "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION",
	916: "CUDA_ERROR_KEY_ROTATION",
	917: "CUDA_ERROR_STREAM_DETACHED",
	918: "CUDA_ERROR_GRAPH_RECAPTURE_FAILURE",
	999: "CUDA_ERROR_UNKNOWN",

	ErrorSymbolNotLoaded:  "QVL_CUDA_SYMBOL_NOT_LOADED",
	ErrorTooManyArguments: "QVL_CUDA_TOO_MANY_ARGUMENTS",
}

// Name returns the CUresult's enum name, e.g. "CUDA_ERROR_NO_DEVICE". Codes
// missing from the table (newer drivers) are asked of cuGetErrorName when
// the driver is loaded, else reported as "CUresult(n)".
func (r Result) Name() string {
	if n, ok := resultNames[r]; ok {
		return n
	}
	if s, ok := driverErrorString(api.cuGetErrorName, r); ok {
		return s
	}
	return fmt.Sprintf("CUresult(%d)", int32(r))
}

// Description returns the driver's one-line explanation of r
// (cuGetErrorString), or "" when the driver is not loaded or does not know r.
func (r Result) Description() string {
	s, _ := driverErrorString(api.cuGetErrorString, r)
	return s
}

// Error implements error, so a Result can be a target of errors.Is.
func (r Result) Error() string {
	return fmt.Sprintf("%s (%d)", r.Name(), int32(r))
}

func driverErrorString(fn uintptr, r Result) (string, bool) {
	if fn == 0 || r == ErrorSymbolNotLoaded || r == ErrorTooManyArguments {
		return "", false
	}
	var p *byte
	if Result(dl.Call(fn, uintptr(r), uintptr(unsafe.Pointer(&p)))) != Success || p == nil {
		return "", false
	}
	return dl.GoString(p), true
}

// Error is a failed driver call: the function name and its CUresult, plus
// optional detail (the JIT log of a failed module load, say).
type Error struct {
	// Func is the driver symbol that failed, e.g. "cuMemAlloc_v2".
	Func string
	// Code is the CUresult it returned.
	Code Result
	// Detail is extra context, empty for most calls.
	Detail string
}

// Error formats as "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2)" with the
// detail, if any, after a colon.
func (e *Error) Error() string {
	msg := e.Func + ": " + e.Code.Error()
	if e.Code == ErrorSymbolNotLoaded {
		msg += " (libcuda is not loaded or lacks this symbol: call cuda.Available or cuda.Open first)"
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Is reports whether target is the Result this error carries.
func (e *Error) Is(target error) bool {
	r, ok := target.(Result)
	return ok && r == e.Code
}

// check turns a raw status from dl.Call into nil or an *Error naming fn.
func check(fn string, status uint32) error {
	if status == 0 {
		return nil
	}
	return &Error{Func: fn, Code: Result(int32(status))}
}

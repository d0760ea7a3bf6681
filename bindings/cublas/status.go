package cublas

import (
	"fmt"

	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// Status is a cublasStatus_t. It is also an error value, so
// errors.Is(err, cublas.StatusNotSupported) matches the *Error values this
// package returns.
type Status int32

// cublasStatus_t values (cublas_api.h).
const (
	// StatusSuccess is CUBLAS_STATUS_SUCCESS.
	StatusSuccess Status = 0
	// StatusNotInitialized is CUBLAS_STATUS_NOT_INITIALIZED (no context, or
	// no usable GPU).
	StatusNotInitialized Status = 1
	// StatusAllocFailed is CUBLAS_STATUS_ALLOC_FAILED.
	StatusAllocFailed Status = 3
	// StatusInvalidValue is CUBLAS_STATUS_INVALID_VALUE.
	StatusInvalidValue Status = 7
	// StatusArchMismatch is CUBLAS_STATUS_ARCH_MISMATCH.
	StatusArchMismatch Status = 8
	// StatusMappingError is CUBLAS_STATUS_MAPPING_ERROR.
	StatusMappingError Status = 11
	// StatusExecutionFailed is CUBLAS_STATUS_EXECUTION_FAILED.
	StatusExecutionFailed Status = 13
	// StatusInternalError is CUBLAS_STATUS_INTERNAL_ERROR.
	StatusInternalError Status = 14
	// StatusNotSupported is CUBLAS_STATUS_NOT_SUPPORTED.
	StatusNotSupported Status = 15
	// StatusLicenseError is CUBLAS_STATUS_LICENSE_ERROR.
	StatusLicenseError Status = 16

	// StatusSymbolNotLoaded is not a cuBLAS code: the library is not loaded
	// (Available not called, or failed) or lacks the function.
	StatusSymbolNotLoaded = Status(int32(dl.CallNilFunction))
	// StatusTooManyArguments is not a cuBLAS code: the call needs more
	// arguments than purego passes on this platform.
	StatusTooManyArguments = Status(int32(dl.CallTooManyArgs))
)

var statusNames = map[Status]string{
	StatusSuccess:          "CUBLAS_STATUS_SUCCESS",
	StatusNotInitialized:   "CUBLAS_STATUS_NOT_INITIALIZED",
	StatusAllocFailed:      "CUBLAS_STATUS_ALLOC_FAILED",
	StatusInvalidValue:     "CUBLAS_STATUS_INVALID_VALUE",
	StatusArchMismatch:     "CUBLAS_STATUS_ARCH_MISMATCH",
	StatusMappingError:     "CUBLAS_STATUS_MAPPING_ERROR",
	StatusExecutionFailed:  "CUBLAS_STATUS_EXECUTION_FAILED",
	StatusInternalError:    "CUBLAS_STATUS_INTERNAL_ERROR",
	StatusNotSupported:     "CUBLAS_STATUS_NOT_SUPPORTED",
	StatusLicenseError:     "CUBLAS_STATUS_LICENSE_ERROR",
	StatusSymbolNotLoaded:  "QVL_CUBLAS_SYMBOL_NOT_LOADED",
	StatusTooManyArguments: "QVL_CUBLAS_TOO_MANY_ARGUMENTS",
}

// Name returns the enum name, e.g. "CUBLAS_STATUS_NOT_SUPPORTED", or
// "cublasStatus_t(n)" for a code this package does not know.
func (s Status) Name() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return fmt.Sprintf("cublasStatus_t(%d)", int32(s))
}

// Error implements error: "CUBLAS_STATUS_NOT_SUPPORTED (15)".
func (s Status) Error() string { return fmt.Sprintf("%s (%d)", s.Name(), int32(s)) }

// Error is a failed cuBLAS or cuBLASLt call.
type Error struct {
	// Func is the library function that failed, e.g. "cublasLtMatmul".
	Func string
	// Code is the status it returned.
	Code Status
	// Detail is extra context (the shape, say), possibly empty.
	Detail string
}

// Error formats as "cublasLtMatmul: CUBLAS_STATUS_NOT_SUPPORTED (15): detail".
func (e *Error) Error() string {
	msg := e.Func + ": " + e.Code.Error()
	if e.Code == StatusSymbolNotLoaded {
		msg += " (cuBLAS is not loaded or lacks this function: call cublas.Available first)"
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Is reports whether target is the Status this error carries.
func (e *Error) Is(target error) bool {
	s, ok := target.(Status)
	return ok && s == e.Code
}

func check(fn string, status uint32) error {
	if status == 0 {
		return nil
	}
	return &Error{Func: fn, Code: Status(int32(status))}
}

func checkf(fn string, status uint32, format string, args ...any) error {
	if status == 0 {
		return nil
	}
	return &Error{Func: fn, Code: Status(int32(status)), Detail: fmt.Sprintf(format, args...)}
}

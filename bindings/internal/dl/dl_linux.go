//go:build linux

package dl

import (
	"github.com/ebitengine/purego"
)

func dlopen(path string) (uintptr, error) {
	return purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_LOCAL)
}

func dlsym(handle uintptr, name string) (uintptr, error) {
	return purego.Dlsym(handle, name)
}

func dlclose(handle uintptr) error {
	return purego.Dlclose(handle)
}

// Call calls the C function at fn with up to MaxArgs integer-class
// arguments (integers, pointers, handles) and returns the low 32 bits of the
// function's return register, which is where every CUDA status enum lives
// (the upper half of the register is unspecified for a 32-bit return).
//
// Float arguments are not supported: none of the bound CUDA functions takes
// one by value (alpha/beta scalars are passed by pointer).
//
// Pointers to Go memory may be passed as uintptr(unsafe.Pointer(p)) directly
// in the call expression: the uintptrescapes directive keeps such objects
// alive and unmoved until Call returns, exactly as for syscall.Syscall. The
// memory they point to must not itself hold Go pointers (the cgo rules).
//
// Call heap-allocates its variadic argument array (8 bytes per argument):
// purego.SyscallN marks its arguments as escaping. Hot paths use CallSlice
// with a reusable argument array instead.
//
//go:uintptrescapes
func Call(fn uintptr, args ...uintptr) uint32 {
	if fn == 0 {
		return callNilFunction
	}
	if len(args) > MaxArgs {
		return callTooManyArgs
	}
	r1, _, _ := purego.SyscallN(fn, args...)
	return uint32(r1)
}

// CallSlice is Call with a caller-owned argument array, so that it does not
// allocate. Because the arguments are already uintptrs when it is called,
// every pointer among them must refer to C memory or to Go memory that the
// caller keeps alive and pinned (runtime.Pinner) until CallSlice returns.
func CallSlice(fn uintptr, args []uintptr) uint32 {
	if fn == 0 {
		return callNilFunction
	}
	if len(args) > MaxArgs {
		return callTooManyArgs
	}
	r1, _, _ := purego.SyscallN(fn, args...)
	return uint32(r1)
}

// CallUintptr is Call for C functions that return a pointer or a size_t:
// it returns the whole return register.
//
//go:uintptrescapes
func CallUintptr(fn uintptr, args ...uintptr) (uintptr, bool) {
	if fn == 0 || len(args) > MaxArgs {
		return 0, false
	}
	r1, _, _ := purego.SyscallN(fn, args...)
	return r1, true
}

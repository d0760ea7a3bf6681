package dl

import "runtime"

// MaxArgs is the largest number of arguments Call passes on this platform.
// purego v0.11.3 accepts 32 everywhere except linux/ppc64le, where its
// trampoline stops at 15.
var MaxArgs = maxArgsFor(runtime.GOARCH)

func maxArgsFor(goarch string) int {
	if goarch == "ppc64le" {
		return 15
	}
	return 32
}

// Status values that Call returns instead of calling C when the call cannot
// be made. They lie far outside the CUresult and cublasStatus_t ranges so
// that callers can name them.
const (
	// CallNilFunction is returned when the function address is 0 (the symbol
	// was not resolved, typically because the library is not loaded).
	CallNilFunction = callNilFunction
	// CallTooManyArgs is returned when more than MaxArgs arguments are given.
	CallTooManyArgs = callTooManyArgs

	callNilFunction uint32 = 0x7fff0001
	callTooManyArgs uint32 = 0x7fff0002
)

// Int passes a signed C int (or any signed integer) as a Call argument,
// sign-extended to the register width.
func Int(v int64) uintptr { return uintptr(v) }

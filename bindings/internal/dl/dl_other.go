//go:build !linux

package dl

func dlopen(string) (uintptr, error)         { return 0, ErrUnsupported }
func dlsym(uintptr, string) (uintptr, error) { return 0, ErrUnsupported }
func dlclose(uintptr) error                  { return ErrUnsupported }

// Call reports callNilFunction on platforms without run-time loading: no
// symbol can have been resolved there.
func Call(fn uintptr, args ...uintptr) uint32 {
	return callNilFunction
}

// CallSlice reports callNilFunction on platforms without run-time loading.
func CallSlice(fn uintptr, args []uintptr) uint32 {
	return callNilFunction
}

// CallUintptr reports false on platforms without run-time loading.
func CallUintptr(fn uintptr, args ...uintptr) (uintptr, bool) {
	return 0, false
}

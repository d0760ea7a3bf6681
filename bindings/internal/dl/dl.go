// Package dl is the thin layer between qvl's CUDA bindings and the dynamic
// loader: it opens shared libraries, resolves symbols and calls C functions
// through purego, so that no cgo and no CUDA headers are needed at build time.
//
// Every function here is safe to call on any platform: where purego cannot
// load libraries (anything but Linux, for qvl's purposes) Open returns
// ErrUnsupported and nothing else is reachable.
package dl

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"
)

// ErrUnsupported is returned by Open on platforms where qvl does not load
// CUDA libraries at run time.
var ErrUnsupported = errors.New("dl: loading CUDA libraries at run time is supported only on linux")

// Library is an opened shared library.
type Library struct {
	// Path is the name or path that was passed to the loader and succeeded.
	Path   string
	handle uintptr
}

// Symbol resolves the C function or variable name in lib and returns its
// address.
func (lib *Library) Symbol(name string) (uintptr, error) {
	p, err := dlsym(lib.handle, name)
	if err != nil {
		return 0, fmt.Errorf("%s: symbol %s: %w", lib.Path, name, err)
	}
	if p == 0 {
		return 0, fmt.Errorf("%s: symbol %s resolved to NULL", lib.Path, name)
	}
	return p, nil
}

// Close drops this reference to the library. Function addresses resolved
// from it must not be called afterwards.
func (lib *Library) Close() error {
	if lib.handle == 0 {
		return nil
	}
	err := dlclose(lib.handle)
	lib.handle = 0
	return err
}

// Open loads the first library of candidates that the dynamic loader accepts.
// A candidate without a '/' is looked up on the loader's default search path
// (LD_LIBRARY_PATH, ld.so.cache, system directories); one with a '/' is used
// as is. The error lists every candidate with the loader's reason.
func Open(candidates []string) (*Library, error) {
	if len(candidates) == 0 {
		return nil, errors.New("dl: no library candidates given")
	}
	var reasons []string
	for _, c := range candidates {
		h, err := dlopen(c)
		if err == nil && h != 0 {
			return &Library{Path: c, handle: h}, nil
		}
		if err == nil {
			err = errors.New("dlopen returned NULL")
		}
		if errors.Is(err, ErrUnsupported) {
			return nil, err
		}
		reasons = append(reasons, fmt.Sprintf("%s: %v", c, err))
	}
	return nil, &NotFoundError{Tried: candidates, Reasons: reasons}
}

// NotFoundError reports that none of the candidate libraries could be loaded.
type NotFoundError struct {
	// Tried lists the candidates in the order they were tried.
	Tried []string
	// Reasons holds the loader's message for each candidate, in order.
	Reasons []string
}

// Error implements error.
func (e *NotFoundError) Error() string {
	return "could not load any of [" + strings.Join(e.Tried, ", ") + "]: " + strings.Join(e.Reasons, "; ")
}

// GoString copies the NUL-terminated C string at p into a Go string. A nil p
// gives "". The C memory is only read, never freed.
func GoString(p *byte) string {
	if p == nil {
		return ""
	}
	n := 0
	for *(*byte)(unsafe.Add(unsafe.Pointer(p), n)) != 0 {
		n++
	}
	return string(unsafe.Slice(p, n))
}

// CString returns s as a NUL-terminated byte slice for passing to C. The
// slice must be kept alive for as long as C reads it.
func CString(s string) []byte {
	b := make([]byte, len(s)+1)
	copy(b, s)
	return b
}

//go:build !cgo

package cpu

// setPrecision reports whether a backend of a build without cgo can run precision p: only the
// reference (exact) path exists.
func setPrecision(be *Backend, p Precision) bool { return p == PrecisionExact }

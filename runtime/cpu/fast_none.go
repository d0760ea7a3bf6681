//go:build !cgo

package cpu

// newFastKernels reports that this build (CGO_ENABLED=0) has no C kernels: the backend uses the
// plain-Go reference ops.
func newFastKernels(threads int) kernels { return nil }

//go:build !linux

package cuda

// threadID returns 0: this package identifies threads only on Linux, the
// one platform where it loads libcuda.
func threadID() int { return 0 }

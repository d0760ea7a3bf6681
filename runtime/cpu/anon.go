package cpu

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// mapping owns an anonymous memory mapping; tensors over it (and their views) keep it
// reachable, and it is unmapped once none is.
type mapping struct{ buf []byte }

// anonCopy copies a weight into anonymous memory: large ones into their own mapping advised for
// transparent huge pages, small ones onto the Go heap. The fast kernels stream such copies
// faster than the checkpoint's file mapping. The returned owner, when not nil, must stay
// reachable as long as the bytes are used.
func anonCopy(data []byte) ([]byte, *mapping) {
	const large = 4 << 20
	if len(data) < large {
		return append([]byte(nil), data...), nil
	}
	buf, err := unix.Mmap(-1, 0, len(data), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return append([]byte(nil), data...), nil
	}
	_ = unix.Madvise(buf, unix.MADV_HUGEPAGE)
	copy(buf, data)
	m := &mapping{buf: buf}
	runtime.AddCleanup(m, func(b []byte) { _ = unix.Munmap(b) }, buf)
	return buf, m
}

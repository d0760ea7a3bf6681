//go:build !cgo

package cpu

import (
	"runtime"
	"sync"

	"github.com/qvl-dev/qvl/loader"
)

// newFastKernels reports that this build (CGO_ENABLED=0) has no C kernels: the backend uses the
// plain-Go reference ops.
func newFastKernels(threads int, p Precision) kernels { return nil }

func kernelLevel() string { return "none" }

// probeBandwidth is the plain-Go probe of builds without cgo: it streams data as bf16 with
// GOMAXPROCS-limited goroutines (threads of them, 0: all cores).
func probeBandwidth(data []byte, threads int) {
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	n := len(data) / 2
	chunk := (n + threads - 1) / threads
	var wg sync.WaitGroup
	sums := make([]float32, threads)
	for t := 0; t < threads; t++ {
		lo, hi := t*chunk, min((t+1)*chunk, n)
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s float32
			for i := lo; i < hi; i++ {
				s += loader.BF16ToF32(uint16(data[2*i])|uint16(data[2*i+1])<<8) * float32(i&7)
			}
			sums[t] = s
		}()
	}
	wg.Wait()
}

// probePeak is the plain-Go multiply-add rate of builds without cgo (p is ignored).
func probePeak(threads int, p Precision, iters int64) float64 {
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	var wg sync.WaitGroup
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var a [8]float32
			for i := int64(0); i < iters; i++ {
				for j := range a {
					a[j] = a[j]*0.999 + 1e-3
				}
			}
			if a[0] == 42 {
				println()
			}
		}()
	}
	wg.Wait()
	return 2 * 8 * float64(iters) * float64(threads)
}

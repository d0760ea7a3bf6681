package cpu

import (
	"runtime"
	"sync"
)

// matmulRef computes out[n, m] = x[n, k] · w[m, k]ᵀ with float32 accumulation in index order.
// w is F32 or BF16 (widened exactly). Output columns are split across GOMAXPROCS goroutines;
// every output element is computed by one goroutine in a fixed order, so the result does not
// depend on the number of threads.
func matmulRef(out, x []float32, w *Tensor, n, k, m int) {
	parallelFor(m, 64, func(lo, hi int) {
		row := make([]float32, k)
		for j := lo; j < hi; j++ {
			w.rowF32(j, row)
			for i := 0; i < n; i++ {
				xi := x[i*k : (i+1)*k]
				var s float32
				for c, v := range row {
					s += xi[c] * v
				}
				out[i*m+j] = s
			}
		}
	})
}

// parallelFor runs fn over [0, n) in contiguous chunks of at least grain items, one chunk per
// goroutine, up to GOMAXPROCS goroutines.
func parallelFor(n, grain int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if max := (n + grain - 1) / grain; workers > max {
		workers = max
	}
	if workers <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}

package cpu

// scatterAddRef adds rows [R, h] into x at the row indices idx.
func scatterAddRef(x, rows []float32, idx []int32, h int) {
	for r, dst := range idx {
		xr, src := x[int(dst)*h:(int(dst)+1)*h], rows[r*h:(r+1)*h]
		for i, v := range src {
			xr[i] += v
		}
	}
}

// gatherRef writes out[r] = x[idx[r]] for rows of width h.
func gatherRef(out, x []float32, idx []int32, h int) {
	for r, src := range idx {
		copy(out[r*h:(r+1)*h], x[int(src)*h:(int(src)+1)*h])
	}
}

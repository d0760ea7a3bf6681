package cpu

import "math"

// rmsNormRef computes out = w ⊙ x / sqrt(mean(x²) + eps) for each row of width h. The mean is
// accumulated in float64 (transformers computes it in float32; float64 keeps the reference
// closer to the float64 goldens).
func rmsNormRef(out, x []float32, w *Tensor, h int, eps float32) {
	weight := make([]float32, h)
	w.rowF32(0, weight)
	for r := 0; r < len(x)/h; r++ {
		xr, or := x[r*h:(r+1)*h], out[r*h:(r+1)*h]
		var ss float64
		for _, v := range xr {
			ss += float64(v) * float64(v)
		}
		inv := 1 / math.Sqrt(ss/float64(h)+float64(eps))
		for i, v := range xr {
			or[i] = float32(float64(weight[i]) * float64(v) * inv)
		}
	}
}

// addRMSNormRef adds delta into x, then writes out = rmsNorm(x).
func addRMSNormRef(out, x, delta []float32, w *Tensor, h int, eps float32) {
	for i, d := range delta {
		x[i] += d
	}
	rmsNormRef(out, x, w, h, eps)
}

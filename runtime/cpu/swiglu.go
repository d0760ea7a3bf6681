package cpu

import "math"

// swigluRef computes out[n, i] = silu(gu[n, :I]) ⊙ gu[n, I:] with silu(g) = g / (1 + e^-g).
func swigluRef(out, gu []float32, inter int) {
	for r := 0; r < len(out)/inter; r++ {
		g, u, o := gu[2*r*inter:(2*r+1)*inter], gu[(2*r+1)*inter:(2*r+2)*inter], out[r*inter:(r+1)*inter]
		for i := range o {
			gv := float64(g[i])
			o[i] = float32(gv / (1 + math.Exp(-gv)) * float64(u[i]))
		}
	}
}

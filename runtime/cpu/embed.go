package cpu

import "math"

// projectorRef holds a projector's weights for the reference embedding op.
type projectorRef struct {
	fc1, b1, fc2, b2 *Tensor
	k, h             int
	tanh             bool
}

// gelu is the exact erf form, or the tanh approximation when tanh is set.
func gelu(x float64, tanh bool) float64 {
	if tanh {
		return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
	}
	return 0.5 * x * (1 + math.Erf(x/math.Sqrt2))
}

// embedRef writes the input hidden states of a step (rows of width h): out[i] = table[tokens[i]];
// then out[visIdx[r]] = visual[r]; then, for custom rows, out[cusIdx[r]] = token k of the
// projection of embedding e where cusSrc[r] = e*K + k.
func embedRef(out []float32, h int, tokens []int32, table *Tensor,
	visual []float32, visIdx []int32,
	custom []float32, cusIdx, cusSrc []int32, p *projectorRef) {
	for i, tok := range tokens {
		table.rowF32(int(tok), out[i*h:(i+1)*h])
	}
	for r, dst := range visIdx {
		copy(out[int(dst)*h:(int(dst)+1)*h], visual[r*h:(r+1)*h])
	}
	if len(cusIdx) == 0 {
		return
	}
	hid := p.fc1.shape[0]
	d := p.fc1.shape[1]
	ne := len(custom) / d
	// fc1 and GELU for every embedding of the step.
	mid := make([]float32, ne*hid)
	row := make([]float32, d)
	b1 := make([]float32, hid)
	p.b1.rowF32(0, b1)
	for j := 0; j < hid; j++ {
		p.fc1.rowF32(j, row)
		for e := 0; e < ne; e++ {
			x := custom[e*d : (e+1)*d]
			var s float32
			for c, w := range row {
				s += x[c] * w
			}
			mid[e*hid+j] = float32(gelu(float64(s+b1[j]), p.tanh))
		}
	}
	// fc2 rows k*H ... k*H+H-1 make token k.
	w2 := make([]float32, hid)
	b2 := make([]float32, p.k*p.h)
	p.b2.rowF32(0, b2)
	for r, dst := range cusIdx {
		e, k := int(cusSrc[r])/p.k, int(cusSrc[r])%p.k
		m := mid[e*hid : (e+1)*hid]
		o := out[int(dst)*h : (int(dst)+1)*h]
		for c := 0; c < p.h; c++ {
			p.fc2.rowF32(k*p.h+c, w2)
			var s float32
			for i, w := range w2 {
				s += m[i] * w
			}
			o[c] = s + b2[k*p.h+c]
		}
	}
}

package cpu

import (
	"math"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// invFreq returns theta^(-2i/headDim) for i < headDim/2, in float64.
func invFreq(theta float64, headDim int) []float64 {
	f := make([]float64, headDim/2)
	for i := range f {
		f[i] = math.Pow(theta, -float64(2*i)/float64(headDim))
	}
	return f
}

// headNormRope applies RMSNorm with weight w over one head x (length hd) and then NeoX-style
// rotary embedding: out[i] = x[i]cos - x[i+hd/2]sin, out[i+hd/2] = x[i+hd/2]cos + x[i]sin with
// angle pos[axis(i)]·invFreq[i].
func headNormRope(dst, x, w []float32, eps float32, pos [3]int32, freq []float64, rope ml.Rope) {
	hd := len(x)
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	inv := 1 / math.Sqrt(ss/float64(hd)+float64(eps))
	half := hd / 2
	for i := 0; i < half; i++ {
		a := float64(x[i]) * inv * float64(w[i])
		b := float64(x[i+half]) * inv * float64(w[i+half])
		sin, cos := math.Sincos(float64(pos[rope.Axis(i)]) * freq[i])
		dst[i] = float32(a*cos - b*sin)
		dst[i+half] = float32(b*cos + a*sin)
	}
}

// qkvRef finishes one layer's QKV projection for n tokens: q and k get per-head RMSNorm and
// rotary embedding; q goes to qOut [n, heads*hd]; k and v go to the cache at each token's slot.
// pos is [n, 3]. The cache is F32 in the ml.KVLayout layout.
func qkvRef(qkv, qOut []float32, qn, kn *Tensor, pos, slots []int32, kc, vc []float32, a ml.QKVArgs) {
	hd, nh, nkv := a.HeadDim, a.Heads, a.KVHeads
	n := len(slots)
	width := (nh + 2*nkv) * hd
	qw, kw := make([]float32, hd), make([]float32, hd)
	qn.rowF32(0, qw)
	kn.rowF32(0, kw)
	freq := invFreq(a.Rope.Theta, hd)
	for i := 0; i < n; i++ {
		row := qkv[i*width : (i+1)*width]
		p := [3]int32{pos[3*i], pos[3*i+1], pos[3*i+2]}
		for h := 0; h < nh; h++ {
			headNormRope(qOut[(i*nh+h)*hd:(i*nh+h+1)*hd], row[h*hd:(h+1)*hd], qw, a.Eps, p, freq, a.Rope)
		}
		for h := 0; h < nkv; h++ {
			off := a.Layout.Offset(int(slots[i]), h)
			headNormRope(kc[off:off+hd], row[(nh+h)*hd:(nh+h+1)*hd], kw, a.Eps, p, freq, a.Rope)
			copy(vc[off:off+hd], row[(nh+nkv+h)*hd:(nh+nkv+h+1)*hd])
		}
	}
}

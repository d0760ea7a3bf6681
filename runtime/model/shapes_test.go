package model_test

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/model"
)

// ref64 is an independent, unpaged float64 forward of the Qwen3-VL language model, written
// straight from the math (no ops, no cache), to check the model on shapes the goldens do not
// cover: an untied head, one KV head, heads×head_dim ≠ hidden, three DeepStack levels.
type ref64 struct {
	cfg *loader.ModelConfig
	w   map[string][]float64
}

func loadRef64(t *testing.T, dir string) *ref64 {
	cfg, err := loader.LoadConfig(dir)
	require.NoError(t, err)
	ck, err := loader.OpenCheckpoint(dir)
	require.NoError(t, err)
	defer ck.Close()
	r := &ref64{cfg: cfg, w: map[string][]float64{}}
	for _, n := range ck.Names() {
		tt, err := ck.Tensor(n)
		require.NoError(t, err)
		f, err := tt.Float32()
		require.NoError(t, err)
		d := make([]float64, len(f))
		for i, v := range f {
			d[i] = float64(v)
		}
		r.w[n] = d
	}
	return r
}

func (r *ref64) linear(x []float64, w []float64, out int) []float64 {
	in := len(x)
	y := make([]float64, out)
	for o := 0; o < out; o++ {
		var s float64
		for i := 0; i < in; i++ {
			s += w[o*in+i] * x[i]
		}
		y[o] = s
	}
	return y
}

func rms(x, w []float64, eps float64) []float64 {
	var ss float64
	for _, v := range x {
		ss += v * v
	}
	inv := 1 / math.Sqrt(ss/float64(len(x))+eps)
	y := make([]float64, len(x))
	for i := range x {
		y[i] = w[i] * x[i] * inv
	}
	return y
}

// rope rotates one head (NeoX halves) with interleaved MRoPE positions p.
func (r *ref64) rope(x []float64, p [3]int) {
	hd := len(x)
	sec := r.cfg.MRopeSection
	for i := 0; i < hd/2; i++ {
		axis := 0
		if i%3 == 1 && i < 3*sec[1] {
			axis = 1
		} else if i%3 == 2 && i < 3*sec[2] {
			axis = 2
		}
		ang := float64(p[axis]) * math.Pow(r.cfg.RopeTheta, -float64(2*i)/float64(hd))
		a, b := x[i], x[i+hd/2]
		x[i], x[i+hd/2] = a*math.Cos(ang)-b*math.Sin(ang), b*math.Cos(ang)+a*math.Sin(ang)
	}
}

// forward returns the logits of every position. emb[i] (when set) replaces token i's embedding
// and ds[i][l] is added after layer l.
func (r *ref64) forward(ids []int, pos [][3]int, emb map[int][]float64, ds map[int][][]float64) [][]float64 {
	c := r.cfg
	h, hd, nh, nkv := c.HiddenSize, c.HeadDim, c.NumHeads, c.NumKVHeads
	p := "model.language_model."
	n := len(ids)
	x := make([][]float64, n)
	for i, id := range ids {
		if e, ok := emb[i]; ok {
			x[i] = append([]float64(nil), e...)
		} else {
			x[i] = append([]float64(nil), r.w[p+"embed_tokens.weight"][id*h:(id+1)*h]...)
		}
	}
	for l := 0; l < c.NumLayers; l++ {
		lp := p + "layers." + strconv.Itoa(l) + "."
		q := make([][]float64, n)
		k := make([][]float64, n)
		v := make([][]float64, n)
		for i := range x {
			hn := rms(x[i], r.w[lp+"input_layernorm.weight"], c.RMSNormEps)
			q[i] = r.linear(hn, r.w[lp+"self_attn.q_proj.weight"], nh*hd)
			k[i] = r.linear(hn, r.w[lp+"self_attn.k_proj.weight"], nkv*hd)
			v[i] = r.linear(hn, r.w[lp+"self_attn.v_proj.weight"], nkv*hd)
			for hh := 0; hh < nh; hh++ {
				copy(q[i][hh*hd:], rms(q[i][hh*hd:(hh+1)*hd], r.w[lp+"self_attn.q_norm.weight"], c.RMSNormEps))
				r.rope(q[i][hh*hd:(hh+1)*hd], pos[i])
			}
			for hh := 0; hh < nkv; hh++ {
				copy(k[i][hh*hd:], rms(k[i][hh*hd:(hh+1)*hd], r.w[lp+"self_attn.k_norm.weight"], c.RMSNormEps))
				r.rope(k[i][hh*hd:(hh+1)*hd], pos[i])
			}
		}
		for i := range x {
			att := make([]float64, nh*hd)
			for hh := 0; hh < nh; hh++ {
				g := hh / (nh / nkv)
				sc := make([]float64, i+1)
				m := math.Inf(-1)
				for j := 0; j <= i; j++ {
					var d float64
					for e := 0; e < hd; e++ {
						d += q[i][hh*hd+e] * k[j][g*hd+e]
					}
					sc[j] = d / math.Sqrt(float64(hd))
					m = math.Max(m, sc[j])
				}
				var z float64
				for j := range sc {
					sc[j] = math.Exp(sc[j] - m)
					z += sc[j]
				}
				for j := range sc {
					for e := 0; e < hd; e++ {
						att[hh*hd+e] += sc[j] / z * v[j][g*hd+e]
					}
				}
			}
			o := r.linear(att, r.w[lp+"self_attn.o_proj.weight"], h)
			for e := range o {
				x[i][e] += o[e]
			}
			hn := rms(x[i], r.w[lp+"post_attention_layernorm.weight"], c.RMSNormEps)
			gt := r.linear(hn, r.w[lp+"mlp.gate_proj.weight"], c.IntermediateSize)
			up := r.linear(hn, r.w[lp+"mlp.up_proj.weight"], c.IntermediateSize)
			for e := range gt {
				gt[e] = gt[e] / (1 + math.Exp(-gt[e])) * up[e]
			}
			d := r.linear(gt, r.w[lp+"mlp.down_proj.weight"], h)
			for e := range d {
				x[i][e] += d[e]
			}
			if lv, ok := ds[i]; ok && l < len(lv) {
				for e := range lv[l] {
					x[i][e] += lv[l][e]
				}
			}
		}
	}
	head := r.w["lm_head.weight"]
	if head == nil {
		head = r.w[p+"embed_tokens.weight"]
	}
	out := make([][]float64, n)
	for i := range x {
		out[i] = r.linear(rms(x[i], r.w[p+"norm.weight"], c.RMSNormEps), head, c.VocabSize)
	}
	return out
}

// TestOddShapeAgainstFloat64 builds a checkpoint of an odd shape (hidden 160, 4 heads of 64 so
// heads×head_dim ≠ hidden, a single KV head, an untied head, three DeepStack levels) and checks
// the model, fed one chunk at a time through the paged cache, against the float64 reference.
func TestOddShapeAgainstFloat64(t *testing.T) {
	dir := t.TempDir()
	shape := synth.Shape{Name: "odd", Hidden: 160, Layers: 3, Heads: 4, KVHeads: 1, HeadDim: 64, Inter: 320,
		Tied: false, MRope: [3]int{12, 10, 10}, DeepStack: 3, MaxPositions: 4096, ProjIn: 16, ProjMid: 32, ProjTokens: 4}
	require.NoError(t, synth.Write(dir, shape, synth.Options{Seed: 11}))
	ref := loadRef64(t, dir)
	m, err := model.Open(cpu.NewReference(), dir, model.Options{})
	require.NoError(t, err)
	defer m.Close()
	require.False(t, m.Config.TieWordEmbeddings)

	// 5 text tokens, an image of merged grid (1, 2, 3) with DeepStack features, 4 text tokens.
	r := rand.New(rand.NewPCG(1, 2))
	var ids []int
	for i := 0; i < 5; i++ {
		ids = append(ids, r.IntN(1000))
	}
	imgStart := len(ids)
	for i := 0; i < 6; i++ {
		ids = append(ids, synth.ImagePad)
	}
	for i := 0; i < 4; i++ {
		ids = append(ids, r.IntN(1000))
	}
	spans := []model.ImageSpan{{Start: imgStart, Grid: [3]int{1, 2, 3}}}
	pos, _, err := model.Positions(len(ids), spans)
	require.NoError(t, err)
	emb64 := map[int][]float64{}
	ds64 := map[int][][]float64{}
	vis := &visual{h: 160, rows: map[int][]float32{}, ds: map[int][][]float32{}, levels: 3, customSlot: map[int]int32{}}
	for i := imgStart; i < imgStart+6; i++ {
		row := make([]float32, 160)
		for e := range row {
			row[e] = float32(r.NormFloat64() * 0.5)
		}
		vis.rows[i] = row
		emb64[i] = f64(row)
		for l := 0; l < 3; l++ {
			d := make([]float32, 160)
			for e := range d {
				d[e] = float32(r.NormFloat64() * 0.2)
			}
			vis.ds[i] = append(vis.ds[i], d)
			ds64[i] = append(ds64[i], f64(d))
		}
	}
	pos3 := make([][3]int, len(ids))
	tokens := make([]int32, len(ids))
	for i := range ids {
		pos3[i] = [3]int{int(pos[3*i]), int(pos[3*i+1]), int(pos[3*i+2])}
		tokens[i] = int32(ids[i])
	}
	want := ref.forward(ids, pos3, emb64, ds64)

	s := newSingle(t, m, 0)
	var got []float32
	for i := 0; i < len(ids); i += 4 {
		j := min(i+4, len(ids))
		got = append(got, s.step(tokens[i:j], pos[3*i:3*j], vis, true)...)
	}
	v := m.Config.VocabSize
	var worst float64
	for i := range ids {
		for k := 0; k < v; k++ {
			worst = math.Max(worst, math.Abs(float64(got[i*v+k])-want[i][k]))
		}
	}
	t.Logf("odd shape: max |Δlogit| vs float64 = %.2e", worst)
	require.Less(t, worst, 2e-3)
}

func f64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

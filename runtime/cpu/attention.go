package cpu

import (
	"math"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// attentionRef is causal paged attention with grouped KV heads. For sequence s, query row j of
// its q query rows sits at position p = ctx[s]-q+j and attends to positions 0..p, found through
// the block table: slot = table[t/blockSize]*blockSize + t%blockSize.
func attentionRef(out, q []float32, kc, vc []float32, seqStart, ctxLen, tables []int32, a ml.AttnArgs) {
	hd, nh, nkv := a.HeadDim, a.Heads, a.KVHeads
	group := nh / nkv
	maxBlocks := len(tables) / max(a.NumSeqs, 1)
	bs := a.Layout.BlockSize
	scores := make([]float64, 0, 256)
	acc := make([]float64, hd)
	for s := 0; s < a.NumSeqs; s++ {
		q0, q1, c := int(seqStart[s]), int(seqStart[s+1]), int(ctxLen[s])
		table := tables[s*maxBlocks : (s+1)*maxBlocks]
		for r := q0; r < q1; r++ {
			p := c - (q1 - q0) + (r - q0)
			for h := 0; h < nh; h++ {
				kvh := h / group
				qh := q[(r*nh+h)*hd : (r*nh+h+1)*hd]
				scores = scores[:0]
				m := math.Inf(-1)
				for t := 0; t <= p; t++ {
					slot := int(table[t/bs])*bs + t%bs
					kh := kc[a.Layout.Offset(slot, kvh):][:hd]
					var d float32
					for i, v := range qh {
						d += v * kh[i]
					}
					sc := float64(d) * float64(a.Scale)
					scores = append(scores, sc)
					m = math.Max(m, sc)
				}
				var sum float64
				clear(acc)
				for t, sc := range scores {
					w := math.Exp(sc - m)
					sum += w
					slot := int(table[t/bs])*bs + t%bs
					vh := vc[a.Layout.Offset(slot, kvh):][:hd]
					for i, v := range vh {
						acc[i] += w * float64(v)
					}
				}
				o := out[(r*nh+h)*hd : (r*nh+h+1)*hd]
				for i := range o {
					o[i] = float32(acc[i] / sum)
				}
			}
		}
	}
}

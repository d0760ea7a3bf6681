package offline

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/qvl-dev/qvl/loader/synth"
)

func TestCostOf2B(t *testing.T) {
	s := synth.Shapes["qwen3-vl-2b"]
	c := NewCost(s.Config(), 2, 2)
	// The design notes' anchor: the 2B text weights are 1.72e9 parameters = 3.44 GB in bf16.
	assert.InEpsilon(t, 3.44e9, float64(c.WeightBytes()), 0.01)
	assert.Equal(t, s.Params()*2, c.WeightBytes(), "the tied head is the embedding table, read once")
	// KV per token: 2 (K, V) · 28 layers · 8 heads · 128 · 2 bytes.
	assert.Equal(t, int64(114688), c.KVBytesPerToken)

	// Decode at batch 1, context 1: weights + 2 tokens of KV; FLOPs = 2·params + attention of one pair.
	one := []Seq{{Query: 1, Ctx: 1}}
	assert.Equal(t, float64(c.WeightBytes())+2*114688, c.Bytes(one))
	lp := float64(c.LayerParams())
	assert.Equal(t, 2*28*lp+2*151936*2048+4*28*16*128*1, c.FLOPs(one))

	// Causal pairs of a fresh 4-token prefill: 1+2+3+4 = 10.
	four := []Seq{{Query: 4, Ctx: 4}}
	assert.Equal(t, 2*4*28*lp+2*151936*2048+4*28*2048*10.0, c.FLOPs(four))
	// Decode of a 4th token over 3 cached: one query seeing 4 keys.
	assert.Equal(t, 2*28*lp+2*151936*2048+4*28*2048*4.0, c.FLOPs([]Seq{{Query: 1, Ctx: 4}}))
}

func TestFloorPicksTheBindingTerm(t *testing.T) {
	c := NewCost(synth.Shapes["qwen3-vl-2b"].Config(), 2, 2)
	// The design notes' H100 anchors: 3.0 TB/s, 748 TFLOP/s → batch-1 decode is memory bound at ~1.1 ms.
	f := c.FloorOf([]Seq{{Query: 1, Ctx: 512}}, 3.0e12, 748e12)
	assert.Equal(t, "memory", f.Bound)
	assert.InDelta(t, 1.17e-3, f.Seconds, 0.03e-3)
	// 8×512 prefill is compute bound.
	seqs := make([]Seq, 8)
	for i := range seqs {
		seqs[i] = Seq{Query: 512, Ctx: 512}
	}
	f = c.FloorOf(seqs, 3.0e12, 748e12)
	assert.Equal(t, "compute", f.Bound)
	assert.Equal(t, f.ComputeSeconds, f.Seconds)
	assert.Greater(t, f.ComputeSeconds, f.MemorySeconds)
}

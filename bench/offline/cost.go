package offline

import "github.com/qvl-dev/qvl/loader"

// Cost is the napkin math of one forward step of a Qwen3-VL language model: the bytes it must
// move and the FLOPs it must do, from which the floors follow (time ≥ bytes / bandwidth and
// time ≥ FLOPs / peak).
type Cost struct {
	Layers, Hidden, Heads, KVHeads, HeadDim, Inter, Vocab int
	// WeightElem is the bytes per weight element on the backend (2 for bf16).
	WeightElem int
	// KVBytesPerToken is the KV cache memory of one token across all layers (K and V).
	KVBytesPerToken int64
}

// NewCost describes cfg with weights of weightElem bytes and a KV cache of kvElem bytes per value.
func NewCost(cfg *loader.ModelConfig, weightElem, kvElem int) Cost {
	return Cost{Layers: cfg.NumLayers, Hidden: cfg.HiddenSize, Heads: cfg.NumHeads, KVHeads: cfg.NumKVHeads,
		HeadDim: cfg.HeadDim, Inter: cfg.IntermediateSize, Vocab: cfg.VocabSize, WeightElem: weightElem,
		KVBytesPerToken: int64(2 * cfg.NumLayers * cfg.NumKVHeads * cfg.HeadDim * kvElem)}
}

// LayerParams is the weights of one decoder layer's matmuls (q, k, v, o, gate, up, down).
func (c Cost) LayerParams() int64 {
	h, q, kv := int64(c.Hidden), int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim)
	return h*(q+2*kv) + q*h + 3*h*int64(c.Inter)
}

// normParams is the weights of the RMSNorms (two per layer, q/k norms, the final norm).
func (c Cost) normParams() int64 {
	return int64(c.Layers)*(2*int64(c.Hidden)+2*int64(c.HeadDim)) + int64(c.Hidden)
}

// WeightBytes is what one step reads of the weights: every layer, the norms and the LM head
// (the embedding table when tied); the embedding rows a step gathers are negligible.
func (c Cost) WeightBytes() int64 {
	return (int64(c.Layers)*c.LayerParams() + int64(c.Vocab)*int64(c.Hidden) + c.normParams()) * int64(c.WeightElem)
}

// Seq is one sequence's part of a step: Query new tokens at the end of a context of Ctx tokens
// (Ctx includes them).
type Seq struct{ Query, Ctx int }

// Bytes is the memory traffic floor of a step: the weights once, plus each sequence's KV cache
// read once (Ctx tokens) and written for its new tokens.
func (c Cost) Bytes(seqs []Seq) float64 {
	b := float64(c.WeightBytes())
	for _, s := range seqs {
		b += float64(s.Ctx+s.Query) * float64(c.KVBytesPerToken)
	}
	return b
}

// FLOPs is the arithmetic of a step: 2 per weight per token in the layers, the LM head for one
// row per sequence, and causal attention (q·k and p·v: 4·heads·head_dim per query–key pair).
func (c Cost) FLOPs(seqs []Seq) float64 {
	var tokens, pairs float64
	for _, s := range seqs {
		q, ctx := float64(s.Query), float64(s.Ctx)
		tokens += q
		// Query row j of q sits at position ctx−q+j and sees ctx−q+j+1 keys.
		pairs += q*ctx - q*(q-1)/2
	}
	layers := float64(c.Layers)
	f := 2 * tokens * layers * float64(c.LayerParams())
	f += 2 * float64(len(seqs)) * float64(c.Vocab) * float64(c.Hidden)
	f += 4 * layers * float64(c.Heads*c.HeadDim) * pairs
	return f
}

// Floor is the roofline lower bound of a step's time.
type Floor struct {
	// Seconds is max(MemorySeconds, ComputeSeconds).
	Seconds, MemorySeconds, ComputeSeconds float64
	// Bound is "memory" or "compute": which term sets the floor.
	Bound string
}

// FloorOf returns the floor of a step on a machine of bandwidth bytes/s and peak FLOP/s.
func (c Cost) FloorOf(seqs []Seq, bandwidth, peak float64) Floor {
	f := Floor{MemorySeconds: c.Bytes(seqs) / bandwidth, ComputeSeconds: c.FLOPs(seqs) / peak}
	f.Seconds, f.Bound = f.MemorySeconds, "memory"
	if f.ComputeSeconds > f.MemorySeconds {
		f.Seconds, f.Bound = f.ComputeSeconds, "compute"
	}
	return f
}

package model

import (
	"fmt"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// scratch holds the step's device buffers, sized for the largest step so far.
type scratch struct {
	capN, capB, capR, capBlocks, capV, capD, capC, capE int

	x, h, qkv, q, attn, o, gu, act, down ml.Tensor // activations [capN, ...]
	last, logits                         ml.Tensor // [capR, H], [capR, V]

	tokens, pos, slots, seqStart, ctxLen, tables  ml.Tensor
	visual, visIdx, dsIdx, custom, cusIdx, cusSrc ml.Tensor
	ds                                            []ml.Tensor
	logitIdx                                      ml.Tensor

	host struct {
		seqStart, ctxLen, tables []int32
		logits                   []float32
		ids                      []int32
	}
}

func (s *scratch) free(b ml.Backend) {
	for _, t := range []ml.Tensor{s.x, s.h, s.qkv, s.q, s.attn, s.o, s.gu, s.act, s.down, s.last, s.logits,
		s.tokens, s.pos, s.slots, s.seqStart, s.ctxLen, s.tables, s.visual, s.visIdx, s.dsIdx, s.custom,
		s.cusIdx, s.cusSrc, s.logitIdx} {
		if t != nil {
			b.Free(t)
		}
	}
	for _, t := range s.ds {
		b.Free(t)
	}
	*s = scratch{}
}

// grow returns a capacity of at least need, doubling from the old one.
func grow(old, need int) int {
	if need <= old {
		return old
	}
	return max(need, 2*old, 8)
}

// ensure (re)allocates the scratch buffers when a batch exceeds their capacity.
func (m *Model) ensure(bt *Batch, maxBlocks int) error {
	c := m.Config
	s := &m.s
	n, b, r := len(bt.Tokens), len(bt.Seqs), len(bt.LogitRows)
	nv, nd, nc := len(bt.VisualIdx), len(bt.DeepStackIdx), len(bt.CustomIdx)
	ne := 0
	if m.Projector != nil {
		ne = len(bt.Custom) / m.Projector.InputDim
	}
	if n <= s.capN && b <= s.capB && r <= s.capR && maxBlocks <= s.capBlocks && nv <= s.capV &&
		nd <= s.capD && nc <= s.capC && ne <= s.capE {
		return nil
	}
	// Graphs recorded over the old buffers would replay into freed memory.
	if g, ok := m.b.(ml.Grapher); ok {
		g.DropGraphs()
	}
	next := scratch{capN: grow(s.capN, n), capB: grow(s.capB, b), capR: grow(s.capR, r),
		capBlocks: grow(s.capBlocks, maxBlocks), capV: grow(s.capV, nv), capD: grow(s.capD, nd),
		capC: grow(s.capC, nc), capE: grow(s.capE, ne)}
	s.free(m.b)
	*s = next
	h, hd, inter := c.HiddenSize, c.HeadDim, c.IntermediateSize
	var err error
	alloc := func(dt ml.DType, shape ...int) ml.Tensor {
		if err != nil {
			return nil
		}
		var t ml.Tensor
		t, err = m.b.Alloc(dt, shape...)
		return t
	}
	N := s.capN
	s.x = alloc(ml.F32, N, h)
	s.h = alloc(ml.F32, N, h)
	s.qkv = alloc(ml.F32, N, (c.NumHeads+2*c.NumKVHeads)*hd)
	s.q = alloc(ml.F32, N, c.NumHeads*hd)
	s.attn = alloc(ml.F32, N, c.NumHeads*hd)
	s.o = alloc(ml.F32, N, h)
	s.gu = alloc(ml.F32, N, 2*inter)
	s.act = alloc(ml.F32, N, inter)
	s.down = alloc(ml.F32, N, h)
	s.last = alloc(ml.F32, s.capR, h)
	s.logits = alloc(ml.F32, s.capR, c.VocabSize)
	s.tokens = alloc(ml.I32, N)
	s.pos = alloc(ml.I32, N, 3)
	s.slots = alloc(ml.I32, N)
	s.seqStart = alloc(ml.I32, s.capB+1)
	s.ctxLen = alloc(ml.I32, s.capB)
	s.tables = alloc(ml.I32, s.capB, s.capBlocks)
	s.visual = alloc(ml.F32, s.capV, h)
	s.visIdx = alloc(ml.I32, s.capV)
	s.dsIdx = alloc(ml.I32, s.capD)
	s.ds = make([]ml.Tensor, c.DeepStackLevels)
	for l := range s.ds {
		s.ds[l] = alloc(ml.F32, s.capD, h)
	}
	if m.Projector != nil {
		s.custom = alloc(ml.F32, s.capE, m.Projector.InputDim)
	}
	s.cusIdx = alloc(ml.I32, s.capC)
	s.cusSrc = alloc(ml.I32, s.capC)
	s.logitIdx = alloc(ml.I32, s.capR)
	if err != nil {
		return fmt.Errorf("allocating step buffers for %d tokens: %w", N, err)
	}
	s.host.logits = make([]float32, s.capR*c.VocabSize)
	return nil
}

// check validates a batch against the model and its cache before anything runs.
func (m *Model) check(bt *Batch) (maxBlocks, maxQ, maxCtx int, err error) {
	c := m.Config
	n := len(bt.Tokens)
	if m.kc == nil {
		return 0, 0, 0, fmt.Errorf("forward: the KV cache is not initialised")
	}
	if n == 0 {
		return 0, 0, 0, fmt.Errorf("forward: empty batch")
	}
	if len(bt.Pos) != 3*n || len(bt.Slots) != n {
		return 0, 0, 0, fmt.Errorf("forward: %d tokens need %d positions and %d slots, got %d and %d", n, 3*n, n, len(bt.Pos), len(bt.Slots))
	}
	rows := 0
	for i, s := range bt.Seqs {
		need := (s.CtxLen + m.layout.BlockSize - 1) / m.layout.BlockSize
		if s.QueryLen <= 0 || s.CtxLen < s.QueryLen || len(s.Blocks) < need {
			return 0, 0, 0, fmt.Errorf("forward: sequence %d has %d query tokens, context %d and %d blocks", i, s.QueryLen, s.CtxLen, len(s.Blocks))
		}
		maxBlocks = max(maxBlocks, need)
		maxQ = max(maxQ, s.QueryLen)
		maxCtx = max(maxCtx, s.CtxLen)
		rows += s.QueryLen
	}
	if rows != n {
		return 0, 0, 0, fmt.Errorf("forward: sequences cover %d rows of a %d-token batch", rows, n)
	}
	h := c.HiddenSize
	if len(bt.Visual) != len(bt.VisualIdx)*h {
		return 0, 0, 0, fmt.Errorf("forward: %d visual rows need %d values, got %d", len(bt.VisualIdx), len(bt.VisualIdx)*h, len(bt.Visual))
	}
	if len(bt.DeepStackIdx) > 0 {
		if len(bt.DeepStack) != c.DeepStackLevels {
			return 0, 0, 0, fmt.Errorf("forward: the model takes %d DeepStack levels, got %d", c.DeepStackLevels, len(bt.DeepStack))
		}
		for l, d := range bt.DeepStack {
			if len(d) != len(bt.DeepStackIdx)*h {
				return 0, 0, 0, fmt.Errorf("forward: DeepStack level %d has %d values, want %d", l, len(d), len(bt.DeepStackIdx)*h)
			}
		}
	}
	if len(bt.CustomIdx) > 0 {
		if m.Projector == nil {
			return 0, 0, 0, fmt.Errorf("forward: custom embeddings need a projector, and none is loaded")
		}
		if len(bt.Custom)%m.Projector.InputDim != 0 || len(bt.CustomSrc) != len(bt.CustomIdx) {
			return 0, 0, 0, fmt.Errorf("forward: custom embeddings of %d values do not make rows of %d", len(bt.Custom), m.Projector.InputDim)
		}
	}
	for i, r := range bt.LogitRows {
		if r < 0 || int(r) >= n {
			return 0, 0, 0, fmt.Errorf("forward: logit row %d = %d is outside the batch", i, r)
		}
	}
	return maxBlocks, maxQ, maxCtx, nil
}

// shape is the size of one step: what the ops of a launch need besides the buffers.
type shape struct {
	n, nb, r, nv, nd, nc, ne int // tokens, sequences, logit rows, visual, DeepStack, custom rows, custom embeddings
	maxQ, maxCtx             int // launch hints for attention
}

func (m *Model) shapeOf(bt *Batch, maxQ, maxCtx int) shape {
	sh := shape{n: len(bt.Tokens), nb: len(bt.Seqs), r: len(bt.LogitRows), nv: len(bt.VisualIdx),
		nd: len(bt.DeepStackIdx), nc: len(bt.CustomIdx), maxQ: maxQ, maxCtx: maxCtx}
	if sh.nc > 0 {
		sh.ne = len(bt.Custom) / m.Projector.InputDim
	}
	return sh
}

// Forward runs one step: it writes the batch's keys and values into the cache and returns the
// logits of bt.LogitRows as a [len(LogitRows), vocab] row-major slice, valid until the next call.
func (m *Model) Forward(bt *Batch) ([]float32, error) {
	var out []float32
	err := m.batch(func() error {
		logits, r, err := m.step(bt)
		if err != nil || r == 0 {
			return err
		}
		out = m.s.host.logits[:r*m.Config.VocabSize]
		return m.b.Read(logits, out)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// batch runs fn in one hand-off on backends that batch their calls (ml.Batcher).
func (m *Model) batch(fn func() error) error {
	if bb, ok := m.b.(ml.Batcher); ok {
		return bb.Batch(fn)
	}
	return fn()
}

// CanSampleOnDevice reports whether the backend samples on the device (ForwardSample).
func (m *Model) CanSampleOnDevice() bool {
	_, ok := m.b.(ml.DeviceSampler)
	return ok
}

// ForwardSample runs one step and samples each logit row on the device under p (one entry per
// LogitRows entry), so that only token ids cross to the host.
func (m *Model) ForwardSample(bt *Batch, p []ml.SampleParams) ([]int32, error) {
	ds, ok := m.b.(ml.DeviceSampler)
	if !ok {
		return nil, fmt.Errorf("forward: backend %s cannot sample on the device", m.b.Name())
	}
	if len(p) != len(bt.LogitRows) {
		return nil, fmt.Errorf("forward: %d sampling rows for %d logit rows", len(p), len(bt.LogitRows))
	}
	var ids []int32
	err := m.batch(func() error {
		logits, r, err := m.step(bt)
		if err != nil || r == 0 {
			return err
		}
		if cap(m.s.host.ids) < r {
			m.s.host.ids = make([]int32, r)
		}
		ids = m.s.host.ids[:r]
		return ds.Sample(logits, p, ids)
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// step checks, uploads and launches a batch, through a captured graph where the backend has
// them and the batch is a plain decode; it returns the logits tensor (its first r rows are the
// batch's LogitRows) without reading it.
func (m *Model) step(bt *Batch) (ml.Tensor, int, error) {
	maxBlocks, maxQ, maxCtx, err := m.check(bt)
	if err != nil {
		return nil, 0, err
	}
	if g, ok := m.b.(ml.Grapher); ok && m.graphable(bt, maxQ) {
		return m.stepGraph(g, bt, maxCtx)
	}
	if err := m.ensure(bt, maxBlocks); err != nil {
		return nil, 0, err
	}
	if err := m.upload(bt); err != nil {
		return nil, 0, err
	}
	sh := m.shapeOf(bt, maxQ, maxCtx)
	if err := m.launch(sh); err != nil {
		return nil, 0, err
	}
	if sh.r == 0 {
		return nil, 0, nil
	}
	return m.b.Rows(m.s.logits, sh.r), sh.r, nil
}

// launch issues the ops of one step over the first rows of the step buffers.
func (m *Model) launch(sh shape) error {
	c, s, b := m.Config, &m.s, m.b
	n, nb, r := sh.n, sh.nb, sh.r
	rows := func(t ml.Tensor) ml.Tensor { return b.Rows(t, n) }
	x, h, qkv, q, attn, o := rows(s.x), rows(s.h), rows(s.qkv), rows(s.q), rows(s.attn), rows(s.o)
	gu, act, down := rows(s.gu), rows(s.act), rows(s.down)

	ea := ml.EmbedArgs{Tokens: rows(s.tokens), Table: m.embed}
	if sh.nv > 0 {
		ea.Visual, ea.VisualIdx = b.Rows(s.visual, sh.nv), b.Rows(s.visIdx, sh.nv)
	}
	if sh.nc > 0 {
		ea.Custom, ea.CustomIdx, ea.CustomSrc, ea.Projector = b.Rows(s.custom, sh.ne), b.Rows(s.cusIdx, sh.nc), b.Rows(s.cusSrc, sh.nc), m.proj
	}
	if err := b.EmbedProject(x, ea); err != nil {
		return err
	}
	qa := ml.QKVArgs{Q: q, Pos: rows(s.pos), Slots: rows(s.slots), Heads: c.NumHeads, KVHeads: c.NumKVHeads,
		HeadDim: c.HeadDim, Eps: m.eps, Rope: m.rope, Layout: m.layout}
	aa := ml.AttnArgs{SeqStart: b.Rows(s.seqStart, nb+1), CtxLen: b.Rows(s.ctxLen, nb), BlockTables: b.Rows(s.tables, nb),
		NumSeqs: nb, Heads: c.NumHeads, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, Scale: attnScale(c.HeadDim),
		MaxQueryLen: sh.maxQ, MaxCtxLen: sh.maxCtx, Layout: m.layout}

	if err := m.normMatMul(qkv, h, x, nil, m.layers[0].inNorm, m.layers[0].wqkv); err != nil {
		return err
	}
	for i := range m.layers {
		if err := m.layer(i, h, x, qkv, attn, o, gu, act, down, qa, aa, sh.nd); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	if r == 0 {
		return b.Sync()
	}
	last, logits := b.Rows(s.last, r), b.Rows(s.logits, r)
	if err := b.Gather(last, h, b.Rows(s.logitIdx, r)); err != nil {
		return err
	}
	return b.MatMul(logits, last, m.head)
}

// upload copies the batch's host arrays into the step buffers.
func (m *Model) upload(bt *Batch) error {
	s, b := &m.s, m.b
	nb := len(bt.Seqs)
	hs := &s.host
	hs.seqStart = append(hs.seqStart[:0], 0)
	hs.ctxLen = hs.ctxLen[:0]
	if need := nb * s.capBlocks; cap(hs.tables) < need {
		hs.tables = make([]int32, need)
	}
	hs.tables = hs.tables[:nb*s.capBlocks]
	row := int32(0)
	for i, q := range bt.Seqs {
		row += int32(q.QueryLen)
		hs.seqStart = append(hs.seqStart, row)
		hs.ctxLen = append(hs.ctxLen, int32(q.CtxLen))
		t := hs.tables[i*s.capBlocks : (i+1)*s.capBlocks]
		k := copy(t, q.Blocks)
		clear(t[k:])
	}
	var err error
	put := func(t ml.Tensor, src any) {
		if err == nil {
			err = b.Write(t, src)
		}
	}
	put(s.tokens, bt.Tokens)
	put(s.pos, bt.Pos)
	put(s.slots, bt.Slots)
	put(s.seqStart, hs.seqStart)
	put(s.ctxLen, hs.ctxLen)
	put(s.tables, hs.tables)
	put(s.logitIdx, bt.LogitRows)
	if len(bt.VisualIdx) > 0 {
		put(s.visual, bt.Visual)
		put(s.visIdx, bt.VisualIdx)
	}
	if len(bt.DeepStackIdx) > 0 {
		put(s.dsIdx, bt.DeepStackIdx)
		for l, d := range bt.DeepStack {
			put(s.ds[l], d)
		}
	}
	if len(bt.CustomIdx) > 0 {
		put(s.custom, bt.Custom)
		put(s.cusIdx, bt.CustomIdx)
		put(s.cusSrc, bt.CustomSrc)
	}
	if err != nil {
		return fmt.Errorf("uploading step inputs: %w", err)
	}
	return nil
}

// normMatMul adds delta into the residual x (delta nil: no add), writes h = RMSNorm(x) with
// weight norm and y = h·wᵀ: one op on backends that fuse it (ml.NormMatMuler), else the norm
// and the MatMul.
func (m *Model) normMatMul(y, h, x, delta, norm, w ml.Tensor) error {
	if f, ok := m.b.(ml.NormMatMuler); ok {
		return f.NormMatMul(y, h, x, delta, norm, w, m.eps)
	}
	return ml.NormMatMulOps(m.b, y, h, x, delta, norm, w, m.eps)
}

// mlp runs the MLP block: x += delta, h = RMSNorm(x) with weight norm, act = SwiGLU(h·wguᵀ)
// and y = act·wdownᵀ (gu is the gate-up scratch): one op on backends that run it whole
// (ml.MLPer, which may leave gu unwritten), else ml.MLPOps.
func (m *Model) mlp(y, act, gu, h, x, delta, norm, wgu, wdown ml.Tensor) error {
	if f, ok := m.b.(ml.MLPer); ok {
		return f.MLP(y, act, gu, h, x, delta, norm, wgu, wdown, m.eps)
	}
	return ml.MLPOps(m.b, y, act, gu, h, x, delta, norm, wgu, wdown, m.eps)
}

// qkvAttention finishes the qkv projection (QKV into qa.Q and the cache) and writes attn over
// the paged cache: one op on backends that fold the two (ml.QKVAttender, which may leave qa.Q
// unwritten: nothing reads q after it), else QKV and Attention.
func (m *Model) qkvAttention(attn, qkv ml.Tensor, qa ml.QKVArgs, aa ml.AttnArgs) error {
	if f, ok := m.b.(ml.QKVAttender); ok {
		return f.QKVAttention(attn, qkv, qa, aa)
	}
	return ml.QKVAttentionOps(m.b, attn, qkv, qa, aa)
}

// layer runs decoder layer i. On entry h holds RMSNorm(x) with the layer's input norm and qkv
// holds h·Wqkvᵀ; on return x holds the layer's output (with DeepStack level i added at visual
// rows) and h holds it normalised by the next layer's input norm, and qkv the next layer's qkv
// projection of it (after the last layer: h normalised by the final norm, qkv unchanged).
func (m *Model) layer(i int, h, x, qkv, attn, o, gu, act, down ml.Tensor, qa ml.QKVArgs, aa ml.AttnArgs, nd int) error {
	b, s, L := m.b, &m.s, m.layers[i]
	qa.QNorm, qa.KNorm, qa.K, qa.V = L.qNorm, L.kNorm, m.kc[i], m.vc[i]
	aa.K, aa.V = m.kc[i], m.vc[i]
	if err := m.qkvAttention(attn, qkv, qa, aa); err != nil {
		return err
	}
	if err := b.MatMul(o, attn, L.wo); err != nil {
		return err
	}
	if err := m.mlp(down, act, gu, h, x, o, L.postNorm, L.wgu, L.wdown); err != nil {
		return err
	}
	// DeepStack level i joins the residual stream right after decoder layer i; adding it to the
	// MLP output before the residual add is the same sum.
	if nd > 0 && i < len(s.ds) {
		if err := b.ScatterAdd(down, b.Rows(s.ds[i], nd), b.Rows(s.dsIdx, nd)); err != nil {
			return err
		}
	}
	if i+1 < len(m.layers) {
		next := m.layers[i+1]
		return m.normMatMul(qkv, h, x, down, next.inNorm, next.wqkv)
	}
	return b.AddRMSNorm(h, x, down, m.norm, m.eps)
}

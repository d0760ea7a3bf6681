// Package model is qvl's one definition of the Qwen3-VL language model forward (vision encoder
// removed), written against the small op interface of package ml. Every backend runs this same
// code; backends implement ops, not models.
package model

import (
	"fmt"
	"math"
	"path/filepath"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/ml"
)

// Batch is the input of one forward step: the tokens of one or more sequences, each sequence's
// tokens contiguous and in order. The engine builds it; Forward consumes it.
type Batch struct {
	// Tokens [N] are the token ids (image slots hold the image pad id).
	Tokens []int32
	// Pos [N*3] holds each token's t, h and w positions.
	Pos []int32
	// Slots [N] is each token's KV-cache slot (block*BlockSize + offset).
	Slots []int32
	// Seqs describes the sequences in row order.
	Seqs []Seq
	// Visual [Nv*H] are precomputed image embeddings for rows VisualIdx [Nv].
	Visual    []float32
	VisualIdx []int32
	// DeepStack[l] [Nd*H] is added after decoder layer l at rows DeepStackIdx [Nd].
	DeepStack    [][]float32
	DeepStackIdx []int32
	// Custom [Ne*D] are raw proprietary embeddings; row CustomIdx[r] takes token CustomSrc[r] = e*K+k.
	Custom               []float32
	CustomIdx, CustomSrc []int32
	// LogitRows are the rows whose logits Forward returns, in this order.
	LogitRows []int32
}

// Seq is one sequence's part of a Batch.
type Seq struct {
	// QueryLen is the number of this step's rows that belong to the sequence.
	QueryLen int
	// CtxLen is the number of tokens in the cache once this step has written its rows.
	CtxLen int
	// Blocks is the sequence's block table (at least ceil(CtxLen/BlockSize) entries).
	Blocks []int32
}

type layer struct {
	inNorm, postNorm, qNorm, kNorm ml.Tensor
	wqkv, wo, wgu, wdown           ml.Tensor
}

// Model is a loaded Qwen3-VL language model on a backend.
type Model struct {
	// Config is the model's configuration.
	Config *loader.ModelConfig
	// Projector is the loaded projector's configuration, nil when none is loaded.
	Projector *loader.ProjectorConfig

	b      ml.Backend
	embed  ml.Tensor
	norm   ml.Tensor
	head   ml.Tensor
	layers []layer
	proj   *ml.Projector
	rope   ml.Rope
	eps    float32

	layout ml.KVLayout
	kc, vc []ml.Tensor
	// trash is a cache block outside the engine's pool that padding rows of graph replays
	// write into (-1 when the backend does not record graphs).
	trash int

	padded            Batch // a graph step's padded batch
	captures, replays int64

	s scratch

	closers   []func() error
	projClose func() error
}

// Options configure Load and Open.
type Options struct {
	// Progress, when set, is called after each tensor is loaded with the bytes loaded so far and in all.
	Progress func(done, total int64)
	// ProjectorDir is a projector directory (projector.json, projector.safetensors) for Open; empty: none.
	ProjectorDir string
}

// Open loads the checkpoint in dir (config.json and its safetensors) and, when
// o.ProjectorDir is set, a projector, onto b. The files stay mapped until Close, since a
// backend may alias the weights.
func Open(b ml.Backend, dir string, o Options) (*Model, error) {
	cfg, err := loader.LoadConfig(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	ck, err := loader.OpenCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	var proj *loader.Projector
	if o.ProjectorDir != "" {
		if proj, err = loader.LoadProjector(o.ProjectorDir); err != nil {
			ck.Close()
			return nil, err
		}
	}
	m, err := Load(b, ck, cfg, proj, o)
	if err != nil {
		ck.Close()
		if proj != nil {
			proj.Close()
		}
		return nil, err
	}
	m.closers = append(m.closers, ck.Close)
	if proj != nil {
		m.projClose = proj.Close
	}
	return m, nil
}

// Backend is the backend the model runs on.
func (m *Model) Backend() ml.Backend { return m.b }

// Load uploads a checkpoint's language-model weights (and the projector, when given) to b.
// Vision tower tensors are never read. Both the Qwen3-VL names (model.language_model.*) and the
// text-only Qwen3 names (model.*) are accepted.
func Load(b ml.Backend, ck *loader.Checkpoint, cfg *loader.ModelConfig, proj *loader.Projector, o Options) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Model{Config: cfg, b: b, eps: float32(cfg.RMSNormEps), trash: -1}
	m.rope = ml.Rope{Theta: cfg.RopeTheta, Section: cfg.MRopeSection, Interleaved: cfg.MRopeInterleaved}
	prefix := "model.language_model."
	if !ck.Has(prefix+"embed_tokens.weight") && ck.Has("model.embed_tokens.weight") {
		prefix = "model."
	}
	h, hd := cfg.HiddenSize, cfg.HeadDim
	nq, nkv, inter := cfg.NumHeads*hd, cfg.NumKVHeads*hd, cfg.IntermediateSize
	w := &weights{ck: ck, b: b, progress: o.Progress}
	w.total = w.sizeOf(prefix, cfg, proj)

	m.embed = w.load([]int{cfg.VocabSize, h}, prefix+"embed_tokens.weight")
	m.norm = w.load([]int{h}, prefix+"norm.weight")
	m.layers = make([]layer, cfg.NumLayers)
	for i := range m.layers {
		p := fmt.Sprintf("%slayers.%d.", prefix, i)
		m.layers[i] = layer{
			inNorm:   w.load([]int{h}, p+"input_layernorm.weight"),
			postNorm: w.load([]int{h}, p+"post_attention_layernorm.weight"),
			qNorm:    w.load([]int{hd}, p+"self_attn.q_norm.weight"),
			kNorm:    w.load([]int{hd}, p+"self_attn.k_norm.weight"),
			wqkv: w.concat([]int{nq + 2*nkv, h}, [][]int{{nq, h}, {nkv, h}, {nkv, h}},
				p+"self_attn.q_proj.weight", p+"self_attn.k_proj.weight", p+"self_attn.v_proj.weight"),
			wo: w.load([]int{h, nq}, p+"self_attn.o_proj.weight"),
			wgu: w.concat([]int{2 * inter, h}, [][]int{{inter, h}, {inter, h}},
				p+"mlp.gate_proj.weight", p+"mlp.up_proj.weight"),
			wdown: w.load([]int{h, inter}, p+"mlp.down_proj.weight"),
		}
	}
	switch {
	case ck.Has("lm_head.weight"):
		m.head = w.load([]int{cfg.VocabSize, h}, "lm_head.weight")
	case cfg.TieWordEmbeddings:
		m.head = m.embed
	default:
		w.fail(fmt.Errorf("%s: lm_head.weight is missing and tie_word_embeddings is false", ck.Dir))
	}
	if w.err != nil {
		return nil, w.err
	}
	if proj != nil {
		if err := m.setProjector(proj, w); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// setProjector uploads a projector's weights and makes it the model's projector.
func (m *Model) setProjector(proj *loader.Projector, w *weights) error {
	pc := proj.Config
	if pc.OutputDim != m.Config.HiddenSize {
		return fmt.Errorf("projector output_dim %d differs from the model's hidden size %d", pc.OutputDim, m.Config.HiddenSize)
	}
	p := &ml.Projector{
		FC1: w.tensor(proj.FC1W, []int{pc.HiddenDim, pc.InputDim}),
		B1:  w.tensor(proj.FC1B, []int{pc.HiddenDim}),
		FC2: w.tensor(proj.FC2W, []int{pc.TokensPerEmbedding * pc.OutputDim, pc.HiddenDim}),
		B2:  w.tensor(proj.FC2B, []int{pc.TokensPerEmbedding * pc.OutputDim}),
		K:   pc.TokensPerEmbedding, H: pc.OutputDim, TanhGELU: pc.Activation == loader.ActivationGELUTanh,
	}
	if w.err != nil {
		return w.err
	}
	m.Projector, m.proj = &pc, p
	return nil
}

// SwapProjector replaces the model's projector with proj (nil removes it) and returns the new
// Spec. The loaded files must stay open while the model uses them; the model closes them on
// Close, and the old projector's files when it is replaced.
func (m *Model) SwapProjector(proj *loader.Projector) (Spec, error) {
	old := m.proj
	if proj == nil {
		m.Projector, m.proj = nil, nil
	} else if err := m.setProjector(proj, &weights{b: m.b}); err != nil {
		return m.Spec(), err
	}
	if old != nil {
		for _, t := range []ml.Tensor{old.FC1, old.B1, old.FC2, old.B2} {
			m.b.Free(t)
		}
	}
	if m.projClose != nil {
		m.projClose()
	}
	m.projClose = nil
	if proj != nil {
		m.projClose = proj.Close
	}
	// The custom-embedding scratch buffer depends on the projector's input size.
	m.s.free(m.b)
	return m.Spec(), nil
}

// InitCache allocates the paged KV cache: numBlocks blocks of blockSize tokens in every layer.
func (m *Model) InitCache(numBlocks, blockSize int) error {
	if numBlocks <= 0 || blockSize <= 0 {
		return fmt.Errorf("kv cache: %d blocks of %d tokens", numBlocks, blockSize)
	}
	m.freeCache()
	m.trash = -1
	total := numBlocks
	if _, ok := m.b.(ml.Grapher); ok {
		m.trash, total = numBlocks, numBlocks+1
	}
	m.layout = ml.KVLayout{NumBlocks: total, BlockSize: blockSize, KVHeads: m.Config.NumKVHeads, HeadDim: m.Config.HeadDim}
	for range m.layers {
		k, err := m.b.Alloc(m.b.KVDType(), m.layout.Shape()...)
		if err != nil {
			return fmt.Errorf("kv cache: %w", err)
		}
		v, err := m.b.Alloc(m.b.KVDType(), m.layout.Shape()...)
		if err != nil {
			m.b.Free(k)
			return fmt.Errorf("kv cache: %w", err)
		}
		m.kc, m.vc = append(m.kc, k), append(m.vc, v)
	}
	return nil
}

func (m *Model) freeCache() {
	for i := range m.kc {
		m.b.Free(m.kc[i])
		m.b.Free(m.vc[i])
	}
	m.kc, m.vc = nil, nil
}

// KVBytesPerBlock is the memory one cache block takes on this model and backend.
func (m *Model) KVBytesPerBlock(blockSize int) int {
	l := ml.KVLayout{BlockSize: blockSize, KVHeads: m.Config.NumKVHeads, HeadDim: m.Config.HeadDim}
	return l.BytesPerBlock(m.Config.NumLayers, m.b.KVDType().Size())
}

// Layout is the KV cache layout (zero before InitCache).
func (m *Model) Layout() ml.KVLayout { return m.layout }

// HasProjector reports whether a projector is loaded.
func (m *Model) HasProjector() bool { return m.proj != nil }

// Close releases the model's device memory and the files Open mapped.
func (m *Model) Close() error {
	m.freeCache()
	m.s.free(m.b)
	var err error
	if m.projClose != nil {
		err = m.projClose()
		m.projClose = nil
	}
	for _, c := range m.closers {
		if e := c(); e != nil && err == nil {
			err = e
		}
	}
	m.closers = nil
	return err
}

// weights loads checkpoint tensors onto a backend, remembering the first error.
type weights struct {
	ck       *loader.Checkpoint
	b        ml.Backend
	err      error
	done     int64
	total    int64
	progress func(done, total int64)
}

func (w *weights) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

func (w *weights) sizeOf(prefix string, cfg *loader.ModelConfig, proj *loader.Projector) int64 {
	var n int64
	for _, name := range w.ck.Names() {
		if t, err := w.ck.Tensor(name); err == nil {
			n += int64(len(t.Data))
		}
	}
	if proj != nil {
		for _, t := range []*loader.Tensor{proj.FC1W, proj.FC1B, proj.FC2W, proj.FC2B} {
			n += int64(len(t.Data))
		}
	}
	return n
}

func (w *weights) advance(n int) {
	w.done += int64(n)
	if w.progress != nil {
		w.progress(w.done, max(w.total, w.done))
	}
}

// get reads a checkpoint tensor and checks its shape.
func (w *weights) get(name string, shape []int) *loader.Tensor {
	if w.err != nil {
		return nil
	}
	t, err := w.ck.Tensor(name)
	if err != nil {
		w.fail(err)
		return nil
	}
	if !sameShape(t.Shape, shape) {
		w.fail(fmt.Errorf("%s: tensor %s has shape %v, the config implies %v", t.File, name, t.Shape, shape))
		return nil
	}
	return t
}

func (w *weights) load(shape []int, name string) ml.Tensor {
	return w.tensor(w.get(name, shape), shape)
}

// tensor uploads one loader tensor: bf16 and f32 as they are, f16 widened to f32.
func (w *weights) tensor(t *loader.Tensor, shape []int) ml.Tensor {
	if w.err != nil || t == nil {
		return nil
	}
	if !sameShape(t.Shape, shape) {
		w.fail(fmt.Errorf("%s: tensor %s has shape %v, want %v", t.File, t.Name, t.Shape, shape))
		return nil
	}
	dt, data, err := hostBytes(t)
	if err != nil {
		w.fail(err)
		return nil
	}
	out, err := w.b.Weight(dt, shape, data)
	if err != nil {
		w.fail(fmt.Errorf("%s: tensor %s: %w", t.File, t.Name, err))
		return nil
	}
	w.advance(len(t.Data))
	return out
}

// concat uploads tensors stacked along rows (q|k|v, gate|up) as one weight.
func (w *weights) concat(shape []int, parts [][]int, names ...string) ml.Tensor {
	ts := make([]*loader.Tensor, len(names))
	for i, n := range names {
		ts[i] = w.get(n, parts[i])
	}
	if w.err != nil {
		return nil
	}
	dt := ml.BF16
	for _, t := range ts {
		if t.DType != loader.BF16 {
			dt = ml.F32
		}
	}
	var data []byte
	size := 0
	for _, t := range ts {
		size += len(t.Data)
		if dt == ml.BF16 {
			data = append(data, t.Data...)
			continue
		}
		f, err := t.Float32()
		if err != nil {
			w.fail(fmt.Errorf("%s: tensor %s: %w", t.File, t.Name, err))
			return nil
		}
		data = append(data, loader.F32Bytes(f)...)
	}
	out, err := w.b.Weight(dt, shape, data)
	if err != nil {
		w.fail(fmt.Errorf("%s: tensors %v: %w", ts[0].File, names, err))
		return nil
	}
	w.advance(size)
	return out
}

func hostBytes(t *loader.Tensor) (ml.DType, []byte, error) {
	switch t.DType {
	case loader.BF16:
		return ml.BF16, t.Data, nil
	case loader.F32:
		return ml.F32, t.Data, nil
	case loader.F16, loader.F64:
		f, err := t.Float32()
		if err != nil {
			return 0, nil, fmt.Errorf("%s: tensor %s: %w", t.File, t.Name, err)
		}
		return ml.F32, loader.F32Bytes(f), nil
	}
	return 0, nil, fmt.Errorf("%s: tensor %s has dtype %s; weights must be bf16, f16, f32 or f64", t.File, t.Name, t.DType)
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// attnScale is 1/sqrt(head_dim).
func attnScale(hd int) float32 { return float32(1 / math.Sqrt(float64(hd))) }

// Spec is what the engine needs to know about a model to validate and lay out requests.
type Spec struct {
	VocabSize, HiddenSize, DeepStackLevels int
	ImageTokenID, SpatialMergeSize         int
	// MaxPositions is max_position_embeddings (0 when the config does not say).
	MaxPositions int
	// EOSTokenIDs are the config's end-of-sequence ids.
	EOSTokenIDs []int
	// ProjectorInputDim and ProjectorTokens describe the loaded projector (0 when none).
	ProjectorInputDim, ProjectorTokens int
}

// Spec describes the model for the engine.
func (m *Model) Spec() Spec {
	c := m.Config
	s := Spec{VocabSize: c.VocabSize, HiddenSize: c.HiddenSize, DeepStackLevels: c.DeepStackLevels,
		ImageTokenID: c.ImageTokenID, SpatialMergeSize: c.SpatialMergeSize, MaxPositions: c.MaxPositionEmbeddings,
		EOSTokenIDs: c.EOSTokenIDs}
	if m.Projector != nil {
		s.ProjectorInputDim, s.ProjectorTokens = m.Projector.InputDim, m.Projector.TokensPerEmbedding
	}
	return s
}

// Project runs the projector on n = len(emb)/D proprietary embeddings and returns their
// n·K tokens [n·K, H] (row-major), e.g. to cache them per embedding id.
func (m *Model) Project(emb []float32) ([]float32, error) {
	if m.proj == nil {
		return nil, fmt.Errorf("project: no projector is loaded")
	}
	d, k, h := m.Projector.InputDim, m.Projector.TokensPerEmbedding, m.Config.HiddenSize
	if len(emb) == 0 || len(emb)%d != 0 {
		return nil, fmt.Errorf("project: %d values do not make embeddings of %d", len(emb), d)
	}
	n := len(emb) / d
	rows := n * k
	b := m.b
	var err error
	alloc := func(dt ml.DType, shape ...int) ml.Tensor {
		if err != nil {
			return nil
		}
		var t ml.Tensor
		t, err = b.Alloc(dt, shape...)
		return t
	}
	out, toks, idx, src, in := alloc(ml.F32, rows, h), alloc(ml.I32, rows), alloc(ml.I32, rows), alloc(ml.I32, rows), alloc(ml.F32, n, d)
	defer func() {
		for _, t := range []ml.Tensor{out, toks, idx, src, in} {
			if t != nil {
				b.Free(t)
			}
		}
	}()
	if err != nil {
		return nil, fmt.Errorf("project: %w", err)
	}
	seq := make([]int32, rows)
	for i := range seq {
		seq[i] = int32(i)
	}
	for _, w := range []struct {
		t   ml.Tensor
		src any
	}{{toks, make([]int32, rows)}, {idx, seq}, {src, seq}, {in, emb}} {
		if err := b.Write(w.t, w.src); err != nil {
			return nil, fmt.Errorf("project: %w", err)
		}
	}
	if err := b.EmbedProject(out, ml.EmbedArgs{Tokens: toks, Table: m.embed, Custom: in, CustomIdx: idx, CustomSrc: src, Projector: m.proj}); err != nil {
		return nil, fmt.Errorf("project: %w", err)
	}
	res := make([]float32, rows*h)
	if err := b.Read(out, res); err != nil {
		return nil, fmt.Errorf("project: %w", err)
	}
	return res, nil
}

// Package synth writes Qwen3-VL checkpoints with random bf16 weights in the Hugging Face layout
// (config.json, sharded safetensors with an index, generation_config.json, the real Qwen3
// tokenizer files and chat template, and a projector), so that real-size runs and benchmarks
// need no download. Weights are drawn with the scales the reference goldens use, so activations
// stay near unit size through any depth.
package synth

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

// Shape is a model size to synthesize.
type Shape struct {
	Name                                  string
	Hidden, Layers, Heads, KVHeads, Inter int
	HeadDim                               int
	Tied                                  bool
	MRope                                 [3]int
	DeepStack                             int
	MaxPositions                          int
	// Projector sizes: input dim D, hidden dim, tokens per embedding K.
	ProjIn, ProjMid, ProjTokens int
}

// Real Qwen3 vocabulary and special ids (the synthesized checkpoints use the real tokenizer).
const (
	Vocab            = 151936
	EndOfText        = 151643
	ImEnd            = 151645
	VisionStart      = 151652
	VisionEnd        = 151653
	ImagePad         = 151655
	VideoPad         = 151656
	ropeTheta        = 5e6
	defaultMaxLength = 262144
)

// Shapes are the sizes `qvl synth` knows, by name.
var Shapes = map[string]Shape{
	// tiny is the built-in demo model: small enough to serve on any CPU, with the real vocabulary.
	"tiny": {Name: "tiny", Hidden: 128, Layers: 4, Heads: 4, KVHeads: 2, HeadDim: 32, Inter: 384, Tied: true,
		MRope: [3]int{6, 5, 5}, DeepStack: 3, MaxPositions: 32768, ProjIn: 256, ProjMid: 512, ProjTokens: 4},
	"qwen3-vl-2b": {Name: "qwen3-vl-2b", Hidden: 2048, Layers: 28, Heads: 16, KVHeads: 8, HeadDim: 128, Inter: 6144, Tied: true,
		MRope: [3]int{24, 20, 20}, DeepStack: 3, MaxPositions: defaultMaxLength, ProjIn: 1024, ProjMid: 4096, ProjTokens: 4},
	"qwen3-vl-4b": {Name: "qwen3-vl-4b", Hidden: 2560, Layers: 36, Heads: 32, KVHeads: 8, HeadDim: 128, Inter: 9728, Tied: true,
		MRope: [3]int{24, 20, 20}, DeepStack: 3, MaxPositions: defaultMaxLength, ProjIn: 1024, ProjMid: 4096, ProjTokens: 4},
	"qwen3-vl-8b": {Name: "qwen3-vl-8b", Hidden: 4096, Layers: 36, Heads: 32, KVHeads: 8, HeadDim: 128, Inter: 12288, Tied: false,
		MRope: [3]int{24, 20, 20}, DeepStack: 3, MaxPositions: defaultMaxLength, ProjIn: 1024, ProjMid: 4096, ProjTokens: 4},
}

// ShapeNames lists the known shapes.
func ShapeNames() []string {
	var n []string
	for k := range Shapes {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Config is the model configuration of a shape.
func (s Shape) Config() *loader.ModelConfig {
	return &loader.ModelConfig{
		ModelType: "qwen3_vl", HiddenSize: s.Hidden, NumLayers: s.Layers, NumHeads: s.Heads, NumKVHeads: s.KVHeads,
		HeadDim: s.HeadDim, IntermediateSize: s.Inter, VocabSize: Vocab, MaxPositionEmbeddings: s.MaxPositions,
		RMSNormEps: 1e-6, RopeTheta: ropeTheta, RopeType: "default", MRopeSection: s.MRope[:], MRopeInterleaved: true,
		TieWordEmbeddings: s.Tied, HiddenAct: "silu", BOSTokenID: EndOfText, EOSTokenIDs: []int{ImEnd, EndOfText},
		ImageTokenID: ImagePad, VideoTokenID: VideoPad, VisionStartTokenID: VisionStart, VisionEndTokenID: VisionEnd,
		DeepStackLevels: s.DeepStack, SpatialMergeSize: 2, VisionOutHiddenSize: s.Hidden,
	}
}

// Params counts the language model's parameters (the head once when tied).
func (s Shape) Params() int64 {
	h, hd := int64(s.Hidden), int64(s.HeadDim)
	attn := h*int64(s.Heads)*hd*2 + h*int64(s.KVHeads)*hd*2 + 2*hd
	mlp := 3 * h * int64(s.Inter)
	p := int64(Vocab)*h + int64(s.Layers)*(attn+mlp+2*h) + h
	if !s.Tied {
		p += int64(Vocab) * h
	}
	return p
}

// tensorSpec is one weight to write: its name, shape and how to draw it.
type tensorSpec struct {
	name  string
	shape []int
	kind  byte // 'n' norm weight (1+0.2u), 'l' linear (1/sqrt(fan_in)), 'e' embedding
}

func (s Shape) tensors() []tensorSpec {
	h, hd := s.Hidden, s.HeadDim
	var ts []tensorSpec
	p := "model.language_model."
	ts = append(ts, tensorSpec{p + "embed_tokens.weight", []int{Vocab, h}, 'e'})
	for i := 0; i < s.Layers; i++ {
		l := fmt.Sprintf("%slayers.%d.", p, i)
		ts = append(ts,
			tensorSpec{l + "input_layernorm.weight", []int{h}, 'n'},
			tensorSpec{l + "self_attn.q_proj.weight", []int{s.Heads * hd, h}, 'l'},
			tensorSpec{l + "self_attn.k_proj.weight", []int{s.KVHeads * hd, h}, 'l'},
			tensorSpec{l + "self_attn.v_proj.weight", []int{s.KVHeads * hd, h}, 'l'},
			tensorSpec{l + "self_attn.o_proj.weight", []int{h, s.Heads * hd}, 'l'},
			tensorSpec{l + "self_attn.q_norm.weight", []int{hd}, 'n'},
			tensorSpec{l + "self_attn.k_norm.weight", []int{hd}, 'n'},
			tensorSpec{l + "post_attention_layernorm.weight", []int{h}, 'n'},
			tensorSpec{l + "mlp.gate_proj.weight", []int{s.Inter, h}, 'l'},
			tensorSpec{l + "mlp.up_proj.weight", []int{s.Inter, h}, 'l'},
			tensorSpec{l + "mlp.down_proj.weight", []int{h, s.Inter}, 'l'},
		)
	}
	ts = append(ts, tensorSpec{p + "norm.weight", []int{h}, 'n'})
	if !s.Tied {
		ts = append(ts, tensorSpec{"lm_head.weight", []int{Vocab, h}, 'l'})
	}
	// One small vision tensor, as real checkpoints carry a vision tower that qvl must skip.
	ts = append(ts, tensorSpec{"model.visual.merger.norm.weight", []int{64}, 'n'})
	return ts
}

// draw fills a tensor with bf16 values from a stream seeded by (seed, index), in parallel chunks.
func draw(t tensorSpec, seed uint64, index int, tied bool) []byte {
	n := 1
	for _, d := range t.shape {
		n *= d
	}
	out := make([]byte, 2*n)
	var scale, center float64
	switch t.kind {
	case 'n':
		center, scale = 1, 0.2
	case 'e':
		scale = 1
		if tied {
			// A tied head reads the embedding table: keep its logits near unit scale.
			scale = 0.1
		}
	default:
		scale = 1 / math.Sqrt(float64(t.shape[len(t.shape)-1]))
	}
	// Uniform with the standard deviation of N(center, scale²).
	a := scale * math.Sqrt(3)
	const chunk = 1 << 20
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			r := rand.New(rand.NewPCG(seed^uint64(index)*0x9e3779b97f4a7c15, uint64(lo)))
			for i := lo; i < hi; i++ {
				v := float32(center + a*(2*r.Float64()-1))
				b := loader.F32ToBF16(v)
				out[2*i], out[2*i+1] = byte(b), byte(b>>8)
			}
		}()
	}
	wg.Wait()
	return out
}

// Options configure Write.
type Options struct {
	// Seed selects the weights.
	Seed uint64
	// ShardBytes caps the size of one safetensors shard (default 2 GiB).
	ShardBytes int64
	// Progress, when set, is told the bytes written so far and in all.
	Progress func(done, total int64)
}

// Write synthesizes a checkpoint of shape s into dir.
func Write(dir string, s Shape, o Options) error {
	if o.ShardBytes == 0 {
		o.ShardBytes = 2 << 30
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cfg := s.Config()
	cj, err := cfg.JSON()
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"config.json":           cj,
		"tokenizer.json":        qwen3.TokenizerJSON(),
		"tokenizer_config.json": qwen3.TokenizerConfigJSON(),
		"chat_template.json":    qwen3.ChatTemplateJSON(),
		"generation_config.json": []byte(fmt.Sprintf(`{
  "bos_token_id": %d,
  "eos_token_id": [%d, %d],
  "pad_token_id": %d,
  "do_sample": true,
  "temperature": 0.7,
  "top_p": 0.8,
  "top_k": 20,
  "repetition_penalty": 1.0,
  "transformers_version": "5.17.0"
}
`, EndOfText, ImEnd, EndOfText, EndOfText)),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	specs := s.tensors()
	var total int64
	for _, t := range specs {
		n := int64(2)
		for _, d := range t.shape {
			n *= int64(d)
		}
		total += n
	}
	// Group tensors into shards in order.
	var shards [][]int
	var cur []int
	var size int64
	for i, t := range specs {
		n := int64(2)
		for _, d := range t.shape {
			n *= int64(d)
		}
		if len(cur) > 0 && size+n > o.ShardBytes {
			shards = append(shards, cur)
			cur, size = nil, 0
		}
		cur = append(cur, i)
		size += n
	}
	shards = append(shards, cur)
	weightMap := map[string]string{}
	var done int64
	for k, idx := range shards {
		name := "model.safetensors"
		if len(shards) > 1 {
			name = fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, len(shards))
		}
		var ws []loader.WriteTensor
		for _, i := range idx {
			t := specs[i]
			data := draw(t, o.Seed, i, s.Tied)
			ws = append(ws, loader.WriteTensor{Name: t.name, DType: loader.BF16, Shape: t.shape, Data: data})
			weightMap[t.name] = name
			done += int64(len(data))
			if o.Progress != nil {
				o.Progress(done, total)
			}
		}
		if err := loader.WriteFile(filepath.Join(dir, name), ws, map[string]string{"format": "pt", "producer": "qvl synth"}); err != nil {
			return err
		}
	}
	if len(shards) > 1 {
		idx, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap}, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, loader.IndexFileName), idx, 0o644); err != nil {
			return err
		}
	}
	return writeProjector(filepath.Join(dir, "projector"), s, o.Seed)
}

// writeProjector writes a random projector from ProjIn-dim embeddings to ProjTokens tokens.
func writeProjector(dir string, s Shape, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 0xfeed))
	fill := func(n int, scale float64) []float32 {
		x := make([]float32, n)
		a := scale * math.Sqrt(3)
		for i := range x {
			x[i] = float32(a * (2*r.Float64() - 1))
		}
		return x
	}
	in, mid, k, h := s.ProjIn, s.ProjMid, s.ProjTokens, s.Hidden
	cfg := loader.ProjectorConfig{InputDim: in, HiddenDim: mid, TokensPerEmbedding: k, OutputDim: h, Activation: loader.ActivationGELU}
	return loader.WriteProjector(dir, cfg, fill(mid*in, 1/math.Sqrt(float64(in))), fill(mid, 0.1),
		fill(k*h*mid, 1/math.Sqrt(float64(mid))), fill(k*h, 0.1))
}

// DemoDir returns the directory of the built-in demo model, writing it there on first use.
// The model is the tiny shape with seed 0, kept under the user's cache directory (or
// $QVL_CACHE_DIR) in a folder named for the shape and a format version.
func DemoDir(progress func(done, total int64)) (string, error) {
	base := os.Getenv("QVL_CACHE_DIR")
	if base == "" {
		c, err := os.UserCacheDir()
		if err != nil {
			c = os.TempDir()
		}
		base = filepath.Join(c, "qvl")
	}
	dir := filepath.Join(base, "demo-tiny-v1")
	if _, err := os.Stat(filepath.Join(dir, "projector", loader.ProjectorConfigFileName)); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp(base+string(os.PathSeparator), ".demo-") // same filesystem, for the rename
	if err != nil {
		if err := os.MkdirAll(base, 0o755); err != nil {
			return "", fmt.Errorf("demo model cache %s: %w", base, err)
		}
		if tmp, err = os.MkdirTemp(base, ".demo-"); err != nil {
			return "", fmt.Errorf("demo model cache %s: %w", base, err)
		}
	}
	if err := Write(tmp, Shapes["tiny"], Options{Progress: progress}); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		// Another process may have made it meanwhile.
		if _, serr := os.Stat(filepath.Join(dir, "config.json")); serr == nil {
			return dir, nil
		}
		return "", err
	}
	return dir, nil
}

// IsDemo reports whether dir is the built-in demo model's directory.
func IsDemo(dir string) bool { return strings.HasSuffix(filepath.Clean(dir), "demo-tiny-v1") }

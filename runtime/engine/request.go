package engine

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math"
	"sort"
	"time"

	"github.com/qvl-dev/qvl/runtime/kvcache"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// Image is one image of a request, given as embeddings (never pixels). Exactly one form is set:
//   - Qwen3-VL's own post-merger embeddings: Embeds [tokens × hidden] row-major, DeepStack[l]
//     [tokens × hidden] for each of the model's DeepStack levels, and GridTHW, the pre-merge
//     image_grid_thw (tokens = t·h·w / merge²);
//   - precomputed tokens without DeepStack features (e.g. cached projector output): Embeds and
//     GridTHW, DeepStack nil;
//   - a proprietary embedding: Custom [D], which the loaded projector maps to K tokens placed on
//     the grid (1, 2, 2K).
type Image struct {
	GridTHW   [3]int
	Embeds    []float32
	DeepStack [][]float32
	Custom    []float32
	// Hash identifies the content for prefix caching; computed from the data when zero.
	Hash [32]byte
}

// Request is one generation request.
type Request struct {
	// ID names the request in logs and stats (the engine assigns one when empty).
	ID string
	// Prompt is the prompt's token ids; every image occupies a run of image-pad tokens of its length, in order.
	Prompt []int
	// Images are the prompt's images in order.
	Images []Image
	// Sampling are the sampling parameters.
	Sampling sample.Params
	// MaxTokens caps the generated tokens (0: up to the model's context length).
	MaxTokens int
	// MinTokens suppresses stop conditions until this many tokens were generated.
	MinTokens int
	// StopTokenIDs end generation when sampled (besides the model's end-of-sequence ids).
	StopTokenIDs []int
	// IgnoreEOS keeps generating past the model's end-of-sequence ids.
	IgnoreEOS bool
	// Stop are strings that end generation when the output text contains them; they are not emitted.
	Stop []string
	// Forced are tokens emitted in order instead of sampled ones (teacher forcing, for verification).
	Forced []int
	// PromptLogits asks for the logits of every prompt position in the first event.
	PromptLogits bool
	// ReturnLogits attaches to each token event the logits row it was chosen from.
	ReturnLogits bool
}

// Validation errors wrap ErrInvalid.
var ErrInvalid = errors.New("invalid request")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// imageSpan is where an image sits in a request's tokens.
type imageSpan struct {
	start, n int
	grid     [3]int // merged grid (positions)
	img      *Image
	custom   bool
}

// validate checks a request against the model and the engine's limits and lays out its images.
func (e *Engine) validate(r *Request) ([]imageSpan, error) {
	spec := e.Spec()
	if len(r.Prompt) == 0 {
		return nil, invalid("the prompt is empty")
	}
	if len(r.Prompt) >= e.maxModelLen {
		return nil, invalid("the prompt has %d tokens; this model's maximum context length is %d tokens, and at least one token must be generated", len(r.Prompt), e.maxModelLen)
	}
	if r.MaxTokens < 0 {
		return nil, invalid("max_tokens must be ≥ 1, got %d", r.MaxTokens)
	}
	if r.MaxTokens > 0 && len(r.Prompt)+r.MaxTokens > e.maxModelLen {
		return nil, invalid("this model's maximum context length is %d tokens, but %d were requested (%d in the prompt, %d to generate)",
			e.maxModelLen, len(r.Prompt)+r.MaxTokens, len(r.Prompt), r.MaxTokens)
	}
	if r.MinTokens < 0 {
		return nil, invalid("min_tokens must be ≥ 0, got %d", r.MinTokens)
	}
	if err := r.Sampling.Validate(); err != nil {
		return nil, invalid("%v", err)
	}
	for i, t := range r.Prompt {
		if t < 0 || t >= spec.VocabSize {
			return nil, invalid("prompt token %d at position %d is outside the vocabulary [0, %d)", t, i, spec.VocabSize)
		}
	}
	for i, t := range r.StopTokenIDs {
		if t < 0 || t >= spec.VocabSize {
			return nil, invalid("stop_token_ids[%d] = %d is outside the vocabulary [0, %d)", i, t, spec.VocabSize)
		}
	}
	for i, t := range r.Forced {
		if t < 0 || t >= spec.VocabSize {
			return nil, invalid("forced token %d at %d is outside the vocabulary [0, %d)", t, i, spec.VocabSize)
		}
	}
	for i, s := range r.Stop {
		if s == "" {
			return nil, invalid("stop[%d] is empty", i)
		}
	}
	spans := make([]imageSpan, 0, len(r.Images))
	pos := 0
	h := spec.HiddenSize
	for k := range r.Images {
		im := &r.Images[k]
		sp := imageSpan{img: im}
		switch {
		case im.Custom != nil:
			if im.Embeds != nil || im.DeepStack != nil {
				return nil, invalid("image %d: give either a custom embedding or image embeddings, not both", k)
			}
			if spec.ProjectorTokens == 0 {
				return nil, invalid("image %d: custom embeddings need a projector, and this server has none loaded", k)
			}
			if len(im.Custom) != spec.ProjectorInputDim {
				return nil, invalid("image %d: the custom embedding has %d values; the projector takes %d", k, len(im.Custom), spec.ProjectorInputDim)
			}
			sp.custom, sp.n, sp.grid = true, spec.ProjectorTokens, [3]int{1, 1, spec.ProjectorTokens}
		case im.Embeds != nil:
			g, err := model.MergedGrid(im.GridTHW, spec.SpatialMergeSize)
			if err != nil {
				return nil, invalid("image %d: %v", k, err)
			}
			sp.grid, sp.n = g, g[0]*g[1]*g[2]
			if len(im.Embeds) != sp.n*h {
				return nil, invalid("image %d: embeddings have %d values; grid %v makes %d tokens of hidden size %d, so %d are needed",
					k, len(im.Embeds), im.GridTHW, sp.n, h, sp.n*h)
			}
			if im.DeepStack != nil {
				if len(im.DeepStack) != spec.DeepStackLevels {
					return nil, invalid("image %d: %d DeepStack levels given; the model takes %d", k, len(im.DeepStack), spec.DeepStackLevels)
				}
				for l, d := range im.DeepStack {
					if len(d) != sp.n*h {
						return nil, invalid("image %d: DeepStack level %d has %d values, want %d", k, l, len(d), sp.n*h)
					}
				}
			}
		default:
			return nil, invalid("image %d has no embeddings", k)
		}
		if err := checkFinite(im); err != nil {
			return nil, invalid("image %d: %v", k, err)
		}
		for pos < len(r.Prompt) && r.Prompt[pos] != spec.ImageTokenID {
			pos++
		}
		if pos == len(r.Prompt) {
			return nil, invalid("image %d has no image-pad tokens (id %d) left in the prompt", k, spec.ImageTokenID)
		}
		run := 0
		for pos+run < len(r.Prompt) && r.Prompt[pos+run] == spec.ImageTokenID {
			run++
		}
		if run != sp.n {
			return nil, invalid("image %d needs %d image-pad tokens at position %d, the prompt has %d", k, sp.n, pos, run)
		}
		sp.start = pos
		pos += run
		if im.Hash == ([32]byte{}) {
			im.Hash = contentHash(im)
		}
		spans = append(spans, sp)
	}
	for ; pos < len(r.Prompt); pos++ {
		if r.Prompt[pos] == spec.ImageTokenID {
			return nil, invalid("the prompt has image-pad tokens at position %d beyond its %d images", pos, len(r.Images))
		}
	}
	return spans, nil
}

func checkFinite(im *Image) error {
	check := func(what string, x []float32) error {
		for i, v := range x {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%s value %d is %v", what, i, v)
			}
		}
		return nil
	}
	if err := check("embedding", im.Embeds); err != nil {
		return err
	}
	for l, d := range im.DeepStack {
		if err := check(fmt.Sprintf("DeepStack level %d", l), d); err != nil {
			return err
		}
	}
	return check("custom embedding", im.Custom)
}

// contentHash hashes an image's data and shape.
func contentHash(im *Image) [32]byte {
	h := sha256.New()
	var buf []byte
	put := func(tag byte, x []float32) {
		buf = append(buf[:0], tag)
		buf = binary.LittleEndian.AppendUint64(buf, uint64(len(x)))
		h.Write(buf)
		for len(x) > 0 {
			n := min(len(x), 4096)
			buf = buf[:0]
			for _, v := range x[:n] {
				buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
			}
			h.Write(buf)
			x = x[n:]
		}
	}
	buf = binary.LittleEndian.AppendUint64(buf[:0], uint64(im.GridTHW[0]))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(im.GridTHW[1]))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(im.GridTHW[2]))
	h.Write(buf)
	put('e', im.Embeds)
	for _, d := range im.DeepStack {
		put('d', d)
	}
	put('c', im.Custom)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// seqState is the engine's record of one request.
type seqState struct {
	id      string
	arrival uint64
	r       *Request
	spans   []imageSpan
	// tokens are the prompt then the output so far; computed counts those in the cache.
	tokens    []int32
	promptLen int
	pos       []int32 // prompt positions (3 per token)
	delta     int
	computed  int
	maxTokens int
	kv        kvcache.Seq
	sampler   *sample.State
	stream    *Stream
	text      textState
	cached    int // prompt tokens found in the prefix cache on first admission
	running   bool
	admitted  bool
	// submitted and scheduled are when Submit queued the request and when a step first took it.
	submitted, scheduled time.Time
	done                 bool
	// promptLogits accumulates the logits of prompt positions when requested.
	promptLogits []float32
}

// Tokens implements kvcache.Content.
func (s *seqState) Tokens() []int32 { return s.tokens }

// HashExtra implements kvcache.Content: image rows are identified by their image's content
// hash and their offset in the image.
func (s *seqState) HashExtra(h hash.Hash, start, end int) {
	var buf [48]byte
	for i := s.firstSpan(start); i < len(s.spans) && s.spans[i].start < end; i++ {
		sp := s.spans[i]
		lo, hi := max(start, sp.start)-sp.start, min(end, sp.start+sp.n)-sp.start
		copy(buf[:32], sp.img.Hash[:])
		binary.LittleEndian.PutUint64(buf[32:], uint64(lo))
		binary.LittleEndian.PutUint64(buf[40:], uint64(hi))
		h.Write(buf[:])
	}
}

// firstSpan is the index of the first image span that ends after token index i.
func (s *seqState) firstSpan(i int) int {
	return sort.Search(len(s.spans), func(k int) bool { return s.spans[k].start+s.spans[k].n > i })
}

// position writes the (t, h, w) position of token index i.
func (s *seqState) position(i int, dst []int32) {
	if i < s.promptLen {
		copy(dst, s.pos[3*i:3*i+3])
		return
	}
	p := int32(i + s.delta)
	dst[0], dst[1], dst[2] = p, p, p
}

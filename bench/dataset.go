package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/qvl-dev/qvl/loader/tokenizer"
)

// Words builds prompts of an exact token count: it holds vocabulary words (a space and 2 to 10
// lowercase letters) that the tokenizer encodes as one token each. The Qwen pre-tokenizer cuts
// text before every " word", so a concatenation of n such words is n tokens.
type Words struct {
	tok   *tokenizer.Tokenizer
	words []string
}

var wordRE = regexp.MustCompile(`^Ġ[a-z]{2,10}$`)

// NewWords collects the single-token words of tok's vocabulary.
func NewWords(tok *tokenizer.Tokenizer) (*Words, error) {
	w := &Words{tok: tok}
	for id := 0; id < tok.VocabSize(); id++ {
		s, ok := tok.Token(id)
		if !ok || tok.IsAdded(id) || !wordRE.MatchString(s) {
			continue
		}
		word := " " + strings.TrimPrefix(s, "Ġ")
		if ids := tok.Encode(word); len(ids) == 1 && ids[0] == id {
			w.words = append(w.words, word)
		}
	}
	if len(w.words) < 100 {
		return nil, fmt.Errorf("the tokenizer has only %d single-token lowercase words; random prompts need at least 100", len(w.words))
	}
	return w, nil
}

// Len is the number of words available.
func (w *Words) Len() int { return len(w.words) }

// Prompt returns random text of exactly n tokens.
func (w *Words) Prompt(rng *rand.Rand, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(w.words[rng.IntN(len(w.words))])
	}
	return b.String()
}

// Count is the token count of text.
func (w *Words) Count(text string) int { return len(w.tok.Encode(text)) }

// RandomConfig describes vLLM's "random" dataset: input and output lengths drawn uniformly
// from [len·(1−ratio), len·(1+ratio)], with an optional prefix shared by every prompt.
type RandomConfig struct {
	NumPrompts          int
	InputLen, OutputLen int
	// RangeRatio widens the length ranges (0: fixed lengths); it must be in [0, 1).
	RangeRatio float64
	// PrefixLen tokens of one random prefix start every prompt (for prefix-cache benchmarks).
	PrefixLen int
	Seed      uint64
}

// RandomRequests draws a random dataset.
func RandomRequests(w *Words, c RandomConfig) ([]Request, error) {
	if c.NumPrompts < 1 {
		return nil, fmt.Errorf("random dataset: --num-prompts must be ≥ 1, got %d", c.NumPrompts)
	}
	if c.InputLen < 1 || c.OutputLen < 1 {
		return nil, fmt.Errorf("random dataset: input and output lengths must be ≥ 1, got %d and %d", c.InputLen, c.OutputLen)
	}
	if c.RangeRatio < 0 || c.RangeRatio >= 1 {
		return nil, fmt.Errorf("random dataset: --random-range-ratio must be in [0, 1), got %v", c.RangeRatio)
	}
	if c.PrefixLen < 0 {
		return nil, fmt.Errorf("random dataset: --random-prefix-len must be ≥ 0, got %d", c.PrefixLen)
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0x9e3779b97f4a7c15))
	bounds := func(n int) (int, int) {
		lo := int(math.Floor(float64(n) * (1 - c.RangeRatio)))
		hi := int(math.Ceil(float64(n) * (1 + c.RangeRatio)))
		return max(lo, 1), hi
	}
	inLo, inHi := bounds(c.InputLen)
	outLo, outHi := bounds(c.OutputLen)
	prefix := w.Prompt(rng, c.PrefixLen)
	reqs := make([]Request, c.NumPrompts)
	for i := range reqs {
		in := inLo + rng.IntN(inHi-inLo+1)
		out := outLo + rng.IntN(outHi-outLo+1)
		reqs[i] = Request{Prompt: prefix + w.Prompt(rng, in), PromptLen: c.PrefixLen + in, OutputLen: out}
	}
	return reqs, nil
}

// fileLine is one line of a JSONL dataset.
type fileLine struct {
	Prompt       string            `json:"prompt"`
	OutputTokens int               `json:"output_tokens"`
	MaxTokens    int               `json:"max_tokens"`
	PromptLen    int               `json:"prompt_len"`
	Images       []string          `json:"images"`
	Parts        []json.RawMessage `json:"parts"`
}

// LoadJSONL reads a dataset file with one JSON object per line:
//
//	{"prompt": "...", "output_tokens": 128, "images": ["demo-7"], "parts": [{...}]}
//
// prompt is required; output_tokens (vLLM's custom dataset name; max_tokens is accepted too)
// defaults to defaultOutputLen; images are image_ref ids, parts raw content parts, both sent
// after the text (chat endpoint only); prompt_len defaults to count(prompt) when count is set.
func LoadJSONL(path string, defaultOutputLen int, count func(string) int) ([]Request, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	defer f.Close()
	var reqs []Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 256<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var l fileLine
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			return nil, fmt.Errorf("%s:%d: %w (want {\"prompt\": ..., \"output_tokens\": ..., \"images\": [...], \"parts\": [...]})", path, n, err)
		}
		if l.Prompt == "" {
			return nil, fmt.Errorf("%s:%d: \"prompt\" is missing or empty", path, n)
		}
		r := Request{Prompt: l.Prompt, PromptLen: l.PromptLen, OutputLen: defaultOutputLen}
		switch {
		case l.OutputTokens < 0 || l.MaxTokens < 0:
			return nil, fmt.Errorf("%s:%d: output_tokens must be ≥ 1", path, n)
		case l.OutputTokens > 0:
			r.OutputLen = l.OutputTokens
		case l.MaxTokens > 0:
			r.OutputLen = l.MaxTokens
		}
		if r.PromptLen == 0 && count != nil {
			r.PromptLen = count(l.Prompt)
		}
		for _, id := range l.Images {
			r.Parts = append(r.Parts, ImageRefPart(id))
		}
		for k, p := range l.Parts {
			var probe struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal(p, &probe); err != nil || probe.Type == "" {
				return nil, fmt.Errorf("%s:%d: parts[%d] is not a content part object with a \"type\"", path, n, k)
			}
			r.Parts = append(r.Parts, p)
		}
		reqs = append(reqs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("dataset %s: %w", path, err)
	}
	if len(reqs) == 0 {
		return nil, fmt.Errorf("dataset %s has no requests", path)
	}
	return reqs, nil
}

// ImageRefPart is the content part that references a catalog image by id.
func ImageRefPart(id string) json.RawMessage {
	b, _ := json.Marshal(map[string]any{"type": "image_ref", "image_ref": map[string]string{"id": id}})
	return b
}

// ParseIDs expands a list of ids: comma-separated items, each an id or a range such as
// "demo-0..demo-255" (the same prefix, then inclusive numeric bounds).
func ParseIDs(spec string) ([]string, error) {
	var ids []string
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		a, b, isRange := strings.Cut(item, "..")
		if !isRange {
			ids = append(ids, item)
			continue
		}
		pa, na, errA := splitNum(a)
		pb, nb, errB := splitNum(b)
		if errA != nil || errB != nil || pa != pb || na > nb {
			return nil, fmt.Errorf("image ids: %q is not a range like demo-0..demo-255 (same prefix, rising numbers)", item)
		}
		if nb-na >= 1<<20 {
			return nil, fmt.Errorf("image ids: range %q has more than %d ids", item, 1<<20)
		}
		for n := na; n <= nb; n++ {
			ids = append(ids, pa+strconv.Itoa(n))
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("image ids: %q names no id", spec)
	}
	return ids, nil
}

// splitNum splits "demo-12" into "demo-" and 12.
func splitNum(s string) (string, int, error) {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	if i == len(s) {
		return "", 0, fmt.Errorf("%q does not end in a number", s)
	}
	n, err := strconv.Atoi(s[i:])
	return s[:i], n, err
}

// LoadImageEmbedsPart reads a JSON file holding an image_embeds content part, either the whole
// part ({"type": "image_embeds", "image_embeds": {...}}) or only its "image_embeds" object, and
// returns the whole part, sent verbatim with requests.
func LoadImageEmbedsPart(path string) (json.RawMessage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("image embeds: %w", err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("image embeds %s: want a JSON object: %w", path, err)
	}
	if _, ok := obj["type"]; ok {
		var t string
		if err := json.Unmarshal(obj["type"], &t); err != nil || t != "image_embeds" {
			return nil, fmt.Errorf("image embeds %s: \"type\" is %s, want \"image_embeds\"", path, obj["type"])
		}
		if _, ok := obj["image_embeds"]; !ok {
			return nil, fmt.Errorf("image embeds %s: the part has no \"image_embeds\" object", path)
		}
		return json.RawMessage(data), nil
	}
	if _, ok := obj["data"]; !ok {
		return nil, fmt.Errorf("image embeds %s: want an image_embeds part or its object with \"data\", \"dtype\", \"shape\" and \"image_grid_thw\"", path)
	}
	return json.Marshal(map[string]any{"type": "image_embeds", "image_embeds": json.RawMessage(data)})
}

// AddImages gives each request, with probability prob, one image part chosen by pick.
func AddImages(reqs []Request, prob float64, seed uint64, pick func(*rand.Rand) json.RawMessage) {
	rng := rand.New(rand.NewPCG(seed, 0x1ea6e5))
	for i := range reqs {
		if rng.Float64() < prob {
			reqs[i].Parts = append(reqs[i].Parts, pick(rng))
		}
	}
}

package bench

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/tokenizer"
	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

var (
	wordsOnce sync.Once
	words     *Words
	wordsErr  error
)

// qwenWords loads the real Qwen3 tokenizer once for the tests that need it (~0.3 s).
func qwenWords(t *testing.T) *Words {
	wordsOnce.Do(func() {
		var tok *tokenizer.Tokenizer
		tok, wordsErr = tokenizer.FromJSON(qwen3.TokenizerJSON())
		if wordsErr == nil {
			words, wordsErr = NewWords(tok)
		}
	})
	require.NoError(t, wordsErr)
	return words
}

func TestRandomPromptsHaveExactTokenCounts(t *testing.T) {
	w := qwenWords(t)
	assert.Greater(t, w.Len(), 10000)
	reqs, err := RandomRequests(w, RandomConfig{NumPrompts: 50, InputLen: 200, OutputLen: 64, RangeRatio: 0.5, PrefixLen: 16, Seed: 3})
	require.NoError(t, err)
	require.Len(t, reqs, 50)
	seen := map[int]bool{}
	for _, r := range reqs {
		assert.Equal(t, r.PromptLen, w.Count(r.Prompt), "the prompt has exactly the tokens it claims")
		assert.GreaterOrEqual(t, r.PromptLen, 16+100)
		assert.LessOrEqual(t, r.PromptLen, 16+300)
		assert.GreaterOrEqual(t, r.OutputLen, 32)
		assert.LessOrEqual(t, r.OutputLen, 96)
		seen[r.PromptLen] = true
		assert.Equal(t, reqs[0].Prompt[:20], r.Prompt[:20], "every prompt starts with the shared prefix")
	}
	assert.Greater(t, len(seen), 20, "lengths vary with a range ratio")

	again, err := RandomRequests(w, RandomConfig{NumPrompts: 50, InputLen: 200, OutputLen: 64, RangeRatio: 0.5, PrefixLen: 16, Seed: 3})
	require.NoError(t, err)
	assert.Equal(t, reqs, again, "seeded")

	fixed, err := RandomRequests(w, RandomConfig{NumPrompts: 5, InputLen: 32, OutputLen: 8, Seed: 1})
	require.NoError(t, err)
	for _, r := range fixed {
		assert.Equal(t, 32, r.PromptLen)
		assert.Equal(t, 8, r.OutputLen)
	}
	assert.NotEqual(t, fixed[0].Prompt, fixed[1].Prompt)

	for _, bad := range []RandomConfig{{NumPrompts: 0, InputLen: 1, OutputLen: 1}, {NumPrompts: 1, InputLen: 0, OutputLen: 1},
		{NumPrompts: 1, InputLen: 1, OutputLen: 1, RangeRatio: 1}, {NumPrompts: 1, InputLen: 1, OutputLen: 1, PrefixLen: -1}} {
		_, err := RandomRequests(w, bad)
		assert.Error(t, err, "%+v", bad)
	}
}

func TestLoadJSONL(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "d.jsonl")
	require.NoError(t, os.WriteFile(path, []byte(`{"prompt": "one two three", "output_tokens": 5}

{"prompt": "four", "max_tokens": 7, "images": ["demo-1"], "parts": [{"type": "image_embeds", "image_embeds": {"data": "AAAA"}}]}
{"prompt": "five", "prompt_len": 99}
`), 0o644))
	count := func(s string) int { return len(s) }
	reqs, err := LoadJSONL(path, 128, count)
	require.NoError(t, err)
	require.Len(t, reqs, 3)
	assert.Equal(t, Request{Prompt: "one two three", PromptLen: 13, OutputLen: 5}, reqs[0])
	assert.Equal(t, 7, reqs[1].OutputLen)
	require.Len(t, reqs[1].Parts, 2)
	assert.JSONEq(t, `{"type":"image_ref","image_ref":{"id":"demo-1"}}`, string(reqs[1].Parts[0]))
	assert.JSONEq(t, `{"type": "image_embeds", "image_embeds": {"data": "AAAA"}}`, string(reqs[1].Parts[1]))
	assert.Equal(t, 128, reqs[2].OutputLen, "the default output length")
	assert.Equal(t, 99, reqs[2].PromptLen, "a given prompt_len wins")

	bad := map[string]string{
		`{"prompt": ""}`:                       `"prompt" is missing or empty`,
		`{"prompt": "x", "output_len": 3}`:     `unknown field "output_len"`,
		`{"prompt": "x", "parts": [1]}`:        `parts[0] is not a content part`,
		`not json`:                             `invalid character`,
		`{"prompt": "x", "output_tokens": -2}`: `output_tokens must be ≥ 1`,
	}
	for line, want := range bad {
		require.NoError(t, os.WriteFile(path, []byte(line+"\n"), 0o644))
		_, err := LoadJSONL(path, 1, nil)
		assert.ErrorContains(t, err, want, line)
		assert.ErrorContains(t, err, "d.jsonl:1")
	}
	require.NoError(t, os.WriteFile(path, []byte("\n\n"), 0o644))
	_, err = LoadJSONL(path, 1, nil)
	assert.ErrorContains(t, err, "has no requests")
	_, err = LoadJSONL(filepath.Join(dir, "missing.jsonl"), 1, nil)
	assert.ErrorContains(t, err, "no such file")
}

func TestParseIDs(t *testing.T) {
	ids, err := ParseIDs("demo-0..demo-3, cat-x,item7..item8")
	require.NoError(t, err)
	assert.Equal(t, []string{"demo-0", "demo-1", "demo-2", "demo-3", "cat-x", "item7", "item8"}, ids)
	ids, err = ParseIDs("demo-0..demo-255")
	require.NoError(t, err)
	assert.Len(t, ids, 256)
	for _, bad := range []string{"", "a-1..b-2", "a-5..a-1", "a..a-3", " , "} {
		_, err := ParseIDs(bad)
		assert.Error(t, err, bad)
	}
}

func TestImageEmbedsPartAndAddImages(t *testing.T) {
	dir := t.TempDir()
	inner := filepath.Join(dir, "inner.json")
	require.NoError(t, os.WriteFile(inner, []byte(`{"data":"AAAA","dtype":"float32","shape":[1,4],"image_grid_thw":[1,2,2]}`), 0o644))
	p, err := LoadImageEmbedsPart(inner)
	require.NoError(t, err)
	var part map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(p, &part))
	assert.JSONEq(t, `"image_embeds"`, string(part["type"]))
	assert.JSONEq(t, `{"data":"AAAA","dtype":"float32","shape":[1,4],"image_grid_thw":[1,2,2]}`, string(part["image_embeds"]))

	whole := filepath.Join(dir, "whole.json")
	require.NoError(t, os.WriteFile(whole, p, 0o644))
	p2, err := LoadImageEmbedsPart(whole)
	require.NoError(t, err)
	assert.JSONEq(t, string(p), string(p2))

	wrong := filepath.Join(dir, "wrong.json")
	require.NoError(t, os.WriteFile(wrong, []byte(`{"type":"image_url","image_url":{}}`), 0o644))
	_, err = LoadImageEmbedsPart(wrong)
	assert.ErrorContains(t, err, `want "image_embeds"`)
	require.NoError(t, os.WriteFile(wrong, []byte(`{"values":[1]}`), 0o644))
	_, err = LoadImageEmbedsPart(wrong)
	assert.ErrorContains(t, err, "want an image_embeds part")

	reqs := requests(2000)
	ids := []string{"a", "b", "c"}
	AddImages(reqs, 0.25, 9, func(r *rand.Rand) json.RawMessage { return ImageRefPart(ids[r.IntN(len(ids))]) })
	n := 0
	for _, r := range reqs {
		n += len(r.Parts)
		assert.LessOrEqual(t, len(r.Parts), 1)
	}
	assert.InDelta(t, 500, n, 80, "about a quarter of the requests carry an image")
}

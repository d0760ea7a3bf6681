package tokenizer

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/text/unicode/norm"

	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

func pieces(s string) []string {
	var out []string
	for i := 0; i < len(s); {
		j := pieceEnd(s, i)
		out = append(out, s[i:j])
		i = j
	}
	return out
}

// TestPieces checks the pre-tokenizer scanner on cases whose expected pieces were taken from the
// reference implementation's pre_tokenizer.
func TestPieces(t *testing.T) {
	qwen(t) // builds the character class tables
	cases := map[string][]string{
		"a   b":            {"a", "  ", " b"},
		"x\n\n  y":         {"x", "\n\n", " ", " y"},
		" \t\n \tz":        {" \t\n", " ", "\tz"},
		"'sup 'S'Ll":       {"'s", "up", " '", "S", "'Ll"},
		"hello   \n":       {"hello", "   \n"},
		"a \u00a0b":        {"a", " ", "\u00a0b"},
		"1234 ab12":        {"1", "2", "3", "4", " ab", "1", "2"},
		"\u00a0\u00a0":     {"\u00a0\u00a0"},
		" !!!\n\nx":        {" !!!\n\n", "x"},
		"  ,x":             {" ", " ,", "x"},
		"\u0085x\ufeffy":   {"\u0085x", "\ufeffy"},
		"end  ":            {"end", "  "},
		"a\r\n\r\n b":      {"a", "\r\n\r\n", " b"},
		"  \n\t":           {"  \n", "\t"},
		"x\t\t":            {"x", "\t\t"},
		":)\r\n\r\nok":     {":)\r\n\r\n", "ok"},
		"don't":            {"don", "'t"},
		"中文，标点。":           {"中文", "，标点", "。"},
		"\n\n\n":           {"\n\n\n"},
		"'":                {"'"},
		"''s":              {"''", "s"},
		"'S":               {"'S"},
		"'re'VE'm'LL'd":    {"'re", "'VE", "'m", "'LL", "'d"},
		"'x":               {"'x"},
		"a\u0301":          {"a", "\u0301"},
		"\u2028x":          {"\u2028x"},
		"  \u00a0y":        {"  ", "\u00a0y"},
		"'\u017f":          {"'\u017f"},
		"\xff\xfeab\x80 c": {"\xff\xfe", "ab", "\x80", " c"},
	}
	for in, want := range cases {
		assert.Equalf(t, want, pieces(in), "pieces(%q)", in)
	}
}

// naiveBPE is an independent, obviously correct (and quadratic) BPE: repeatedly merge the leftmost
// pair of lowest rank, comparing token strings.
func naiveBPE(tok *Tokenizer, piece string) []int {
	syms := make([]int, len(piece))
	for i := 0; i < len(piece); i++ {
		syms[i] = int(tok.byteID[piece[i]])
	}
	for {
		best, bestRank, bestID := -1, int32(noMerge), 0
		for i := 0; i+1 < len(syms); i++ {
			if m, ok := tok.merges.get(int32(syms[i]), int32(syms[i+1])); ok && m.rank < bestRank {
				best, bestRank, bestID = i, m.rank, int(m.id)
			}
		}
		if best < 0 {
			return syms
		}
		syms = append(syms[:best+1], syms[best+2:]...)
		syms[best] = bestID
	}
}

func TestBPEAlgorithmsAgree(t *testing.T) {
	tok := qwen(t)
	rng := rand.New(rand.NewPCG(1, 2))
	alphabets := []string{"ab", " \n", "aeiou lnrst", "0123456789", "中文字", "éàü", "!?.,-=", "abcdefghijklmnopqrstuvwxyz"}
	toInt := func(ids []int32) []int {
		out := make([]int, len(ids))
		for i, id := range ids {
			out[i] = int(id)
		}
		return out
	}
	for iter := 0; iter < 3000; iter++ {
		alpha := []rune(alphabets[rng.IntN(len(alphabets))])
		var b strings.Builder
		for target := 1 + rng.IntN(heapThreshold-4); b.Len() < target; {
			b.WriteRune(alpha[rng.IntN(len(alpha))])
		}
		piece := b.String()
		if len(piece) >= heapThreshold {
			continue
		}
		want := naiveBPE(tok, piece)
		var buf [heapThreshold]int32
		require.Equalf(t, want, toInt(tok.bpeSmall(piece, buf[:0])), "bpeSmall(%q)", piece)
		require.Equalf(t, want, toInt(tok.bpeHeap(piece)), "bpeHeap(%q)", piece)
	}
	// Longer pieces: heap against the naive reference.
	for iter := 0; iter < 50; iter++ {
		alpha := []rune(alphabets[rng.IntN(len(alphabets))])
		var b strings.Builder
		for target := 200 + rng.IntN(800); b.Len() < target; {
			b.WriteRune(alpha[rng.IntN(len(alpha))])
		}
		piece := b.String()
		require.Equalf(t, naiveBPE(tok, piece), toInt(tok.bpeHeap(piece)), "bpeHeap(%q)", piece)
	}
}

// TestLongRuns checks that 100 KB runs of one character encode in linear-ish time and round-trip.
func TestLongRuns(t *testing.T) {
	tok := qwen(t)
	for _, unit := range []string{"a", " ", "\n", "0", "中", "!", "ab", " a", "\u0301"} {
		s := strings.Repeat(unit, 100_000/len(unit))
		start := time.Now()
		ids := tok.Encode(s)
		elapsed := time.Since(start)
		assert.Lessf(t, elapsed, 2*time.Second, "Encode of a 100 KB run of %q took %v", unit, elapsed)
		assert.Equalf(t, s, tok.Decode(ids, false), "round trip of a 100 KB run of %q", unit)
	}
	// The heap algorithm on one long piece agrees with the naive reference.
	s := strings.Repeat("a", 1001)
	assert.Equal(t, naiveBPE(tok, s), tok.Encode(s))
}

func TestTokenAPI(t *testing.T) {
	tok := qwen(t)
	assert.Equal(t, 151669, tok.VocabSize())

	id, ok := tok.TokenID("<|im_end|>")
	require.True(t, ok)
	assert.Equal(t, 151645, id)
	s, ok := tok.Token(151645)
	require.True(t, ok)
	assert.Equal(t, "<|im_end|>", s)
	assert.True(t, tok.IsSpecial(151645))
	assert.True(t, tok.IsAdded(151645))

	think, ok := tok.TokenID("<think>")
	require.True(t, ok)
	assert.Equal(t, 151667, think)
	assert.False(t, tok.IsSpecial(think))
	assert.True(t, tok.IsAdded(think))

	for name, want := range map[string]int{"<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<|endoftext|>": 151643, "</think>": 151668} {
		got, ok := tok.TokenID(name)
		assert.Truef(t, ok, name)
		assert.Equalf(t, want, got, name)
	}

	hello, ok := tok.TokenID("Ġhello")
	require.True(t, ok)
	assert.Equal(t, []int{hello}, tok.Encode(" hello"))
	s, ok = tok.Token(hello)
	require.True(t, ok)
	assert.Equal(t, "Ġhello", s)
	assert.False(t, tok.IsSpecial(hello))
	assert.False(t, tok.IsAdded(hello))

	_, ok = tok.TokenID(" hello")
	assert.False(t, ok)
	for _, bad := range []int{-1, 151669, 1 << 40} {
		_, ok = tok.Token(bad)
		assert.Falsef(t, ok, "Token(%d)", bad)
		assert.Falsef(t, tok.IsSpecial(bad), "IsSpecial(%d)", bad)
	}

	// Encode recognizes added tokens, EncodeOrdinary does not.
	assert.Equal(t, []int{151644, 872}, tok.Encode("<|im_start|>user"))
	ord := tok.EncodeOrdinary("<|im_start|>user")
	assert.NotContains(t, ord, 151644)
	assert.Equal(t, "<|im_start|>user", tok.Decode(ord, false))
	assert.Empty(t, tok.Encode(""))
	assert.Empty(t, tok.EncodeOrdinary(""))
	assert.Equal(t, "", tok.Decode(nil, false))
	assert.Equal(t, "user", tok.Decode([]int{151644, 872, 151645}, true))
	assert.Equal(t, "<think>x", tok.Decode([]int{think, 87}, true))
}

func TestQwen3DataFiles(t *testing.T) {
	for name, data := range map[string][]byte{
		"tokenizer.json":        qwen3.TokenizerJSON(),
		"tokenizer_config.json": qwen3.TokenizerConfigJSON(),
		"chat_template.json":    qwen3.ChatTemplateJSON(),
	} {
		onDisk, err := os.ReadFile(filepath.Join("qwen3", name))
		require.NoError(t, err)
		assert.Equalf(t, onDisk, data, "embedded %s differs from the file", name)
		assert.Truef(t, json.Valid(data), "%s is not valid JSON", name)
	}
	var tmpl struct {
		ChatTemplate string `json:"chat_template"`
	}
	require.NoError(t, json.Unmarshal(qwen3.ChatTemplateJSON(), &tmpl))
	assert.Contains(t, tmpl.ChatTemplate, "<|vision_start|><|image_pad|><|vision_end|>")
	// Callers get a private copy.
	a := qwen3.TokenizerJSON()
	a[0] = 'X'
	assert.Equal(t, byte('{'), qwen3.TokenizerJSON()[0])
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tokenizer.json"), qwen3.TokenizerJSON(), 0o644))
	fromDir, err := Load(dir)
	require.NoError(t, err)
	fromFile, err := Load(filepath.Join(dir, "tokenizer.json"))
	require.NoError(t, err)
	text := "<|im_start|>user\nHello, 世界!<|im_end|>"
	assert.Equal(t, qwen(t).Encode(text), fromDir.Encode(text))
	assert.Equal(t, qwen(t).Encode(text), fromFile.Encode(text))

	_, err = Load(filepath.Join(dir, "missing.json"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "missing.json")

	empty := t.TempDir()
	_, err = Load(empty)
	require.Error(t, err)
	assert.Contains(t, err.Error(), filepath.Join(empty, "tokenizer.json"))

	bad := filepath.Join(dir, "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"model": {"type": "WordPiece"}}`), 0o644))
	_, err = Load(bad)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "bad.json")
	assert.Contains(t, err.Error(), "WordPiece")
}

// tinyConfig is a minimal byte-level BPE tokenizer.json: the 256 byte tokens, merges a+b -> ab and
// ab+c -> abc, and two added tokens.
func tinyConfig() map[string]any {
	vocab := map[string]any{}
	for b := 0; b < 256; b++ {
		vocab[string(byteToRune[b])] = b
	}
	vocab["ab"] = 256
	vocab["abc"] = 257
	vocab["Ġa"] = 258
	return map[string]any{
		"version": "1.0",
		"added_tokens": []any{
			map[string]any{"id": 300, "content": "<|x|>", "special": true, "lstrip": false, "rstrip": false, "normalized": false, "single_word": false},
			map[string]any{"id": 301, "content": "<y>", "special": false, "lstrip": false, "rstrip": false, "normalized": false, "single_word": false},
		},
		"normalizer": map[string]any{"type": "NFC"},
		"pre_tokenizer": map[string]any{
			"type": "Sequence",
			"pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]any{"Regex": qwenSplitPattern}, "behavior": "Isolated", "invert": false},
				map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
			},
		},
		"post_processor": nil,
		"decoder":        map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
		"model": map[string]any{
			"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": "", "end_of_word_suffix": "",
			"fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
			"vocab":  vocab,
			"merges": []any{[]any{"a", "b"}, []any{"ab", "c"}, []any{"Ġ", "a"}},
		},
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	require.NoError(t, err)
	return data
}

func TestTinyTokenizer(t *testing.T) {
	tok, err := FromJSON(mustJSON(t, tinyConfig()))
	require.NoError(t, err)
	assert.Equal(t, 302, tok.VocabSize())
	assert.Equal(t, []int{257, 256, 258, 300, 'd', 301}, tok.Encode("abcab a<|x|>d<y>"))
	assert.Equal(t, "abcab a<|x|>d<y>", tok.Decode(tok.Encode("abcab a<|x|>d<y>"), false))
	assert.Equal(t, "abcab ad<y>", tok.Decode(tok.Encode("abcab a<|x|>d<y>"), true))
	_, ok := tok.Token(299)
	assert.False(t, ok, "id 299 names no token")

	// The legacy "left right" merge format gives the same tokenizer.
	cfg := tinyConfig()
	cfg["model"].(map[string]any)["merges"] = []any{"a b", "ab c", "Ġ a"}
	legacy, err := FromJSON(mustJSON(t, cfg))
	require.NoError(t, err)
	assert.Equal(t, tok.Encode("abcab a abab"), legacy.Encode("abcab a abab"))

	// ignore_merges: a piece that is a vocabulary token is taken whole.
	cfg = tinyConfig()
	model := cfg["model"].(map[string]any)
	model["ignore_merges"] = true
	model["merges"] = []any{[]any{"a", "b"}, []any{"ab", "c"}, []any{"Ġ", "a"}}
	model["vocab"].(map[string]any)["bc"] = 259
	model["vocab"].(map[string]any)["abcd"] = 260
	ig, err := FromJSON(mustJSON(t, cfg))
	require.NoError(t, err)
	assert.Equal(t, []int{260}, ig.Encode("abcd"))
	assert.Equal(t, []int{257, 'd'}, tok.Encode("abcd"))
}

func TestFromJSONErrors(t *testing.T) {
	model := func(c map[string]any) map[string]any { return c["model"].(map[string]any) }
	cases := []struct {
		name   string
		mutate func(c map[string]any)
		want   string
	}{
		{"no model", func(c map[string]any) { delete(c, "model") }, `missing "model"`},
		{"wordpiece", func(c map[string]any) { model(c)["type"] = "WordPiece" }, `model.type is "WordPiece"`},
		{"empty vocab", func(c map[string]any) { model(c)["vocab"] = map[string]any{} }, "model.vocab is missing or empty"},
		{"no merges", func(c map[string]any) { delete(model(c), "merges") }, "model.merges is missing"},
		{"merges not a list", func(c map[string]any) { model(c)["merges"] = "a b" }, "model.merges is not a list"},
		{"merge unknown left", func(c map[string]any) { model(c)["merges"] = []any{[]any{"zz", "b"}} }, `model.merges[0] ("zz" "b"): "zz" is not in the vocabulary`},
		{"merge unknown right", func(c map[string]any) { model(c)["merges"] = []any{[]any{"a", "b"}, []any{"a", "qq"}} }, `model.merges[1] ("a" "qq"): "qq" is not in the vocabulary`},
		{"merge result unknown", func(c map[string]any) { model(c)["merges"] = []any{[]any{"b", "a"}} }, `the merged token "ba" is not in the vocabulary`},
		{"merge bad string", func(c map[string]any) { model(c)["merges"] = []any{"ab"} }, `model.merges[0] is "ab", want two tokens`},
		{"merge bad pair", func(c map[string]any) { model(c)["merges"] = []any{[]any{"a", "b", "c"}} }, "model.merges[0]"},
		{"missing byte token", func(c map[string]any) { delete(model(c)["vocab"].(map[string]any), "Ġ") }, "lacks the byte-level token \"Ġ\" for byte 0x20"},
		{"non byte-level token", func(c map[string]any) { model(c)["vocab"].(map[string]any)["a b"] = 280 }, `token "a b" (id 280)`},
		{"duplicate id", func(c map[string]any) { model(c)["vocab"].(map[string]any)["abc"] = 256 }, "both have id 256"},
		{"negative id", func(c map[string]any) { model(c)["vocab"].(map[string]any)["abc"] = -3 }, `token "abc" has id -3, outside the supported range`},
		{"huge id", func(c map[string]any) { model(c)["vocab"].(map[string]any)["abc"] = 1 << 31 }, `token "abc" has id 2147483648, outside the supported range`},
		{"huge added id", func(c map[string]any) {
			c["added_tokens"].([]any)[1].(map[string]any)["id"] = 5_000_000
		}, `token "<y>" has id 5000000, outside the supported range`},
		{"byte fallback", func(c map[string]any) { model(c)["byte_fallback"] = true }, "byte_fallback"},
		{"dropout", func(c map[string]any) { model(c)["dropout"] = 0.1 }, "dropout"},
		{"suffix", func(c map[string]any) { model(c)["end_of_word_suffix"] = "</w>" }, "end_of_word_suffix"},
		{"normalizer", func(c map[string]any) { c["normalizer"] = map[string]any{"type": "NFKC"} }, "normalizer"},
		{"no pre_tokenizer", func(c map[string]any) { delete(c, "pre_tokenizer") }, "pre_tokenizer is missing"},
		{"other regex", func(c map[string]any) {
			pt := c["pre_tokenizer"].(map[string]any)["pretokenizers"].([]any)
			pt[0].(map[string]any)["pattern"] = map[string]any{"Regex": `\s+`}
		}, `Split regex is "\\s+"`},
		{"byte level regex", func(c map[string]any) {
			pt := c["pre_tokenizer"].(map[string]any)["pretokenizers"].([]any)
			pt[1].(map[string]any)["use_regex"] = true
		}, "use_regex"},
		{"decoder", func(c map[string]any) { c["decoder"] = map[string]any{"type": "WordPiece"} }, "decoder"},
		{"added lstrip", func(c map[string]any) {
			c["added_tokens"].([]any)[0].(map[string]any)["lstrip"] = true
		}, `added_tokens[0] "<|x|>": lstrip/rstrip`},
		{"added normalized", func(c map[string]any) {
			c["added_tokens"].([]any)[1].(map[string]any)["normalized"] = true
		}, `added_tokens[1] "<y>": normalized=true`},
		{"added empty", func(c map[string]any) {
			c["added_tokens"].([]any)[1].(map[string]any)["content"] = ""
		}, "added_tokens[1] (id 301) has empty content"},
		{"added no id", func(c map[string]any) {
			delete(c["added_tokens"].([]any)[1].(map[string]any), "id")
		}, `token "<y>" has no id`},
		{"added id clash", func(c map[string]any) {
			c["added_tokens"].([]any)[1].(map[string]any)["id"] = 300
		}, "id 300 is already used by added token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tinyConfig()
			tc.mutate(cfg)
			_, err := FromJSON(mustJSON(t, cfg))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := FromJSON([]byte("{not json"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "tokenizer.json")
}

// TestNFC checks the normalizer against golang.org/x/text/unicode/norm where norm is exact (no run of
// more than 30 non-starters), and the unbounded fallback against the corpus.
func TestNFC(t *testing.T) {
	qwen(t)
	for i, c := range corpus(t) {
		if !utf8.ValidString(c.Text) || len(c.Text) > 5000 {
			continue
		}
		want := norm.NFC.String(c.Text)
		if strings.Count(want, cgj) != strings.Count(c.Text, cgj) {
			continue // norm inserted U+034F; covered by the fixtures
		}
		require.Equalf(t, want, nfc(c.Text), "corpus line %d", i+1)
		require.Equalf(t, want, nfcUnbounded(c.Text), "nfcUnbounded, corpus line %d", i+1)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	pool := []rune("aeoAEOnNcCuUαωиз\u1100\u1161\u11a8\uac00\u304b\u30cf\u0b47\u0b3e\u0300\u0301\u0302\u0303\u0308\u0316\u0323\u0327\u0338\u0345\u3099\u309a\u0344\u0340<>= ")
	for i := 0; i < 3000; i++ {
		r := make([]rune, 1+rng.IntN(12))
		for j := range r {
			r[j] = pool[rng.IntN(len(pool))]
		}
		s := string(r)
		require.Equalf(t, norm.NFC.String(s), nfcUnbounded(s), "nfcUnbounded(%+q)", s)
	}
	// More than 30 combining marks: no U+034F, marks in canonical order, the starter composed.
	long := "a" + strings.Repeat("\u0301\u0316", 20)
	got := nfc(long)
	assert.NotContains(t, got, cgj)
	assert.Equal(t, "\u00e1"+strings.Repeat("\u0316", 20)+strings.Repeat("\u0301", 19), got)
}

func TestConcurrentEncode(t *testing.T) {
	tok, err := FromJSON(qwen3.TokenizerJSON())
	require.NoError(t, err)
	lines := corpus(t)
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(lines); i += 4 {
				if got := tok.Encode(lines[i].Text); !assert.ObjectsAreEqual(lines[i].IDs, got) {
					errs <- lines[i].Text
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for text := range errs {
		t.Errorf("concurrent Encode(%s) differs from the fixture", short(text))
	}
}

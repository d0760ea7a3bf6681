package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strings"
	"unicode/utf8"

	"github.com/qvl-dev/qvl/runtime/sample"
)

// Request limits.
const (
	// MaxN is the largest n (choices per prompt).
	MaxN = 8
	// maxChoices caps the engine requests one HTTP request may start (prompts × n).
	maxChoices = 64
	// maxStops caps the stop strings of a request, maxStopBytes the length of one.
	maxStops, maxStopBytes = 16, 256
	// defaultCompletionMaxTokens is /v1/completions' max_tokens when none is given (OpenAI's 16).
	defaultCompletionMaxTokens = 16
)

// stopList is the "stop" field: a string or an array of strings.
type stopList []string

// UnmarshalJSON accepts a string or an array of strings.
func (s *stopList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = stopList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return &fieldError{field: "stop", msg: "must be a string or an array of strings"}
	}
	*s = many
	return nil
}

// fieldError is a decoding error of one field.
type fieldError struct{ field, msg string }

func (e *fieldError) Error() string { return e.field + " " + e.msg }

// streamOptions is "stream_options".
type streamOptions struct {
	IncludeUsage *bool `json:"include_usage"`
}

// responseFormat is "response_format"; only {"type": "text"} is served.
type responseFormat struct {
	Type       string          `json:"type"`
	JSONSchema json.RawMessage `json:"json_schema"`
}

// commonFields are the sampling and control fields that chat and text completions share.
type commonFields struct {
	Model             *string            `json:"model"`
	MaxTokens         *int               `json:"max_tokens"`
	Temperature       *float64           `json:"temperature"`
	TopP              *float64           `json:"top_p"`
	TopK              *int               `json:"top_k"`
	MinP              *float64           `json:"min_p"`
	PresencePenalty   *float64           `json:"presence_penalty"`
	FrequencyPenalty  *float64           `json:"frequency_penalty"`
	RepetitionPenalty *float64           `json:"repetition_penalty"`
	Seed              *int64             `json:"seed"`
	Stop              *stopList          `json:"stop"`
	N                 *int               `json:"n"`
	Stream            *bool              `json:"stream"`
	StreamOptions     *streamOptions     `json:"stream_options"`
	IgnoreEOS         *bool              `json:"ignore_eos"`
	MinTokens         *int               `json:"min_tokens"`
	StopTokenIDs      []int              `json:"stop_token_ids"`
	LogitBias         map[string]float64 `json:"logit_bias"`
	SkipSpecialTokens *bool              `json:"skip_special_tokens"`
	// Accepted and ignored, as they do not change the output.
	User        json.RawMessage `json:"user"`
	Store       json.RawMessage `json:"store"`
	Metadata    json.RawMessage `json:"metadata"`
	ServiceTier json.RawMessage `json:"service_tier"`
}

// chatRequest is the body of POST /v1/chat/completions.
type chatRequest struct {
	commonFields
	Messages            json.RawMessage `json:"messages"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Logprobs            *bool           `json:"logprobs"`
	TopLogprobs         *int            `json:"top_logprobs"`
	ResponseFormat      *responseFormat `json:"response_format"`
	AddGenerationPrompt *bool           `json:"add_generation_prompt"`
	ChatTemplateKwargs  map[string]any  `json:"chat_template_kwargs"`
	ParallelToolCalls   json.RawMessage `json:"parallel_tool_calls"`
	// Refused when set: this server does not parse tool calls.
	Tools        json.RawMessage `json:"tools"`
	ToolChoice   json.RawMessage `json:"tool_choice"`
	Functions    json.RawMessage `json:"functions"`
	FunctionCall json.RawMessage `json:"function_call"`
	Modalities   json.RawMessage `json:"modalities"`
	Audio        json.RawMessage `json:"audio"`
	Prediction   json.RawMessage `json:"prediction"`
}

// completionRequest is the body of POST /v1/completions.
type completionRequest struct {
	commonFields
	Prompt   json.RawMessage `json:"prompt"`
	Logprobs *int            `json:"logprobs"`
	Echo     *bool           `json:"echo"`
	Suffix   *string         `json:"suffix"`
	BestOf   *int            `json:"best_of"`
}

// decodeBody decodes a JSON object into v, refusing unknown fields and trailing data.
func decodeBody(body []byte, v any) *APIError {
	if len(bytes.TrimSpace(body)) == 0 {
		return badRequest("", "the request body is empty; send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("", "the request body has data after its JSON object")
	}
	return nil
}

// jsonError turns a decoding error into a 400 that names the field.
func jsonError(err error) *APIError {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var fe *fieldError
	switch {
	case errors.As(err, &syn):
		return badRequest("", "the request body is not valid JSON: %v (at byte %d)", syn, syn.Offset)
	case errors.As(err, &fe):
		return badRequest(fe.field, "%s %s", fe.field, fe.msg)
	case errors.As(err, &typ):
		field := fieldPath(typ.Field)
		if field == "" {
			return badRequest("", "the request body must be a JSON object, got %s", typ.Value)
		}
		return badRequest(field, "%s must be %s, got %s", field, kindName(typ.Type), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("", "the request body is truncated JSON")
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		f = strings.Trim(f, `"`)
		return badRequest(f, "unrecognized request argument supplied: %s", f)
	}
	return badRequest("", "the request body is not valid JSON: %s", strings.TrimPrefix(msg, "json: "))
}

// fieldPath drops the names of embedded structs from a decoding error's field path.
func fieldPath(f string) string {
	parts := strings.Split(f, ".")
	out := parts[:0]
	for _, p := range parts {
		if p != "commonFields" {
			out = append(out, p)
		}
	}
	return strings.Join(out, ".")
}

// kindName describes a Go type the way a JSON user thinks of it.
func kindName(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice, reflect.Array:
		return "an array of " + strings.TrimPrefix(strings.TrimPrefix(kindName(t.Elem()), "an "), "a ")
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return t.String()
}

// genParams are a request's resolved generation settings.
type genParams struct {
	sampling  sample.Params // Seed is set per choice
	seed      *int64
	maxTokens int // 0: up to the context length
	// maxFromRequest: maxTokens is the client's own (not a default to fit into the context).
	maxFromRequest bool
	minTokens      int
	stop           []string
	stopIDs        []int
	ignoreEOS      bool
	n              int
	stream         bool
	includeUsage   bool
}

// resolve checks the common fields and applies the model's defaults to those the request omits.
// logprobs is the number of alternatives asked for (-1: none); maxTokens the field that caps
// generation (max_completion_tokens or max_tokens) and defMax its default.
func (f *commonFields) resolve(d SamplingDefaults, vocab int, logprobs int, maxTokens *int, maxParam string, defMax int) (genParams, *APIError) {
	p := genParams{n: 1, sampling: sample.Params{Logprobs: logprobs, TopP: 1}}
	// Defaults first, then the request's own values.
	if d.Temperature != nil {
		p.sampling.Temperature = float32(*d.Temperature)
	} else {
		p.sampling.Temperature = 1
	}
	if d.TopP != nil {
		p.sampling.TopP = float32(*d.TopP)
	}
	if d.TopK != nil {
		p.sampling.TopK = *d.TopK
	}
	if d.MinP != nil {
		p.sampling.MinP = float32(*d.MinP)
	}
	if d.RepetitionPenalty != nil {
		p.sampling.RepetitionPenalty = float32(*d.RepetitionPenalty)
	}
	num := func(name string, v *float64, lo, hi float64, dst *float32) *APIError {
		if v == nil {
			return nil
		}
		if math.IsNaN(*v) || *v < lo || *v > hi {
			return badRequest(name, "%s must be in [%g, %g], got %g", name, lo, hi, *v)
		}
		*dst = float32(*v)
		return nil
	}
	for _, e := range []*APIError{
		num("temperature", f.Temperature, 0, 100, &p.sampling.Temperature),
		num("top_p", f.TopP, 0, 1, &p.sampling.TopP),
		num("min_p", f.MinP, 0, 1, &p.sampling.MinP),
		num("presence_penalty", f.PresencePenalty, -2, 2, &p.sampling.PresencePenalty),
		num("frequency_penalty", f.FrequencyPenalty, -2, 2, &p.sampling.FrequencyPenalty),
		num("repetition_penalty", f.RepetitionPenalty, 0, 100, &p.sampling.RepetitionPenalty),
	} {
		if e != nil {
			return p, e
		}
	}
	if f.TopP != nil && *f.TopP == 0 {
		return p, badRequest("top_p", "top_p must be in (0, 1], got 0")
	}
	if f.RepetitionPenalty != nil && *f.RepetitionPenalty == 0 {
		return p, badRequest("repetition_penalty", "repetition_penalty must be > 0, got 0")
	}
	if f.TopK != nil {
		if *f.TopK < -1 {
			return p, badRequest("top_k", "top_k must be -1 (off), 0 (off) or positive, got %d", *f.TopK)
		}
		p.sampling.TopK = *f.TopK
	}
	if f.N != nil {
		if *f.N < 1 || *f.N > MaxN {
			return p, badRequest("n", "n must be in [1, %d], got %d", MaxN, *f.N)
		}
		p.n = *f.N
	}
	p.seed = f.Seed
	switch {
	case maxTokens != nil:
		if *maxTokens < 1 {
			return p, badRequest(maxParam, "%s must be at least 1, got %d", maxParam, *maxTokens)
		}
		p.maxTokens, p.maxFromRequest = *maxTokens, true
	case d.MaxTokens != nil:
		p.maxTokens = *d.MaxTokens
	default:
		p.maxTokens = defMax
	}
	if f.MinTokens != nil {
		if *f.MinTokens < 0 {
			return p, badRequest("min_tokens", "min_tokens must be ≥ 0, got %d", *f.MinTokens)
		}
		if p.maxTokens > 0 && *f.MinTokens > p.maxTokens {
			return p, badRequest("min_tokens", "min_tokens (%d) must not exceed max_tokens (%d)", *f.MinTokens, p.maxTokens)
		}
		p.minTokens = *f.MinTokens
	}
	if f.Stop != nil {
		if len(*f.Stop) > maxStops {
			return p, badRequest("stop", "at most %d stop strings, got %d", maxStops, len(*f.Stop))
		}
		for i, s := range *f.Stop {
			if s == "" || len(s) > maxStopBytes || !utf8.ValidString(s) {
				return p, badRequest(fmt.Sprintf("stop[%d]", i), "stop strings must be non-empty UTF-8 of at most %d bytes", maxStopBytes)
			}
		}
		p.stop = *f.Stop
	}
	for i, id := range f.StopTokenIDs {
		if id < 0 || id >= vocab {
			return p, badRequest(fmt.Sprintf("stop_token_ids[%d]", i), "stop_token_ids[%d] = %d is outside the vocabulary [0, %d)", i, id, vocab)
		}
	}
	if len(f.StopTokenIDs) > 1024 {
		return p, badRequest("stop_token_ids", "at most 1024 stop token ids")
	}
	p.stopIDs = f.StopTokenIDs
	if f.IgnoreEOS != nil {
		p.ignoreEOS = *f.IgnoreEOS
	}
	if len(f.LogitBias) > 0 {
		return p, badRequest("logit_bias", "logit_bias is not supported by this server")
	}
	if f.SkipSpecialTokens != nil && !*f.SkipSpecialTokens {
		return p, badRequest("skip_special_tokens", "this server always skips special tokens in output text")
	}
	if f.Stream != nil {
		p.stream = *f.Stream
	}
	if f.StreamOptions != nil {
		if !p.stream {
			return p, badRequest("stream_options", "stream_options is only allowed when stream is true")
		}
		p.includeUsage = f.StreamOptions.IncludeUsage != nil && *f.StreamOptions.IncludeUsage
	}
	if err := p.sampling.Validate(); err != nil {
		return p, badRequest("", "%v", err)
	}
	return p, nil
}

// notNull reports whether a raw field was given a value other than null.
func notNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && !bytes.Equal(t, []byte("null"))
}

// refuseUnsupported rejects chat fields this server does not serve.
func (r *chatRequest) refuseUnsupported() *APIError {
	for _, f := range []struct {
		name string
		raw  json.RawMessage
	}{{"tools", r.Tools}, {"tool_choice", r.ToolChoice}, {"functions", r.Functions}, {"function_call", r.FunctionCall},
		{"audio", r.Audio}, {"prediction", r.Prediction}} {
		if notNull(f.raw) {
			return badRequest(f.name, "%s is not supported by this server", f.name)
		}
	}
	if notNull(r.Modalities) {
		var m []string
		if err := json.Unmarshal(r.Modalities, &m); err != nil || len(m) != 1 || m[0] != "text" {
			return badRequest("modalities", `modalities must be ["text"]`)
		}
	}
	if r.ResponseFormat != nil && r.ResponseFormat.Type != "text" {
		return badRequest("response_format.type", "response_format %q is not supported by this server (only \"text\")", r.ResponseFormat.Type)
	}
	return nil
}

// chatLogprobs resolves logprobs / top_logprobs of a chat request to a count (-1: none).
func (r *chatRequest) chatLogprobs() (int, *APIError) {
	on := r.Logprobs != nil && *r.Logprobs
	if r.TopLogprobs != nil {
		if *r.TopLogprobs < 0 || *r.TopLogprobs > sample.MaxLogprobs {
			return 0, badRequest("top_logprobs", "top_logprobs must be in [0, %d], got %d", sample.MaxLogprobs, *r.TopLogprobs)
		}
		if !on {
			return 0, badRequest("top_logprobs", "top_logprobs needs logprobs set to true")
		}
		return *r.TopLogprobs, nil
	}
	if on {
		return 0, nil
	}
	return -1, nil
}

// maxTokensField returns the field that caps a chat completion: max_completion_tokens, else
// max_tokens (both given must agree).
func (r *chatRequest) maxTokensField() (*int, string, *APIError) {
	switch {
	case r.MaxCompletionTokens != nil && r.MaxTokens != nil && *r.MaxCompletionTokens != *r.MaxTokens:
		return nil, "", badRequest("max_completion_tokens", "max_tokens (%d) and max_completion_tokens (%d) disagree; give one", *r.MaxTokens, *r.MaxCompletionTokens)
	case r.MaxCompletionTokens != nil:
		return r.MaxCompletionTokens, "max_completion_tokens", nil
	}
	return r.MaxTokens, "max_tokens", nil
}

// completionPrompts decodes the "prompt" of a completion request: a string, an array of
// strings, an array of token ids, or an array of arrays of token ids. Each prompt is returned
// as text (ids nil) or as token ids.
type promptInput struct {
	text string
	ids  []int
}

func parsePrompts(raw json.RawMessage, vocab int) ([]promptInput, *APIError) {
	t := bytes.TrimSpace(raw)
	if !notNull(t) {
		return nil, badRequest("prompt", "prompt is required")
	}
	switch t[0] {
	case '"':
		var s string
		if err := json.Unmarshal(t, &s); err != nil {
			return nil, badRequest("prompt", "prompt: %v", err)
		}
		return []promptInput{{text: s}}, nil
	case '[':
	default:
		return nil, badRequest("prompt", "prompt must be a string, an array of strings, an array of token ids or an array of arrays of token ids")
	}
	var items []json.RawMessage
	if err := json.Unmarshal(t, &items); err != nil {
		return nil, badRequest("prompt", "prompt: %v", err)
	}
	if len(items) == 0 {
		return nil, badRequest("prompt", "prompt must not be empty")
	}
	first := bytes.TrimSpace(items[0])
	if len(first) > 0 && (first[0] == '-' || (first[0] >= '0' && first[0] <= '9')) {
		ids, err := tokenIDs(t, vocab, "prompt")
		if err != nil {
			return nil, err
		}
		return []promptInput{{ids: ids}}, nil
	}
	out := make([]promptInput, len(items))
	for i, it := range items {
		it = bytes.TrimSpace(it)
		param := fmt.Sprintf("prompt[%d]", i)
		if len(it) == 0 {
			return nil, badRequest(param, "%s is empty", param)
		}
		switch it[0] {
		case '"':
			if err := json.Unmarshal(it, &out[i].text); err != nil {
				return nil, badRequest(param, "%s: %v", param, err)
			}
		case '[':
			ids, err := tokenIDs(it, vocab, param)
			if err != nil {
				return nil, err
			}
			out[i].ids = ids
		default:
			return nil, badRequest(param, "%s must be a string or an array of token ids", param)
		}
	}
	return out, nil
}

func tokenIDs(raw json.RawMessage, vocab int, param string) ([]int, *APIError) {
	var ids []int64
	if err := json.Unmarshal(raw, &ids); err != nil {
		return nil, badRequest(param, "%s must be an array of integer token ids", param)
	}
	if len(ids) == 0 {
		return nil, badRequest(param, "%s must not be empty", param)
	}
	out := make([]int, len(ids))
	for i, id := range ids {
		if id < 0 || id >= int64(vocab) {
			return nil, badRequest(param, "%s[%d] = %d is outside the vocabulary [0, %d)", param, i, id, vocab)
		}
		out[i] = int(id)
	}
	return out, nil
}

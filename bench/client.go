package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Endpoint selects the OpenAI API that the client drives.
type Endpoint string

// The endpoints the client speaks.
const (
	// EndpointChat is /v1/chat/completions (vLLM's backend "openai-chat").
	EndpointChat Endpoint = "chat"
	// EndpointCompletions is /v1/completions (vLLM's backend "openai").
	EndpointCompletions Endpoint = "completions"
)

// Path is the endpoint's URL path.
func (e Endpoint) Path() string {
	if e == EndpointCompletions {
		return "/v1/completions"
	}
	return "/v1/chat/completions"
}

// Backend is the name vLLM gives this endpoint in its result files ("openai-chat" or "openai").
func (e Endpoint) Backend() string {
	if e == EndpointCompletions {
		return "openai"
	}
	return "openai-chat"
}

// ParseEndpoint accepts "chat" or "completions".
func ParseEndpoint(s string) (Endpoint, error) {
	switch Endpoint(s) {
	case EndpointChat, EndpointCompletions:
		return Endpoint(s), nil
	}
	return "", fmt.Errorf("unknown endpoint %q (want chat or completions)", s)
}

// Request is one benchmark request: a prompt, its expected lengths and, for the chat endpoint,
// extra content parts (images) sent after the text.
type Request struct {
	// Prompt is the user text.
	Prompt string
	// PromptLen is the prompt's token count as the dataset knows it (the server's count, from
	// usage, replaces it in the results).
	PromptLen int
	// OutputLen is max_tokens.
	OutputLen int
	// Parts are raw JSON content parts appended after the text part (chat only), e.g.
	// {"type":"image_ref","image_ref":{"id":"demo-7"}}.
	Parts []json.RawMessage
}

// Client sends streaming requests to an OpenAI-compatible server and times their chunks.
type Client struct {
	// BaseURL is the server's root, e.g. http://127.0.0.1:8000 (no /v1).
	BaseURL string
	// Endpoint selects chat or text completions.
	Endpoint Endpoint
	// Model is the "model" field of each request.
	Model string
	// HTTP is the client used (nil: a client without timeout that keeps connections alive).
	HTTP *http.Client
	// IgnoreEOS sends "ignore_eos": true (a vLLM and qvl extension) so outputs run to max_tokens.
	IgnoreEOS bool
	// Temperature is sent when not nil.
	Temperature *float64
	// ExtraBody fields are merged into every request body.
	ExtraBody map[string]any
	// Headers are added to every request (e.g. Authorization).
	Headers map[string]string
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// NewHTTPClient returns an HTTP client for benchmarking: no overall timeout (requests are bounded
// by their context), keep-alive, and up to maxConns idle connections to the server, so that
// connection setup stays out of the measured latencies.
func NewHTTPClient(maxConns int) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = max(maxConns, 100)
	t.MaxIdleConnsPerHost = max(maxConns, 100)
	t.DisableCompression = true
	return &http.Client{Transport: t}
}

// body builds the JSON request body.
func (c *Client) body(r Request) ([]byte, error) {
	b := map[string]any{
		"model":          c.Model,
		"max_tokens":     r.OutputLen,
		"stream":         true,
		"stream_options": map[string]any{"include_usage": true},
	}
	if c.Temperature != nil {
		b["temperature"] = *c.Temperature
	}
	if c.IgnoreEOS {
		b["ignore_eos"] = true
	}
	switch c.Endpoint {
	case EndpointCompletions:
		if len(r.Parts) > 0 {
			return nil, errors.New("the completions endpoint takes text only; images need --endpoint chat")
		}
		b["prompt"] = r.Prompt
	default:
		var content any = r.Prompt
		if len(r.Parts) > 0 {
			text, err := json.Marshal(map[string]string{"type": "text", "text": r.Prompt})
			if err != nil {
				return nil, err
			}
			content = append([]json.RawMessage{text}, r.Parts...)
		}
		b["messages"] = []any{map[string]any{"role": "user", "content": content}}
	}
	for k, v := range c.ExtraBody {
		b[k] = v
	}
	return json.Marshal(b)
}

// streamChunk is the part of an SSE chunk the client reads, for both endpoints.
type streamChunk struct {
	Choices []struct {
		Text  *string `json:"text"`
		Delta *struct {
			Content          *string `json:"content"`
			ReasoningContent *string `json:"reasoning_content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
	Error *struct {
		Message string `json:"message"`
		Type    string `json:"type"`
	} `json:"error"`
}

// maxLine bounds one SSE line (a chunk with logprobs can be long; a runaway server must not
// exhaust memory).
const maxLine = 16 << 20

// Send runs one streaming request and times it. It never returns an error: failures are
// recorded in the Output (Success false, Error saying what happened), as a benchmark must
// count them rather than stop. A stream counts as failed when the HTTP status is not 200, the
// server sends an error object, the connection breaks, or the stream ends without
// "data: [DONE]" (a server that closed it mid-stream).
func (c *Client) Send(ctx context.Context, r Request) Output {
	out := Output{PromptLen: r.PromptLen}
	payload, err := c.body(r)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.BaseURL, "/")+c.Endpoint.Path(), bytes.NewReader(payload))
	if err != nil {
		out.Error = err.Error()
		return out
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range c.Headers {
		req.Header.Set(k, v)
	}
	st := time.Now()
	out.sent = st
	resp, err := c.http().Do(req)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		out.Error = fmt.Sprintf("HTTP %s: %s", resp.Status, strings.TrimSpace(string(msg)))
		return out
	}
	var text strings.Builder
	last, lastTok := st, st
	gotFirst, done := false, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		// Blank lines end events; lines starting with ':' are comments (keep-alive pings);
		// "event:", "id:" and "retry:" fields carry nothing the benchmark needs.
		if len(line) == 0 || line[0] == ':' || !bytes.HasPrefix(line, []byte("data:")) {
			continue
		}
		data := bytes.TrimSpace(line[len("data:"):])
		if string(data) == "[DONE]" {
			done = true
			break
		}
		now := time.Now()
		var ch streamChunk
		if err := json.Unmarshal(data, &ch); err != nil {
			out.Error = fmt.Sprintf("chunk %d is not JSON: %v: %.200s", out.Chunks+1, err, data)
			return out
		}
		if ch.Error != nil {
			out.Error = fmt.Sprintf("the server sent an error in the stream: %s (%s)", ch.Error.Message, ch.Error.Type)
			return out
		}
		if ch.Usage != nil {
			out.OutputTokens = ch.Usage.CompletionTokens
			if ch.Usage.PromptTokens > 0 {
				out.PromptLen = ch.Usage.PromptTokens
			}
		}
		if len(ch.Choices) > 0 {
			c0 := ch.Choices[0]
			var piece string
			switch {
			case c0.Text != nil:
				piece = *c0.Text
			case c0.Delta != nil && c0.Delta.Content != nil:
				piece = *c0.Delta.Content
			case c0.Delta != nil && c0.Delta.ReasoningContent != nil:
				piece = *c0.Delta.ReasoningContent
			}
			// A chunk counts as output when it carries text or ends the choice (the last token,
			// e.g. an end-of-sequence token, may have no text). A role-only first chunk does not:
			// servers that send it before any token would otherwise report a meaningless TTFT.
			if piece != "" || (c0.FinishReason != nil && *c0.FinishReason != "") {
				if !gotFirst {
					gotFirst = true
					out.TTFT = now.Sub(st).Seconds()
				} else {
					out.ITL = append(out.ITL, now.Sub(lastTok).Seconds())
				}
				lastTok = now
				out.Chunks++
				text.WriteString(piece)
			}
		}
		last = now
	}
	out.GeneratedText = text.String()
	if err := sc.Err(); err != nil {
		out.Error = fmt.Sprintf("the stream broke after %d chunks: %v", out.Chunks, err)
		return out
	}
	if !done {
		out.Error = fmt.Sprintf("the stream ended after %d chunks without data: [DONE] (the server closed it mid-stream)", out.Chunks)
		return out
	}
	if !gotFirst {
		out.Error = "the stream finished without any generated text or finish reason"
		return out
	}
	out.Latency = last.Sub(st).Seconds()
	out.Success = true
	return out
}

// FirstModel asks the server's /v1/models for its first model id (what vLLM does when --model
// is not given).
func FirstModel(ctx context.Context, hc *http.Client, baseURL string) (string, error) {
	u := strings.TrimRight(baseURL, "/") + "/v1/models"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("list models at %s: %w (is the server running?)", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("list models at %s: HTTP %s", u, resp.Status)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&list); err != nil {
		return "", fmt.Errorf("list models at %s: %w", u, err)
	}
	if len(list.Data) == 0 || list.Data[0].ID == "" {
		return "", fmt.Errorf("list models at %s: the server lists no model", u)
	}
	return list.Data[0].ID, nil
}

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeServer is an in-process OpenAI-compatible streaming server. Each request gets the
// events of script, in order; an event is a raw SSE line to send, a pause, or a hang-up.
type fakeServer struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []map[string]any
	paths  []string
}

type sseEvent struct {
	line   string        // written as is, followed by "\n\n"
	pause  time.Duration // sleep before the line
	hangup bool          // close the connection without finishing the response
}

func newFakeServer(t *testing.T, script func(body map[string]any) (status int, events []sseEvent)) *fakeServer {
	f := &fakeServer{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			fmt.Fprint(w, `{"object":"list","data":[{"id":"demo","object":"model"},{"id":"other"}]}`)
			return
		}
		var body map[string]any
		data, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(data, &body); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.bodies = append(f.bodies, body)
		f.paths = append(f.paths, r.URL.Path)
		f.mu.Unlock()
		status, events := script(body)
		if status != http.StatusOK {
			w.WriteHeader(status)
			fmt.Fprint(w, `{"error":{"message":"the queue is full","type":"rate_limit"}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		fl := w.(http.Flusher)
		fl.Flush()
		for _, ev := range events {
			time.Sleep(ev.pause)
			if ev.hangup {
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					conn.Close()
				}
				return
			}
			fmt.Fprintf(w, "%s\n\n", ev.line)
			fl.Flush()
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func chatChunk(content string) sseEvent {
	return sseEvent{line: fmt.Sprintf(`data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":%q},"finish_reason":null}]}`, content)}
}

func usageChunk(prompt, completion int) sseEvent {
	return sseEvent{line: fmt.Sprintf(`data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`, prompt, completion, prompt+completion)}
}

func pause(d time.Duration, ev sseEvent) sseEvent { ev.pause = d; return ev }

var done = sseEvent{line: "data: [DONE]"}

func TestClientStreamsAndTimesChunks(t *testing.T) {
	const gap = 30 * time.Millisecond
	srv := newFakeServer(t, func(map[string]any) (int, []sseEvent) {
		return 200, []sseEvent{
			{line: `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}`}, // role only: not a token
			{line: ": keep-alive comment"},
			{line: "event: message"},
			pause(gap, chatChunk("Hello")),
			pause(gap, chatChunk(" wor")),
			pause(gap, chatChunk("ld")),
			pause(gap, sseEvent{line: `data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`}), // the EOS token: no text
			usageChunk(42, 5),
			done,
		}
	})
	temp := 0.0
	c := &Client{BaseURL: srv.URL, Endpoint: EndpointChat, Model: "demo", IgnoreEOS: true, Temperature: &temp, HTTP: NewHTTPClient(4)}
	o := c.Send(context.Background(), Request{Prompt: "hi there", PromptLen: 2, OutputLen: 16,
		Parts: []json.RawMessage{ImageRefPart("demo-7")}})
	require.True(t, o.Success, o.Error)
	assert.Equal(t, "Hello world", o.GeneratedText)
	assert.Equal(t, 4, o.Chunks, "three text chunks and the finishing chunk")
	assert.Equal(t, 5, o.OutputTokens, "from the usage chunk")
	assert.Equal(t, 42, o.PromptLen, "the server's prompt count replaces the dataset's")
	// The server writes the chunks a gap apart, so these lower bounds hold however late the client
	// reads (single gaps could shrink when one chunk is read late and the next on time).
	assert.GreaterOrEqual(t, o.TTFT, gap.Seconds(), "TTFT runs to the first text, not to the role chunk")
	require.Len(t, o.ITL, 3)
	var sum float64
	for i, g := range o.ITL {
		assert.Positive(t, g, "gap %d", i)
		sum += g
	}
	assert.GreaterOrEqual(t, o.TTFT+sum, 4*gap.Seconds(), "the last token chunk came four gaps after the request")
	assert.GreaterOrEqual(t, o.Latency, o.TTFT+sum-1e-9, "latency runs to the last chunk (usage)")

	require.Len(t, srv.bodies, 1)
	b := srv.bodies[0]
	assert.Equal(t, "/v1/chat/completions", srv.paths[0])
	assert.Equal(t, "demo", b["model"])
	assert.Equal(t, 16.0, b["max_tokens"])
	assert.Equal(t, true, b["stream"])
	assert.Equal(t, map[string]any{"include_usage": true}, b["stream_options"])
	assert.Equal(t, true, b["ignore_eos"])
	assert.Equal(t, 0.0, b["temperature"])
	msgs := b["messages"].([]any)
	content := msgs[0].(map[string]any)["content"].([]any)
	assert.Equal(t, map[string]any{"type": "text", "text": "hi there"}, content[0])
	assert.Equal(t, map[string]any{"type": "image_ref", "image_ref": map[string]any{"id": "demo-7"}}, content[1])
}

func TestClientCompletionsEndpoint(t *testing.T) {
	srv := newFakeServer(t, func(map[string]any) (int, []sseEvent) {
		return 200, []sseEvent{
			{line: `data: {"choices":[{"index":0,"text":"a","finish_reason":null}]}`},
			{line: `data: {"choices":[{"index":0,"text":"b","finish_reason":"length"}]}`},
			{line: `data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}`},
			done,
		}
	})
	c := &Client{BaseURL: srv.URL + "/", Endpoint: EndpointCompletions, Model: "demo"}
	o := c.Send(context.Background(), Request{Prompt: "x y z", PromptLen: 3, OutputLen: 2})
	require.True(t, o.Success, o.Error)
	assert.Equal(t, "ab", o.GeneratedText)
	assert.Equal(t, 2, o.OutputTokens)
	assert.Len(t, o.ITL, 1)
	assert.Equal(t, "/v1/completions", srv.paths[0])
	assert.Equal(t, "x y z", srv.bodies[0]["prompt"])
	_, hasIgnore := srv.bodies[0]["ignore_eos"]
	assert.False(t, hasIgnore, "ignore_eos is only sent when asked for")

	bad := c.Send(context.Background(), Request{Prompt: "x", OutputLen: 1, Parts: []json.RawMessage{ImageRefPart("a")}})
	assert.False(t, bad.Success)
	assert.Contains(t, bad.Error, "images need --endpoint chat")
}

func TestClientFailures(t *testing.T) {
	cases := []struct {
		name   string
		status int
		events []sseEvent
		want   string
	}{
		{"http error", http.StatusTooManyRequests, nil, "HTTP 429 Too Many Requests: {\"error\":{\"message\":\"the queue is full\""},
		{"closed mid-stream", 200, []sseEvent{chatChunk("a"), chatChunk("b"), {hangup: true}}, "the stream broke after 2 chunks: unexpected EOF"},
		{"ended without done", 200, []sseEvent{chatChunk("a")}, "without data: [DONE]"},
		{"error in stream", 200, []sseEvent{chatChunk("a"), {line: `data: {"error":{"message":"model step failed","type":"server_error"}}`}}, "model step failed (server_error)"},
		{"not json", 200, []sseEvent{{line: "data: {oops"}}, "chunk 1 is not JSON"},
		{"no tokens", 200, []sseEvent{{line: `data: {"choices":[{"delta":{"role":"assistant"}}]}`}, done}, "without any generated text"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFakeServer(t, func(map[string]any) (int, []sseEvent) { return tc.status, tc.events })
			c := &Client{BaseURL: srv.URL, Endpoint: EndpointChat, Model: "demo"}
			o := c.Send(context.Background(), Request{Prompt: "p", PromptLen: 1, OutputLen: 4})
			assert.False(t, o.Success)
			assert.Contains(t, o.Error, tc.want)
			assert.Equal(t, 1, o.PromptLen)
		})
	}

	c := &Client{BaseURL: "http://127.0.0.1:1", Endpoint: EndpointChat, Model: "demo"}
	o := c.Send(context.Background(), Request{Prompt: "p", OutputLen: 1})
	assert.False(t, o.Success)
	assert.Contains(t, o.Error, "connection refused")
}

func TestClientWithoutUsageCountsChunks(t *testing.T) {
	srv := newFakeServer(t, func(map[string]any) (int, []sseEvent) {
		return 200, []sseEvent{chatChunk("a"), chatChunk("b"), chatChunk("c"), done}
	})
	c := &Client{BaseURL: srv.URL, Endpoint: EndpointChat, Model: "demo"}
	o := c.Send(context.Background(), Request{Prompt: "p", PromptLen: 1, OutputLen: 3})
	require.True(t, o.Success, o.Error)
	assert.Equal(t, 0, o.OutputTokens)
	m := Calculate([]Output{o}, 1, nil, nil)
	assert.Equal(t, 3, m.TotalOutput)
}

func TestClientCancelledContext(t *testing.T) {
	srv := newFakeServer(t, func(map[string]any) (int, []sseEvent) {
		return 200, []sseEvent{chatChunk("a"), pause(400*time.Millisecond, chatChunk("b")), done}
	})
	c := &Client{BaseURL: srv.URL, Endpoint: EndpointChat, Model: "demo"}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	o := c.Send(ctx, Request{Prompt: "p", OutputLen: 3})
	assert.False(t, o.Success)
	assert.Less(t, time.Since(start), time.Second)
	assert.True(t, strings.Contains(o.Error, "context deadline exceeded"), o.Error)
}

func TestFirstModel(t *testing.T) {
	srv := newFakeServer(t, nil)
	id, err := FirstModel(context.Background(), http.DefaultClient, srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "demo", id)
	_, err = FirstModel(context.Background(), http.DefaultClient, "http://127.0.0.1:1")
	assert.ErrorContains(t, err, "is the server running?")
}

func TestParseEndpoint(t *testing.T) {
	e, err := ParseEndpoint("completions")
	require.NoError(t, err)
	assert.Equal(t, "openai", e.Backend())
	e, err = ParseEndpoint("chat")
	require.NoError(t, err)
	assert.Equal(t, "openai-chat", e.Backend())
	_, err = ParseEndpoint("embeddings")
	assert.ErrorContains(t, err, "want chat or completions")
}

package server

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/synth"
)

// hostile is one malformed or hostile request and the answer it must get.
type hostile struct {
	name   string
	method string
	path   string
	body   any // string: sent as is; anything else: marshalled
	status int
	param  string // the error's param, when the case names one
}

func hostileCases() []hostile {
	s := synth.Shapes["tiny"]
	h, levels, k := s.Hidden, s.DeepStack, s.ProjTokens
	cols := h * (1 + levels)
	chat := func(name string, status int, param string, body any) hostile {
		return hostile{name: name, method: http.MethodPost, path: "/v1/chat/completions", body: body, status: status, param: param}
	}
	msg := func(extra ...any) map[string]any { return greedy(userMsg(textPart("hi")), 4, extra...) }
	img := func(obj map[string]any) map[string]any {
		return greedy(userMsg(map[string]any{"type": "image_embeds", "image_embeds": obj}), 4)
	}
	rows := func(n int) []float32 { return make([]float32, n) }
	okEmbeds := func() map[string]any {
		return map[string]any{"data": b64(rows(2*cols), false), "dtype": "float32", "shape": []int{2, cols}, "image_grid_thw": []int{1, 2, 4}}
	}
	with := func(kv ...any) map[string]any {
		o := okEmbeds()
		for i := 0; i+1 < len(kv); i += 2 {
			o[kv[i].(string)] = kv[i+1]
		}
		return o
	}
	nanRows := rows(2 * cols)
	nanRows[17] = float32(math.NaN())
	infRows := rows(2 * cols)
	infRows[cols+3] = float32(math.Inf(1))
	emb := func(obj any) map[string]any {
		return greedy(userMsg(map[string]any{"type": "embedding", "embedding": obj}), 4)
	}
	ref := func(obj any) map[string]any {
		return greedy(userMsg(map[string]any{"type": "image_ref", "image_ref": obj}), 4)
	}
	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	long := strings.Repeat("hello ", 5000)
	cmp := func(name string, status int, param string, body any) hostile {
		return hostile{name: name, method: http.MethodPost, path: "/v1/completions", body: body, status: status, param: param}
	}
	return []hostile{
		chat("broken JSON", 400, "", `{"messages": [`),
		chat("not JSON", 400, "", `hello`),
		chat("empty body", 400, "", ``),
		chat("top-level array", 400, "", `[]`),
		chat("top-level string", 400, "", `"hi"`),
		chat("trailing data", 400, "", `{"messages":[{"role":"user","content":"hi"}]} {}`),
		chat("unknown field", 400, "foo", `{"messages":[{"role":"user","content":"hi"}],"foo":1}`),
		chat("no messages", 400, "messages", `{}`),
		chat("messages a string", 400, "messages", `{"messages":"hi"}`),
		chat("messages empty", 400, "messages", `{"messages":[]}`),
		chat("message without role", 400, "messages", `{"messages":[{"content":"hi"}]}`),
		chat("content a number", 400, "messages", `{"messages":[{"role":"user","content":5}]}`),
		chat("unknown part type", 400, "messages", greedy(userMsg(map[string]any{"type": "video", "video": "x"}), 4)),
		chat("pixel image", 400, "messages[0].content[0].type", greedy(userMsg(map[string]any{"type": "image_url", "image_url": map[string]any{"url": "http://x/y.png"}}), 4)),
		chat("deeply nested JSON", 400, "", `{"messages":`+deep+`}`),
		chat("max_tokens a string", 400, "max_tokens", msg("max_tokens", "ten")),
		chat("max_tokens huge", 400, "max_tokens", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":1e30}`),
		chat("max_tokens zero", 400, "max_tokens", msg("max_tokens", 0)),
		chat("max_tokens negative", 400, "max_tokens", msg("max_tokens", -5)),
		chat("max_tokens over the context", 400, "", msg("max_tokens", 1000000)),
		chat("max_tokens fraction", 400, "max_tokens", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2.5}`),
		chat("temperature negative", 400, "temperature", msg("temperature", -1)),
		chat("temperature a string", 400, "temperature", msg("temperature", "hot")),
		chat("temperature overflow", 400, "temperature", `{"messages":[{"role":"user","content":"hi"}],"temperature":1e400}`),
		chat("top_p above one", 400, "top_p", msg("top_p", 1.5)),
		chat("top_k below -1", 400, "top_k", msg("top_k", -5)),
		chat("n zero", 400, "n", msg("n", 0)),
		chat("n nine", 400, "n", msg("n", 9)),
		chat("n enormous", 400, "n", `{"messages":[{"role":"user","content":"hi"}],"n":99999999999999999999}`),
		chat("presence_penalty 3", 400, "presence_penalty", msg("presence_penalty", 3)),
		chat("stop of numbers", 400, "stop", msg("stop", []int{1, 2})),
		chat("too many stops", 400, "stop", msg("stop", strings.Split(strings.Repeat("x,", 20), ","))),
		chat("logprobs a string", 400, "logprobs", msg("logprobs", "yes")),
		chat("top_logprobs 50", 400, "top_logprobs", msg("logprobs", true, "top_logprobs", 50)),
		chat("top_logprobs alone", 400, "top_logprobs", msg("top_logprobs", 2)),
		chat("seed a string", 400, "seed", msg("seed", "abc")),
		chat("tools", 400, "tools", msg("tools", []any{map[string]any{"type": "function", "function": map[string]any{"name": "f"}}})),
		chat("json mode", 400, "response_format.type", msg("response_format", map[string]any{"type": "json_object"})),
		chat("logit_bias", 400, "logit_bias", msg("logit_bias", map[string]any{"1": 5})),
		chat("stream_options without stream", 400, "stream_options", msg("stream_options", map[string]any{"include_usage": true})),
		chat("stop token outside vocab", 400, "stop_token_ids[0]", msg("stop_token_ids", []int{1 << 30})),
		chat("min_tokens over max_tokens", 400, "min_tokens", msg("min_tokens", 10)),
		chat("template kwargs replace messages", 400, "messages", msg("chat_template_kwargs", map[string]any{"messages": 1})),
		chat("max_tokens and max_completion_tokens disagree", 400, "max_completion_tokens", msg("max_completion_tokens", 7)),
		chat("wrong model", 404, "model", msg("model", "gpt-4o")),
		chat("embeds: wrong columns", 422, "messages[0].content[0].image_embeds.shape", img(with("shape", []int{2, cols - 1}, "data", b64(rows(2*(cols-1)), false)))),
		chat("embeds: rows disagree with the grid", 400, "messages[0].content[0].image_embeds.shape", img(with("shape", []int{3, cols}))),
		chat("embeds: NaN", 422, "messages[0].content[0].image_embeds.data", img(with("data", b64(nanRows, false)))),
		chat("embeds: Inf in bfloat16", 422, "messages[0].content[0].image_embeds.data", img(with("data", b64(infRows, true), "dtype", "bfloat16"))),
		chat("embeds: float16", 400, "messages[0].content[0].image_embeds.dtype", img(with("dtype", "float16"))),
		chat("embeds: no dtype", 400, "messages[0].content[0].image_embeds.dtype", img(with("dtype", nil))),
		chat("embeds: short data", 400, "messages[0].content[0].image_embeds.data", img(with("data", b64(rows(2*cols-1), false)))),
		chat("embeds: not base64", 400, "messages[0].content[0].image_embeds.data", img(with("data", strings.Repeat("!", len(b64(rows(2*cols), false)))))),
		chat("embeds: odd grid", 400, "messages[0].content[0].image_embeds.image_grid_thw", img(with("image_grid_thw", []int{1, 3, 4}))),
		chat("embeds: grid of two", 400, "messages[0].content[0].image_embeds.image_grid_thw", img(with("image_grid_thw", []int{2, 4}))),
		chat("embeds: negative grid", 400, "messages[0].content[0].image_embeds.image_grid_thw", img(with("image_grid_thw", []int{1, -2, 4}))),
		chat("embeds: absurd declared size", 400, "messages[0].content[0].image_embeds.shape", img(with("image_grid_thw", []int{1, 1 << 20, 1 << 20}, "shape", []int64{1 << 38, int64(cols)}))),
		chat("embeds: shape of three", 400, "messages[0].content[0].image_embeds.shape", img(with("shape", []int{1, 2, cols}))),
		chat("embeds: unknown key", 400, "messages[0].content[0].image_embeds.pixels", img(with("pixels", 1))),
		chat("embeds: not an object", 400, "messages[0].content[0].image_embeds", greedy(userMsg(map[string]any{"type": "image_embeds", "image_embeds": "AAAA"}), 4)),
		chat("embedding: wrong size", 422, "messages[0].content[0].embedding.values", emb(map[string]any{"values": []float64{1, 2, 3}})),
		chat("embedding: data and values", 400, "messages[0].content[0].embedding", emb(map[string]any{"values": []float64{1}, "data": "AAAA", "dtype": "float32"})),
		chat("embedding: float32 overflow", 422, "messages[0].content[0].embedding.values", emb(map[string]any{"values": append(make([]float64, s.ProjIn-1), 1e39)})),
		chat("embedding: neither", 400, "messages[0].content[0].embedding", emb(map[string]any{"dtype": "float32"})),
		chat("embedding: data of wrong length", 400, "messages[0].content[0].embedding.data", emb(map[string]any{"data": base64.StdEncoding.EncodeToString(make([]byte, 12)), "dtype": "float32"})),
		chat("image_ref: unknown id", 404, "messages[0].content[0].image_ref.id", ref(map[string]any{"id": "no-such-item"})),
		chat("image_ref: empty id", 400, "messages[0].content[0].image_ref.id", ref(map[string]any{"id": ""})),
		chat("image_ref: numeric id", 400, "messages[0].content[0].image_ref.id", ref(map[string]any{"id": 7})),
		chat("image_ref: missing object", 400, "messages[0].content[0].image_ref", greedy(userMsg(map[string]any{"type": "image_ref"}), 4)),
		chat("image pad typed in the text", 400, "messages", greedy(userMsg(textPart("<|image_pad|>")), 4)),
		chat("too many image tokens", 400, "messages[0].content[1]", greedy(userMsg(imageEmbedsPart(rows(2*k*h), 2*k, h, [3]int{1, 4, 2 * k}), imageEmbedsPart(make([]float32, 4092*h), 4092, h, [3]int{1, 62, 264})), 4)),
		cmp("prompt over the context", 400, "prompt", map[string]any{"prompt": long, "max_tokens": 1}),
		cmp("prompt ids outside vocab", 400, "prompt", map[string]any{"prompt": []int{1, -4}}),
		cmp("prompt empty array", 400, "prompt", map[string]any{"prompt": []int{}}),
		cmp("prompt an object", 400, "prompt", map[string]any{"prompt": map[string]any{"a": 1}}),
		cmp("no prompt", 400, "prompt", map[string]any{"max_tokens": 3}),
		cmp("prompt of mixed items", 400, "prompt[1]", map[string]any{"prompt": []any{"a", 3.5}}),
		cmp("best_of", 400, "best_of", map[string]any{"prompt": "a", "best_of": 3}),
		cmp("suffix", 400, "suffix", map[string]any{"prompt": "a", "suffix": "b"}),
		cmp("too many choices", 400, "prompt", map[string]any{"prompt": []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"}, "n": 8}),
		cmp("echo with logprobs", 400, "echo", map[string]any{"prompt": "a", "echo": true, "logprobs": 1}),
		cmp("image pads without images", 400, "", map[string]any{"prompt": []int{synth.ImagePad, 1}}),
		{name: "wrong method", method: http.MethodGet, path: "/v1/chat/completions", status: 405},
		{name: "unknown path", method: http.MethodPost, path: "/v1/embeddings", body: `{}`, status: 404},
		{name: "admin reload of a missing store", method: http.MethodPost, path: "/admin/reload", body: `{"store":"/no/such/file"}`, status: 400},
		{name: "admin reload with an unknown field", method: http.MethodPost, path: "/admin/reload", body: `{"stor":"x"}`, status: 400, param: "stor"},
	}
}

func checkErrorBody(t *testing.T, name string, data []byte, param string) {
	var e struct {
		Error *struct {
			Message *string `json:"message"`
			Type    *string `json:"type"`
			Param   any     `json:"param"`
			Code    any     `json:"code"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(data, &e), "%s: %s", name, data)
	require.NotNil(t, e.Error, "%s: %s", name, data)
	require.NotNil(t, e.Error.Message, name)
	assert.NotEmpty(t, *e.Error.Message, name)
	require.NotNil(t, e.Error.Type, name)
	var raw map[string]map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(data, &raw))
	assert.Contains(t, raw["error"], "param", name)
	assert.Contains(t, raw["error"], "code", name)
	if param != "" {
		assert.Equal(t, param, e.Error.Param, "%s: %s", name, data)
	}
}

func TestHostileRequests(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	cases := hostileCases()
	require.GreaterOrEqual(t, len(cases), 40)
	for _, c := range cases {
		code, hdr, data := ts.do(c.method, c.path, c.body)
		assert.Equal(t, c.status, code, "%s: %s", c.name, data)
		assert.Equal(t, "application/json", hdr.Get("Content-Type"), c.name)
		checkErrorBody(t, c.name, data, c.param)
	}
	// Still serving, and nothing left behind in the engine.
	r := ts.chat(greedy(userMsg(refPart("item-2"), textPart("still there?")), 3))
	assert.Len(t, r.Choices, 1)
	ts.waitIdle()
}

// rawPost sends a POST with the given Content-Length and body over a raw connection, and
// returns the status code of the answer (read while the body is still being written).
func rawPost(t *testing.T, addr, path string, length int64, body io.Reader, chunked bool) int {
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	hdr := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", path, addr)
	if chunked {
		hdr += "Transfer-Encoding: chunked\r\n\r\n"
	} else {
		hdr += fmt.Sprintf("Content-Length: %d\r\n\r\n", length)
	}
	_, err = io.WriteString(conn, hdr)
	require.NoError(t, err)
	go func() {
		buf := make([]byte, 1<<16)
		for {
			n, err := body.Read(buf)
			if n > 0 {
				var werr error
				if chunked {
					_, werr = fmt.Fprintf(conn, "%x\r\n%s\r\n", n, buf[:n])
				} else {
					_, werr = conn.Write(buf[:n])
				}
				if werr != nil {
					return
				}
			}
			if err != nil {
				if chunked {
					_, _ = io.WriteString(conn, "0\r\n\r\n")
				}
				return
			}
		}
	}()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(60*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		checkErrorBody(t, "raw post", data, "")
	}
	return resp.StatusCode
}

// repeatReader yields n bytes of a JSON-ish filler.
type repeatReader struct{ left int64 }

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := int64(len(p))
	if n > r.left {
		n = r.left
	}
	for i := range p[:n] {
		p[i] = ' '
	}
	r.left -= n
	return int(n), nil
}

func TestOversizedBodies(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	addr := strings.TrimPrefix(ts.ts.URL, "http://")
	const hundredMB = 100 << 20
	// A declared 100 MB body is refused before it is read.
	assert.Equal(t, http.StatusRequestEntityTooLarge, rawPost(t, addr, "/v1/chat/completions", hundredMB, &repeatReader{left: hundredMB}, false))
	// A chunked 100 MB body is refused once the limit is crossed.
	assert.Equal(t, http.StatusRequestEntityTooLarge, rawPost(t, addr, "/v1/chat/completions", 0, &repeatReader{left: hundredMB}, true))
	// A smaller limit applies as configured.
	small := newTestServer(t, serverOptions{cfg: Config{MaxBodyBytes: 1 << 10}})
	code, _, data := small.do(http.MethodPost, "/v1/completions", fmt.Sprintf(`{"prompt": %q}`, strings.Repeat("a", 2000)))
	assert.Equal(t, http.StatusRequestEntityTooLarge, code)
	checkErrorBody(t, "small limit", data, "")
	// Both servers still serve.
	ts.chat(greedy(userMsg(textPart("ok")), 2))
	small.chat(greedy(userMsg(textPart("ok")), 2))
}

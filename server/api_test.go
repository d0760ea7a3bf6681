package server

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/synth"
)

// chatResp is the client's view of a chat completion.
type chatResp struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index   int `json:"index"`
		Message struct {
			Role    string  `json:"role"`
			Content string  `json:"content"`
			Refusal *string `json:"refusal"`
		} `json:"message"`
		Logprobs *struct {
			Content []struct {
				Token       string  `json:"token"`
				Logprob     float64 `json:"logprob"`
				Bytes       []int   `json:"bytes"`
				TopLogprobs []struct {
					Token   string  `json:"token"`
					Logprob float64 `json:"logprob"`
					Bytes   []int   `json:"bytes"`
				} `json:"top_logprobs"`
			} `json:"content"`
		} `json:"logprobs"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens        int `json:"prompt_tokens"`
		CompletionTokens    int `json:"completion_tokens"`
		TotalTokens         int `json:"total_tokens"`
		PromptTokensDetails struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
	SystemFingerprint string `json:"system_fingerprint"`
}

func (ts *testServer) chat(body any) chatResp {
	var r chatResp
	ts.post("/v1/chat/completions", body, &r)
	return r
}

func TestChatCompletionSchema(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	code, _, data := ts.do(http.MethodPost, "/v1/chat/completions", greedy(userMsg(textPart("Hello there")), 5))
	require.Equal(t, http.StatusOK, code, "%s", data)
	// Field for field, as OpenAI sends it (nulls included).
	var raw map[string]any
	require.NoError(t, json.Unmarshal(data, &raw))
	for _, k := range []string{"id", "object", "created", "model", "choices", "usage", "system_fingerprint"} {
		assert.Contains(t, raw, k)
	}
	choice := raw["choices"].([]any)[0].(map[string]any)
	for _, k := range []string{"index", "message", "logprobs", "finish_reason"} {
		assert.Contains(t, choice, k)
	}
	assert.Nil(t, choice["logprobs"])
	msg := choice["message"].(map[string]any)
	assert.Contains(t, msg, "refusal")
	assert.Nil(t, msg["refusal"])

	var r chatResp
	require.NoError(t, json.Unmarshal(data, &r))
	assert.True(t, strings.HasPrefix(r.ID, "chatcmpl-"), r.ID)
	assert.Equal(t, "chat.completion", r.Object)
	assert.Equal(t, "qvl", r.Model)
	assert.NotZero(t, r.Created)
	require.Len(t, r.Choices, 1)
	c := r.Choices[0]
	assert.Equal(t, "assistant", c.Message.Role)
	assert.Contains(t, []string{"stop", "length"}, c.FinishReason)
	assert.LessOrEqual(t, r.Usage.CompletionTokens, 5)
	assert.Positive(t, r.Usage.CompletionTokens)
	// The prompt is the rendered template, tokenized.
	want := len(testTok.Encode("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"))
	assert.Equal(t, want, r.Usage.PromptTokens)
	assert.Equal(t, r.Usage.PromptTokens+r.Usage.CompletionTokens, r.Usage.TotalTokens)

	// Greedy decoding is deterministic, and the repeat finds its prompt in the prefix cache
	// (all but the last partial block).
	again := ts.chat(greedy(userMsg(textPart("Hello there")), 5))
	assert.Equal(t, c.Message.Content, again.Choices[0].Message.Content)
	assert.Equal(t, want/16*16, again.Usage.PromptTokensDetails.CachedTokens)
	ts.waitIdle()
}

func TestChatStreamMatchesNonStreaming(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	msgs := userMsg(textPart("Count with me: one, two,"))
	want := ts.chat(greedy(msgs, 12))
	events := ts.sseEvents("/v1/chat/completions", greedy(msgs, 12, "stream", true, "stream_options", map[string]any{"include_usage": true}))
	require.GreaterOrEqual(t, len(events), 4)
	require.Equal(t, "[DONE]", events[len(events)-1])
	var text strings.Builder
	var finish string
	for i, e := range events[:len(events)-1] {
		var c map[string]any
		require.NoError(t, json.Unmarshal([]byte(e), &c), e)
		assert.Equal(t, "chat.completion.chunk", c["object"])
		assert.Contains(t, c, "usage", "include_usage puts usage (null) in every chunk")
		choices := c["choices"].([]any)
		if i == len(events)-2 {
			require.Empty(t, choices, "the usage chunk has no choices")
			u := c["usage"].(map[string]any)
			assert.Equal(t, float64(want.Usage.PromptTokens), u["prompt_tokens"])
			assert.Equal(t, float64(want.Usage.CompletionTokens), u["completion_tokens"])
			continue
		}
		assert.Nil(t, c["usage"])
		require.Len(t, choices, 1)
		ch := choices[0].(map[string]any)
		delta := ch["delta"].(map[string]any)
		if i == 0 {
			assert.Equal(t, "assistant", delta["role"])
		}
		if s, ok := delta["content"].(string); ok {
			text.WriteString(s)
		}
		if fr, ok := ch["finish_reason"].(string); ok {
			finish = fr
		}
	}
	assert.Equal(t, want.Choices[0].Message.Content, text.String())
	assert.Equal(t, want.Choices[0].FinishReason, finish)

	// Without include_usage, chunks carry no usage field.
	events = ts.sseEvents("/v1/chat/completions", greedy(msgs, 3, "stream", true))
	for _, e := range events[:len(events)-1] {
		assert.NotContains(t, e, `"usage"`)
	}
	ts.waitIdle()
}

func TestChatNAndSeeds(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	msgs := userMsg(textPart("Tell me a story"))
	body := func(n int, seed int) map[string]any {
		return map[string]any{"messages": msgs, "max_tokens": 6, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "n": n, "seed": seed}
	}
	all := ts.chat(body(3, 42))
	require.Len(t, all.Choices, 3)
	for i, c := range all.Choices {
		assert.Equal(t, i, c.Index)
		one := ts.chat(body(1, 42+i))
		assert.Equal(t, one.Choices[0].Message.Content, c.Message.Content, "choice %d has seed 42+%d", i, i)
	}
	assert.NotEqual(t, all.Choices[0].Message.Content, all.Choices[1].Message.Content, "different seeds draw differently")
	sum := 0
	for i := range all.Choices {
		one := ts.chat(body(1, 42+i))
		sum += one.Usage.CompletionTokens
	}
	assert.Equal(t, sum, all.Usage.CompletionTokens, "completion tokens add up over choices")
	assert.Equal(t, ts.chat(body(1, 42)).Usage.PromptTokens, all.Usage.PromptTokens, "the prompt counts once")

	// Streaming n=2: every choice gets its role chunk, its content and its finish chunk.
	events := ts.sseEvents("/v1/chat/completions", map[string]any{"messages": msgs, "max_tokens": 4, "temperature": 0, "n": 2, "stream": true})
	finished := map[float64]bool{}
	for _, e := range events[:len(events)-1] {
		var c struct {
			Choices []map[string]any `json:"choices"`
		}
		require.NoError(t, json.Unmarshal([]byte(e), &c))
		for _, ch := range c.Choices {
			if ch["finish_reason"] != nil {
				finished[ch["index"].(float64)] = true
			}
		}
	}
	assert.Equal(t, map[float64]bool{0: true, 1: true}, finished)
	ts.waitIdle()
}

func TestChatLogprobs(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	r := ts.chat(greedy(userMsg(textPart("Logprobs, please")), 6, "logprobs", true, "top_logprobs", 3, "ignore_eos", true))
	c := r.Choices[0]
	require.NotNil(t, c.Logprobs)
	require.Len(t, c.Logprobs.Content, 6)
	var all []byte
	for _, lp := range c.Logprobs.Content {
		require.Len(t, lp.TopLogprobs, 3)
		// Greedy: the chosen token is the most likely one.
		assert.Equal(t, lp.TopLogprobs[0].Token, lp.Token)
		assert.InDelta(t, lp.TopLogprobs[0].Logprob, lp.Logprob, 1e-6)
		assert.LessOrEqual(t, lp.Logprob, 0.0)
		assert.GreaterOrEqual(t, lp.TopLogprobs[0].Logprob, lp.TopLogprobs[1].Logprob)
		assert.GreaterOrEqual(t, lp.TopLogprobs[1].Logprob, lp.TopLogprobs[2].Logprob)
		for _, b := range lp.Bytes {
			all = append(all, byte(b))
		}
	}
	// The tokens' bytes spell the content.
	assert.Equal(t, c.Message.Content, strings.ToValidUTF8(string(all), "\uFFFD"))

	// logprobs without top_logprobs: the chosen token only.
	r = ts.chat(greedy(userMsg(textPart("Logprobs, please")), 2, "logprobs", true, "ignore_eos", true))
	require.Len(t, r.Choices[0].Logprobs.Content, 2)
	assert.Empty(t, r.Choices[0].Logprobs.Content[0].TopLogprobs)
	ts.waitIdle()
}

// completionResp is the client's view of a text completion.
type completionResp struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Choices []struct {
		Index    int    `json:"index"`
		Text     string `json:"text"`
		Logprobs *struct {
			Tokens        []string             `json:"tokens"`
			TokenLogprobs []float64            `json:"token_logprobs"`
			TopLogprobs   []map[string]float64 `json:"top_logprobs"`
			TextOffset    []int                `json:"text_offset"`
		} `json:"logprobs"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

func TestCompletions(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	var byText, byIDs completionResp
	ts.post("/v1/completions", map[string]any{"model": "qvl", "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}, &byText)
	assert.Equal(t, "text_completion", byText.Object)
	assert.True(t, strings.HasPrefix(byText.ID, "cmpl-"))
	ids := testTok.Encode("The capital of France is")
	ts.post("/v1/completions", map[string]any{"prompt": ids, "max_tokens": 5, "temperature": 0}, &byIDs)
	require.Len(t, byIDs.Choices, 1)
	assert.Equal(t, byText.Choices[0].Text, byIDs.Choices[0].Text)
	assert.Equal(t, len(ids), byText.Usage.PromptTokens)

	// Without max_tokens, OpenAI's default of 16 applies.
	var def completionResp
	ts.post("/v1/completions", map[string]any{"prompt": "x", "temperature": 0, "ignore_eos": true}, &def)
	assert.Equal(t, 16, def.Usage.CompletionTokens)

	// A batch of two prompts with n=2: four choices, prompt-major.
	var batch completionResp
	ts.post("/v1/completions", map[string]any{"prompt": []any{"The capital of France is", ids}, "n": 2, "max_tokens": 5, "temperature": 0}, &batch)
	require.Len(t, batch.Choices, 4)
	for i, c := range batch.Choices {
		assert.Equal(t, i, c.Index)
		assert.Equal(t, byText.Choices[0].Text, c.Text)
	}
	assert.Equal(t, 2*len(ids), batch.Usage.PromptTokens)

	// Echo puts the prompt before the text.
	var echo completionResp
	ts.post("/v1/completions", map[string]any{"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "echo": true}, &echo)
	assert.Equal(t, "The capital of France is"+byText.Choices[0].Text, echo.Choices[0].Text)

	// Legacy logprobs.
	var lp completionResp
	ts.post("/v1/completions", map[string]any{"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 2, "ignore_eos": true}, &lp)
	l := lp.Choices[0].Logprobs
	require.NotNil(t, l)
	require.Len(t, l.Tokens, 4)
	require.Len(t, l.TokenLogprobs, 4)
	require.Len(t, l.TopLogprobs, 4)
	assert.Equal(t, 0, l.TextOffset[0])
	assert.Equal(t, strings.Join(l.Tokens, ""), lp.Choices[0].Text)
	for i := range l.Tokens {
		assert.LessOrEqual(t, len(l.TopLogprobs[i]), 2)
		assert.InDelta(t, l.TopLogprobs[i][l.Tokens[i]], l.TokenLogprobs[i], 1e-6)
	}

	// Streaming gives the same text.
	events := ts.sseEvents("/v1/completions", map[string]any{"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "stream": true})
	var text strings.Builder
	for _, e := range events[:len(events)-1] {
		var c completionResp
		require.NoError(t, json.Unmarshal([]byte(e), &c))
		assert.Equal(t, "text_completion", c.Object)
		for _, ch := range c.Choices {
			text.WriteString(ch.Text)
		}
	}
	assert.Equal(t, byText.Choices[0].Text, text.String())
	ts.waitIdle()
}

func TestImagePartsAgree(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	ask := func(part map[string]any) string {
		r := ts.chat(greedy(userMsg(part, textPart("What is this?")), 8, "ignore_eos", true))
		return r.Choices[0].Message.Content
	}
	// A store item by id, the same vector inline, and the projector's tokens as image_embeds
	// without DeepStack features all make the same prompt.
	v := storeItems["item-3"]
	byRef := ask(refPart("item-3"))
	assert.Equal(t, byRef, ask(embeddingPart(v)))
	values := make([]float64, len(v))
	for i, x := range v {
		values[i] = float64(x)
	}
	assert.Equal(t, byRef, ask(map[string]any{"type": "embedding", "embedding": map[string]any{"values": values}}))
	toks, err := ts.m.Engine.Project(context.Background(), v)
	require.NoError(t, err)
	s := synth.Shapes["tiny"]
	assert.Equal(t, byRef, ask(imageEmbedsPart(toks, s.ProjTokens, s.Hidden, [3]int{1, 2, 2 * s.ProjTokens})))
	assert.NotEqual(t, byRef, ask(refPart("item-4")), "another item gives another answer")

	// The projected tokens of a store item are cached.
	st := ts.srv.Status()
	assert.Equal(t, 2, st.ProjectedCache.Entries)
	hits := st.ProjectedCache.Hits
	ask(refPart("item-3"))
	assert.Equal(t, hits+1, ts.srv.Status().ProjectedCache.Hits)

	// A Qwen3-VL image item of the store and the same rows inline (vLLM's layout).
	rows := make([]float32, 2*s.Hidden*(1+s.DeepStack))
	for i := range rows {
		rows[i] = float32(math.Cos(float64(i)*0.11)) * 0.5
	}
	photo := ask(refPart("photo-1"))
	assert.Equal(t, photo, ask(imageEmbedsPart(rows, 2, s.Hidden*(1+s.DeepStack), [3]int{1, 2, 4})))

	// bfloat16 data decodes to the same values when they are bfloat16-exact.
	bfRows := make([]float32, len(rows))
	for i := range rows {
		bfRows[i] = float32(int(rows[i]*64)) / 64
	}
	f32 := ask(imageEmbedsPart(bfRows, 2, s.Hidden*(1+s.DeepStack), [3]int{1, 2, 4}))
	bf := ask(map[string]any{"type": "image_embeds", "image_embeds": map[string]any{
		"data": b64(bfRows, true), "dtype": "bfloat16", "shape": []int{2, s.Hidden * (1 + s.DeepStack)}, "image_grid_thw": []int{1, 2, 4}}})
	assert.Equal(t, f32, bf)

	// Two images in one message, in order.
	two := ts.chat(greedy(userMsg(refPart("item-1"), refPart("photo-1"), textPart("Compare")), 4))
	assert.Positive(t, two.Usage.PromptTokens)
	ts.waitIdle()
}

func TestModelsHealthAndMetrics(t *testing.T) {
	ts := newTestServer(t, serverOptions{cfg: Config{ServedModelName: "tiny-vl"}})
	code, _, data := ts.do(http.MethodGet, "/v1/models", nil)
	require.Equal(t, http.StatusOK, code)
	var models struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object, OwnedBy string
			MaxModelLen         int `json:"max_model_len"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal(data, &models))
	assert.Equal(t, "list", models.Object)
	require.Len(t, models.Data, 1)
	assert.Equal(t, "tiny-vl", models.Data[0].ID)
	assert.Equal(t, "model", models.Data[0].Object)
	assert.Equal(t, ts.m.Engine.MaxModelLen(), models.Data[0].MaxModelLen)

	code, _, data = ts.do(http.MethodGet, "/health", nil)
	assert.Equal(t, http.StatusOK, code)
	assert.JSONEq(t, `{"status":"ok"}`, string(data))

	// The model name must match when given.
	code, _, data = ts.do(http.MethodPost, "/v1/chat/completions", map[string]any{"model": "gpt-4", "messages": userMsg(textPart("hi"))})
	assert.Equal(t, http.StatusNotFound, code, "%s", data)
	assert.Contains(t, string(data), "model_not_found")

	var r chatResp
	ts.post("/v1/chat/completions", map[string]any{"model": "tiny-vl", "messages": userMsg(refPart("item-0"), textPart("hi")), "max_tokens": 3, "temperature": 0}, &r)
	ts.waitIdle()
	code, _, data = ts.do(http.MethodGet, "/metrics", nil)
	require.Equal(t, http.StatusOK, code)
	text := string(data)
	for _, name := range []string{
		"qvl:time_to_first_token_seconds_bucket", "qvl:inter_token_latency_seconds_bucket", "qvl:e2e_request_latency_seconds_count",
		"qvl:request_queue_time_seconds_sum", "qvl:num_requests_running", "qvl:num_requests_waiting", "qvl:kv_cache_usage_perc",
		"qvl:prefix_cache_queries_total", "qvl:prefix_cache_hits_total", "qvl:num_preemptions_total", "qvl:prompt_tokens_total",
		"qvl:generation_tokens_total", `qvl:request_success_total{finished_reason="length",model_name="tiny-vl"}`,
		"qvl:projected_cache_misses_total", `qvl:http_requests_total{code="200",endpoint="chat",model_name="tiny-vl"} 1`,
		"qvl:embedding_store_items", "go_goroutines",
	} {
		assert.Contains(t, text, name)
	}
	assert.Contains(t, text, `qvl:kv_cache_usage_perc{model_name="tiny-vl"} 0`)
	assert.Contains(t, text, `qvl:e2e_request_latency_seconds_count{model_name="tiny-vl"} 1`)
	assert.Contains(t, text, `qvl:generation_tokens_total{model_name="tiny-vl"} 3`)

	// pprof answers loopback clients.
	code, _, _ = ts.do(http.MethodGet, "/debug/pprof/", nil)
	assert.Equal(t, http.StatusOK, code)
}

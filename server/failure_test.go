package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/runtime/engine"
)

// openStream starts a streaming chat request and returns its response after the first content
// chunk, and a function that closes the connection.
func (ts *testServer) openStream(ctx context.Context, body map[string]any) (*http.Response, *bufio.Scanner) {
	body["stream"] = true
	js, err := json.Marshal(body)
	require.NoError(ts.t, err)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.ts.URL+"/v1/chat/completions", bytes.NewReader(js))
	require.NoError(ts.t, err)
	resp, err := ts.ts.Client().Do(req)
	require.NoError(ts.t, err)
	require.Equal(ts.t, http.StatusOK, resp.StatusCode)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	// Role chunk, then the first content chunk.
	for n := 0; n < 2 && sc.Scan(); {
		if strings.HasPrefix(sc.Text(), "data: ") {
			n++
		}
	}
	return resp, sc
}

func TestClientDisconnectCancelsAndFreesBlocks(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	// Streaming: the client reads a little, then hangs up.
	ctx, cancel := context.WithCancel(context.Background())
	resp, _ := ts.openStream(ctx, greedy(userMsg(refPart("photo-1"), textPart("talk forever")), 4000, "ignore_eos", true))
	// (Stats are published after each step, so they may lag the first token a little.)
	require.Eventually(t, func() bool {
		st := ts.m.Engine.Stats()
		return st.Running == 1 && st.KVBlocksUsed > 0
	}, 5*time.Second, time.Millisecond)
	cancel()
	resp.Body.Close()
	require.Eventually(t, func() bool { return ts.m.Engine.Stats().Finished[engine.FinishCancelled] == 1 }, 10*time.Second, time.Millisecond)
	ts.waitIdle()
	// The store reference the request held is given back once the engine is done with it.
	require.Eventually(t, func() bool { return ts.srv.store.Load().refs.Load() == 1 }, 5*time.Second, 5*time.Millisecond)

	// Not streaming: the client gives up waiting.
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	js, _ := json.Marshal(greedy(userMsg(textPart("talk forever")), 4000, "ignore_eos", true, "n", 3))
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.ts.URL+"/v1/chat/completions", bytes.NewReader(js))
	_, err := ts.ts.Client().Do(req)
	require.Error(t, err)
	require.Eventually(t, func() bool { return ts.m.Engine.Stats().Finished[engine.FinishCancelled] == 4 }, 10*time.Second, time.Millisecond)
	ts.waitIdle()
}

func TestShutdownDrainsInFlightRequests(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	resp, sc := ts.openStream(context.Background(), greedy(userMsg(textPart("finish me")), 60, "ignore_eos", true))
	defer resp.Body.Close()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	require.Eventually(t, func() bool { return !ts.srv.Ready() }, 5*time.Second, time.Millisecond)
	// Draining: new calls get 503 with Retry-After; health says so.
	code, hdr, data := ts.do(http.MethodPost, "/v1/chat/completions", greedy(userMsg(textPart("late")), 2))
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "1", hdr.Get("Retry-After"))
	checkErrorBody(t, "draining", data, "")
	code, _, data = ts.do(http.MethodGet, "/health", nil)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.JSONEq(t, `{"status":"draining"}`, string(data))
	// The in-flight request runs to its end.
	var finish string
	var chunks int
	for sc.Scan() {
		d, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || d == "[DONE]" {
			continue
		}
		var c chatChunkView
		require.NoError(t, json.Unmarshal([]byte(d), &c), d)
		if len(c.Choices) > 0 && c.Choices[0].FinishReason != nil {
			finish = *c.Choices[0].FinishReason
		}
		chunks++
	}
	assert.Equal(t, "length", finish)
	assert.GreaterOrEqual(t, chunks, 30)
	require.NoError(t, <-done)
	code, _, _ = ts.do(http.MethodGet, "/health", nil)
	assert.Equal(t, http.StatusServiceUnavailable, code)
}

type chatChunkView struct {
	Choices []struct {
		Delta struct {
			Content *string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Error *struct {
		Message string `json:"message"`
		Code    string `json:"code"`
	} `json:"error"`
}

func TestShutdownDeadlineCancels(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	resp, sc := ts.openStream(context.Background(), greedy(userMsg(textPart("never ends")), 4000, "ignore_eos", true))
	defer resp.Body.Close()
	// A non-streaming request is in flight too.
	var wg sync.WaitGroup
	wg.Add(1)
	var code int
	var data []byte
	go func() {
		defer wg.Done()
		code, _, data = ts.do(http.MethodPost, "/v1/completions", map[string]any{"prompt": "x", "max_tokens": 4000, "ignore_eos": true})
	}()
	require.Eventually(t, func() bool { return ts.m.Engine.Stats().Running == 2 }, 10*time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := ts.srv.Shutdown(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 10*time.Second)
	// The streaming client gets an error event, then [DONE].
	var last chatChunkView
	var sawDone bool
	for sc.Scan() {
		d, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if d == "[DONE]" {
			sawDone = true
			continue
		}
		last = chatChunkView{}
		require.NoError(t, json.Unmarshal([]byte(d), &last))
	}
	require.NotNil(t, last.Error)
	assert.Equal(t, "cancelled", last.Error.Code)
	assert.True(t, sawDone)
	wg.Wait()
	assert.Equal(t, http.StatusServiceUnavailable, code, "%s", data)
	checkErrorBody(t, "cancelled", data, "")
}

func TestPanicInAHandlerIsIsolated(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	var mu sync.Mutex
	panicAt := ""
	ts.srv.hook = func(point string) {
		mu.Lock()
		defer mu.Unlock()
		if point == panicAt {
			panic("injected failure at " + point)
		}
	}
	set := func(p string) {
		mu.Lock()
		panicAt = p
		mu.Unlock()
	}
	for _, point := range []string{"chat", "submit"} {
		set(point)
		code, _, data := ts.do(http.MethodPost, "/v1/chat/completions", greedy(userMsg(refPart("photo-1"), textPart("boom")), 3))
		assert.Equal(t, http.StatusInternalServerError, code, point)
		checkErrorBody(t, point, data, "")
		assert.NotContains(t, string(data), "injected", "panic details stay in the log")
	}
	set("")
	r := ts.chat(greedy(userMsg(refPart("photo-1"), textPart("fine")), 3))
	assert.Len(t, r.Choices, 1)
	ts.waitIdle()
	require.Eventually(t, func() bool { return ts.srv.store.Load().refs.Load() == 1 }, 5*time.Second, 5*time.Millisecond,
		"the panicking requests gave their store references back")
}

func TestQueueFullAnswers429(t *testing.T) {
	ts := newTestServer(t, serverOptions{engine: engine.Config{MaxNumSeqs: 1, MaxWaiting: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, _ := ts.openStream(ctx, greedy(userMsg(textPart("hog the batch")), 4000, "ignore_eos", true))
	defer resp.Body.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		js, _ := json.Marshal(greedy(userMsg(textPart("wait in line")), 2))
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.ts.URL+"/v1/chat/completions", bytes.NewReader(js))
		if r, err := ts.ts.Client().Do(req); err == nil {
			r.Body.Close()
		}
	}()
	require.Eventually(t, func() bool { return ts.m.Engine.Stats().Waiting == 1 }, 10*time.Second, time.Millisecond)
	code, hdr, data := ts.do(http.MethodPost, "/v1/chat/completions", greedy(userMsg(textPart("one too many")), 2))
	assert.Equal(t, http.StatusTooManyRequests, code)
	assert.Equal(t, "1", hdr.Get("Retry-After"))
	checkErrorBody(t, "queue full", data, "")
	assert.Contains(t, string(data), "queue_full")
	cancel()
	wg.Wait()
	ts.waitIdle()
}

func TestLoadingAnswers503(t *testing.T) {
	ts := newTestServer(t, serverOptions{noAttach: true})
	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/v1/chat/completions"}, {http.MethodPost, "/v1/completions"}, {http.MethodGet, "/v1/models"},
	} {
		code, hdr, data := ts.do(c.method, c.path, `{}`)
		assert.Equal(t, http.StatusServiceUnavailable, code, c.path)
		assert.Equal(t, "1", hdr.Get("Retry-After"))
		checkErrorBody(t, c.path, data, "")
		assert.Contains(t, string(data), `"loading"`)
	}
	code, _, data := ts.do(http.MethodGet, "/health", nil)
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.JSONEq(t, `{"status":"loading"}`, string(data))
	// Metrics answer while loading.
	code, _, _ = ts.do(http.MethodGet, "/metrics", nil)
	assert.Equal(t, http.StatusOK, code)
	ts.m = testModel(t, engine.Config{})
	require.NoError(t, ts.srv.Attach(ts.m, ts.store))
	require.Error(t, ts.srv.Attach(ts.m, ts.store), "attaching twice")
	r := ts.chat(greedy(userMsg(textPart("now?")), 2))
	assert.Len(t, r.Choices, 1)
}

func TestAttachRefusesAStoreThatDoesNotFit(t *testing.T) {
	dir := t.TempDir()
	path := writeStore(t, dir, "small", map[string][]float32{"a": {1, 2, 3}})
	s := New(Config{})
	m := testModel(t, engine.Config{})
	defer m.Close()
	err := s.Attach(m, path)
	require.ErrorContains(t, err, "projector takes 256")
}

func TestAuth(t *testing.T) {
	ts := newTestServer(t, serverOptions{cfg: Config{APIKey: "sk-test", AdminToken: "adm"}})
	code, _, data := ts.do(http.MethodPost, "/v1/chat/completions", greedy(userMsg(textPart("hi")), 2))
	assert.Equal(t, http.StatusUnauthorized, code)
	checkErrorBody(t, "no key", data, "")
	code, _, _ = ts.do(http.MethodPost, "/v1/chat/completions", greedy(userMsg(textPart("hi")), 2), "Authorization", "Bearer wrong")
	assert.Equal(t, http.StatusUnauthorized, code)
	code, _, _ = ts.do(http.MethodPost, "/v1/chat/completions", greedy(userMsg(textPart("hi")), 2), "Authorization", "Bearer sk-test")
	assert.Equal(t, http.StatusOK, code)
	code, _, _ = ts.do(http.MethodGet, "/health", nil)
	assert.Equal(t, http.StatusOK, code, "health needs no key")
	code, _, _ = ts.do(http.MethodGet, "/admin/status", nil)
	assert.Equal(t, http.StatusUnauthorized, code)
	code, _, data = ts.do(http.MethodGet, "/admin/status", nil, "Authorization", "Bearer adm")
	assert.Equal(t, http.StatusOK, code)
	var st Status
	require.NoError(t, json.Unmarshal(data, &st))
	assert.Equal(t, "ok", st.State)
	require.NotNil(t, st.Store)
	assert.Equal(t, 17, st.Store.Items)
	require.NotNil(t, st.Projector)
	assert.Equal(t, 256, st.Projector.InputDim)

	// Without an admin token, admin endpoints serve loopback clients only.
	open := newTestServer(t, serverOptions{})
	req := httptest.NewRequest(http.MethodGet, "/admin/status", nil)
	req.RemoteAddr = "10.1.2.3:4567"
	rec := httptest.NewRecorder()
	open.srv.Handler().ServeHTTP(rec, req)
	assert.Equal(t, http.StatusForbidden, rec.Code)
	req = httptest.NewRequest(http.MethodGet, "/debug/pprof/", nil)
	req.RemoteAddr = "10.1.2.3:4567"
	rec = httptest.NewRecorder()
	open.srv.Handler().ServeHTTP(rec, req)
	assert.Equal(t, http.StatusForbidden, rec.Code)
}

func TestEngineFailuresDoNotLeakDetails(t *testing.T) {
	s := New(Config{Logger: discardLogger()})
	ae := s.finishError(engine.Event{Finish: engine.FinishError, Err: errors.New("panic in model step: boom\ngoroutine 1 [running]: secret.go:12")})
	require.NotNil(t, ae)
	assert.Equal(t, http.StatusInternalServerError, ae.Status)
	assert.NotContains(t, ae.Message, "secret.go")
	ae = s.finishError(engine.Event{Finish: engine.FinishCancelled})
	assert.Equal(t, http.StatusServiceUnavailable, ae.Status)
	assert.Nil(t, s.finishError(engine.Event{Finish: engine.FinishStop}))
	assert.Nil(t, s.finishError(engine.Event{Finish: engine.FinishLength}))
}

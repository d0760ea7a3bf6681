package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/runtime/engine"
)

// TestLoad drives the server with 64 concurrent clients for 20 s (3 s with -short): streaming and
// not, chat and completions, text and every image kind, and about a third of the clients hang up
// mid-answer. No answer may be a 5xx, every finished stream must end cleanly, and at the end the
// engine must hold no request and no cache block.
func TestLoad(t *testing.T) {
	dur := 20 * time.Second
	if testing.Short() {
		dur = 3 * time.Second
	}
	// A small cache (128 blocks) so that the batch runs out of room and preempts.
	ts := newTestServer(t, serverOptions{engine: engine.Config{KVCacheBytes: 4 << 20}})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 128}}
	defer client.CloseIdleConnections()
	const clients = 64
	var served, disconnected, streamsDone atomic.Int64
	var mu sync.Mutex
	statuses := map[int]int{}
	var failures []string
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 99))
			for time.Now().Before(deadline) {
				path, body, stream := loadRequest(r)
				hangUp := r.IntN(3) == 0
				ctx, cancel := context.WithCancel(context.Background())
				js, _ := json.Marshal(body)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.ts.URL+path, bytes.NewReader(js))
				req.Header.Set("Content-Type", "application/json")
				if hangUp && !stream {
					// A non-streaming client gives up after a while.
					time.AfterFunc(time.Duration(r.IntN(300))*time.Millisecond, cancel)
				}
				resp, err := client.Do(req)
				if err != nil {
					cancel()
					if ctx.Err() == nil {
						fail("%s: %v", path, err)
					} else {
						disconnected.Add(1)
					}
					continue
				}
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
				if resp.StatusCode >= 500 {
					data, _ := io.ReadAll(resp.Body)
					fail("%s %s: %d %s", path, js, resp.StatusCode, data)
				}
				if resp.StatusCode != http.StatusOK || !stream {
					_, _ = io.Copy(io.Discard, resp.Body)
					if resp.StatusCode == http.StatusOK {
						served.Add(1)
					} else if ctx.Err() == nil && resp.StatusCode >= 400 {
						data, _ := io.ReadAll(resp.Body)
						fail("%s %s: %d %s", path, js, resp.StatusCode, data)
					}
					resp.Body.Close()
					cancel()
					continue
				}
				stopAfter := -1
				if hangUp {
					stopAfter = r.IntN(6)
				}
				sc := bufio.NewScanner(resp.Body)
				sc.Buffer(make([]byte, 1<<20), 1<<24)
				events, done := 0, false
				for sc.Scan() {
					d, ok := strings.CutPrefix(sc.Text(), "data: ")
					if !ok {
						continue
					}
					if d == "[DONE]" {
						done = true
						break
					}
					if strings.HasPrefix(d, `{"error"`) {
						fail("%s: error event %s", path, d)
					}
					events++
					if events == stopAfter {
						break
					}
				}
				resp.Body.Close()
				cancel()
				switch {
				case done:
					streamsDone.Add(1)
					served.Add(1)
				case stopAfter >= 0:
					disconnected.Add(1)
				default:
					fail("%s: stream ended without [DONE] after %d events (%v)", path, events, sc.Err())
				}
			}
		}(c)
	}
	wg.Wait()
	require.Empty(t, failures)
	t.Logf("%d answers (%d streams to the end), %d hang-ups, statuses %v", served.Load(), streamsDone.Load(), disconnected.Load(), statuses)
	assert.Positive(t, served.Load())
	assert.Positive(t, disconnected.Load())
	for code := range statuses {
		assert.Less(t, code, 500)
	}

	st := ts.waitIdle()
	t.Logf("engine: %d steps, %d prompt and %d generated tokens, %d preemptions, prefix hits %d of %d, finished %v",
		st.Steps, st.PromptTokens, st.GenerationTokens, st.Preemptions, st.PrefixHits, st.PrefixQueries, st.Finished)
	assert.Positive(t, st.Finished[engine.FinishCancelled], "hang-ups cancel their requests")
	assert.Zero(t, st.Finished[engine.FinishError])
	// The metrics say the same: nothing running, the KV cache empty, no 5xx answered.
	code, _, data := ts.do(http.MethodGet, "/metrics", nil)
	require.Equal(t, http.StatusOK, code)
	text := string(data)
	assert.Contains(t, text, `qvl:kv_cache_usage_perc{model_name="qvl"} 0`+"\n")
	assert.Contains(t, text, `qvl:num_requests_running{model_name="qvl"} 0`+"\n")
	assert.Contains(t, text, `qvl:num_requests_waiting{model_name="qvl"} 0`+"\n")
	assert.NotRegexp(t, regexp.MustCompile(`qvl:http_requests_total\{code="5`), text)
	require.Eventually(t, func() bool { return ts.srv.store.Load().refs.Load() == 1 }, 5*time.Second, 5*time.Millisecond,
		"every request gave its store reference back")
}

// loadRequest draws one request of the load test: its path, body, and whether it streams.
func loadRequest(r *rand.Rand) (string, map[string]any, bool) {
	stream := r.IntN(5) != 0
	maxTokens := 1 + r.IntN(40)
	if r.IntN(2) == 0 {
		body := map[string]any{"prompt": fmt.Sprintf("Item %d of the catalog is", r.IntN(50)), "max_tokens": maxTokens,
			"temperature": r.Float64(), "seed": r.IntN(1000), "stream": stream}
		return "/v1/completions", body, stream
	}
	var parts []map[string]any
	switch r.IntN(4) {
	case 0:
		parts = append(parts, refPart(fmt.Sprintf("item-%d", r.IntN(16))))
	case 1:
		parts = append(parts, refPart("photo-1"))
	case 2:
		parts = append(parts, embeddingPart(storeItems[fmt.Sprintf("item-%d", r.IntN(16))]))
	}
	parts = append(parts, textPart(fmt.Sprintf("Describe item %d in a few words.", r.IntN(50))))
	body := map[string]any{"messages": userMsg(parts...), "max_tokens": maxTokens, "temperature": r.Float64(),
		"stream": stream, "n": 1 + r.IntN(2)}
	if stream && r.IntN(2) == 0 {
		body["stream_options"] = map[string]any{"include_usage": true}
	}
	if r.IntN(4) == 0 {
		body["logprobs"] = true
		body["top_logprobs"] = 2
	}
	return "/v1/chat/completions", body, stream
}

package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func sampleResult(t *testing.T, rate float64, conc int) *Result {
	t.Helper()
	info := RunInfo{Endpoint: EndpointChat, ModelID: "org/demo", TokenizerID: "qwen3", RequestRate: rate, Burstiness: 1,
		MaxConcurrency: conc, Percentiles: []float64{50, 99, 99.9}, Metadata: map[string]string{"commit": "abc123"},
		Date: time.Date(2026, 11, 27, 8, 5, 3, 0, time.UTC)}
	return NewResult(info, &Outcome{Outputs: timeline(), Duration: 2})
}

// vllmKeys are the fields `vllm bench serve --save-result --save-detailed` writes for a
// generation benchmark with --metric-percentiles 99 (plus e2el when selected).
var vllmKeys = []string{
	"date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts",
	"request_rate", "burstiness", "max_concurrency",
	"duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
	"request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
	"input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times", "errors",
	"max_output_tokens_per_s", "max_concurrent_requests",
	"mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p99_ttft_ms",
	"mean_tpot_ms", "median_tpot_ms", "std_tpot_ms", "p99_tpot_ms",
	"mean_itl_ms", "median_itl_ms", "std_itl_ms", "p99_itl_ms",
	"mean_e2el_ms", "median_e2el_ms", "std_e2el_ms", "p99_e2el_ms",
}

func TestResultJSONUsesVLLMFieldNames(t *testing.T) {
	r := sampleResult(t, math.Inf(1), 4)
	data, err := json.Marshal(r)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(data, &m))
	for _, k := range vllmKeys {
		assert.Contains(t, m, k)
	}
	assert.Equal(t, "inf", m["request_rate"], "vLLM writes an infinite rate as the string inf")
	assert.Equal(t, 4.0, m["max_concurrency"])
	assert.Equal(t, "openai-chat", m["backend"])
	assert.Equal(t, "20261127-080503", m["date"])
	assert.Contains(t, m, "p99.9_itl_ms", "fractional percentiles keep their decimals, as vLLM's p_word")
	assert.Contains(t, m, "p50_ttft_ms")
	assert.Nil(t, m["request_goodput"])
	assert.Equal(t, "abc123", m["commit"], "metadata is flat, as vLLM's --metadata")
	assert.InDelta(t, 198.0, m["p99_ttft_ms"], 1e-9)
	assert.Equal(t, []any{4.0, 1.0, 0.0, 5.0}, m["output_lens"])
	assert.Equal(t, []any{"", "", "HTTP 500", ""}, m["errors"])
	assert.Equal(t, []any{}, m["itls"].([]any)[2], "a failed request has an empty ITL list")
	_, hasTexts := m["generated_texts"]
	assert.False(t, hasTexts, "texts are written only when asked for")

	var back Result
	require.NoError(t, json.Unmarshal(data, &back))
	assert.True(t, math.IsInf(back.RequestRate, 1))
	assert.Equal(t, r.Percentiles, back.Percentiles)
	assert.Equal(t, map[string]string{"commit": "abc123"}, back.Metadata)
	assert.Equal(t, r.MeanTPOTMs, back.MeanTPOTMs)
	assert.Equal(t, r.ITLs, back.ITLs)

	r2 := sampleResult(t, 2.5, 0)
	data, err = json.Marshal(r2)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &m))
	assert.Equal(t, 2.5, m["request_rate"])
	assert.Nil(t, m["max_concurrency"], "no cap is null, as vLLM's None")
}

func TestReadVLLMResultFile(t *testing.T) {
	// The shape of a file written by vllm bench serve (values shortened).
	const vllm = `{"date": "20251030-101112", "endpoint_type": "openai-chat", "backend": "openai-chat", "label": null,
	"model_id": "Qwen/Qwen3-VL-2B-Instruct", "tokenizer_id": "Qwen/Qwen3-VL-2B-Instruct", "num_prompts": 2,
	"request_rate": "inf", "burstiness": 1.0, "max_concurrency": 4, "duration": 1.5, "completed": 2, "failed": 0,
	"total_input_tokens": 2048, "total_output_tokens": 256, "request_throughput": 1.33, "request_goodput": null,
	"output_throughput": 170.6, "total_token_throughput": 1536.0, "max_output_tokens_per_s": 180.0,
	"max_concurrent_requests": 2, "rtfx": 0.0, "mean_ttft_ms": 50.5, "median_ttft_ms": 50.5, "std_ttft_ms": 0.5,
	"p99_ttft_ms": 50.99, "mean_tpot_ms": 7.3, "median_tpot_ms": 7.3, "std_tpot_ms": 0.1, "p99_tpot_ms": 7.4,
	"mean_itl_ms": 7.3, "median_itl_ms": 7.2, "std_itl_ms": 0.4, "p99_itl_ms": 8.1, "version": "0.11.0"}`
	var r Result
	require.NoError(t, json.Unmarshal([]byte(vllm), &r))
	assert.True(t, math.IsInf(r.RequestRate, 1))
	assert.Equal(t, 4, *r.MaxConcurrency)
	v, ok := r.Percentile("tpot", 99)
	require.True(t, ok)
	assert.Equal(t, 7.4, v)
	assert.Equal(t, "0.11.0", r.Metadata["version"])
	assert.Equal(t, 7.3, r.MeanTPOTMs)
}

func TestResultFileNameAndRoundTrip(t *testing.T) {
	r := sampleResult(t, 4, 8)
	assert.Equal(t, "openai-chat-4.0qps-concurrency8-demo-20261127-080503.json", r.FileName())
	r.RequestRate = math.Inf(1)
	r.MaxConcurrency = nil
	assert.Equal(t, "openai-chat-infqps-demo-20261127-080503.json", r.FileName())

	path := filepath.Join(t.TempDir(), r.FileName())
	require.NoError(t, r.WriteFile(path))
	back, err := ReadResult(path)
	require.NoError(t, err)
	assert.Equal(t, r.Completed, back.Completed)
	assert.Equal(t, r.Percentiles, back.Percentiles)
}

func TestMetadataMustNotShadowResultFields(t *testing.T) {
	r := sampleResult(t, 1, 0)
	r.Metadata["duration"] = "1"
	_, err := json.Marshal(r)
	assert.ErrorContains(t, err, `metadata key "duration" collides`)
	delete(r.Metadata, "duration")
	r.Metadata["p90_ttft_ms"] = "x"
	_, err = json.Marshal(r)
	assert.Error(t, err)
}

func TestPyFloat(t *testing.T) {
	assert.Equal(t, "1.0", PyFloat(1))
	assert.Equal(t, "2.5", PyFloat(2.5))
	assert.Equal(t, "inf", PyFloat(math.Inf(1)))
	assert.Equal(t, "0.1", PyFloat(0.1))
}

func TestTableLayout(t *testing.T) {
	r := sampleResult(t, 2, 4)
	var b bytes.Buffer
	WriteTable(&b, r)
	out := b.String()
	assert.Contains(t, out, "============ Serving Benchmark Result ============\n")
	assert.Contains(t, out, "Successful requests:                     3         \n")
	assert.Contains(t, out, "Failed requests:                         1         \n")
	assert.Contains(t, out, "Maximum request concurrency:             4         \n")
	assert.Contains(t, out, "Request rate configured (RPS):           2.00      \n")
	assert.Contains(t, out, "Request throughput (req/s):              1.50      \n")
	assert.Contains(t, out, "---------------Time to First Token----------------\n")
	assert.Contains(t, out, "-----Time per Output Token (excl. 1st token)------\n")
	assert.Contains(t, out, "---------------Inter-token Latency----------------\n")
	assert.Contains(t, out, "P99 TTFT (ms):                           198.00    \n")
	assert.Contains(t, out, "P99.9 ITL (ms):")
	assert.Contains(t, out, "Mean TPOT (ms):                          45.00     \n")
	assert.Contains(t, out, "\n==================================================\n")

	b.Reset()
	WriteErrors(&b, r, 10)
	assert.Equal(t, "Failed requests (1, by message):\n      1 × HTTP 500\n", b.String())
}

package report

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/bench"
	"github.com/qvl-dev/qvl/bench/offline"
)

func serveResult(t *testing.T, dir string, rate float64, sweep string) {
	t.Helper()
	outs := []bench.Output{
		{Success: true, PromptLen: 100, OutputTokens: 11, TTFT: 0.05, ITL: []float64{0.01, 0.01, 0.012}, Latency: 0.15},
		{Success: true, PromptLen: 100, OutputTokens: 11, TTFT: 0.07, ITL: []float64{0.011, 0.01}, Latency: 0.17, StartTime: 0.5},
	}
	md := map[string]string{"commit": "abc123def456", "note": "demo run", "host": "box", "cpu": "AMD EPYC", "cpu_cores": "2", "os_arch": "linux/amd64",
		KeyCommand: "qvl bench serve --sweep-rates 1,2", KeyServer: "cpu demo"}
	if sweep != "" {
		md[KeySweep] = sweep
		md[KeyServerProfile] = "docs/perf/serve/cpu-" + bench.PyFloat(rate) + "qps.pb.gz"
	}
	r := bench.NewResult(bench.RunInfo{Endpoint: bench.EndpointChat, ModelID: "demo", RequestRate: rate, Burstiness: 1,
		Percentiles: []float64{99}, Metadata: md, Date: time.Date(2026, 11, 27, 9, 0, int(rate), 0, time.UTC)},
		&bench.Outcome{Outputs: outs, Duration: 1})
	require.NoError(t, r.WriteFile(filepath.Join(dir, r.FileName())))
}

func offlineReport(t *testing.T, dir string) {
	t.Helper()
	rep := offline.Report{Kind: "offline", Date: "20261127-090000", Command: "qvl bench offline --shape tiny",
		Machine: bench.Machine{Host: "box", CPU: "AMD EPYC", Cores: 2, OS: "linux", Arch: "amd64", Commit: "abc123def456"},
		Backend: "cpu (avx512, 2 threads)", Model: "tiny", Params: 20e6, WeightBytes: 40e6, KVBytesPerToken: 8192,
		Bandwidth: offline.Measured{Value: 50e9, Method: "cpu.ProbeBandwidth"}, Peak: offline.Measured{Value: 200e9, Method: "given"},
		Context: 512, Profiled: true, Metadata: map[string]string{"note": "a quiet machine"},
		Decode: []offline.DecodeResult{
			{Batch: 1, TPOTMs: 2, MeanStepMs: 2, TokensPerS: 500, FloorMs: 0.8, FloorTokensPerS: 1250, Bound: "memory", OfFloor: 0.4, AchievedBandwidth: 20e9},
			{Batch: 8, TPOTMs: 3, MeanStepMs: 3, TokensPerS: 2666, FloorMs: 0.9, FloorTokensPerS: 8888, Bound: "memory", OfFloor: 0.3, AchievedBandwidth: 15e9},
		},
		Prefill: []offline.PrefillResult{{Seqs: 8, Len: 512, Tokens: 4096, MedianMs: 400, TokensPerS: 10240, FloorMs: 100, FloorTokensPerS: 40960, Bound: "compute", OfFloor: 0.25, AchievedFLOPS: 50e9}},
		Ops:     []offline.PhaseOps{{Phase: "decode b=1", StepsMs: 50, Ops: []offline.OpTime{{Name: "attention", TotalMs: 10}, {Name: "matmul", TotalMs: 30}, {Name: "gather", TotalMs: 0.1}}}},
	}
	data, err := json.Marshal(rep)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "offline-tiny-cpu.json"), data, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "offline-tiny-cpu.ops.pb.gz"), []byte("x"), 0o644))
}

func TestGenerate(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "perf")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	offlineReport(t, dir)
	serveResult(t, dir, 1, "s1")
	serveResult(t, dir, 2, "s1")
	serveResult(t, dir, math.Inf(1), "")
	out := filepath.Join(root, "performance.md")
	require.NoError(t, Generate(dir, out))
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	md := string(data)

	assert.Contains(t, md, "# Performance")
	assert.Contains(t, md, "### tiny on cpu (avx512, 2 threads)")
	assert.Contains(t, md, "commit `abc123def456`")
	assert.Contains(t, md, "- command: `qvl bench offline --shape tiny`")
	assert.Contains(t, md, "- memory bandwidth: 50.0 GB/s (cpu.ProbeBandwidth)")
	assert.Contains(t, md, "- note: a quiet machine")
	assert.Contains(t, md, "| 1 | 2.00 | 0.00 | 500.0 | 0.80 | 1250.0 | memory | 40% | 20.0 |")
	assert.Contains(t, md, "| 8 × 512 | 400.0 | 10240.0 | 100.0 | 40960.0 | compute | 25% | 50.0 |")
	assert.Contains(t, md, "Where the time goes in decode b=1 (the ops take 80% of the step time; the rest is the engine and the host): matmul 75%, attention 25%.")
	assert.Contains(t, md, "![decode tokens/s and time per token against batch size, beside the floor](perf/offline-tiny-cpu.png)")
	assert.FileExists(t, filepath.Join(dir, "offline-tiny-cpu.png"))
	assert.Contains(t, md, "- per-op profile: `go tool pprof -top "+filepath.ToSlash(dir)+"/offline-tiny-cpu.ops.pb.gz`")

	assert.Contains(t, md, "### demo on cpu demo, openai-chat")
	assert.Contains(t, md, "- command: `qvl bench serve --sweep-rates 1,2`")
	assert.Contains(t, md, "- note: demo run")
	assert.Equal(t, 2, strings.Count(md, "### demo on cpu demo"), "the two sweep results form one group, the lone result another")
	assert.Contains(t, md, "| 1.0 | – | 2 | 0 | 2.00 | 22.0 | 60.0 / 69.8 |")
	assert.Contains(t, md, "| ∞ | – | 2 | 0 |")
	assert.Contains(t, md, "- server CPU profiles (`go tool pprof -top FILE`): `docs/perf/serve/cpu-1.0qps.pb.gz`, `docs/perf/serve/cpu-2.0qps.pb.gz`")
	assert.FileExists(t, filepath.Join(dir, "openai-chat-sweep-demo-s1.png"), "the sweep's plot, as bench serve names it")
	assert.Contains(t, md, "(perf/openai-chat-sweep-demo-s1.png)")
	assert.Less(t, strings.Index(md, "Engine without HTTP"), strings.Index(md, "Serving over HTTP"))
}

func TestGenerateEmptyAndBad(t *testing.T) {
	root := t.TempDir()
	out := filepath.Join(root, "p.md")
	require.NoError(t, Generate(root, out))
	data, _ := os.ReadFile(out)
	assert.Contains(t, string(data), "No results yet")

	require.NoError(t, os.WriteFile(filepath.Join(root, "x.json"), []byte("{oops"), 0o644))
	assert.ErrorContains(t, Generate(root, out), "x.json")
	require.NoError(t, os.WriteFile(filepath.Join(root, "x.json"), []byte(`{"some": "thing"}`), 0o644))
	assert.ErrorContains(t, Generate(root, out), "neither an offline report nor a serving result")
}

func TestGenerateGPU(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "perf")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	gpu := `{"kind": "gpu", "device": "cuda:0 NVIDIA H100 80GB HBM3", "time": "2026-11-26T13:12:00Z", "commit": "9129c35",
		"command": "scripts/gpu-check.sh", "results": [
		{"workload": "decode batch 1, context 512 (graphs)", "value": 2.198, "unit": "ms/tok", "target": "TPOT ≤ 1.5 ms", "floor": "1.15 ms"},
		{"workload": "  attn decode 64 × ctx 512, part auto = 512", "value": 56.932, "unit": "µs", "target": "", "floor": "79% of 3.0 TB/s"}]}`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "gpu-h100.json"), []byte(gpu), 0o644))
	out := filepath.Join(root, "performance.md")
	require.NoError(t, Generate(dir, out))
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	md := string(data)
	assert.Contains(t, md, "## CUDA backend on a GPU")
	assert.Contains(t, md, "### cuda:0 NVIDIA H100 80GB HBM3")
	assert.Contains(t, md, "commit `9129c35`; result file `gpu-h100.json`")
	assert.Contains(t, md, "| decode batch 1, context 512 (graphs) | 2.198 ms/tok | TPOT ≤ 1.5 ms | 1.15 ms |")
	assert.Contains(t, md, "| attn decode 64 × ctx 512, part auto = 512 | 56.9 µs |  | 79% of 3.0 TB/s |")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "gpu-h100.json"), []byte(`{"kind": "gpu", "results": []}`), 0o644))
	assert.ErrorContains(t, Generate(dir, out), "a GPU report without a device or results")
}

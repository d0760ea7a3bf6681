package report

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/bench"
	"github.com/qvl-dev/qvl/bench/offline"
)

// writeGPU writes a GPU report with the given rows to dir/name and returns its path.
func writeGPU(t *testing.T, dir, name, device string, rows ...GPUResult) string {
	t.Helper()
	data, err := json.Marshal(GPUReport{Kind: KindGPU, Device: device, Time: "2026-11-27T10:00:00Z", Commit: "abc1234", Results: rows})
	require.NoError(t, err)
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, data, 0o644))
	return path
}

func readAll(t *testing.T, paths ...string) []*ResultFile {
	t.Helper()
	var out []*ResultFile
	for _, p := range paths {
		f, err := ReadResultFile(p)
		require.NoError(t, err)
		out = append(out, f)
	}
	return out
}

func text(t *testing.T, c *Comparison) string {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, c.WriteText(&b))
	return b.String()
}

func TestCompareUnitDirection(t *testing.T) {
	for unit, want := range map[string]Direction{
		"ms/tok": LowerIsBetter, "ms": LowerIsBetter, "µs": LowerIsBetter, "μs": LowerIsBetter, "us": LowerIsBetter,
		"ns": LowerIsBetter, " s ": LowerIsBetter, "s/token": LowerIsBetter,
		"ratio": LowerIsBetter, "ratio fused / cuBLAS": LowerIsBetter,
		"tok/s": HigherIsBetter, "req/s": HigherIsBetter, "GB/s": HigherIsBetter, "GFLOP / s": HigherIsBetter,
		"%": DirectionUnknown, "": DirectionUnknown, "x": DirectionUnknown, "tokens": DirectionUnknown, "MB/tok": DirectionUnknown,
	} {
		assert.Equal(t, want, UnitDirection(unit), "unit %q", unit)
	}
}

func TestCompareTwoFilesText(t *testing.T) {
	dir := t.TempDir()
	const dev = "cuda:0 NVIDIA H100"
	base := writeGPU(t, dir, "bench.json", dev,
		GPUResult{Workload: "prefill 8 × 512 tokens", Value: 100000, Unit: "tok/s"},
		GPUResult{Workload: "decode batch 1 (graphs)", Value: 2, Unit: "ms/tok"},
		GPUResult{Workload: "  gemm qkv", Value: 8, Unit: "µs"},
		GPUResult{Workload: "fused / cuBLAS", Value: 2.5, Unit: "ratio"},
		GPUResult{Workload: "occupancy", Value: 40, Unit: "%"})
	other := writeGPU(t, dir, "bench-optin.json", dev,
		GPUResult{Workload: "prefill 8 × 512 tokens", Value: 90000, Unit: "tok/s"}, // 10% fewer tok/s: worse
		GPUResult{Workload: "decode batch 1 (graphs)", Value: 1.5, Unit: "ms/tok"}, // 25% less time: better
		GPUResult{Workload: "  gemm qkv", Value: 8.04, Unit: "µs"},                 // +0.5%: within the 1% threshold
		GPUResult{Workload: "fused / cuBLAS", Value: 2, Unit: "ratio"},             // lower ratio: better
		GPUResult{Workload: "occupancy", Value: 50, Unit: "%"})                     // unknown direction: % only
	c, err := Compare(readAll(t, base, other), CompareOptions{Threshold: 1})
	require.NoError(t, err)
	assert.Equal(t, []string{"bench", "bench-optin"}, c.Names)
	require.Len(t, c.Rows, 5)
	assert.Equal(t, Cell{Present: true, Value: 90000, Unit: "tok/s", HasChange: true, ChangePct: -10, Verdict: "worse"}, c.Rows[0].Cells[1])
	assert.Equal(t, "better", c.Rows[1].Cells[1].Verdict)
	assert.InDelta(t, -25, c.Rows[1].Cells[1].ChangePct, 1e-9)
	assert.Equal(t, "same", c.Rows[2].Cells[1].Verdict)
	assert.Equal(t, "better", c.Rows[3].Cells[1].Verdict)
	assert.Equal(t, "", c.Rows[4].Cells[1].Verdict)
	assert.InDelta(t, 25, c.Rows[4].Cells[1].ChangePct, 1e-9)

	want := "" +
		"bench = " + base + ": cuda:0 NVIDIA H100; 2026-11-27T10:00:00Z; commit abc1234\n" +
		"bench-optin = " + other + ": cuda:0 NVIDIA H100; 2026-11-27T10:00:00Z; commit abc1234\n" +
		"\n" +
		"workload                 unit     bench  bench-optin  change\n" +
		"prefill 8 × 512 tokens   tok/s   100000        90000  -10.0%  worse\n" +
		"decode batch 1 (graphs)  ms/tok   2.000        1.500  -25.0%  better\n" +
		"  gemm qkv               µs       8.000        8.040   +0.5%  same\n" +
		"fused / cuBLAS           ratio    2.500        2.000  -20.0%  better\n" +
		"occupancy                %         40.0         50.0  +25.0%\n"
	assert.Equal(t, want, text(t, c))

	// Without a threshold every change gets a word.
	c, err = Compare(readAll(t, base, other), CompareOptions{})
	require.NoError(t, err)
	assert.Equal(t, "worse", c.Rows[2].Cells[1].Verdict, "8 → 8.04 µs is slower")
}

func TestCompareThreeFilesMissingRowsAndMarkdown(t *testing.T) {
	dir := t.TempDir()
	base := writeGPU(t, dir, "bench.json", "H100",
		GPUResult{Workload: "decode batch 64", Value: 15000, Unit: "tok/s"},
		GPUResult{Workload: "sample, kernel", Value: 28, Unit: "µs"},
		GPUResult{Workload: "sample, call", Value: 64, Unit: "µs"},
		GPUResult{Workload: "attn | part 32", Value: 12, Unit: "µs"})
	optin := writeGPU(t, dir, "bench-optin.json", "H100",
		GPUResult{Workload: "decode batch 64", Value: 16500, Unit: "tok/s"},
		GPUResult{Workload: "sample, kernel", Value: 21, Unit: "µs"},
		GPUResult{Workload: "attn | part 32", Value: 0.012, Unit: "ms"}) // another unit: no change
	pdl := writeGPU(t, dir, "bench-pdl.json", "H200",
		GPUResult{Workload: "decode batch 64", Value: 15000, Unit: "tok/s"},
		GPUResult{Workload: "sample, call", Value: 70, Unit: "µs"},
		GPUResult{Workload: "decode batch 64 (PDL)", Value: 17000, Unit: "tok/s"}) // only here: last
	c, err := Compare(readAll(t, base, optin, pdl), CompareOptions{Names: []string{"default", "optin", "pdl"}, Threshold: 1})
	require.NoError(t, err)
	require.Len(t, c.Rows, 5)
	assert.Equal(t, "decode batch 64 (PDL)", c.Rows[4].Workload)
	assert.False(t, c.Rows[4].Cells[0].Present)
	assert.False(t, c.Rows[4].Cells[2].HasChange, "no base value, no change")
	assert.False(t, c.Rows[3].Cells[1].HasChange, "µs against ms is not compared")

	out := text(t, c)
	lines := strings.Split(out, "\n")
	assert.Equal(t, "note: pdl ran on H200, the base on H100: the changes compare machines, not only code", lines[3])
	assert.Equal(t, "workload               unit   default     optin  change            pdl  change", lines[5])
	assert.Equal(t, "decode batch 64        tok/s    15000     16500  +10.0%  better  15000   +0.0%  same", lines[6])
	assert.Equal(t, "sample, kernel         µs        28.0      21.0  -25.0%  better      —", lines[7])
	assert.Equal(t, "sample, call           µs        64.0         —                   70.0   +9.4%  worse", lines[8])
	assert.Equal(t, "attn | part 32         µs        12.0  0.012 ms                      —", lines[9])
	assert.Equal(t, "decode batch 64 (PDL)  tok/s        —         —                  17000", lines[10])

	var b bytes.Buffer
	require.NoError(t, c.WriteMarkdown(&b))
	md := b.String()
	assert.Contains(t, md, "- default = "+base+": H100; 2026-11-27T10:00:00Z; commit abc1234\n")
	assert.Contains(t, md, "- note: pdl ran on H200")
	assert.Contains(t, md, "| workload | unit | default | optin | pdl |\n|---|---|---:|---:|---:|\n")
	assert.Contains(t, md, "| decode batch 64 | tok/s | 15000 | 16500 (+10.0%, better) | 15000 (+0.0%, same) |\n")
	assert.Contains(t, md, "| sample, kernel | µs | 28.0 | 21.0 (-25.0%, better) | — |\n")
	assert.Contains(t, md, "| attn \\| part 32 | µs | 12.0 | 0.012 ms | — |\n")
	assert.Contains(t, md, "| decode batch 64 (PDL) | tok/s | — | — | 17000 |\n")

	// --only keeps the matching workloads (names trimmed), in the same order.
	c, err = Compare(readAll(t, base, optin, pdl), CompareOptions{Only: regexp.MustCompile(`^sample`)})
	require.NoError(t, err)
	require.Len(t, c.Rows, 2)
	assert.Equal(t, "sample, kernel", c.Rows[0].Workload)
	assert.Equal(t, "sample, call", c.Rows[1].Workload)
	_, err = Compare(readAll(t, base, optin), CompareOptions{Only: regexp.MustCompile(`^prefill`)})
	assert.ErrorContains(t, err, `--only "^prefill" matches none of the 4 workloads of `+base)
}

func TestCompareNegativeBaseAndDuplicates(t *testing.T) {
	dir := t.TempDir()
	a := writeGPU(t, dir, "a.json", "H100",
		GPUResult{Workload: "graph TPOT − kernel time", Value: -2, Unit: "µs"},
		GPUResult{Workload: "x", Value: 1, Unit: "ms"},
		GPUResult{Workload: "  x", Value: 2, Unit: "ms"})
	b := writeGPU(t, dir, "b.json", "H100",
		GPUResult{Workload: "graph TPOT − kernel time", Value: -3, Unit: "µs"},
		GPUResult{Workload: "x", Value: 1, Unit: "ms"},
		GPUResult{Workload: "x", Value: 1, Unit: "ms"})
	files := readAll(t, a, b)
	assert.Equal(t, "  x #2", files[0].Rows[2].Workload, "a repeated workload gets its own name")
	c, err := Compare(files, CompareOptions{})
	require.NoError(t, err)
	require.Len(t, c.Rows, 3)
	// −2 → −3 µs is 50% less time: the change keeps the direction of the value.
	assert.InDelta(t, -50, c.Rows[0].Cells[1].ChangePct, 1e-9)
	assert.Equal(t, "better", c.Rows[0].Cells[1].Verdict)
	assert.Equal(t, "same", c.Rows[1].Cells[1].Verdict)
	assert.InDelta(t, -50, c.Rows[2].Cells[1].ChangePct, 1e-9, "the second x of each file")
}

func TestCompareReadsOfflineReports(t *testing.T) {
	dir := t.TempDir()
	rep := offline.Report{Kind: KindOffline, Date: "20261127-090000", Backend: "cpu (avx512, 2 threads)", Model: "tiny",
		Machine: bench.Machine{Host: "box", CPU: "AMD EPYC", Commit: "abc"},
		Decode:  []offline.DecodeResult{{Batch: 8, Context: 512, TPOTMs: 3, P99StepMs: 4, TokensPerS: 2666}},
		Prefill: []offline.PrefillResult{{Seqs: 1, Len: 512, MedianMs: 40, TokensPerS: 12800}}}
	data, err := json.Marshal(rep)
	require.NoError(t, err)
	path := filepath.Join(dir, "offline-tiny.json")
	require.NoError(t, os.WriteFile(path, data, 0o644))
	f, err := ReadResultFile(path)
	require.NoError(t, err)
	assert.Equal(t, KindOffline, f.Kind)
	assert.Equal(t, "tiny on cpu (avx512, 2 threads), box (AMD EPYC); 20261127-090000; commit abc", f.About)
	assert.Equal(t, []Row{
		{Workload: "decode batch 8, context 512: TPOT", Value: 3, Unit: "ms"},
		{Workload: "decode batch 8, context 512: p99 step", Value: 4, Unit: "ms"},
		{Workload: "decode batch 8, context 512: tokens/s", Value: 2666, Unit: "tok/s"},
		{Workload: "prefill 1 × 512: time", Value: 40, Unit: "ms"},
		{Workload: "prefill 1 × 512: tokens/s", Value: 12800, Unit: "tok/s"},
	}, f.Rows)

	gpu := writeGPU(t, dir, "bench.json", "H100", GPUResult{Workload: "decode", Value: 1, Unit: "ms/tok"})
	_, err = Compare(readAll(t, gpu, path), CompareOptions{})
	assert.ErrorContains(t, err, path+` is a result file of kind "offline" but the base `+gpu+` is of kind "gpu": compare files of one kind`)
}

func TestCompareErrors(t *testing.T) {
	dir := t.TempDir()
	put := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
		return p
	}
	_, err := ReadResultFile(filepath.Join(dir, "absent.json"))
	assert.ErrorContains(t, err, "absent.json")
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, err = ReadResultFile(put("broken.json", "{oops"))
	assert.ErrorContains(t, err, "broken.json: not a result file (JSON)")
	_, err = ReadResultFile(put("nokind.json", `{"some": "thing"}`))
	assert.ErrorContains(t, err, `nokind.json: not a result file (no "kind"; want "gpu" or "offline")`)
	_, err = ReadResultFile(put("odd.json", `{"kind": "trace"}`))
	assert.ErrorContains(t, err, `odd.json: not a result file compare reads (kind "trace"; want "gpu" or "offline")`)
	_, err = ReadResultFile(put("serve.json", `{"date": "20261127-090000", "backend": "openai-chat"}`))
	assert.ErrorContains(t, err, "serve.json: a `qvl bench serve` result")
	_, err = ReadResultFile(put("empty.json", `{"kind": "gpu", "device": "H100", "results": []}`))
	assert.ErrorContains(t, err, "empty.json: a GPU report without a device or results")
	_, err = ReadResultFile(put("badgpu.json", `{"kind": "gpu", "device": "H100", "results": [{"value": "fast"}]}`))
	assert.ErrorContains(t, err, "badgpu.json: GPU report:")
	_, err = ReadResultFile(put("emptyoff.json", `{"kind": "offline"}`))
	assert.ErrorContains(t, err, "emptyoff.json: an offline report without decode or prefill results")

	g := writeGPU(t, dir, "g.json", "H100", GPUResult{Workload: "decode", Value: 1, Unit: "ms/tok"})
	files := readAll(t, g, g)
	_, err = Compare(files[:1], CompareOptions{})
	assert.ErrorContains(t, err, "at least one other, got 1 file(s)")
	_, err = Compare(files, CompareOptions{Names: []string{"a"}})
	assert.ErrorContains(t, err, "1 names (a) for 2 files")
	_, err = Compare(files, CompareOptions{Threshold: -1})
	assert.ErrorContains(t, err, "threshold")
}

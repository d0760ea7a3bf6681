package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseRate(t *testing.T) {
	r, err := parseRate("inf")
	require.NoError(t, err)
	assert.True(t, math.IsInf(r, 1))
	r, err = parseRate(" 2.5 ")
	require.NoError(t, err)
	assert.Equal(t, 2.5, r)
	for _, bad := range []string{"0", "-1", "fast", "NaN"} {
		_, err := parseRate(bad)
		assert.Error(t, err, bad)
	}
}

func TestParseFloatsAndKV(t *testing.T) {
	v, err := parseFloats("1, 2,4.5", func(x float64) bool { return x > 0 }, "--sweep-rates")
	require.NoError(t, err)
	assert.Equal(t, []float64{1, 2, 4.5}, v)
	_, err = parseFloats("1,0", func(x float64) bool { return x > 0 }, "--sweep-rates")
	assert.ErrorContains(t, err, `--sweep-rates: "0" is not valid`)
	_, err = parseFloats(",", func(float64) bool { return true }, "x")
	assert.ErrorContains(t, err, "lists nothing")

	kv := kvFlags{}
	require.NoError(t, kv.Set("server=H100 SXM"))
	require.NoError(t, kv.Set(" tp = 1 "))
	assert.Equal(t, kvFlags{"server": "H100 SXM", "tp": "1"}, kv)
	assert.Error(t, kv.Set("novalue"))
	assert.Error(t, kv.Set("=x"))
}

func TestSynthDirIsMadeOnceAndReused(t *testing.T) {
	base := t.TempDir()
	dir, err := synthDir(base, "tiny", 3)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(base, "synth-tiny-seed3"), dir)
	assert.FileExists(t, filepath.Join(dir, "config.json"))
	// A second call reuses the directory: mark it and check the mark survives.
	mark := filepath.Join(dir, "mark")
	require.NoError(t, os.WriteFile(mark, nil, 0o644))
	again, err := synthDir(base, "tiny", 3)
	require.NoError(t, err)
	assert.Equal(t, dir, again)
	assert.FileExists(t, mark)
	_, err = synthDir(base, "huge", 0)
	assert.ErrorContains(t, err, `unknown shape "huge"`)
	left, _ := filepath.Glob(filepath.Join(base, ".synth-*"))
	assert.Empty(t, left, "no temporary directory is left behind")
}

func TestBenchCompareCommand(t *testing.T) {
	dir := t.TempDir()
	put := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
		return p
	}
	gpu := func(rows string) string {
		return `{"kind": "gpu", "device": "cuda:0 NVIDIA H100", "time": "2026-11-27T10:00:00Z", "commit": "abc1234", "results": [` + rows + `]}`
	}
	base := put("bench.json", gpu(`{"workload": "decode batch 1, context 512 (graphs)", "value": 2.2, "unit": "ms/tok"},
		{"workload": "prefill 8 × 512 tokens", "value": 125000, "unit": "tok/s"},
		{"workload": "  gemm qkv, 1 × 2048 → 4096 (qvl_gemv)", "value": 8.58, "unit": "µs"}`))
	optin := put("bench-optin.json", gpu(`{"workload": "decode batch 1, context 512 (graphs)", "value": 1.98, "unit": "ms/tok"},
		{"workload": "prefill 8 × 512 tokens", "value": 112500, "unit": "tok/s"}`))
	pdl := put("bench-pdl.json", gpu(`{"workload": "decode batch 1, context 512 (graphs)", "value": 2.2, "unit": "ms/tok"}`))

	var out, errOut bytes.Buffer
	// Flags may follow the files, as a shell script writes them.
	require.NoError(t, benchCompare(&out, &errOut, []string{base, optin, pdl, "--only", "^(decode|prefill)"}))
	lines := strings.Split(out.String(), "\n")
	require.Len(t, lines, 8, out.String())
	assert.Equal(t, "bench = "+base+": cuda:0 NVIDIA H100; 2026-11-27T10:00:00Z; commit abc1234", lines[0])
	assert.Equal(t, "workload                              unit     bench  bench-optin  change          bench-pdl  change", lines[4])
	assert.Equal(t, "decode batch 1, context 512 (graphs)  ms/tok   2.200        1.980  -10.0%  better      2.200   +0.0%  same", lines[5])
	assert.Equal(t, "prefill 8 × 512 tokens                tok/s   125000       112500  -10.0%  worse           —", lines[6])
	assert.NotContains(t, out.String(), "gemm", "--only filters the rows")

	out.Reset()
	require.NoError(t, benchCompare(&out, &errOut, []string{"--format", "markdown", "--names", "default,opt-in", base, optin}))
	assert.Contains(t, out.String(), "| workload | unit | default | opt-in |\n")
	assert.Contains(t, out.String(), "| gemm qkv, 1 × 2048 → 4096 (qvl_gemv) | µs | 8.580 | — |\n")
	assert.Contains(t, out.String(), "| prefill 8 × 512 tokens | tok/s | 125000 | 112500 (-10.0%, worse) |\n")

	out.Reset()
	require.NoError(t, benchCompare(&out, &errOut, []string{"--threshold", "20", base, optin}))
	assert.Contains(t, out.String(), "-10.0%  same", "a change under --threshold reads same")

	offline := put("offline.json", `{"kind": "offline", "backend": "cpu", "decode": [{"batch": 1, "context": 512, "tpot_ms": 3}]}`)
	assert.ErrorContains(t, benchCompare(&out, &errOut, []string{base, offline}), `offline.json is a result file of kind "offline" but the base `+base+` is of kind "gpu"`)
	assert.ErrorContains(t, benchCompare(&out, &errOut, []string{base, filepath.Join(dir, "absent.json")}), "absent.json")
	assert.ErrorContains(t, benchCompare(&out, &errOut, []string{base, put("x.json", `{"rows": 1}`)}), "x.json: not a result file")
	assert.ErrorContains(t, benchCompare(&out, &errOut, []string{base}), "got 1 file(s)")
	assert.ErrorContains(t, benchCompare(&out, &errOut, []string{"--names", "a,b,c", base, optin}), "--names gives 3 names for 2 files")
	assert.ErrorContains(t, benchCompare(&out, &errOut, []string{"--format", "html", base, optin}), `--format "html"`)
	assert.ErrorContains(t, benchCompare(&out, &errOut, []string{"--only", "(", base, optin}), "--only:")
	assert.ErrorContains(t, benchCompare(&out, &errOut, []string{"--only", "^sample", base, optin}), `--only "^sample" matches none of the 3 workloads`)
	assert.Error(t, benchCompare(&out, &errOut, []string{"--bogus", base, optin}))
	errOut.Reset()
	require.NoError(t, benchCompare(&out, &errOut, []string{"-h"}))
	assert.Contains(t, errOut.String(), "Usage: qvl bench compare [flags] BASE.json OTHER.json")
}

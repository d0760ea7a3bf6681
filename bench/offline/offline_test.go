package offline

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
)

// tinyModel synthesizes the demo shape (a few MB) and opens it on the CPU backend.
func tinyModel(t *testing.T) (*model.Model, ml.Backend, string) {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, synth.Write(dir, synth.Shapes["tiny"], synth.Options{Seed: 1}))
	b := cpu.New(cpu.Options{Threads: 1})
	m, err := model.Open(b, dir, model.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m, b, dir
}

func TestRunOnTinyModel(t *testing.T) {
	m, b, dir := tinyModel(t)
	rep, err := Run(context.Background(), Config{Model: m, Backend: b, ModelName: "tiny", Dir: dir,
		Batches: []int{1, 4}, Context: 24, Steps: 5, WarmupSteps: 1, Prefill: []PrefillCase{{Seqs: 2, Len: 40}}, PrefillReps: 2,
		Bandwidth: Measured{Value: 50e9, Method: "given"}, Peak: Measured{Value: 1e12, Method: "given"}, Profile: true, Seed: 1})
	require.NoError(t, err)
	assert.Equal(t, "offline", rep.Kind)
	assert.Equal(t, synth.Shapes["tiny"].Params(), rep.Params)
	assert.Equal(t, 2*rep.Params, rep.WeightBytes)
	require.Len(t, rep.Decode, 2)
	for i, want := range []int{1, 4} {
		d := rep.Decode[i]
		assert.Equal(t, want, d.Batch)
		assert.Equal(t, 5, d.Steps)
		assert.InDelta(t, 24+1+3, d.MeanContext, 1e-9, "context 24, one warm-up step, then steps at 26..30 tokens")
		assert.Greater(t, d.TokensPerS, 0.0)
		assert.InDelta(t, float64(want)/(d.MeanStepMs/1e3), d.TokensPerS, 1e-6)
		assert.InDelta(t, d.FloorMs/d.MeanStepMs, d.OfFloor, 1e-9)
		assert.InDelta(t, float64(want)/(d.FloorMs/1e3), d.FloorTokensPerS, 1e-6)
		assert.Equal(t, "memory", d.Bound, "given 50 GB/s and 1 TFLOP/s, a tiny decode is memory bound")
		assert.Equal(t, d.MedianStepMs, d.TPOTMs)
	}
	require.Len(t, rep.Prefill, 1)
	p := rep.Prefill[0]
	assert.Equal(t, 80, p.Tokens)
	assert.Equal(t, 2, p.Reps)
	assert.InDelta(t, 80/(p.MedianMs/1e3), p.TokensPerS, 1e-6)
	assert.LessOrEqual(t, p.MinMs, p.MedianMs)

	assert.True(t, rep.Profiled)
	require.Len(t, rep.Ops, 3, "one op table per phase")
	assert.Equal(t, "decode b=1", rep.Ops[0].Phase)
	assert.Equal(t, map[string]string{"phase": "prefill", "case": "2x40"}, rep.Ops[2].Labels)
	require.NotEmpty(t, rep.Ops[1].Ops)
	var opsMs float64
	for _, o := range rep.Ops[1].Ops {
		assert.Greater(t, o.Calls, int64(0), o.Name)
		opsMs += o.TotalMs
	}
	assert.InDelta(t, 5*rep.Decode[1].MeanStepMs, rep.Ops[1].StepsMs, 1e-6, "the timed steps' wall time")
	assert.LessOrEqual(t, opsMs, rep.Ops[1].StepsMs, "only the timed steps' ops are counted, and they run inside the steps")
}

func TestRunValidates(t *testing.T) {
	m, b, dir := tinyModel(t)
	_, err := Run(context.Background(), Config{Model: m, Backend: b, Dir: dir})
	assert.ErrorContains(t, err, "nothing to measure")
	_, err = Run(context.Background(), Config{Model: m, Backend: b, Dir: dir, Batches: []int{1}})
	assert.ErrorContains(t, err, "context ≥ 1 and steps ≥ 1")
	_, err = Run(context.Background(), Config{Model: m, Backend: b, Dir: t.TempDir(), Batches: []int{1}, Context: 1, Steps: 1})
	assert.Error(t, err, "a directory without a checkpoint")
}

func TestParsers(t *testing.T) {
	pc, err := ParsePrefill("8x512, 1x2048")
	require.NoError(t, err)
	assert.Equal(t, []PrefillCase{{8, 512}, {1, 2048}}, pc)
	assert.Equal(t, "8x512", pc[0].String())
	for _, bad := range []string{"8", "x512", "0x1", "8x-1", "axb"} {
		_, err := ParsePrefill(bad)
		assert.Error(t, err, bad)
	}
	n, err := ParseInts("1,8, 64")
	require.NoError(t, err)
	assert.Equal(t, []int{1, 8, 64}, n)
	_, err = ParseInts("1,0")
	assert.Error(t, err)
}

// wrapped hides the concrete CPU backend so the probes take their backend-generic paths.
type wrapped struct{ ml.Backend }

func TestProbes(t *testing.T) {
	b := cpu.New(cpu.Options{Threads: 1})
	bw, err := ProbeBandwidth(wrapped{b}, 1, 8<<20)
	require.NoError(t, err)
	assert.Greater(t, bw.Value, 1e8)
	assert.Contains(t, bw.Method, "batch-1 matmul over 8 MiB")
	_, err = ProbeBandwidth(b, 1, 1024)
	assert.ErrorContains(t, err, "too small")

	pk, err := ProbeMatMul(wrapped{b}, 8, 64, 64, 20*time.Millisecond)
	require.NoError(t, err)
	assert.Greater(t, pk.Value, 1e6)
	assert.Contains(t, pk.Method, "matmul")
}

type proberBackend struct{ ml.Backend }

func (proberBackend) ProbeBandwidth() (float64, error) { return 3e12, nil }

func TestBackendOwnBandwidthProbeWins(t *testing.T) {
	bw, err := ProbeBandwidth(proberBackend{cpu.NewReference()}, 1, 1<<30)
	require.NoError(t, err)
	assert.Equal(t, 3e12, bw.Value)
}

package plots

import (
	"image/png"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/bench"
	"github.com/qvl-dev/qvl/bench/offline"
)

func result(rate, thr, ttft, ttft99, tpot, tpot99 float64) *bench.Result {
	return &bench.Result{RequestRate: rate, OutputThroughput: thr, MedianTTFTMs: ttft, MedianTPOTMs: tpot,
		Percentiles: map[string]float64{"p99_ttft_ms": ttft99, "p99_tpot_ms": tpot99}}
}

// checkPNG decodes the file and checks it is a non-trivial image.
func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	b := img.Bounds()
	assert.Greater(t, b.Dx(), 800)
	assert.Greater(t, b.Dy(), 300)
	// Something was drawn: not every pixel is the background.
	first := img.At(0, 0)
	differs := 0
	for y := b.Min.Y; y < b.Max.Y; y += 7 {
		for x := b.Min.X; x < b.Max.X; x += 7 {
			if img.At(x, y) != first {
				differs++
			}
		}
	}
	assert.Greater(t, differs, 100)
}

func TestLatencyThroughput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lat.png")
	if d := os.Getenv("QVL_PLOTS_OUT"); d != "" {
		path = filepath.Join(d, "lat.png")
	}
	rs := []*bench.Result{
		result(4, 700, 80, 200, 9, 14),
		result(1, 190, 40, 60, 7, 8),
		result(math.Inf(1), 900, 900, 1500, 12, 20),
		result(2, 380, 50, 90, 8, 10),
	}
	c := 8
	rs[2].MaxConcurrency = &c
	require.NoError(t, LatencyThroughput(path, "demo: latency vs throughput", rs))
	checkPNG(t, path)
	assert.Equal(t, 4.0, rs[0].RequestRate, "the input slice is not reordered")

	// Without p99 values the p50 lines are still drawn.
	require.NoError(t, LatencyThroughput(path, "p50 only", []*bench.Result{{RequestRate: 1, OutputThroughput: 10, MedianTTFTMs: 3, MedianTPOTMs: 1}}))
	checkPNG(t, path)

	assert.Error(t, LatencyThroughput(path, "none", nil))
	bad := result(1, math.NaN(), 1, 1, 1, 1)
	assert.ErrorContains(t, LatencyThroughput(path, "nan", []*bench.Result{bad}), "non-finite")
}

func TestDecodeScaling(t *testing.T) {
	path := filepath.Join(t.TempDir(), "decode.png")
	if d := os.Getenv("QVL_PLOTS_OUT"); d != "" {
		path = filepath.Join(d, "decode.png")
	}
	rep := &offline.Report{Model: "qwen3-vl-2b", Backend: "cpu", Context: 512, Decode: []offline.DecodeResult{
		{Batch: 8, TokensPerS: 60, FloorTokensPerS: 110, MeanStepMs: 133, FloorMs: 72},
		{Batch: 1, TokensPerS: 11, FloorTokensPerS: 15, MeanStepMs: 90, FloorMs: 66},
		{Batch: 64, TokensPerS: 150, FloorTokensPerS: 300, MeanStepMs: 426, FloorMs: 213},
	}}
	require.NoError(t, DecodeScaling(path, rep))
	checkPNG(t, path)
	assert.Equal(t, 8, rep.Decode[0].Batch, "the report is not reordered")

	// A zero throughput cannot go on a log axis: the plot falls back to a linear one.
	rep.Decode[0].TokensPerS = 0
	require.NoError(t, DecodeScaling(path, rep))
	assert.Error(t, DecodeScaling(path, &offline.Report{}))
}

package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/sample"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refSample is the CPU reference of ml.DeviceSampler.Sample: package sample's Drawer, the same
// rule the host sampler uses, with the row's draw p.Uniform.
func refSample(row []float32, p ml.SampleParams) int32 {
	var d sample.Drawer
	return d.Draw(row, p.Temperature, p.TopK, p.TopP, p.MinP, p.Uniform)
}

// logitRows makes B rows of V logits: normal rows of scale s, and a few special ones.
func logitRow(r *rand.Rand, kind string, v int) []float32 {
	row := make([]float32, v)
	switch kind {
	case "peaked":
		for i := range row {
			row[i] = float32(3 * r.NormFloat64())
		}
	case "flat":
		for i := range row {
			row[i] = float32(0.01 * r.NormFloat64())
		}
	case "ties":
		for i := range row {
			row[i] = float32(r.IntN(4))
		}
	case "nan":
		for i := range row {
			switch r.IntN(6) {
			case 0:
				row[i] = float32(math.NaN())
			case 1:
				row[i] = float32(math.Inf(-1))
			default:
				row[i] = float32(r.NormFloat64())
			}
		}
	case "striped": // normal, but the best 4 of every 4096 ids are far above the rest: the row's
		// best entries crowd into a few threads of the kernels' 16-byte layout
		for i := range row {
			row[i] = float32(3 * r.NormFloat64())
			if i%4096 < 4 {
				row[i] = float32(40 - i/4096 - i%4096)
			}
		}
	case "sparse": // only 200 numbers, the rest NaN
		for i := range row {
			row[i] = float32(math.NaN())
		}
		for _, i := range r.Perm(v)[:200] {
			row[i] = float32(r.NormFloat64())
		}
	case "lastslice", "firstslice": // normal, with the best 64 far above the rest, all in the last
		// (or first) eighth of the row: in one block's slice whatever the split (S ≤ 8)
		lo := 0
		if kind == "lastslice" {
			lo = v - v/8
		}
		for i := range row {
			row[i] = float32(3 * r.NormFloat64())
		}
		for _, i := range r.Perm(v / 8)[:min(64, v/8)] {
			row[lo+i] = float32(30 + r.NormFloat64())
		}
	case "boundary": // normal, and ties of the best value 30 within 4 ids of every slice boundary
		// V·q/S of every split S ≤ 8: the ties straddle the blocks' slices
		for i := range row {
			row[i] = float32(3 * r.NormFloat64())
		}
		for s := 2; s <= 8; s++ {
			for q := 1; q < s; q++ {
				for d := -4; d <= 4; d++ {
					row[v*q/s+d] = 30
				}
			}
		}
	case "allnan":
		for i := range row {
			row[i] = float32(math.NaN())
		}
	case "firstnan": // NaN but the first eighth: the other slices have no candidates, no max
		for i := range row {
			row[i] = float32(math.NaN())
			if i < v/8 {
				row[i] = float32(r.NormFloat64())
			}
		}
	default:
		panic(kind)
	}
	return row
}

func TestTopK(t *testing.T) {
	rows := []struct {
		kind string
		k    int
	}{{"peaked", 1}, {"ties", 7}, {"nan", 64}, {"peaked", 0}, {"flat", 1024}, {"sparse", 300}, {"ties", 1000},
		{"peaked", 50}, {"striped", 50}, {"peaked", 700}, {"flat", 20}, {"nan", 1024}}
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		// 9001 gives each thread of the 1024 several 16-byte loads; odd sizes misalign rows.
		vs := []int{3001, 9001}
		if gpu {
			vs = append(vs, 151936)
		}
		for _, v := range vs {
			t.Run(fmt.Sprint("V", v), func(t *testing.T) {
				r := rand.New(rand.NewPCG(21, uint64(v)))
				var logits []float32
				ks := make([]int, len(rows))
				for i, x := range rows {
					logits = append(logits, logitRow(r, x.kind, v)...)
					ks[i] = x.k
				}
				e := newEnv(t, b)
				lt := e.in(ml.F32, logits, len(rows), v)
				const maxK = 1024
				ids := make([]int32, len(rows)*maxK)
				vals := make([]float32, len(rows)*maxK)
				require.NoError(t, b.TopK(lt, ks, maxK, ids, vals))
				for i, x := range rows {
					want := sample.TopKRow(nil, logits[i*v:(i+1)*v], x.k)
					for j := 0; j < x.k; j++ {
						gid, gv := ids[i*maxK+j], vals[i*maxK+j]
						if j >= len(want) {
							require.Equal(t, int32(-1), gid, "row %d (%s) entry %d past the non-NaN logits", i, x.kind, j)
							continue
						}
						require.Equal(t, want[j].ID, gid, "row %d (%s, k %d) entry %d", i, x.kind, x.k, j)
						require.Equal(t, want[j].Value, gv, "row %d entry %d", i, j)
					}
				}
			})
		}
	})
}

// TestTopKSmallRows covers rows shorter than one 16-byte load and rows whose start is not
// 16-byte aligned, where the head and tail entries are read one by one; also split over 3
// blocks, most of whose slices are then empty.
func TestTopKSmallRows(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		t.Cleanup(func() { b.sampleSplit = 0 })
		for _, c := range [][2]int{{1, 0}, {2, 0}, {3, 0}, {5, 0}, {6, 0}, {7, 0}, {9, 0}, {13, 0}, {1, 3}, {6, 3}, {9, 3}, {13, 3}} {
			v := c[0]
			b.sampleSplit = c[1]
			r := rand.New(rand.NewPCG(23, uint64(v)))
			const rows = 5
			var logits []float32
			for range rows {
				logits = append(logits, logitRow(r, "nan", v)...)
			}
			ks := []int{1, v, v + 1, 2, 0}
			e := newEnv(t, b)
			lt := e.in(ml.F32, logits, rows, v)
			const maxK = 16
			ids := make([]int32, rows*maxK)
			vals := make([]float32, rows*maxK)
			require.NoError(t, b.TopK(lt, ks, maxK, ids, vals))
			for i, k := range ks {
				want := sample.TopKRow(nil, logits[i*v:(i+1)*v], k)
				for j := 0; j < k; j++ {
					if j >= len(want) {
						require.Equal(t, int32(-1), ids[i*maxK+j], "V %d S %d row %d entry %d past the non-NaN logits", v, c[1], i, j)
						continue
					}
					require.Equal(t, want[j].ID, ids[i*maxK+j], "V %d S %d row %d (k %d) entry %d", v, c[1], i, k, j)
					require.Equal(t, want[j].Value, vals[i*maxK+j], "V %d row %d entry %d", v, i, j)
				}
			}
			// Sampling on peaked rows (the reference needs a non-NaN logit in a filtered row).
			var peaked []float32
			for range rows {
				peaked = append(peaked, logitRow(r, "peaked", v)...)
			}
			pt := e.in(ml.F32, peaked, rows, v)
			p := make([]ml.SampleParams, rows)
			for i := range p {
				p[i] = ml.SampleParams{Temperature: 1, TopK: []int{0, 2, 3, 1, 20}[i], TopP: 0.9, Uniform: r.Float64()}
			}
			out := make([]int32, rows)
			require.NoError(t, b.Sample(pt, p, out))
			for i := range p {
				require.Equal(t, refSample(peaked[i*v:(i+1)*v], p[i]), out[i], "V %d S %d row %d (%+v)", v, c[1], i, p[i])
			}
		}
	})
}

func TestTopKRejectsBadK(t *testing.T) {
	b := simBackend(t)
	e := newEnv(t, b)
	lt := e.in(ml.F32, make([]float32, 20), 2, 10)
	ids, vals := make([]int32, 2*4), make([]float32, 2*4)
	assert.ErrorContains(t, b.TopK(lt, []int{1, 5}, 4, ids, vals), "k[1] = 5")
	assert.ErrorContains(t, b.TopK(lt, []int{1}, 4, ids, vals), "1 values of k for 2 rows")
	assert.ErrorContains(t, b.TopK(lt, []int{1, 1}, 2000, ids, vals), "maxK = 2000")
}

func TestSample(t *testing.T) {
	type row struct {
		kind string
		p    ml.SampleParams
	}
	rows := []row{
		{"peaked", ml.SampleParams{}},                                     // greedy
		{"ties", ml.SampleParams{Temperature: 0.5, TopK: 1}},              // greedy by top-k 1, ties
		{"peaked", ml.SampleParams{Temperature: 0.8}},                     // unfiltered
		{"nan", ml.SampleParams{Temperature: 1}},                          // unfiltered over NaN and −inf
		{"peaked", ml.SampleParams{Temperature: 1, TopK: 20, TopP: 0.8}},  // Qwen's defaults
		{"peaked", ml.SampleParams{Temperature: 1, TopP: 0.9}},            // nucleus inside the best 1024
		{"peaked", ml.SampleParams{Temperature: 0.7, MinP: 0.05}},         // min-p inside the best 1024
		{"flat", ml.SampleParams{Temperature: 1, TopP: 0.9}},              // nucleus of ~2700: mass selects
		{"flat", ml.SampleParams{Temperature: 1, MinP: 0.96}},             // min-p prefix of ~2000
		{"flat", ml.SampleParams{Temperature: 1, TopK: 2000, TopP: 0.99}}, // top-k above 1024
		{"flat", ml.SampleParams{Temperature: 1, TopK: 1500}},             // top-k above 1024 alone
		{"peaked", ml.SampleParams{Temperature: 0.7, TopK: 5, MinP: 0.5}},
		{"ties", ml.SampleParams{Temperature: 1, TopK: 10}},
		{"ties", ml.SampleParams{Temperature: 1, TopP: 0.5}},
		{"peaked", ml.SampleParams{Temperature: 2, TopK: 50, TopP: 0.7, MinP: 0.1}},
		{"peaked", ml.SampleParams{Temperature: 1, TopK: 5000}}, // top-k past the vocabulary
		{"sparse", ml.SampleParams{Temperature: 1, TopP: 0.95}},
	}
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		vs := []int{3001}
		if gpu {
			vs = append(vs, 151936)
		}
		for _, v := range vs {
			t.Run(fmt.Sprint("V", v), func(t *testing.T) {
				r := rand.New(rand.NewPCG(22, uint64(v)))
				var logits []float32
				for _, x := range rows {
					logits = append(logits, logitRow(r, x.kind, v)...)
				}
				e := newEnv(t, b)
				lt := e.in(ml.F32, logits, len(rows), v)
				for round := 0; round < 3; round++ {
					p := make([]ml.SampleParams, len(rows))
					for i, x := range rows {
						p[i] = x.p
						p[i].Uniform = r.Float64()
					}
					out := make([]int32, len(rows))
					require.NoError(t, b.Sample(lt, p, out))
					for i, x := range rows {
						want := refSample(logits[i*v:(i+1)*v], p[i])
						require.Equal(t, want, out[i], "round %d row %d (%s, %+v)", round, i, x.kind, p[i])
					}
				}
			})
		}
	})
}

// TestSampleFullVocab runs a few rows at Qwen's vocabulary size on the emulation too: the rows
// of the issue 6 benchmark (top-k 20 + top-p 0.8, top-k 50), and the row that f32 weights got
// wrong on the H100 (TestSample/gpu/V151936, round 2 row 8: a min-p cut through a flat row,
// where two tokens' f32 weights rounded up to min_p).
func TestSampleFullVocab(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		skipShortSim(t, gpu)
		const v = 151936
		// The flat row: TestSample's row 8 at V151936, drawn from the same stream.
		kinds := []string{"peaked", "ties", "peaked", "nan", "peaked", "peaked", "peaked", "flat", "flat"}
		r := rand.New(rand.NewPCG(22, v))
		var flat []float32
		for _, k := range kinds {
			flat = logitRow(r, k, v)
		}
		r = rand.New(rand.NewPCG(24, v))
		logits := append(flat, logitRow(r, "peaked", v)...)
		logits = append(logits, logitRow(r, "peaked", v)...)
		logits = append(logits, logitRow(r, "striped", v)...)
		p := []ml.SampleParams{
			{Temperature: 1, MinP: 0.96, Uniform: 0.9244361482514584},
			{Temperature: 0.7, TopK: 20, TopP: 0.8, Uniform: r.Float64()},
			{Temperature: 1, TopK: 50, MinP: 0.05, Uniform: r.Float64()},
			{Temperature: 1, TopK: 40, TopP: 0.95, Uniform: r.Float64()},
		}
		e := newEnv(t, b)
		lt := e.in(ml.F32, logits, len(p), v)
		out := make([]int32, len(p))
		require.NoError(t, b.Sample(lt, p, out))
		for i := range p {
			require.Equal(t, refSample(logits[i*v:(i+1)*v], p[i]), out[i], "row %d (%+v)", i, p[i])
		}
		ks := []int{50, 20, 1, 50}
		ids, vals := make([]int32, len(ks)*64), make([]float32, len(ks)*64)
		require.NoError(t, b.TopK(lt, ks, 64, ids, vals))
		for i, k := range ks {
			want := sample.TopKRow(nil, logits[i*v:(i+1)*v], k)
			for j := range want {
				require.Equal(t, want[j].ID, ids[i*64+j], "row %d entry %d", i, j)
				require.Equal(t, want[j].Value, vals[i*64+j], "row %d entry %d", i, j)
			}
		}
	})
}

func TestSampleRejectsBadParams(t *testing.T) {
	b := simBackend(t)
	e := newEnv(t, b)
	lt := e.in(ml.F32, make([]float32, 10), 1, 10)
	out := make([]int32, 1)
	for _, c := range []struct {
		p   ml.SampleParams
		msg string
	}{
		{ml.SampleParams{Temperature: -1}, "temperature"},
		{ml.SampleParams{Temperature: 1, TopP: 1.5}, "top_p"},
		{ml.SampleParams{Temperature: 1, MinP: -0.1}, "min_p"},
		{ml.SampleParams{Temperature: 1, Uniform: 1}, "uniform"},
	} {
		assert.ErrorContains(t, b.Sample(lt, []ml.SampleParams{c.p}, out), c.msg)
	}
	assert.ErrorContains(t, b.Sample(lt, nil, out), "0 parameter rows")
}

// TestSplitRows checks the blocks per row of TopK and Sample: one wave of one block per SM, at
// most sampleMaxSplit, no slice shorter than sampleMinSlice.
func TestSplitRows(t *testing.T) {
	for _, c := range []struct{ rows, v, sms, want int }{
		{64, 151936, 132, 2}, // the issue 6 benchmark on the H100: 128 blocks
		{1, 151936, 132, 8},
		{16, 151936, 132, 8},
		{44, 151936, 132, 3},
		{66, 151936, 132, 2},
		{67, 151936, 132, 1},
		{256, 151936, 132, 1},
		{1, 40000, 132, 2}, // slices of ≥ 16,384 logits
		{1, 3001, 132, 1},
		{3, 151936, 4, 1},
		{1, 151936, 4, 4},
		{0, 151936, 132, 1},
	} {
		assert.Equal(t, c.want, splitRows(c.rows, c.v, c.sms), "%d rows of %d on %d SMs", c.rows, c.v, c.sms)
	}
}

// splitTopKRows and splitSampleRows are the rows of the tests of rows split over several blocks:
// best entries in one block's slice, ties across slice boundaries, NaN rows, rows whose slices
// hold fewer than k entries each, and rows that overflow one block's or the merged candidates.
var splitTopKRows = []struct {
	kind string
	k    int
}{{"lastslice", 50}, {"firstslice", 20}, {"boundary", 5}, {"boundary", 50}, {"nan", 64}, {"allnan", 10},
	{"sparse", 150}, {"sparse", 300}, {"firstnan", 30}, {"ties", 7}, {"nan", 1024}, {"peaked", 1}, {"peaked", 0},
	{"flat", 1024}, {"striped", 50}, {"peaked", 700}}

var splitSampleRows = []struct {
	kind string
	p    ml.SampleParams
}{
	{"boundary", ml.SampleParams{}}, // greedy: the lowest id of ties in different slices
	{"allnan", ml.SampleParams{}},
	{"nan", ml.SampleParams{Temperature: 0.5, TopK: 1}},
	{"lastslice", ml.SampleParams{}},
	{"firstnan", ml.SampleParams{}},
	{"peaked", ml.SampleParams{Temperature: 0.7, TopK: 20, TopP: 0.8}}, // the benchmark's row
	{"lastslice", ml.SampleParams{Temperature: 0.7, TopK: 20, TopP: 0.8}},
	{"firstslice", ml.SampleParams{Temperature: 2, TopK: 50, TopP: 0.95}},
	{"boundary", ml.SampleParams{Temperature: 1, TopK: 40, TopP: 0.9}}, // a draw among ties
	{"boundary", ml.SampleParams{Temperature: 1, TopK: 500, MinP: 0.5}},
	{"nan", ml.SampleParams{Temperature: 1, TopK: 64, TopP: 0.9}},
	{"allnan", ml.SampleParams{Temperature: 1, TopK: 20, TopP: 0.8}},
	{"firstnan", ml.SampleParams{Temperature: 1, TopK: 30, TopP: 0.99}},
	{"sparse", ml.SampleParams{Temperature: 1, TopK: 150}},
	{"ties", ml.SampleParams{Temperature: 1, TopK: 10}},              // overflow: the exact path
	{"flat", ml.SampleParams{Temperature: 1, TopK: 1000, TopP: 0.5}}, // merged overflow
	{"peaked", ml.SampleParams{Temperature: 0.8}},                    // unfiltered: the first block alone
	{"peaked", ml.SampleParams{Temperature: 1, TopP: 0.9}},           // top-p alone: the first block
	{"flat", ml.SampleParams{Temperature: 1, TopK: 1500}},            // k above 1024: the first block
	{"striped", ml.SampleParams{Temperature: 1, TopK: 50, MinP: 0.05}},
}

// checkSplit runs splitTopKRows and splitSampleRows at v logits on b twice (the arrival counters
// must be back at 0 after each launch) and compares with the CPU reference.
func checkSplit(t *testing.T, b *Backend, v int, seed uint64) {
	r := rand.New(rand.NewPCG(seed, uint64(v)))
	e := newEnv(t, b)
	var logits []float32
	ks := make([]int, len(splitTopKRows))
	for i, x := range splitTopKRows {
		logits = append(logits, logitRow(r, x.kind, v)...)
		ks[i] = x.k
	}
	lt := e.in(ml.F32, logits, len(ks), v)
	const maxK = 1024
	ids := make([]int32, len(ks)*maxK)
	vals := make([]float32, len(ks)*maxK)
	for round := 0; round < 2; round++ {
		for i := range ids {
			ids[i], vals[i] = -7, float32(math.NaN())
		}
		require.NoError(t, b.TopK(lt, ks, maxK, ids, vals))
		for i, x := range splitTopKRows {
			want := sample.TopKRow(nil, logits[i*v:(i+1)*v], x.k)
			for j := 0; j < x.k; j++ {
				gid, gv := ids[i*maxK+j], vals[i*maxK+j]
				if j >= len(want) {
					require.Equal(t, int32(-1), gid, "round %d row %d (%s) entry %d past the non-NaN logits", round, i, x.kind, j)
					continue
				}
				require.Equal(t, want[j].ID, gid, "round %d row %d (%s, k %d) entry %d", round, i, x.kind, x.k, j)
				require.Equal(t, want[j].Value, gv, "round %d row %d entry %d", round, i, j)
			}
		}
		requireCountersZero(t, b)
	}
	logits = logits[:0]
	for _, x := range splitSampleRows {
		logits = append(logits, logitRow(r, x.kind, v)...)
	}
	st := e.in(ml.F32, logits, len(splitSampleRows), v)
	for round := 0; round < 2; round++ {
		p := make([]ml.SampleParams, len(splitSampleRows))
		for i, x := range splitSampleRows {
			p[i] = x.p
			p[i].Uniform = r.Float64()
		}
		out := make([]int32, len(p))
		require.NoError(t, b.Sample(st, p, out))
		for i, x := range splitSampleRows {
			require.Equal(t, refSample(logits[i*v:(i+1)*v], p[i]), out[i], "round %d row %d (%s, %+v)", round, i, x.kind, p[i])
		}
		requireCountersZero(t, b)
	}
}

// requireCountersZero checks that the split kernels left every arrival counter at 0.
func requireCountersZero(t *testing.T, b *Backend) {
	t.Helper()
	if b.sampleDone.p == 0 {
		return
	}
	got := make([]int32, b.sampleDone.n/4)
	require.NoError(t, b.dev.do(func() error { return b.dev.download(i32Bytes(got), b.sampleDone.p) }))
	for i, c := range got {
		require.Zero(t, c, "arrival counter of row %d", i)
	}
}

// TestSampleSplit runs TopK and Sample with each row forced over S = 2, 3, 4 and 8 blocks at odd
// vocabulary sizes (misaligned rows, slices of unequal length).
func TestSampleSplit(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		t.Cleanup(func() { b.sampleSplit = 0 })
		for _, c := range [][2]int{{3001, 2}, {3001, 8}, {9001, 3}, {9001, 4}} {
			t.Run(fmt.Sprintf("V%d/S%d", c[0], c[1]), func(t *testing.T) {
				b.sampleSplit = c[1]
				checkSplit(t, b, c[0], 25)
				require.NotZero(t, b.sampleDone.p, "the split scratch was not used")
			})
		}
	})
}

// TestSampleSplitH100 runs TopK and Sample on an emulated device with the H100's 132 SMs, where
// splitRows splits the rows by itself: 20 rows of 40,001 logits in 2 blocks each, and the issue
// 6 benchmark's batch (64 rows of 151,936, top-k 20, top-p 0.8, temperature 0.7) in 2.
func TestSampleSplitH100(t *testing.T) {
	b := simBackendSMs(t, 132)
	was := sampleSplitOn.Load()
	sampleSplitOn.Store(true) // the split is opt-in (QVL_CUDA_SAMPLE_SPLIT=1)
	t.Cleanup(func() { sampleSplitOn.Store(was) })
	require.Equal(t, 2, splitRows(len(splitSampleRows), 40001, 132))
	require.Equal(t, 2, splitRows(len(splitTopKRows), 40001, 132))
	checkSplit(t, b, 40001, 26)
	require.NotZero(t, b.sampleDone.p, "the split scratch was not used")

	skipShortSim(t, false)
	const rows, v = 64, 151936
	require.Equal(t, 2, splitRows(rows, v, 132))
	r := rand.New(rand.NewPCG(27, v))
	logits := make([]float32, 0, rows*v)
	p := make([]ml.SampleParams, rows)
	for i := range p {
		logits = append(logits, logitRow(r, "peaked", v)...)
		p[i] = ml.SampleParams{Temperature: 0.7, TopK: 20, TopP: 0.8, Uniform: r.Float64()}
	}
	e := newEnv(t, b)
	lt := e.in(ml.F32, logits, rows, v)
	out := make([]int32, rows)
	require.NoError(t, b.Sample(lt, p, out))
	for i := range p {
		require.Equal(t, refSample(logits[i*v:(i+1)*v], p[i]), out[i], "row %d (%+v)", i, p[i])
	}
	requireCountersZero(t, b)
}

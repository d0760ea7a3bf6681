package cuda

import (
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOpAttentionManyPartitions runs decode attention on an emulated device with the H100's
// 132 SMs, where one sequence over one KV head splits into 32-token partitions: 47 of them at
// context 1500, more than a warp's lanes, so that the merge's strided reads and its weights in
// shared memory are covered (on the 4-SM emulation of the other tests a context splits ≤ 10 ways).
func TestOpAttentionManyPartitions(t *testing.T) {
	b := simBackendSMs(t, 132)
	part, n := decodePartition(1, 2, 1500, 132, decodeMaxPartFor(2))
	require.Equal(t, 32, part)
	require.Equal(t, 47, n)
	c := attnCase{name: "decode_many_parts", heads: 2, kv: 1, hd: 64, bs: 16, seqs: [][2]int{{1, 1500}, {1, 40}},
		tolerance: "Attention/decode", spareBlocks: 2}
	compare(t, "out", c.tolerance, runAttention(t, b, c, 99), runAttention(t, ref(), c, 99))
}

// TestOpAttentionDecodeTableTail: the decode kernel reads a partition's block-table entries
// before it knows the sequence's context (bounded by the table row's length only), so the
// entries past the context are read and must be neither used nor checked. With garbage there
// (−1, past the cache, 1<<30) the output is bit for bit the one with valid entries and no error
// is raised; a bad entry inside the context is still reported. On the H100's split (132 SMs:
// partitions of 32, so that the last partition of each sequence spans pages past its context,
// single pass and merged), on the emulation and on the GPU.
func TestOpAttentionDecodeTableTail(t *testing.T) {
	c := attnCase{name: "table_tail", heads: 16, kv: 8, hd: 128, bs: 16, seqs: [][2]int{{1, 449}, {1, 37}, {1, 16}},
		tolerance: "Attention/decode", spareBlocks: 2, padCols: 3}
	run := func(t *testing.T, b *Backend) {
		part, _ := decodePartition(c.kv, len(c.seqs), 449, 132, decodeMaxPartFor(c.heads/c.kv))
		require.Equal(t, 32, part, "the split this test is about")
		e, out, q, a := attentionInputs(t, b, c, 11)
		require.NoError(t, b.Attention(out, q, a))
		want := e.read(out)
		compare(t, "out", c.tolerance, want, runAttention(t, ref(), c, 11))

		mb := a.BlockTables.Shape()[1]
		tables := make([]int32, len(c.seqs)*mb)
		require.NoError(t, b.Read(a.BlockTables, tables))
		valid := append([]int32(nil), tables...)
		junk := []int32{-1, int32(a.Layout.NumBlocks + 100), 1 << 30}
		n := 0
		for i, sq := range c.seqs {
			for j := (sq[1] + c.bs - 1) / c.bs; j < mb; j++ {
				tables[i*mb+j] = junk[n%len(junk)]
				n++
			}
		}
		require.Equal(t, 3+(mb-3)+(mb-1), n)
		require.NoError(t, b.Write(a.BlockTables, tables))
		require.NoError(t, b.Attention(out, q, a))
		got := e.read(out) // fails on a raised device check
		for i := range want {
			require.Equal(t, math.Float32bits(want[i]), math.Float32bits(got[i]), "element %d", i)
		}

		valid[mb+1] = int32(a.Layout.NumBlocks) // sequence 1's second page (tokens 16..31 of 37)
		require.NoError(t, b.Write(a.BlockTables, valid))
		require.NoError(t, b.Attention(out, q, a))
		err := b.Sync()
		require.ErrorIs(t, err, ErrDeviceCheck)
		require.ErrorContains(t, err, "a block table entry is outside the cache")
	}
	t.Run("sim", func(t *testing.T) { run(t, simBackendSMs(t, 132)) })
	t.Run("gpu", func(t *testing.T) { run(t, gpuBackend(t)) })
}

// runAttention runs Attention on attentionInputs and returns its output.
func runAttention(t *testing.T, bk ml.Backend, c attnCase, seed uint64) []float32 {
	e, out, q, a := attentionInputs(t, bk, c, seed)
	require.NoError(t, bk.Attention(out, q, a))
	return e.read(out)
}

// attentionInputs lays out the sequences' pages in shuffled blocks, fills the cache with bf16
// values (so that the CPU's f32 cache and the GPU's bf16 cache hold the same numbers) and
// returns Attention's operands.
func attentionInputs(t testing.TB, bk ml.Backend, c attnCase, seed uint64) (e *env, out, q ml.Tensor, a ml.AttnArgs) {
	r := rand.New(rand.NewPCG(16, seed))
	e = newEnv(t, bk)
	maxBlocks, total, n, maxQ, maxCtx := 0, 0, 0, 0, 0
	for _, s := range c.seqs {
		need := (s[1] + c.bs - 1) / c.bs
		maxBlocks = max(maxBlocks, need)
		total += need
		n += s[0]
		maxQ, maxCtx = max(maxQ, s[0]), max(maxCtx, s[1])
	}
	maxBlocks += c.padCols
	numBlocks := total + c.spareBlocks
	perm := r.Perm(numBlocks)
	tables := make([]int32, len(c.seqs)*maxBlocks)
	seqStart := []int32{0}
	ctxLen := make([]int32, len(c.seqs))
	next := 0
	for i, s := range c.seqs {
		for j := 0; j < (s[1]+c.bs-1)/c.bs; j++ {
			tables[i*maxBlocks+j] = int32(perm[next])
			next++
		}
		seqStart = append(seqStart, seqStart[i]+int32(s[0]))
		ctxLen[i] = int32(s[1])
	}
	layout := ml.KVLayout{NumBlocks: numBlocks, BlockSize: c.bs, KVHeads: c.kv, HeadDim: c.hd}
	size := ml.NumElements(cpuShape(layout.Shape()))
	k := e.in(bk.KVDType(), bf16Round(randn(r, size, 1)), layout.Shape()...)
	v := e.in(bk.KVDType(), bf16Round(randn(r, size, 1)), layout.Shape()...)
	q = e.in(ml.F32, randn(r, n*c.heads*c.hd, 1), n, c.heads*c.hd)
	out = e.out(ml.F32, n, c.heads*c.hd)
	a = ml.AttnArgs{K: k, V: v, SeqStart: e.in(ml.I32, seqStart, len(seqStart)), CtxLen: e.in(ml.I32, ctxLen, len(ctxLen)),
		BlockTables: e.in(ml.I32, tables, len(c.seqs), maxBlocks), NumSeqs: len(c.seqs), Heads: c.heads, KVHeads: c.kv,
		HeadDim: c.hd, Scale: float32(1 / math.Sqrt(float64(c.hd))), MaxQueryLen: maxQ, MaxCtxLen: maxCtx, Layout: layout}
	return e, out, q, a
}

// decodeKernelTime runs Attention once to warm up, then reps times behind a held stream with
// the profiler on, and returns the decode kernel's GPU time a call.
func decodeKernelTime(t *testing.T, b *Backend, out, q ml.Tensor, a ml.AttnArgs, reps int) time.Duration {
	require.NoError(t, b.Attention(out, q, a)) // warm-up
	b.ResetProfile()
	require.NoError(t, b.Hold(5*time.Millisecond))
	b.SetProfiling(true)
	for i := 0; i < reps; i++ {
		require.NoError(t, b.Attention(out, q, a))
	}
	prof := b.Profile()
	b.SetProfiling(false)
	var gt time.Duration
	for _, o := range prof {
		if strings.HasPrefix(o.Name, "qvl_attn_decode") {
			gt = o.Total / time.Duration(o.Calls)
		}
	}
	return gt
}

// attentionShapes times decode attention of shape alone (one layer, context ctx, bf16 cache in
// pages of bs) at batch 1 and batch seqs, with the backend's own partition and with each fixed
// partition from 32 to 512 tokens, against the cache bytes at 3.0 TB/s: first the plain decode
// kernel, then, where the shape has one, the pipelined (QVL_CUDA_ATTN_PIPE=1's) in rows of its
// own, whatever the environment says. The plain kernel's launches come first, in the order
// scripts/gpu-check.sh's ncu steps count on (the pipelined sweep repeats it: the same
// --launch-skip with -k regex:qvl_attn_decode_pipe reads the same case of that kernel).
func attentionShapes(t *testing.T, b *Backend, rep *benchReport, heads, kv, hd, bs, ctx, seqs, reps int) {
	defer func() { b.decodePart, b.attnPipe = 0, 0 }()
	for _, pipe := range []int{-1, 1} {
		if _, ok := decodePipeKernel(hd, heads/kv); pipe > 0 && !ok {
			continue
		}
		b.attnPipe = pipe
		for _, batch := range []int{1, seqs} {
			c := attnCase{heads: heads, kv: kv, hd: hd, bs: bs}
			for i := 0; i < batch; i++ {
				c.seqs = append(c.seqs, [2]int{1, ctx})
			}
			_, out, q, a := attentionInputs(t, b, c, 7)
			floor := float64(2*batch*ctx*kv*hd*2) / h100CopyBytesPerSec
			for _, part := range []int{0, 32, 64, 128, 256, 512} {
				b.decodePart = part
				gt := decodeKernelTime(t, b, out, q, a, reps)
				label := fmt.Sprint(part)
				if part == 0 {
					p, _ := decodePartition(kv, batch, ctx, b.info.sms, decodeMaxPartFor(heads/kv))
					label = fmt.Sprintf("auto = %d", p)
				}
				if pipe > 0 {
					label += ", pipelined"
				}
				rep.add(fmt.Sprintf("  attn decode %d × ctx %d, part %s", batch, ctx, label), float64(gt.Nanoseconds())/1e3, "µs", "",
					fmt.Sprintf("%.1f µs for %.1f MB of cache: %.0f%% of 3.0 TB/s", floor*1e6, floor*h100CopyBytesPerSec/1e6, 100*floor/gt.Seconds()))
			}
		}
	}
	// The batch as a decode step launches it: contexts just past ctx (the benchmark's steps decode
	// from ctx on) under a graph's context bound, the next power of two (runtime/model/graph.go),
	// with the backend's own partition, and with partitions capped at 512 (the rule before
	// partitions of 1024). On the H100 the batch-64 step's attention took ~71 µs a layer (sixth
	// run) against 56.8 µs for this shape at exactly ctx: these rows say how much of that was the
	// second, nearly empty partition and its merge.
	b.attnPipe = -1
	defer func() { b.decodeMaxPart = 0 }()
	for _, cp := range []struct{ extra, maxPart int }{{0, 0}, {8, 0}, {40, 0}, {8, 512}, {40, 512}} {
		extra := cp.extra
		b.decodeMaxPart = cp.maxPart
		c := attnCase{heads: heads, kv: kv, hd: hd, bs: bs}
		for i := 0; i < seqs; i++ {
			c.seqs = append(c.seqs, [2]int{1, ctx + extra})
		}
		_, out, q, a := attentionInputs(t, b, c, 7)
		a.MaxCtxLen = 1 << bits.Len(uint(ctx+extra-1))
		b.decodePart = 0
		gt := decodeKernelTime(t, b, out, q, a, reps)
		maxPart := decodeMaxPartFor(heads / kv)
		capped := ""
		if cp.maxPart > 0 {
			maxPart, capped = min(maxPart, cp.maxPart), fmt.Sprintf(", capped at %d", cp.maxPart)
		}
		p, np := decodePartition(kv, seqs, a.MaxCtxLen, b.info.sms, maxPart)
		floor := float64(2*seqs*(ctx+extra)*kv*hd*2) / h100CopyBytesPerSec
		rep.add(fmt.Sprintf("  attn decode %d × ctx %d, bound %d (a graph step), %d × part %d%s", seqs, ctx+extra, a.MaxCtxLen, np, p, capped),
			float64(gt.Nanoseconds())/1e3, "µs", "",
			fmt.Sprintf("%.1f µs for %.1f MB of cache: %.0f%% of 3.0 TB/s", floor*1e6, floor*h100CopyBytesPerSec/1e6, 100*floor/gt.Seconds()))
	}
}

// TestGPUAttentionShapes runs attentionShapes alone on the 2B's attention shape (no checkpoint
// needed; about a second on an H100): scripts/gpu-check.sh runs it under Nsight Compute (ncu) to
// read the decode kernel's hardware counters. Without a GPU it skips.
func TestGPUAttentionShapes(t *testing.T) {
	b := gpuBackend(t)
	shape := synth.Shapes["qwen3-vl-2b"]
	rep := &benchReport{t: t, dev: b.Name()}
	attentionShapes(t, b, rep, shape.Heads, shape.KVHeads, shape.HeadDim, issue6.bs, issue6.ctx, issue6.seqs, issue6.reps)
}

// decodeShapeCases cover every decode instance's reduction layout (head sizes 32…256, groups
// 1…8, so that a lane holds from one to several of a warp step's dot products, or shares one
// with other lanes) and block sizes that are not a power of two (the division path), for the
// decode and the prefill kernels.
var decodeShapeCases = []attnCase{
	{name: "hd64_g1", heads: 2, kv: 2, hd: 64, bs: 16, seqs: [][2]int{{1, 77}, {1, 5}}, tolerance: "Attention/decode"},
	{name: "hd128_g8", heads: 8, kv: 1, hd: 128, bs: 16, seqs: [][2]int{{1, 133}, {1, 1}}, tolerance: "Attention/decode"},
	{name: "hd32_g8_bs12", heads: 16, kv: 2, hd: 32, bs: 12, seqs: [][2]int{{1, 100}, {1, 13}}, tolerance: "Attention/decode", spareBlocks: 2},
	{name: "hd256_g4", heads: 4, kv: 1, hd: 256, bs: 16, seqs: [][2]int{{1, 90}}, tolerance: "Attention/decode"},
	{name: "hd256_g1_bs6", heads: 3, kv: 3, hd: 256, bs: 6, seqs: [][2]int{{1, 41}, {1, 6}}, tolerance: "Attention/decode", padCols: 1},
	{name: "hd128_g2_bs5", heads: 4, kv: 2, hd: 128, bs: 5, seqs: [][2]int{{1, 600}, {1, 33}}, tolerance: "Attention/decode", spareBlocks: 3},
	// The prefill kernel's page lookup by division, and a chunk over a cached prefix.
	{name: "prefill_hd64_bs12", heads: 4, kv: 2, hd: 64, bs: 12, seqs: [][2]int{{70, 100}, {33, 33}}, tolerance: "Attention/mma", spareBlocks: 2},
	{name: "prefill_hd128_bs6", heads: 2, kv: 1, hd: 128, bs: 6, seqs: [][2]int{{130, 130}}, tolerance: "Attention/mma"},
}

func TestOpAttentionDecodeShapes(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for i, c := range decodeShapeCases {
			t.Run(c.name, func(t *testing.T) {
				compare(t, "out", c.tolerance, runAttention(t, b, c, uint64(100+i)), runAttention(t, ref(), c, uint64(100+i)))
			})
		}
	})
}

// TestDecodePipeKernelChoice: the pipelined decode instances follow the plain ones in the
// kernel table, one per group size of head size 128, and Attention takes them when the backend's
// attnPipe or, unset, QVL_CUDA_ATTN_PIPE=1 asks.
func TestDecodePipeKernelChoice(t *testing.T) {
	for _, c := range []struct {
		hd, g int
		ok    bool
		name  string
	}{{128, 1, true, "qvl_attn_decode_pipe_hd128_g1"}, {128, 2, true, "qvl_attn_decode_pipe_hd128_g2"},
		{128, 3, true, "qvl_attn_decode_pipe_hd128_g4"}, {128, 8, true, "qvl_attn_decode_pipe_hd128_g8"},
		{128, 9, false, ""}, {64, 2, false, ""}, {256, 1, false, ""}} {
		id, ok := decodePipeKernel(c.hd, c.g)
		require.Equal(t, c.ok, ok, "hd %d g %d", c.hd, c.g)
		if ok {
			assert.Equal(t, c.name, kernelTable[id].name)
			assert.Equal(t, sigDecode, kernelTable[id].sig)
		}
	}
	last, ok := decodeKernel(256, 4)
	require.True(t, ok)
	assert.Equal(t, kDecodePipeFirst, last+1, "the pipelined instances follow the plain ones")
	assert.Equal(t, kDecodePipeFirst+kernelID(len(decodeGroups)), kFoldFirst, "the folded instances follow the pipelined ones")
	assert.Len(t, kernelTable, int(kFoldFirst)+len(decodeGroups))

	was := attnPipeOn.Load()
	t.Cleanup(func() { attnPipeOn.Store(was) })
	b := &Backend{}
	for _, c := range []struct {
		env  bool
		hook int
		want bool
	}{{false, 0, false}, {true, 0, true}, {false, 1, true}, {true, -1, false}, {true, 1, true}} {
		attnPipeOn.Store(c.env)
		b.attnPipe = c.hook
		assert.Equal(t, c.want, b.decodePipe(), "QVL_CUDA_ATTN_PIPE=1 %v, attnPipe %d", c.env, c.hook)
	}
}

// decodePipeCases add to attnCases' and decodeShapeCases' head-size-128 decode cases what the
// pipelined loops turn on: every group instance (1, 2, 3 → 4, 8), contexts of many warp steps a
// pass (a warp's count of steps odd and even, and 0 for some warps of a short partition), a
// block size that is not a power of two, decode rows beside prefill rows in one launch, and a
// batch of many sequences of assorted lengths.
var decodePipeCases = []attnCase{
	{name: "pipe_g1", heads: 2, kv: 2, hd: 128, bs: 16, seqs: [][2]int{{1, 700}, {1, 1}, {1, 65}}, tolerance: "Attention/decode", spareBlocks: 2, padCols: 2},
	{name: "pipe_g3_bs6", heads: 6, kv: 2, hd: 128, bs: 6, seqs: [][2]int{{1, 513}, {1, 31}}, tolerance: "Attention/decode", spareBlocks: 1},
	{name: "pipe_g8", heads: 8, kv: 1, hd: 128, bs: 16, seqs: [][2]int{{1, 1029}, {1, 32}, {1, 33}}, tolerance: "Attention/decode"},
	// Group 2 takes partitions of up to 1024 tokens (pages of 3: 342 block-table entries a partition).
	{name: "pipe_g2_part1024", heads: 4, kv: 2, hd: 128, bs: 3, seqs: [][2]int{{1, 2100}, {1, 1024}, {1, 1025}}, tolerance: "Attention/decode", spareBlocks: 1},
	{name: "pipe_mixed_prefill", heads: 4, kv: 2, hd: 128, bs: 16, seqs: [][2]int{{40, 90}, {1, 300}, {1, 3}}, tolerance: "Attention/mma", spareBlocks: 2},
	{name: "pipe_batch12", heads: 4, kv: 2, hd: 128, bs: 16, seqs: [][2]int{{1, 512}, {1, 77}, {1, 129}, {1, 64}, {1, 65},
		{1, 1}, {1, 200}, {1, 511}, {1, 16}, {1, 17}, {1, 300}, {1, 450}}, tolerance: "Attention/decode", padCols: 1},
}

// TestOpAttentionDecodePipe runs every decode case of head size 128 with the plain and with the
// pipelined decode instances, at the backend's own partition and at partitions of 32, 64 and
// 512 tokens (single pass, several warp steps a pass, split-K and its merge), on the emulation
// with 4 SMs and with the H100's 132, and on the GPU (and 1024, which groups above 2 cap at
// 512): the pipelined output is bit for bit the
// plain one, and within tolerance of the CPU reference; the profile names the instance that ran.
func TestOpAttentionDecodePipe(t *testing.T) {
	var cases []attnCase
	for _, c := range append(append(append([]attnCase{}, attnCases...), decodeShapeCases...), decodePipeCases...) {
		decode := false
		for _, s := range c.seqs {
			decode = decode || s[0] == 1
		}
		if _, ok := decodePipeKernel(c.hd, c.heads/c.kv); ok && decode {
			cases = append(cases, c)
		}
	}
	require.Len(t, cases, 1+2+len(decodePipeCases), "attnCases' one hd-128 decode case and decodeShapeCases' two")
	run := func(t *testing.T, b *Backend) {
		t.Cleanup(func() { b.decodePart, b.attnPipe = 0, 0 })
		for i, c := range cases {
			want := runAttention(t, ref(), c, uint64(300+i))
			id, ok := decodePipeKernel(c.hd, c.heads/c.kv)
			require.True(t, ok)
			pipeName := kernelTable[id].name
			for _, part := range []int{0, 32, 64, 512, 1024} {
				t.Run(fmt.Sprintf("%s/part%d", c.name, part), func(t *testing.T) {
					b.decodePart = part
					b.attnPipe = -1
					plain := runAttention(t, b, c, uint64(300+i))
					b.attnPipe = 1
					b.ResetProfile()
					b.SetProfiling(true)
					pipe := runAttention(t, b, c, uint64(300+i))
					prof := b.Profile()
					b.SetProfiling(false)
					var ran []string
					for _, o := range prof {
						if strings.HasPrefix(o.Name, "qvl_attn_decode") {
							ran = append(ran, o.Name)
						}
					}
					require.Equal(t, []string{pipeName}, ran)
					compare(t, "out", c.tolerance, pipe, want)
					require.Len(t, pipe, len(plain))
					for j := range plain {
						require.Equal(t, math.Float32bits(plain[j]), math.Float32bits(pipe[j]), "element %d: plain %g, pipelined %g", j, plain[j], pipe[j])
					}
				})
			}
		}
	}
	t.Run("sim4", func(t *testing.T) { run(t, simBackendSMs(t, 4)) })
	t.Run("sim132", func(t *testing.T) { run(t, simBackendSMs(t, 132)) })
	t.Run("gpu", func(t *testing.T) { run(t, gpuBackend(t)) })
}

// TestOpAttentionDecodePipeErrors: the pipelined instances report what the plain ones do: a
// block-table entry outside the cache inside the context (with the H100's partitions of 32, a
// single pass; with one partition of 512, on a warp's second step of several), and a sequence
// whose context is past the launch's bound.
func TestOpAttentionDecodePipeErrors(t *testing.T) {
	c := attnCase{name: "pipe_errors", heads: 4, kv: 2, hd: 128, bs: 16, seqs: [][2]int{{1, 40}, {1, 300}}, tolerance: "Attention/decode", spareBlocks: 2}
	run := func(t *testing.T, b *Backend) {
		t.Cleanup(func() { b.decodePart, b.attnPipe = 0, 0 })
		for _, part := range []int{0, 512} {
			for _, bad := range []int{1, 19 + 5} { // sequence 0's second page; sequence 1's sixth (tokens 80..95)
				for _, pipe := range []int{-1, 1} {
					b.decodePart, b.attnPipe = part, pipe
					_, out, q, a := attentionInputs(t, b, c, 5)
					mb := a.BlockTables.Shape()[1]
					require.Equal(t, 19, mb)
					tables := make([]int32, len(c.seqs)*mb)
					require.NoError(t, b.Read(a.BlockTables, tables))
					tables[bad] = int32(a.Layout.NumBlocks)
					require.NoError(t, b.Write(a.BlockTables, tables))
					require.NoError(t, b.Attention(out, q, a))
					err := b.Sync()
					require.ErrorIs(t, err, ErrDeviceCheck, "part %d, entry %d, attnPipe %d", part, bad, pipe)
					require.ErrorContains(t, err, "a block table entry is outside the cache")
				}
			}
		}
		b.decodePart, b.attnPipe = 32, 1
		_, out, q, a := attentionInputs(t, b, c, 5)
		a.MaxCtxLen = 64 // below sequence 1's 300: 2 partitions of 32 do not cover it
		require.NoError(t, b.Attention(out, q, a))
		err := b.Sync()
		require.ErrorIs(t, err, ErrDeviceCheck)
		require.ErrorContains(t, err, "seq_start and ctx_len do not fit")
	}
	t.Run("sim", func(t *testing.T) { run(t, simBackendSMs(t, 132)) })
	t.Run("gpu", func(t *testing.T) { run(t, gpuBackend(t)) })
}

package cuda

import (
	"math"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// embedVariant is one way EmbedProject computes custom rows.
type embedVariant struct {
	name string
	bk64 bool
	path embedPath
}

// embedVariants are EmbedProject's paths for custom rows: the fused kernel qvl_embed (K slices
// of 32, the default), qvl_embed_bk64 (K slices of 64, QVL_EMBED_BK=64), and the GEMM path
// (cuBLASLt, project.go).
var embedVariants = []embedVariant{{"bk32", false, embedFused}, {"bk64", true, embedFused}, {"gemm", false, embedGEMMs}}

// withEmbedVariant makes b's EmbedProject take path v until the test ends.
func withEmbedVariant(t testing.TB, b *Backend, v embedVariant) {
	wasBK, wasPath := b.embedBK64, b.embedPath
	b.embedBK64, b.embedPath = v.bk64, v.path
	t.Cleanup(func() { b.embedBK64, b.embedPath = wasBK, wasPath })
}

// embedCase returns the case of embedCases named name, with its index (the inputs' seed).
func embedCaseNamed(t *testing.T, name string) (embedCase, uint64) {
	t.Helper()
	for i, c := range embedCases {
		if c.name == name {
			return c, uint64(i)
		}
	}
	t.Fatalf("no embed case %q", name)
	return embedCase{}, 0
}

// TestOpEmbedVariantsAgree checks that qvl_embed_bk64 gives the bits qvl_embed gives: both
// accumulate the same k16 steps in the same order (a partial last K slice adds only zeros),
// so a difference is a bug in the pipeline, not rounding. The GEMM path sums over K in
// cuBLASLt's order: it agrees to the custom rows' tolerance, and exactly on the other rows.
func TestOpEmbedVariantsAgree(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for i, c := range embedCases {
			if len(c.cusIdx) == 0 {
				continue
			}
			t.Run(c.name, func(t *testing.T) {
				outs := make([][]float32, len(embedVariants))
				for j, v := range embedVariants {
					withEmbedVariant(t, b, v)
					outs[j] = runEmbed(t, b, c, uint64(i))
				}
				compare(t, "qvl_embed_bk64 vs qvl_embed", "exact", outs[1], outs[0])
				compare(t, "GEMM path vs qvl_embed", "Embed/custom", outs[2], outs[0])
			})
		}
	})
}

// TestEmbedPathChoice: the GEMM path from embedGEMMMinNe embeddings on, unless forced, and
// never for the fused kernel's phase breakdown.
func TestEmbedPathChoice(t *testing.T) {
	b := &Backend{}
	assert.False(t, b.embedUsesGEMMs(embedGEMMMinNe-1))
	assert.True(t, b.embedUsesGEMMs(embedGEMMMinNe))
	b.embedPath = embedFused
	assert.False(t, b.embedUsesGEMMs(256))
	b.embedPath = embedGEMMs
	assert.True(t, b.embedUsesGEMMs(1))
	b.embedPath, b.embedPhase = embedAuto, embedOnlyC
	assert.False(t, b.embedUsesGEMMs(256), "the phase bits belong to the fused kernel")
}

// TestOpEmbedPhases checks the debug bits behind the GPU benchmark's phase breakdown
// (Backend.embedPhase) on both kernels: phase C alone repeats the previous launch's output
// from its mid and lists (it does not run GEMM1: the custom embeddings changed in between),
// and phases A and B alone rewrite mid as the whole kernel does and write no output row.
func TestOpEmbedPhases(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		// Ne 130 takes GEMM2's 128-row tiles, Ne 20 its 64-row ones.
		for _, name := range []string{"custom_pipeline_odd", "custom_deep_k"} {
			c, seed := embedCaseNamed(t, name)
			for _, v := range embedVariants {
				if v.path != embedFused {
					continue // the phases are the fused kernel's
				}
				t.Run(name+"/"+v.name, func(t *testing.T) {
					withEmbedVariant(t, b, v)
					t.Cleanup(func() { b.embedPhase = embedAllPhases })
					testEmbedPhases(t, b, c, seed)
				})
			}
		}
	})
}

func testEmbedPhases(t *testing.T, b *Backend, c embedCase, seed uint64) {
	e, out, a := embedInputs(t, b, c, seed)
	midLen := c.ne * c.hid
	readMid := func() []uint16 {
		m := make([]uint16, midLen)
		require.NoError(t, b.dev.do(func() error { return b.dev.download(u16Bytes(m), b.embedMid.p) }))
		return m
	}
	nan := make([]float32, c.n*c.h)
	for i := range nan {
		nan[i] = float32(math.NaN())
	}

	b.embedPhase = embedAllPhases
	require.NoError(t, b.EmbedProject(out, a))
	full, mid := e.read(out), readMid()

	// New custom embeddings: phase C alone must not see them.
	custom2 := randn(rand.New(rand.NewPCG(18, seed)), c.ne*c.d, 1)
	require.NoError(t, b.Write(a.Custom, custom2))
	require.NoError(t, b.Write(out, nan))
	b.embedPhase = embedOnlyC
	require.NoError(t, b.EmbedProject(out, a))
	compare(t, "phase C alone vs the whole kernel", "exact", e.read(out), full)

	// Phases A and B alone: mid (poisoned with bf16 NaN) from the new embeddings, no output.
	require.NoError(t, b.dev.do(func() error { return b.dev.memset32(b.embedMid.p, 0xffffffff, (midLen+1)/2) }))
	require.NoError(t, b.Write(out, nan))
	b.embedPhase = embedOnlyAB
	require.NoError(t, b.EmbedProject(out, a))
	for i, v := range e.read(out) {
		require.True(t, math.IsNaN(float64(v)), "phases A and B alone wrote output element %d (%v)", i, v)
	}
	midAB := readMid()
	assert.NotEqual(t, mid, midAB, "phases A and B alone left the previous mid")

	b.embedPhase = embedAllPhases
	require.NoError(t, b.EmbedProject(out, a))
	assert.Equal(t, readMid(), midAB, "mid of phases A and B alone vs the whole kernel's")
	assert.NotEqual(t, full, e.read(out), "the whole kernel did not see the new embeddings")
}

// TestEmbedBKFromEnv checks that QVL_EMBED_BK picks the kernel when a backend opens and that a
// bad value fails the open.
func TestEmbedBKFromEnv(t *testing.T) {
	// The emulation, to open backends on (not where QVL_SKIP_SIM is set or it cannot be built).
	var lib *simLib
	if os.Getenv("QVL_SKIP_SIM") == "" {
		l, skip, err := loadSim()
		require.NoError(t, err)
		if skip == "" {
			lib = l
		}
	}
	for _, c := range []struct {
		val  string
		bk64 bool
		err  string
	}{{"", false, ""}, {"32", false, ""}, {"64", true, ""}, {"128", false, `QVL_EMBED_BK="128": want 32 or 64`}} {
		t.Run("value_"+c.val, func(t *testing.T) {
			t.Setenv(envEmbedBK, c.val)
			bk64, err := embedBK64FromEnv()
			if c.err != "" {
				require.ErrorContains(t, err, c.err)
			} else {
				require.NoError(t, err)
				assert.Equal(t, c.bk64, bk64)
			}
			if lib == nil {
				return
			}
			b, err := newBackend(newSimDevice(lib, 4))
			if c.err != "" {
				require.ErrorContains(t, err, c.err)
				return
			}
			require.NoError(t, err)
			t.Cleanup(func() { require.NoError(t, b.Close()) })
			assert.Equal(t, c.bk64, b.embedBK64)
			// A device with the 99 KiB of sm_86/sm_89 opens, but refuses the 108 KiB variant.
			small := newSimDevice(lib, 4)
			small.smemOptin = 99 << 10
			sb, err := newBackend(small)
			if c.bk64 {
				require.ErrorContains(t, err, "QVL_EMBED_BK=64 needs 110592 bytes of shared memory a block; cuda-sim (CPU emulation of the kernels) allows 101376")
				return
			}
			require.NoError(t, err)
			require.NoError(t, sb.Close())
		})
	}
}

// TestEmbedBadCustomRows: custom_idx and custom_src entries out of range are reported as
// ErrDeviceCheck on every path (the GEMM path's row copy skips them before indexing with them),
// and the backend keeps working.
func TestEmbedBadCustomRows(t *testing.T) {
	b := simBackend(t)
	c, seed := embedCaseNamed(t, "custom_deep_k")
	for _, v := range embedVariants {
		t.Run(v.name, func(t *testing.T) {
			withEmbedVariant(t, b, v)
			for _, bad := range []struct {
				idx, src int32
				want     string
			}{
				{-1, 0, "custom_idx entry is outside the step's rows"},
				{int32(c.n) + 5, 0, "custom_idx entry is outside the step's rows"},
				{0, int32(c.ne * c.k), "custom_src entry is outside"},
				{1, -3, "custom_src entry is outside"},
			} {
				e, out, a := embedInputs(t, b, c, seed)
				idx, src := append([]int32(nil), c.cusIdx...), append([]int32(nil), c.cusSrc...)
				idx[3], src[3] = bad.idx, bad.src
				require.NoError(t, b.Write(a.CustomIdx, idx))
				require.NoError(t, b.Write(a.CustomSrc, src))
				require.NoError(t, b.EmbedProject(out, a))
				err := b.Sync()
				require.ErrorIs(t, err, ErrDeviceCheck)
				assert.ErrorContains(t, err, bad.want)
				require.NoError(t, b.Sync(), "the flag is cleared once reported")
				e.read(out)
			}
		})
	}
}

// customRows splits out (case c's output, c.n rows of c.h) into the rows that custom_idx
// writes and the others, each in row order.
func customRows(c embedCase, out []float32) (other, custom []float32) {
	isCustom := map[int32]bool{}
	for _, d := range c.cusIdx {
		isCustom[d] = true
	}
	for row := 0; row < c.n; row++ {
		r := out[row*c.h : (row+1)*c.h]
		if isCustom[int32(row)] {
			custom = append(custom, r...)
		} else {
			other = append(other, r...)
		}
	}
	return other, custom
}

// TestOpEmbedGEMMPathRounds runs the GEMM path on an emulated device of one SM, where each of
// its kernels' grids (at most a wave: embedGrid) must loop: qvl_embed_rows over 2,408 chunks
// with 2,048 a round, qvl_embed_gelu over 20,480 elements and qvl_embed_prep over 20,000 with
// 16,384 a round; visual rows, custom rows overwriting visual ones, repeated destinations.
func TestOpEmbedGEMMPathRounds(t *testing.T) {
	b := simBackendSMs(t, 1)
	withEmbedVariant(t, b, embedVariant{"gemm", false, embedGEMMs})
	c := embedCase{name: "gemm_rounds", n: 301, h: 64, vocab: 90, table: ml.BF16,
		visIdx: scramble(6, 40, 301, 13), cusIdx: scramble(7, 220, 301, 5), cusSrc: scramble(8, 220, 20*2, 3),
		ne: 20, d: 1000, hid: 1024, k: 2, fc: ml.BF16, bias: ml.F32}
	got, want := runEmbed(t, b, c, 31), runEmbed(t, ref(), c, 31)
	gotOther, gc := customRows(c, got)
	wo, wc := customRows(c, want)
	compare(t, "text and visual rows", "exact", gotOther, wo)
	compare(t, "custom rows", "Embed/custom", gc, wc)
}

// TestEmbedGEMMPathKernels: from embedGEMMMinNe embeddings on, EmbedProject's default launches
// the GEMM path's kernels (no qvl_embed: no persistent grid, no grid barrier), below it
// qvl_embed alone.
func TestEmbedGEMMPathKernels(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		c, seed := embedCaseNamed(t, "custom_deep_k")
		require.Equal(t, embedGEMMMinNe+4, c.ne, "the case's embeddings")
		for _, ne := range []int{embedGEMMMinNe - 1, embedGEMMMinNe} {
			cc := c
			cc.ne = ne
			cc.cusSrc = scramble(5, len(c.cusIdx), ne*c.k, 7)
			_, out, a := embedInputs(t, b, cc, seed)
			b.ResetProfile()
			b.SetProfiling(true)
			require.NoError(t, b.EmbedProject(out, a))
			prof := b.Profile()
			b.SetProfiling(false)
			calls := map[string]int64{}
			for _, o := range prof {
				calls[o.Name] += o.Calls
			}
			want := map[string]int64{"qvl_embed": 1}
			if ne >= embedGEMMMinNe {
				want = map[string]int64{"qvl_embed_prep": 1, "cublasLt gemm bf16": 2, "qvl_embed_gelu": 1, "qvl_embed_rows": 1}
			}
			assert.Equal(t, want, calls, "%d embeddings", ne)
		}
	})
}

// TestEmbedBadTokenAndVisual: on every path, a text row with a token outside the table is NaN
// and raises the token error, a token in a row that a visual or custom row takes is never read,
// and a visual_idx entry outside the rows raises the visual error; the backend keeps working.
func TestEmbedBadTokenAndVisual(t *testing.T) {
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) { testEmbedBadTokenAndVisual(t, b) })
}

func testEmbedBadTokenAndVisual(t *testing.T, b *Backend) {
	c := embedCase{name: "bad_rows", n: 24, h: 16, vocab: 30, table: ml.BF16, visIdx: []int32{3, 5, 9},
		cusIdx: seq(8, 24), cusSrc: seq(0, 16), ne: 16, d: 16, hid: 32, k: 1, fc: ml.BF16, bias: ml.BF16}
	for _, v := range embedVariants {
		t.Run(v.name, func(t *testing.T) {
			withEmbedVariant(t, b, v)
			e, out, a := embedInputs(t, b, c, 3)
			// Row 1 is text; rows 3 (visual) and 12 (custom) are not.
			toks := make([]int32, c.n)
			toks[1], toks[3], toks[12] = int32(c.vocab)+3, -1, int32(c.vocab)
			require.NoError(t, b.Write(a.Tokens, toks))
			require.NoError(t, b.EmbedProject(out, a))
			err := b.Sync()
			require.ErrorIs(t, err, ErrDeviceCheck)
			assert.ErrorContains(t, err, "token id is outside the embedding table")
			assert.NotContains(t, err.Error(), "visual_idx")
			got := e.read(out)
			for row := 0; row < c.n; row++ {
				for _, x := range got[row*c.h : (row+1)*c.h] {
					require.Equal(t, row == 1, math.IsNaN(float64(x)), "row %d", row)
				}
			}

			toks[1], toks[3], toks[12] = 0, 0, 0
			require.NoError(t, b.Write(a.Tokens, toks))
			require.NoError(t, b.Write(a.VisualIdx, []int32{3, int32(c.n) + 2, 9}))
			require.NoError(t, b.EmbedProject(out, a))
			err = b.Sync()
			require.ErrorIs(t, err, ErrDeviceCheck)
			assert.ErrorContains(t, err, "visual_idx")
			assert.NotContains(t, err.Error(), "token id")
			require.NoError(t, b.Sync(), "the flags are cleared once reported")
		})
	}
}

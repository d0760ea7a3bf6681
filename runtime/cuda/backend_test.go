package cuda

import (
	"math"
	"sort"
	"strings"
	"testing"

	"github.com/qvl-dev/qvl/kernels"
	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ptxType is the PTX parameter type a signature letter compiles to.
var ptxType = map[byte]kernels.Param{'p': ".u64", 'l': ".u64", 'i': ".u32", 'f': ".f32"}

// TestKernelTableMatchesPTX checks, without a GPU, that every kernel the backend launches is
// in the embedded PTX with the parameters its launch site packs, and that the PTX has no
// kernel the backend does not know.
func TestKernelTableMatchesPTX(t *testing.T) {
	mods, err := kernels.Modules()
	require.NoError(t, err)
	require.NotEmpty(t, mods)
	entries := map[string]kernels.Entry{}
	for _, m := range mods {
		assert.Contains(t, string(m.PTX), ".target sm_80", "%s.ptx: built for compute_80", m.Name)
		es, err := kernels.Entries(m.PTX)
		require.NoError(t, err, m.Name)
		require.NotEmpty(t, es, "%s.ptx has no kernels", m.Name)
		for _, e := range es {
			_, dup := entries[e.Name]
			require.False(t, dup, "kernel %s is in two modules", e.Name)
			entries[e.Name] = e
		}
	}
	known := map[string]bool{}
	for _, k := range kernelTable {
		known[k.name] = true
		e, ok := entries[k.name]
		if !assert.True(t, ok, "kernel %s is not in the embedded PTX", k.name) {
			continue
		}
		want := make([]kernels.Param, len(k.sig))
		for i := range k.sig {
			want[i] = ptxType[k.sig[i]]
		}
		assert.Equal(t, want, e.Params, "kernel %s: PTX parameters vs the signature %q", k.name, k.sig)
	}
	for name := range entries {
		assert.True(t, known[name], "the PTX has kernel %s, which the backend never launches", name)
	}
}

func TestEntriesParse(t *testing.T) {
	es, err := kernels.Entries([]byte(".visible .entry k1(\n\t.param .u64 k1_param_0,\n\t.param .f32 k1_param_1\n)\n{\n}\n.visible .entry k2()\n{\n}\n"))
	require.NoError(t, err)
	require.Len(t, es, 2)
	assert.Equal(t, kernels.Entry{Name: "k1", Params: []kernels.Param{".u64", ".f32"}}, es[0])
	assert.Equal(t, "k2", es[1].Name)
	assert.Empty(t, es[1].Params)
	_, err = kernels.Entries([]byte(".entry broken"))
	assert.Error(t, err)
}

// TestEmulationRegistersEveryKernel checks that the emulation built every kernel the backend uses.
func TestEmulationRegistersEveryKernel(t *testing.T) {
	lib, skip, err := loadSim()
	require.NoError(t, err)
	if skip != "" {
		t.Skip(skip)
	}
	var want []string
	for _, k := range kernelTable {
		want = append(want, k.name)
	}
	sort.Strings(want)
	var got []string
	for _, name := range lib.kernels() {
		if !strings.HasPrefix(name, "qvlsim_probe_") { // sim_schedule_test.go's race probes
			got = append(got, name)
		}
	}
	assert.Equal(t, want, got)
}

func TestArgsPacking(t *testing.T) {
	var a kargs
	a.reset().ptr(0xdeadbeef00).i32(-1).f32(1.5).i64(-2).flag(true).flag(false)
	require.NoError(t, a.check(kernelSpec{name: "k", sig: "pifl" + "ii"}))
	assert.Equal(t, uint64(0xdeadbeef00), a.vals[0])
	assert.Equal(t, uint64(0xffffffff), a.vals[1], "an int fills the low 4 bytes of its slot, zero above")
	assert.Equal(t, uint64(math.Float32bits(1.5)), a.vals[2])
	assert.Equal(t, uint64(0xfffffffffffffffe), a.vals[3])
	assert.Equal(t, []uint64{1, 0}, a.vals[4:6])

	assert.ErrorContains(t, a.check(kernelSpec{name: "k", sig: "piflii" + "p"}), `do not match the kernel's signature`)
	a.reset().i32(1 << 40)
	assert.ErrorContains(t, a.check(kernelSpec{name: "k", sig: "i"}), "does not fit an int")
	a.reset()
	for i := 0; i <= maxKernelArgs; i++ {
		a.ptr(0)
	}
	assert.ErrorContains(t, a.check(kernelSpec{name: "k", sig: "p"}), "more than 32")
}

func TestDecodeAndPrefillKernelChoice(t *testing.T) {
	for _, c := range []struct {
		hd, g int
		ok    bool
		name  string
	}{{128, 2, true, "qvl_attn_decode_hd128_g2"}, {128, 3, true, "qvl_attn_decode_hd128_g4"}, {64, 8, true, "qvl_attn_decode_hd64_g8"},
		{256, 4, true, "qvl_attn_decode_hd256_g4"}, {256, 8, false, ""}, {96, 1, false, ""}, {32, 9, false, ""}} {
		id, ok := decodeKernel(c.hd, c.g)
		require.Equal(t, c.ok, ok, "hd %d g %d", c.hd, c.g)
		if ok {
			assert.Equal(t, c.name, kernelTable[id].name)
		}
	}
	_, ok := prefillKernel(256)
	assert.False(t, ok)
	id, ok := prefillKernel(128)
	require.True(t, ok)
	assert.Equal(t, "qvl_attn_prefill_hd128", kernelTable[id].name)
}

func TestQKVThreads(t *testing.T) {
	assert.Equal(t, 1024, qkvThreads(1, 48), "decode: a warp per head, at most 32")
	assert.Equal(t, 384, qkvThreads(64, 12))
	assert.Equal(t, 1024, qkvThreads(qkvDecodeTokens, 48))
	assert.Equal(t, 128, qkvThreads(qkvDecodeTokens+1, 48), "prefill: 4 warps")
}

func TestDecodePartition(t *testing.T) {
	g2, g4 := decodeMaxPartFor(2), decodeMaxPartFor(4)
	assert.Equal(t, 1024, g2)
	assert.Equal(t, 1024, decodeMaxPartFor(1))
	assert.Equal(t, 512, g4)
	assert.Equal(t, 512, decodeMaxPartFor(8))
	for _, c := range []struct {
		why                      string
		kv, seqs, ctx, maxPart   int
		wantPart, wantPartitions int
	}{
		{"batch 1 at context 512 on 132 SMs: 8 KV heads, split 16 ways", 8, 1, 512, g2, 32, 16},
		{"batch 64 fills the GPU without splitting", 8, 64, 512, g2, 1024, 1},
		{"also under a graph's bound of 1024 for contexts just past 512 (the 2B's group of 2)", 8, 64, 1024, g2, 1024, 1},
		{"groups of 4 split it in two", 8, 64, 1024, g4, 512, 2},
		{"batch 32 at 1024 would have 256 blocks: split in two", 8, 32, 1024, g2, 512, 2},
		{"long contexts split into partitions of the instance's maximum", 8, 64, 32768, g2, 1024, 32},
		{"and of 512 for groups above 2", 8, 64, 32768, g4, 512, 64},
	} {
		part, n := decodePartition(c.kv, c.seqs, c.ctx, 132, c.maxPart)
		assert.Equal(t, c.wantPart, part, c.why)
		assert.Equal(t, c.wantPartitions, n, c.why)
	}
}

// TestDeviceCheckReported: a bad index is caught by the kernel, reported by the next Sync as
// ErrDeviceCheck naming the op, and the backend keeps working.
func TestDeviceCheckReported(t *testing.T) {
	b := simBackend(t)
	e := newEnv(t, b)
	table := e.weight(ml.BF16, make([]float32, 4*8), 4, 8)
	out := e.out(ml.F32, 2, 8)
	require.NoError(t, b.EmbedProject(out, ml.EmbedArgs{Tokens: e.in(ml.I32, []int32{1, 9}, 2), Table: table}))
	err := b.Sync()
	require.ErrorIs(t, err, ErrDeviceCheck)
	assert.ErrorContains(t, err, "token id is outside the embedding table")
	require.NoError(t, b.Sync(), "the flag is cleared once reported")

	x := e.in(ml.F32, make([]float32, 3*8), 3, 8)
	g := e.out(ml.F32, 1, 8)
	require.NoError(t, b.Gather(g, x, e.in(ml.I32, []int32{3}, 1)))
	got := make([]float32, 8)
	err = b.Read(g, got)
	require.ErrorIs(t, err, ErrDeviceCheck)
	assert.ErrorContains(t, err, "Gather/ScatterAdd")
}

func TestForeignAndClosed(t *testing.T) {
	b := simBackend(t)
	c := cpu.NewReference()
	x, err := c.Alloc(ml.F32, 2, 4)
	require.NoError(t, err)
	w, err := b.Alloc(ml.F32, 4)
	require.NoError(t, err)
	out, err := b.Alloc(ml.F32, 2, 4)
	require.NoError(t, err)
	assert.ErrorContains(t, b.RMSNorm(out, x, w, 1e-6), "not a CUDA tensor")
	assert.ErrorContains(t, b.Write(out, []int32{1}), "cannot write []int32")
	assert.ErrorContains(t, b.Write(out, make([]float32, 9)), "write 9 elements")
	assert.ErrorContains(t, b.Read(out, make([]float32, 9)), "read 9 elements")
	v := b.Rows(out, 1)
	assert.Equal(t, []int{1, 4}, v.Shape())
	b.Free(v) // a view: nothing happens
	b.Free(out)
	b.Free(w)
	lib, _, _ := loadSim()
	other, err := newBackend(newSimDevice(lib, 4))
	require.NoError(t, err)
	o, err := other.Alloc(ml.F32, 4)
	require.NoError(t, err)
	assert.ErrorContains(t, b.Write(o, []float32{1}), "belongs to another backend")
	require.NoError(t, other.Close())
	require.NoError(t, other.Close(), "Close twice")
	_, err = other.Alloc(ml.F32, 4)
	assert.ErrorContains(t, err, "closed")
}

func TestProfilerNamesKernels(t *testing.T) {
	b := simBackend(t)
	e := newEnv(t, b)
	x := e.in(ml.F32, make([]float32, 4*16), 4, 16)
	w := e.weight(ml.BF16, make([]float32, 8*16), 8, 16)
	n := e.weight(ml.F32, make([]float32, 16), 16)
	out := e.out(ml.F32, 4, 8)
	h := e.out(ml.F32, 4, 16)
	b.SetProfiling(true)
	require.NoError(t, b.RMSNorm(h, x, n, 1e-6))
	require.NoError(t, b.MatMul(out, h, w)) // reads the bf16 copy RMSNorm wrote
	require.NoError(t, b.MatMul(out, x, w)) // x was uploaded: converted first
	require.NoError(t, b.MatMul(out, x, w))
	p := b.Profile()
	names := map[string]int64{}
	for _, o := range p {
		names[o.Name] = o.Calls
	}
	assert.Equal(t, map[string]int64{"qvl_rmsnorm": 1, "qvl_f32_to_bf16": 2, bf16MatMulKernel(4): 3}, names)
	b.ResetProfile()
	assert.Empty(t, b.Profile())
	b.SetProfiling(false)
	require.NoError(t, b.RMSNorm(h, x, n, 1e-6))
	assert.Empty(t, b.Profile())
}

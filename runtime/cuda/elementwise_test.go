package cuda

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The prefill-sized paths of qvl_swiglu (kernels/activation.cu) and qvl_qkv (kernels/qkv.cu)
// must give the same bits as their other paths: the op tests compare with the CPU reference
// under a tolerance, these compare the paths with each other exactly.

// requireSameBits fails at the first element whose bits differ (NaN payloads included).
func requireSameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	require.Len(t, got, len(want), what)
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: element %d is %v (%#08x), want %v (%#08x)", what, i, got[i], math.Float32bits(got[i]),
				want[i], math.Float32bits(want[i]))
		}
	}
}

func TestSwiGLUGrid(t *testing.T) {
	assert.True(t, swigluVector(256, 512, 0, 6144), "aligned, no copy")
	assert.True(t, swigluVector(256, 512, 1024, 8), "aligned with a copy")
	assert.False(t, swigluVector(256, 512, 0, 6146), "I % 4 != 0")
	assert.False(t, swigluVector(260, 512, 0, 8), "out not 16-byte aligned")
	assert.False(t, swigluVector(256, 516, 0, 8), "gu not 16-byte aligned")
	assert.False(t, swigluVector(256, 512, 1026, 8), "copy not 8-byte aligned")
	assert.Equal(t, swigluBlocksPerSM*132, swigluGrid(4096, 6144, true, 132), "prefill: one wave of resident blocks")
	assert.Equal(t, 384, swigluGrid(64, 6144, true, 132), "decode, 64 rows: one unit of 4 a thread")
	assert.Equal(t, 6, swigluGrid(1, 6144, true, 132))
	assert.Equal(t, 4, swigluGrid(1, 769, false, 132), "scalar path: one element a thread")
	assert.Equal(t, 1, swigluGrid(1, 2, false, 132))
}

// TestSwiGLUPathsAgree runs each shape through the op (the vector path where I % 4 == 0), then
// launches qvl_swiglu directly on copies of the data one element past aligned addresses (the
// scalar path) and with small grids (other row and column steps), and requires the same bits
// of out and of its bf16 copy every time.
func TestSwiGLUPathsAgree(t *testing.T) {
	// Rows that are not a multiple of the unroll and, on the emulation's 4 multiprocessors
	// (4096 threads at most), several grid strides a thread: 300 × 640 is 48,000 units of 4.
	shapes := [][2]int{{300, 640}, {129, 1022}, {37, 6}, {5, 4}, {3, 769}, {1, 6144}}
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for i, c := range shapes {
			rows, inter := c[0], c[1]
			t.Run(fmt.Sprintf("%dx%d", rows, inter), func(t *testing.T) {
				r := rand.New(rand.NewPCG(61, uint64(i)))
				e := newEnv(t, b)
				data := randn(r, rows*2*inter, 3)
				data[0] = -100 // e^100 overflows f32: silu is −0
				data[2*inter-1] = float32(math.Inf(1))
				gu := e.in(ml.F32, data, rows, 2*inter)
				out := e.out(ml.F32, rows, inter)
				require.NoError(t, b.SwiGLU(out, gu))
				want := e.read(out)
				bits, ok := readCopy(t, b, out)
				require.True(t, ok, "SwiGLU left no bf16 copy")
				wantBF := make([]float32, len(bits))
				for j, h := range bits {
					wantBF[j] = math.Float32frombits(uint32(h) << 16)
				}
				compare(t, "out", "SwiGLU", want, runSwiGLURef(t, data, rows, inter))

				n := rows * inter
				// One element past aligned: out, gu and the copy all miss the vector path's alignment.
				gu2 := e.in(ml.F32, append([]float32{0}, data...), 1+len(data))
				out2, bf2 := e.out(ml.F32, 1+n), e.out(ml.BF16, 1+n)
				launchSwiGLU(t, b, ptr(out2)+4, ptr(gu2)+4, ptr(bf2)+2, rows, inter, swigluGrid(rows, inter, false, b.info.sms))
				requireSameBits(t, "out, unaligned", e.read(out2)[1:], want)
				requireSameBits(t, "bf16 copy, unaligned", e.read(bf2)[1:], wantBF)
				for _, grid := range []int{1, 3, 7} {
					out3, bf3 := e.out(ml.F32, n), e.out(ml.BF16, n)
					launchSwiGLU(t, b, ptr(out3), ptr(gu), ptr(bf3), rows, inter, grid)
					requireSameBits(t, fmt.Sprintf("out, grid %d", grid), e.read(out3), want)
					requireSameBits(t, fmt.Sprintf("bf16 copy, grid %d", grid), e.read(bf3), wantBF)
				}
				// Without a copy (out_bf16 null).
				out4 := e.out(ml.F32, n)
				launchSwiGLU(t, b, ptr(out4), ptr(gu), 0, rows, inter, 2)
				requireSameBits(t, "out, no copy", e.read(out4), want)
			})
		}
	})
}

// runSwiGLURef is SwiGLU on the CPU reference backend.
func runSwiGLURef(t *testing.T, data []float32, rows, inter int) []float32 {
	t.Helper()
	e := newEnv(t, ref())
	out := e.out(ml.F32, rows, inter)
	require.NoError(t, ref().SwiGLU(out, e.in(ml.F32, data, rows, 2*inter)))
	return e.read(out)
}

// launchSwiGLU queues qvl_swiglu on raw addresses and waits for it.
func launchSwiGLU(t *testing.T, b *Backend, out, gu, obf uintptr, rows, inter, grid int) {
	t.Helper()
	require.NoError(t, b.dev.do(func() error {
		b.a.reset().ptr(out).ptr(gu).i32(rows).i32(inter).ptr(obf)
		if err := b.launch(kSwiGLU, d1(grid), d1(rowThreads), 0); err != nil {
			return err
		}
		return b.dev.sync()
	}))
}

// TestQKVModesAgree runs n > qkvDecodeTokens tokens in one launch (4 warps a token, each
// walking several heads with the next ones' loads in flight) and again in launches of at most
// qkvDecodeTokens (a warp per head), and requires the same bits of q and of both caches. The
// shapes cover a head held whole in registers (hd 64, 128), one that is not (hd 256: the rest
// is loaded where it is used), a head narrower than the registers' share (hd 48), and fewer
// heads than warps (3 heads for 4 warps). The whole launch is also compared with the CPU
// reference.
func TestQKVModesAgree(t *testing.T) {
	cases := []struct{ n, heads, kv, hd int }{
		{300, 16, 8, 128}, {260, 2, 1, 256}, {270, 1, 1, 48}, {258, 4, 2, 64},
	}
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for i, c := range cases {
			t.Run(fmt.Sprintf("n%d_h%d_kv%d_hd%d", c.n, c.heads, c.kv, c.hd), func(t *testing.T) {
				r := rand.New(rand.NewPCG(62, uint64(i)))
				e := newEnv(t, b)
				width := (c.heads + 2*c.kv) * c.hd
				data := randn(r, c.n*width, 1.5)
				normw := func() []float32 {
					w := make([]float32, c.hd)
					for j := range w {
						w[j] = float32(1 + 0.2*r.NormFloat64())
					}
					return w
				}
				qnw, knw := normw(), normw()
				qn, kn := e.weight(ml.BF16, qnw, c.hd), e.weight(ml.BF16, knw, c.hd)
				pos := make([]int32, 3*c.n)
				for j := range pos {
					pos[j] = int32(r.IntN(262144))
				}
				const bs = 16
				layout := ml.KVLayout{NumBlocks: (c.n + bs - 1) / bs, BlockSize: bs, KVHeads: c.kv, HeadDim: c.hd}
				slots := make([]int32, c.n)
				for j, s := range r.Perm(layout.NumBlocks * bs)[:c.n] {
					slots[j] = int32(s)
				}
				half := c.hd / 2
				st := half * 3 / 8
				sh := (half - st) / 2
				rope := ml.Rope{Theta: 5e6, Section: []int{st, sh, half - st - sh}, Interleaved: true}
				run := func(bk ml.Backend, e *env, qn, kn, k, v ml.Tensor, from, to int) []float32 {
					m := to - from
					q := e.out(ml.F32, m, c.heads*c.hd)
					a := ml.QKVArgs{Q: q, QNorm: qn, KNorm: kn, Pos: e.in(ml.I32, pos[3*from:3*to], m, 3),
						Slots: e.in(ml.I32, slots[from:to], m), K: k, V: v, Heads: c.heads, KVHeads: c.kv,
						HeadDim: c.hd, Eps: 1e-6, Rope: rope, Layout: layout}
					require.NoError(t, bk.QKV(e.in(ml.F32, data[from*width:to*width], m, width), a))
					return e.read(q)
				}
				k1, v1 := e.out(ml.BF16, layout.Shape()...), e.out(ml.BF16, layout.Shape()...)
				q1 := run(b, e, qn, kn, k1, v1, 0, c.n)
				k2, v2 := e.out(ml.BF16, layout.Shape()...), e.out(ml.BF16, layout.Shape()...)
				var q2 []float32
				for from := 0; from < c.n; from += qkvDecodeTokens {
					q2 = append(q2, run(b, e, qn, kn, k2, v2, from, min(c.n, from+qkvDecodeTokens))...)
				}
				rb := ref()
				re := newEnv(t, rb)
				kr, vr := re.out(rb.KVDType(), layout.Shape()...), re.out(rb.KVDType(), layout.Shape()...)
				compare(t, "q", "QKV/q", q1, run(rb, re, re.weight(ml.BF16, qnw, c.hd), re.weight(ml.BF16, knw, c.hd), kr, vr, 0, c.n))
				compare(t, "k cache", "QKV/cache", e.read(k1), re.read(kr))
				compare(t, "v cache", "QKV/cache", e.read(v1), re.read(vr))
				requireSameBits(t, "q", q1, q2)
				requireSameBits(t, "k cache", e.read(k1), e.read(k2))
				requireSameBits(t, "v cache", e.read(v1), e.read(v2))
			})
		}
	})
}

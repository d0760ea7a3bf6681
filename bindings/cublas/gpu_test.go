package cublas

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/bindings/cuda"
)

// GPU tests: they skip without a GPU; on a GPU machine without Go, build
// with `go test -c -o cublas.test ./bindings/cublas` and run it there.

// withHandle opens device 0 and runs fn on its thread with a new Handle.
// A failing require inside fn ends the device thread and the test goroutine
// (see cuda.ErrDeviceThreadExited); the deferred cleanups use assert.
func withHandle(t *testing.T, opts Options, fn func(h *Handle)) {
	t.Helper()
	if err := cuda.Available(); err != nil {
		t.Skipf("no GPU found, skipping: %v", err)
	}
	if err := Available(); err != nil {
		t.Skipf("no cuBLAS found, skipping: %v", err)
	}
	d, err := cuda.Open(0)
	require.NoError(t, err)
	defer func() { assert.NoError(t, d.Close()) }()
	require.NoError(t, d.Do(func() error {
		h, err := New(opts)
		require.NoError(t, err)
		defer func() { assert.NoError(t, h.Destroy()) }()
		t.Logf("%s, cuBLASLt %d", d.Properties().Name, LtVersion())
		fn(h)
		return cuda.CtxSynchronize()
	}))
}

// bf16 rounds f to bfloat16 (nearest even), as PyTorch does.
func bf16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN stays NaN
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

func TestBF16Conversion(t *testing.T) {
	require.Equal(t, uint16(0x3f80), bf16(1))
	require.Equal(t, uint16(0xc000), bf16(-2))
	require.Equal(t, float32(1.5), bf16ToF32(bf16(1.5)))
	// 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1).
	require.Equal(t, uint16(0x3f80), bf16(1+1.0/256))
	require.Equal(t, uint16(0x3f81), bf16(1+3.0/512))
}

// upload copies v to new device memory, which the caller frees (inside Do).
func upload[T cuda.Element](t *testing.T, v []T) cuda.DevicePtr {
	t.Helper()
	var zero T
	p, err := cuda.MemAlloc(uint64(len(v)) * uint64(unsafe.Sizeof(zero)))
	require.NoError(t, err)
	require.NoError(t, cuda.MemcpyHtoD(p, v))
	return p
}

// linearOperands makes random bf16 X [m,k], W [n,k] and their exact f32
// values.
func linearOperands(r *rand.Rand, m, n, k int) (xb, wb []uint16, x, w []float64) {
	xb, wb = make([]uint16, m*k), make([]uint16, n*k)
	x, w = make([]float64, m*k), make([]float64, n*k)
	for i := range xb {
		xb[i] = bf16(float32(r.NormFloat64()))
		x[i] = float64(bf16ToF32(xb[i]))
	}
	for i := range wb {
		wb[i] = bf16(float32(r.NormFloat64() * 0.05))
		w[i] = float64(bf16ToF32(wb[i]))
	}
	return
}

// absRef returns sum_p |x[i,p]·w[j,p]| for each output, the scale of the
// accumulation error.
func absRef(m, n, k int, x, w []float64) []float64 {
	ax, aw := make([]float64, len(x)), make([]float64, len(w))
	for i := range x {
		ax[i] = math.Abs(x[i])
	}
	for i := range w {
		aw[i] = math.Abs(w[i])
	}
	out := make([]float64, m*n)
	linearRef(m, n, k, ax, aw, 0, out)
	return out
}

func requireClose(t *testing.T, want, scale []float64, got []float32, relOut float64, what string) {
	t.Helper()
	worst := 0.0
	for i := range want {
		tol := 1e-4*scale[i] + relOut*math.Abs(want[i]) + 1e-6
		d := math.Abs(float64(got[i]) - want[i])
		if d > tol {
			t.Fatalf("%s: element %d = %g, want %g (|diff| %g > tol %g)", what, i, got[i], want[i], d, tol)
		}
		worst = max(worst, d/tol)
	}
	t.Logf("%s: worst |diff|/tol = %.3f", what, worst)
}

func TestGPUSgemmIsExactOnSmallIntegers(t *testing.T) {
	withHandle(t, Options{}, func(h *Handle) {
		const m, n, k = 5, 769, 160 // row-major Y[m,n] = X[m,k]·W[n,k]ᵀ
		r := rand.New(rand.NewPCG(5, 6))
		x, w := make([]float32, m*k), make([]float32, n*k)
		xr, wr := make([]float64, m*k), make([]float64, n*k)
		for i := range x {
			x[i] = float32(r.IntN(9) - 4)
			xr[i] = float64(x[i])
		}
		for i := range w {
			w[i] = float32(r.IntN(9) - 4)
			wr[i] = float64(w[i])
		}
		xp, wp := upload(t, x), upload(t, w)
		yp, err := cuda.MemAlloc(m * n * 4)
		require.NoError(t, err)
		defer func() { _ = cuda.MemFree(xp); _ = cuda.MemFree(wp); _ = cuda.MemFree(yp) }()
		// Column-major: Yᵀ[n,m] = W·Xᵀ with W stored as k×n (lda=k), op T.
		require.NoError(t, h.Sgemm(OpT, OpN, n, m, k, 1, wp, k, xp, k, 0, yp, n))
		got := make([]float32, m*n)
		require.NoError(t, cuda.MemcpyDtoH(got, yp))
		want := make([]float64, m*n)
		linearRef(m, n, k, xr, wr, 0, want)
		for i := range want {
			require.Equal(t, float32(want[i]), got[i], "element %d", i)
		}
	})
}

func TestGPULinearBF16(t *testing.T) {
	withHandle(t, Options{}, func(h *Handle) {
		r := rand.New(rand.NewPCG(7, 8))
		for _, dims := range [][3]int{{5, 769, 160}, {1, 2048, 2048}, {64, 1000, 96}} {
			m, n, k := dims[0], dims[1], dims[2]
			xb, wb, x, w := linearOperands(r, m, n, k)
			scale := absRef(m, n, k, x, w)
			xp, wp := upload(t, xb), upload(t, wb)
			y32, err := cuda.MemAlloc(uint64(m * n * 4))
			require.NoError(t, err)
			y16, err := cuda.MemAlloc(uint64(m * n * 2))
			require.NoError(t, err)
			got := make([]float32, m*n)
			got16 := make([]uint16, m*n)
			asF32 := func(v []uint16) []float32 {
				out := make([]float32, len(v))
				for i := range v {
					out[i] = bf16ToF32(v[i])
				}
				return out
			}
			want := make([]float64, m*n)
			linearRef(m, n, k, x, w, 0, want)

			// cuBLASLt, f32 out, then accumulate a second product (beta = 1).
			s32 := LinearShape{m, n, k, R16BF, R16BF, R32F}
			require.NoError(t, h.Linear(s32, xp, wp, y32, 0))
			require.NoError(t, cuda.MemcpyDtoH(got, y32))
			requireClose(t, want, scale, got, 0, "Lt bf16->f32")
			require.NoError(t, h.Linear(s32, xp, wp, y32, 1))
			require.NoError(t, cuda.MemcpyDtoH(got, y32))
			twice := make([]float64, len(want))
			twoScale := make([]float64, len(want))
			for i := range want {
				twice[i], twoScale[i] = 2*want[i], 2*scale[i]
			}
			requireClose(t, twice, twoScale, got, 0, "Lt bf16->f32, beta=1")

			// cuBLASLt, bf16 out (one bf16 rounding of the f32 result).
			s16 := LinearShape{m, n, k, R16BF, R16BF, R16BF}
			require.NoError(t, h.Linear(s16, xp, wp, y16, 0))
			require.NoError(t, cuda.MemcpyDtoH(got16, y16))
			requireClose(t, want, scale, asF32(got16), 1.0/128, "Lt bf16->bf16")

			// Classic cublasGemmEx, both outputs.
			require.NoError(t, h.LinearGemmEx(s32, xp, wp, y32, 0))
			require.NoError(t, cuda.MemcpyDtoH(got, y32))
			requireClose(t, want, scale, got, 0, "GemmEx bf16->f32")
			require.NoError(t, h.LinearGemmEx(s16, xp, wp, y16, 0))
			require.NoError(t, cuda.MemcpyDtoH(got16, y16))
			requireClose(t, want, scale, asF32(got16), 1.0/128, "GemmEx bf16->bf16")

			for _, p := range []cuda.DevicePtr{xp, wp, y32, y16} {
				require.NoError(t, cuda.MemFree(p))
			}
		}
		require.Equal(t, 6, h.PlanCacheLen(), "one plan per (shape, output type)")
	})
}

func TestGPULinearUnalignedOperandsGetTheirOwnPlan(t *testing.T) {
	withHandle(t, Options{}, func(h *Handle) {
		const m, n, k = 3, 64, 40
		r := rand.New(rand.NewPCG(9, 10))
		xb, wb, x, w := linearOperands(r, m+1, n, k) // one spare row of X
		// X starts one row (80 bytes: 16-byte aligned, not 256) into the buffer.
		xp, wp := upload(t, xb), upload(t, wb)
		yp, err := cuda.MemAlloc(m * n * 4)
		require.NoError(t, err)
		s := LinearShape{m, n, k, R16BF, R16BF, R32F}
		require.NoError(t, h.Linear(s, xp.Offset(k*2), wp, yp, 0))
		got := make([]float32, m*n)
		require.NoError(t, cuda.MemcpyDtoH(got, yp))
		want := make([]float64, m*n)
		linearRef(m, n, k, x[k:], w, 0, want)
		requireClose(t, want, absRef(m, n, k, x[k:], w), got, 0, "offset X")
		require.NoError(t, h.Linear(s, xp, wp, yp, 0))
		require.Equal(t, 2, h.PlanCacheLen())
		for _, p := range []cuda.DevicePtr{xp, wp, yp} {
			require.NoError(t, cuda.MemFree(p))
		}
	})
}

func TestGPULinearWithoutPlanCacheAndCachedAllocations(t *testing.T) {
	withHandle(t, Options{PlanCacheSize: -1}, func(h *Handle) {
		const m, n, k = 2, 32, 16
		r := rand.New(rand.NewPCG(11, 12))
		xb, wb, x, w := linearOperands(r, m, n, k)
		xp, wp := upload(t, xb), upload(t, wb)
		yp, err := cuda.MemAlloc(m * n * 4)
		require.NoError(t, err)
		s := LinearShape{m, n, k, R16BF, R16BF, R32F}
		require.NoError(t, h.Linear(s, xp, wp, yp, 0))
		require.Equal(t, 0, h.PlanCacheLen())
		got := make([]float32, m*n)
		require.NoError(t, cuda.MemcpyDtoH(got, yp))
		want := make([]float64, m*n)
		linearRef(m, n, k, x, w, 0, want)
		requireClose(t, want, absRef(m, n, k, x, w), got, 0, "uncached plan")
		for _, p := range []cuda.DevicePtr{xp, wp, yp} {
			require.NoError(t, cuda.MemFree(p))
		}
	})
	withHandle(t, Options{}, func(h *Handle) {
		const m, n, k = 2, 32, 16
		p, err := cuda.MemAlloc(1 << 20)
		require.NoError(t, err)
		s := LinearShape{m, n, k, R16BF, R16BF, R32F}
		require.NoError(t, h.Linear(s, p, p.Offset(4096), p.Offset(8192), 0))
		allocs := testing.AllocsPerRun(50, func() { _ = h.Linear(s, p, p.Offset(4096), p.Offset(8192), 0) })
		require.Zero(t, allocs, "Linear with a cached plan must not allocate")
		require.NoError(t, cuda.MemFree(p))
	})
}

func TestGPULinearOnStream(t *testing.T) {
	withHandle(t, Options{}, func(h *Handle) {
		st, err := cuda.StreamCreate(cuda.StreamNonBlocking)
		require.NoError(t, err)
		defer func() { assert.NoError(t, st.Destroy()) }()
		require.NoError(t, h.SetStream(st))
		require.Equal(t, st, h.Stream())
		require.NoError(t, h.SetMathMode(DefaultMath))
		const m, n, k = 4, 256, 128
		r := rand.New(rand.NewPCG(13, 14))
		xb, wb, x, w := linearOperands(r, m, n, k)
		xp, wp := upload(t, xb), upload(t, wb)
		yp, err := cuda.MemAlloc(m * n * 4)
		require.NoError(t, err)
		s := LinearShape{m, n, k, R16BF, R16BF, R32F}
		require.NoError(t, h.Linear(s, xp, wp, yp, 0))
		require.NoError(t, st.Synchronize())
		got := make([]float32, m*n)
		require.NoError(t, cuda.MemcpyDtoH(got, yp))
		want := make([]float64, m*n)
		linearRef(m, n, k, x, w, 0, want)
		requireClose(t, want, absRef(m, n, k, x, w), got, 0, "on stream")
		for _, p := range []cuda.DevicePtr{xp, wp, yp} {
			require.NoError(t, cuda.MemFree(p))
		}
	})
}

// TestGPUTuneLinear: TuneLinear times every candidate, keeps one, writes the product as Linear
// would, and later Linear calls of the shape use the kept algorithm with the same result.
func TestGPUTuneLinear(t *testing.T) {
	withHandle(t, Options{}, func(h *Handle) {
		r := rand.New(rand.NewPCG(13, 14))
		for _, dims := range [][3]int{{1, 2048, 2048}, {64, 2048, 6144}, {3, 515, 72}} {
			m, n, k := dims[0], dims[1], dims[2]
			xb, wb, x, w := linearOperands(r, m, n, k)
			xp, wp := upload(t, xb), upload(t, wb)
			yp, err := cuda.MemAlloc(uint64(m * n * 4))
			require.NoError(t, err)
			s := LinearShape{m, n, k, R16BF, R16BF, R32F}
			require.False(t, h.Tuned(s, xp, wp, yp))
			res, err := h.TuneLinear(s, xp, wp, yp, 3)
			require.NoError(t, err)
			require.True(t, h.Tuned(s, xp, wp, yp))
			require.GreaterOrEqual(t, res.Best, 0)
			require.Positive(t, res.Times[res.Best])
			require.Len(t, res.Cands, len(res.Times))
			t.Logf("%d×%d×%d: kept %d (%s)", m, n, k, res.Best, res.Cands[res.Best])
			for i := range res.Times {
				t.Logf("  %-26s %v", res.Cands[i], res.Times[i])
			}
			if m == 64 {
				// The decode-sized GEMM with a deep K gets split-K variants to choose from.
				require.Contains(t, fmt.Sprint(res.Cands), "split-K", "no split-K variant of %d×%d×%d", m, n, k)
			}
			want := make([]float64, m*n)
			linearRef(m, n, k, x, w, 0, want)
			got := make([]float32, m*n)
			require.NoError(t, cuda.MemcpyDtoH(got, yp))
			requireClose(t, want, absRef(m, n, k, x, w), got, 0, "tuned")
			nan := make([]float32, m*n)
			for i := range nan {
				nan[i] = float32(math.NaN())
			}
			require.NoError(t, cuda.MemcpyHtoD(yp, nan)) // Linear must overwrite all of y
			require.NoError(t, h.Linear(s, xp, wp, yp, 0))
			require.NoError(t, cuda.MemcpyDtoH(got, yp))
			requireClose(t, want, absRef(m, n, k, x, w), got, 0, "after tuning")
			for _, p := range []cuda.DevicePtr{xp, wp, yp} {
				require.NoError(t, cuda.MemFree(p))
			}
		}
		_, err := h.TuneLinear(LinearShape{1, 8, 8, R16BF, R16BF, R32F}, 0, 0, 0, 3)
		require.Error(t, err, "nil pointers")

		// With a flush buffer each run is timed alone after it is overwritten: the choice is
		// still one of the candidates and the product the GEMM's.
		flush, err := cuda.MemAlloc(64 << 20)
		require.NoError(t, err)
		defer func() { require.NoError(t, cuda.MemFree(flush)) }()
		h.SetTuneFlush(flush, 64<<20)
		defer h.SetTuneFlush(0, 0)
		m, n, k := 64, 2048, 2048
		xb, wb, x, w := linearOperands(r, m, n, k)
		xp, wp := upload(t, xb), upload(t, wb)
		yp, err := cuda.MemAlloc(uint64(m * n * 4))
		require.NoError(t, err)
		s := LinearShape{m, n, k, R16BF, R16BF, R32F}
		res, err := h.TuneLinear(s, xp, wp, yp, 3)
		require.NoError(t, err)
		require.True(t, h.Tuned(s, xp, wp, yp))
		require.Positive(t, res.Times[res.Best])
		t.Logf("%d×%d×%d with a cold L2: kept %s %v (heuristic 0 %v)", m, n, k, res.Cands[res.Best], res.Times[res.Best], res.Times[0])
		want := make([]float64, m*n)
		linearRef(m, n, k, x, w, 0, want)
		got := make([]float32, m*n)
		require.NoError(t, cuda.MemcpyDtoH(got, yp))
		requireClose(t, want, absRef(m, n, k, x, w), got, 0, "tuned with a cold L2")
		for _, p := range []cuda.DevicePtr{xp, wp, yp} {
			require.NoError(t, cuda.MemFree(p))
		}
	})
}

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

// qvl_gemm_skinny's tolerance against the CPU twin when x is bf16-representable: both sides
// multiply the same bf16 values exactly (the tensor cores accumulate in f32) and differ only
// in summation order (mma.sync's adds, then the S partial sums).
func init() { tolerances["MatMul/skinny"] = tol{1e-5, 1e-4} }

// must returns v, dropping the second result.
func must[T, U any](v T, _ U) T { return v }

// forceSkinny turns qvl_gemm_skinny on for the test (whatever QVL_CUDA_SKINNY says) and
// restores the setting after.
func forceSkinny(t *testing.T, on bool) {
	was := skinnyOn.Load()
	skinnyOn.Store(on)
	t.Cleanup(func() { skinnyOn.Store(was) })
}

// TestSkinnySplit checks the split choice on the H100's 132 SMs for the 2B's decode GEMMs (the
// values skinny.go's comment gives) and its rules elsewhere.
func TestSkinnySplit(t *testing.T) {
	for _, c := range []struct{ n, k, sms, want int }{
		{4096, 2048, 132, 4}, {2048, 2048, 132, 8}, {12288, 2048, 132, 1}, {2048, 6144, 132, 8}, {151936, 2048, 132, 1},
		{2048, 192, 132, 1},  // K too short to split: slices ≥ 256
		{2048, 768, 4, 1},    // 16 tiles already fill 4 SMs
		{100, 1536, 16, 4},   // 1 tile: 8 slices of 192 would be too short
		{100, 64 * 17, 4, 1}, // K = 17 stages: no power of two divides it
		{100, 8192, 132, 8},  // at most 8
	} {
		got := skinnySplit(c.n, c.k, c.sms)
		assert.Equal(t, c.want, got, "n %d k %d sms %d", c.n, c.k, c.sms)
		tiles := (c.n + skinnyBN - 1) / skinnyBN
		assert.LessOrEqual(t, tiles*got, max(tiles, c.sms))
		assert.Zero(t, c.k%(skinnyBK*got))
	}
}

// TestOpSkinny checks MatMul's qvl_gemm_skinny path against the CPU twin: every instance (rows
// 2, 16 → m16; 17 → m32; 40, 64 → m64: rows past M zero-filled), N a multiple of
// 128 and not (the last tile's columns past N skipped), K one stage and many, and split K
// (S 1 to 4 on the 4 emulated SMs, 2 to 8 on 132: the partial tiles and the last block's sum). Outputs start as
// NaN, so an output the kernel misses shows. Each shape runs twice, to check that the tile
// counters are left at zero for the next launch, and compares the two bit for bit.
func TestOpSkinny(t *testing.T) {
	forceSkinny(t, true)
	shapes := []struct{ k, n int }{{64, 128}, {128, 37}, {256, 300}, {1024, 128}, {4096, 64}}
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for _, rows := range []int{2, 16, 17, 40, 64} {
			for _, s := range shapes {
				k, n := s.k, s.n
				if gpu {
					n *= 5
				}
				split := skinnySplit(n, k, b.info.sms)
				t.Run(fmt.Sprintf("%dx%dx%d_S%d", rows, k, n, split), func(t *testing.T) {
					var first []float32
					run := func(bk ml.Backend) []float32 {
						r := rand.New(rand.NewPCG(71, uint64(rows*1000000+k*1000+n)))
						e := newEnv(t, bk)
						xv := bf16Round(randn(r, rows*k, 1))
						x := e.in(ml.F32, xv, rows, k)
						w := e.weight(ml.BF16, randn(r, n*k, 1/math.Sqrt(float64(k))), n, k)
						out := e.out(ml.F32, rows, n)
						if cb, ok := bk.(*Backend); ok {
							for rep := 0; rep < 2; rep++ {
								require.NoError(t, cb.dev.memset32(ptr(out), 0x7fc00000, rows*n)) // NaN
								ran := profiledKernels(t, cb, func() error { return bk.MatMul(out, x, w) })
								want := kernelTable[must(skinnyKernel(rows))].name
								assert.Equal(t, int64(1), ran[want], "kernels run: %v", ran)
								assert.Zero(t, ran["cublasLt gemm bf16"], "kernels run: %v", ran)
								if rep == 0 {
									first = e.read(out)
								}
							}
							got := e.read(out)
							for i := range got {
								if math.Float32bits(got[i]) != math.Float32bits(first[i]) {
									t.Fatalf("y[%d]: second launch %v, first %v: not the same bits (tile counters left non-zero?)", i, got[i], first[i])
								}
							}
							return got
						}
						require.NoError(t, bk.MatMul(out, x, w))
						return e.read(out)
					}
					compare(t, "out", "MatMul/skinny", run(b), run(ref()))
				})
			}
		}
	})
	// On the H100's 132 SMs (emulated) the splits of 2 and 8 that the 4 emulated SMs above do
	// not reach.
	t.Run("sim132", func(t *testing.T) {
		b := simBackendSMs(t, 132)
		for _, c := range []struct{ rows, k, n, split int }{{3, 6144, 256, 8}, {40, 2048, 1500, 8}, {64, 512, 8000, 2}, {17, 1024, 4000, 4}} {
			require.Equal(t, c.split, skinnySplit(c.n, c.k, b.info.sms))
			run := func(bk ml.Backend) []float32 {
				r := rand.New(rand.NewPCG(73, uint64(c.rows)))
				e := newEnv(t, bk)
				x := e.in(ml.F32, bf16Round(randn(r, c.rows*c.k, 1)), c.rows, c.k)
				w := e.weight(ml.BF16, randn(r, c.n*c.k, 1/math.Sqrt(float64(c.k))), c.n, c.k)
				out := e.out(ml.F32, c.rows, c.n)
				require.NoError(t, bk.MatMul(out, x, w))
				return e.read(out)
			}
			got := run(b)
			compare(t, fmt.Sprintf("%dx%dx%d_S%d", c.rows, c.k, c.n, c.split), "MatMul/skinny", got, run(ref()))
		}
	})
}

// TestSkinnyFallsBack checks that MatMul leaves to cuBLASLt (here: the emulation's reference
// GEMM) what qvl_gemm_skinny does not take: one row (qvl_gemv's), more than 64 rows, K not a
// multiple of 64, and everything when it is off.
func TestSkinnyFallsBack(t *testing.T) {
	forceGemv(t)
	forEachCUDA(t, func(t *testing.T, b *Backend, gpu bool) {
		for _, c := range []struct {
			rows, k int
			on      bool
			want    string
		}{
			{1, 128, true, "qvl_gemv_m1"},
			{65, 128, true, "cublasLt gemm bf16"},
			{8, 96, true, "cublasLt gemm bf16"},
			{8, 128, false, "cublasLt gemm bf16"},
			{8, 128, true, "qvl_gemm_skinny_m16"},
		} {
			forceSkinny(t, c.on)
			r := rand.New(rand.NewPCG(72, uint64(c.rows)))
			e := newEnv(t, b)
			x := e.in(ml.F32, bf16Round(randn(r, c.rows*c.k, 1)), c.rows, c.k)
			w := e.weight(ml.BF16, randn(r, 40*c.k, 0.1), 40, c.k)
			out := e.out(ml.F32, c.rows, 40)
			ran := profiledKernels(t, b, func() error { return b.MatMul(out, x, w) })
			assert.Equal(t, int64(1), ran[c.want], "rows %d k %d on %v: kernels run: %v", c.rows, c.k, c.on, ran)
		}
	})
}

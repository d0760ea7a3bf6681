//go:build cgo

package cpu

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// BenchmarkDispatch compares the two ways of spreading one op over the cores: the C pool
// (one cgo call; the caller's thread and spinning workers take the chunks) and GOMAXPROCS
// goroutines that each make a cgo call for their chunk (what parallelFor does).
func BenchmarkDispatch(b *testing.B) {
	threads := runtime.NumCPU()
	b.Run("cgo-call", func(b *testing.B) {
		for b.Loop() {
			cgoNop()
		}
	})
	b.Run(fmt.Sprintf("c-pool-%d", threads), func(b *testing.B) {
		poolOverhead(threads, 1) // start the workers
		b.ResetTimer()
		for b.Loop() {
			poolOverhead(threads, 1)
		}
	})
	b.Run(fmt.Sprintf("goroutines-%d", threads), func(b *testing.B) {
		for b.Loop() {
			var wg sync.WaitGroup
			for t := 0; t < threads; t++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					cgoNop()
				}()
			}
			wg.Wait()
		}
	})
}

// BenchmarkMatMul times the matmul kernels on the 2B model's shapes: the decode GEMV reports the
// weight stream in GB/s, the prefill GEMM GFLOP/s.
func BenchmarkMatMul(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 1))
	type shape struct {
		name    string
		n, k, m int
	}
	shapes := []shape{
		{"gu-n1", 1, 2048, 12288},
		{"down-n1", 1, 6144, 2048},
		{"gu-n4", 4, 2048, 12288},
		{"gu-n8", 8, 2048, 12288},
		{"gu-n16", 16, 2048, 12288},
		{"gu-n128", 128, 2048, 12288}, // the GEMV's last row count
		{"gu-n136", 136, 2048, 12288}, // the GEMM's first ones
		{"gu-n192", 192, 2048, 12288},
		{"gu-n256", 256, 2048, 12288},
		{"gu-n512", 512, 2048, 12288},
		{"gu-n2048", 2048, 2048, 12288},
		{"down-n512", 512, 6144, 2048},
	}
	for _, s := range shapes {
		w := randWeight(r, ml.BF16, s.m, s.k, 0, 0.02)
		x := randF32(r, s.n*s.k, 1)
		out := make([]float32, s.n*s.m)
		precs := []Precision{PrecisionExact}
		if s.n > 4 && detected() >= levelBF16 {
			precs = append(precs, PrecisionBF16, PrecisionHiLo)
		}
		for _, p := range precs {
			for _, th := range []int{1, 2} {
				f := newFastKernelsAt(detected(), th, p)
				b.Run(fmt.Sprintf("%s/%s/t%d", s.name, p, th), func(b *testing.B) {
					f.matmul(out, x, w, s.n, s.k, s.m)
					b.ResetTimer()
					t0 := time.Now()
					for b.Loop() {
						f.matmul(out, x, w, s.n, s.k, s.m)
					}
					sec := time.Since(t0).Seconds() / float64(b.N)
					b.ReportMetric(float64(2*s.m*s.k)/sec/1e9, "wGB/s")
					b.ReportMetric(float64(2*s.n*s.m*s.k)/sec/1e9, "GFLOP/s")
				})
			}
		}
	}
}

// BenchmarkProbe reports the bandwidth probe on 512 MB and the micro-kernel peaks.
func BenchmarkProbe(b *testing.B) {
	data := make([]byte, 512<<20)
	for i := range data {
		data[i] = byte(i)
	}
	for _, th := range []int{1, 2} {
		b.Run(fmt.Sprintf("bandwidth/t%d", th), func(b *testing.B) {
			var best float64
			for b.Loop() {
				best = max(best, ProbeBandwidth(data, th))
			}
			b.ReportMetric(best, "GB/s")
		})
		for _, p := range []Precision{PrecisionExact, PrecisionBF16, PrecisionHiLo} {
			b.Run(fmt.Sprintf("peak-%s/t%d", p, th), func(b *testing.B) {
				var best float64
				for b.Loop() {
					best = max(best, ProbePeak(th, p, 200*time.Millisecond))
				}
				b.ReportMetric(best, "GFLOP/s")
			})
		}
	}
}

// BenchmarkAttentionDecode times one decode step's attention for one layer of the 2B shape.
func BenchmarkAttentionDecode(b *testing.B) {
	r := rand.New(rand.NewPCG(2, 2))
	for _, ctx := range []int{128, 1024} {
		l := ml.KVLayout{NumBlocks: ctx/16 + 1, BlockSize: 16, KVHeads: 8, HeadDim: 128}
		kc := randF32(r, l.NumBlocks*8*16*128, 1)
		vc := randF32(r, len(kc), 1)
		tables := make([]int32, l.NumBlocks)
		for i := range tables {
			tables[i] = int32(i)
		}
		q := randF32(r, 16*128, 1)
		out := make([]float32, len(q))
		a := ml.AttnArgs{NumSeqs: 1, Heads: 16, KVHeads: 8, HeadDim: 128, Scale: 0.088, Layout: l}
		flush := make([]float32, 16<<20) // 64 MB: evicts the cache from L3, as the weight stream of a step does
		for _, th := range []int{1, 2} {
			f := newFastKernelsAt(detected(), th, PrecisionExact)
			for _, cold := range []bool{false, true} {
				name := "warm"
				if cold {
					name = "cold"
				}
				b.Run(fmt.Sprintf("ctx%d/%s/t%d", ctx, name, th), func(b *testing.B) {
					var el time.Duration
					for b.Loop() {
						if cold {
							for i := 0; i < len(flush); i += 16 {
								flush[i]++
							}
						}
						t0 := time.Now()
						f.attention(out, q, kc, vc, []int32{0, 1}, []int32{int32(ctx)}, tables, a)
						el += time.Since(t0)
					}
					b.ReportMetric(float64(el.Nanoseconds())/float64(b.N), "ns/call")
					b.ReportMetric(float64(2*ctx*8*128*4)/el.Seconds()*float64(b.N)/1e9, "kvGB/s")
				})
			}
		}
	}
}

// BenchmarkAttentionPrefill times one layer's attention of a 512-token prompt (2B shape) and
// reports GFLOP/s of its QKᵀ and PV products.
func BenchmarkAttentionPrefill(b *testing.B) {
	r := rand.New(rand.NewPCG(3, 3))
	const n = 512
	l := ml.KVLayout{NumBlocks: n / 16, BlockSize: 16, KVHeads: 8, HeadDim: 128}
	kc := randF32(r, l.NumBlocks*8*16*128, 1)
	vc := randF32(r, len(kc), 1)
	tables := make([]int32, l.NumBlocks)
	for i := range tables {
		tables[i] = int32(i)
	}
	q := randF32(r, n*16*128, 1)
	out := make([]float32, len(q))
	a := ml.AttnArgs{NumSeqs: 1, Heads: 16, KVHeads: 8, HeadDim: 128, Scale: 0.088, Layout: l}
	flops := 4.0 * 128 * 16 * n * (n + 1) / 2
	for _, th := range []int{1, 2} {
		f := newFastKernelsAt(detected(), th, PrecisionExact)
		b.Run(fmt.Sprintf("t%d", th), func(b *testing.B) {
			for b.Loop() {
				f.attention(out, q, kc, vc, []int32{0, n}, []int32{n}, tables, a)
			}
			b.ReportMetric(flops/b.Elapsed().Seconds()*float64(b.N)/1e9, "GFLOP/s")
		})
	}
}

//go:build cgo

package cpu

/*
#cgo LDFLAGS: -lm -lpthread
#include "fast.h"
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"unsafe"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// level is an instruction-set level of the C kernels (QVL_GENERIC ... QVL_AVX512BF16).
type level int

const (
	levelGeneric level = C.QVL_GENERIC
	levelAVX2    level = C.QVL_AVX2
	levelAVX512  level = C.QVL_AVX512
	levelBF16    level = C.QVL_AVX512BF16
)

func (l level) String() string {
	switch l {
	case levelGeneric:
		return "generic"
	case levelAVX2:
		return "avx2"
	case levelAVX512:
		return "avx512"
	case levelBF16:
		return "avx512-bf16"
	}
	return fmt.Sprintf("level(%d)", int(l))
}

var detected = sync.OnceValue(func() level { return level(C.qvl_detect()) })

func kernelLevel() string { return detected().String() }

// pools holds one thread pool per thread count, shared by every backend of the process (the
// pools' threads live as long as the process). A pool that another backend is using runs a
// job on its caller alone instead of waiting.
var pools struct {
	sync.Mutex
	m map[int]*C.qvl_pool
}

func poolFor(threads int) *C.qvl_pool {
	if threads < 2 {
		return nil
	}
	pools.Lock()
	defer pools.Unlock()
	if p, ok := pools.m[threads]; ok {
		return p
	}
	if pools.m == nil {
		pools.m = map[int]*C.qvl_pool{}
	}
	p := C.qvl_pool_new(C.int(threads))
	pools.m[threads] = p // nil when no thread could start: everything runs on the caller
	return p
}

func resolveThreads(threads int) int {
	if threads <= 0 {
		return runtime.NumCPU()
	}
	return threads
}

// fastKernels are the C kernels: AVX-512/AVX2/portable C chosen by cpuid, threaded by a C pool
// in which the calling goroutine's thread takes part.
type fastKernels struct {
	lvl     level
	prec    Precision
	threads int
	pool    *C.qvl_pool
	xbuf    []float32 // activations packed for the GEMMs
	rope    ropeCache
}

// newFastKernels returns the C kernels at the best level this CPU supports, with
// threads threads (0: all cores) and matmul precision p.
func newFastKernels(threads int, p Precision) kernels {
	return newFastKernelsAt(detected(), threads, p)
}

func newFastKernelsAt(l level, threads int, p Precision) *fastKernels {
	if l > detected() {
		l = detected()
	}
	if l < levelBF16 {
		p = PrecisionExact
	}
	threads = resolveThreads(threads)
	return &fastKernels{lvl: l, prec: p, threads: threads, pool: poolFor(threads)}
}

func (f *fastKernels) name() string {
	s := fmt.Sprintf("cpu (%s, %d threads", f.lvl, f.threads)
	if f.prec != PrecisionExact {
		s += ", " + f.prec.String() + " matmul"
	}
	return s + ")"
}

func fp(s []float32) *C.float { return (*C.float)(unsafe.SliceData(s)) }
func ip(s []int32) *C.int32_t { return (*C.int32_t)(unsafe.SliceData(s)) }

// weight returns the data pointer of a BF16 or F32 tensor and whether it is bf16.
func weight(t *Tensor) (unsafe.Pointer, C.int) {
	if t.dt == ml.BF16 {
		return unsafe.Pointer(unsafe.SliceData(t.BF16)), 1
	}
	return unsafe.Pointer(unsafe.SliceData(t.F32)), 0
}

func (f *fastKernels) matmul(out, x []float32, w *Tensor, n, k, m int) {
	if n == 0 || m == 0 {
		return
	}
	if k == 0 {
		clear(out[:n*m]) // empty sums; the GEMM path would not touch out
		return
	}
	wp, bf := weight(w)
	var xb unsafe.Pointer
	if need := int(C.qvl_matmul_scratch(C.int(f.lvl), C.int(f.prec), bf, C.int64_t(n), C.int64_t(k))); need > 0 {
		if len(f.xbuf) < need/4 {
			f.xbuf = make([]float32, need/4)
		}
		xb = unsafe.Pointer(unsafe.SliceData(f.xbuf))
	}
	C.qvl_matmul(f.pool, C.int(f.lvl), C.int(f.prec), fp(out), fp(x), wp, bf, C.int64_t(n), C.int64_t(k), C.int64_t(m), xb)
	runtime.KeepAlive(w)
}

func (f *fastKernels) rmsNorm(out, x []float32, w *Tensor, h int, eps float32) {
	wp, bf := weight(w)
	C.qvl_rmsnorm(f.pool, C.int(f.lvl), fp(out), fp(x), nil, wp, bf, C.int64_t(len(x)/h), C.int64_t(h), C.float(eps))
	runtime.KeepAlive(w)
}

func (f *fastKernels) addRMSNorm(out, x, delta []float32, w *Tensor, h int, eps float32) {
	wp, bf := weight(w)
	C.qvl_rmsnorm(f.pool, C.int(f.lvl), fp(out), fp(x), fp(delta), wp, bf, C.int64_t(len(x)/h), C.int64_t(h), C.float(eps))
	runtime.KeepAlive(w)
}

func (f *fastKernels) swiglu(out, gu []float32, inter int) {
	C.qvl_swiglu(f.pool, C.int(f.lvl), fp(out), fp(gu), C.int64_t(len(out)/inter), C.int64_t(inter))
}

func (f *fastKernels) qkv(qkv, qOut []float32, qn, kn *Tensor, pos, slots []int32, kc, vc []float32, a ml.QKVArgs) {
	n := len(slots)
	if n == 0 {
		return
	}
	cs := f.rope.table(pos[:3*n], a.Rope, a.HeadDim)
	qp, qbf := weight(qn)
	kp, kbf := weight(kn)
	C.qvl_qkv(f.pool, C.int(f.lvl), fp(qkv), fp(qOut), qp, kp, qbf, kbf, (*C.double)(unsafe.SliceData(cs)), ip(slots),
		fp(kc), fp(vc), C.int64_t(n), C.int64_t(a.Heads), C.int64_t(a.KVHeads), C.int64_t(a.HeadDim), C.float(a.Eps),
		C.int64_t(a.Layout.BlockSize))
	runtime.KeepAlive(qn)
	runtime.KeepAlive(kn)
}

func (f *fastKernels) attention(out, q, kc, vc []float32, seqStart, ctxLen, tables []int32, a ml.AttnArgs) {
	if a.NumSeqs == 0 {
		return
	}
	maxBlocks := len(tables) / a.NumSeqs
	C.qvl_attention(f.pool, C.int(f.lvl), fp(out), fp(q), fp(kc), fp(vc), ip(seqStart), ip(ctxLen), ip(tables),
		C.int64_t(maxBlocks), C.int64_t(a.NumSeqs), C.int64_t(a.Heads), C.int64_t(a.KVHeads), C.int64_t(a.HeadDim),
		C.float(a.Scale), C.int64_t(a.Layout.BlockSize))
}

// ropeCache keeps the rotary cos/sin table of the last positions: every layer of a step rotates
// by the same positions, so the table is computed once per step.
type ropeCache struct {
	pos  []int32
	rope ml.Rope
	hd   int
	cs   []float64 // [n][cos of hd/2 angles, their sines]
}

// table returns cos and sin of each token's angle pos[axis(i)] * theta^(-2i/hd), in f64 with
// the reference's own functions.
func (c *ropeCache) table(pos []int32, r ml.Rope, hd int) []float64 {
	if c.cs != nil && c.hd == hd && c.rope.Theta == r.Theta && c.rope.Interleaved == r.Interleaved &&
		slices.Equal(c.rope.Section, r.Section) && slices.Equal(c.pos, pos) {
		return c.cs
	}
	n, half := len(pos)/3, hd/2
	freq := invFreq(r.Theta, hd)
	axes := make([]int, half)
	for i := range axes {
		axes[i] = r.Axis(i)
	}
	if cap(c.cs) < n*hd {
		c.cs = make([]float64, n*hd)
	}
	c.cs = c.cs[:n*hd]
	for t := 0; t < n; t++ {
		row := c.cs[t*hd : (t+1)*hd]
		for i := 0; i < half; i++ {
			row[half+i], row[i] = math.Sincos(float64(pos[3*t+axes[i]]) * freq[i])
		}
	}
	c.pos = append(c.pos[:0], pos...)
	c.rope = ml.Rope{Theta: r.Theta, Section: slices.Clone(r.Section), Interleaved: r.Interleaved}
	c.hd = hd
	return c.cs
}

func probeBandwidth(data []byte, threads int) {
	threads = resolveThreads(threads)
	vals := unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(data))), len(data)/2)
	if uintptr(unsafe.Pointer(unsafe.SliceData(data)))%2 != 0 {
		vals = make([]uint16, len(data)/2) // unaligned input: probe a copy of the same size
	}
	C.qvl_probe(poolFor(threads), C.int(detected()), (*C.uint16_t)(unsafe.SliceData(vals)), C.int64_t(len(vals)))
	runtime.KeepAlive(data)
}

func probePeak(threads int, p Precision, iters int64) float64 {
	threads = resolveThreads(threads)
	return float64(C.qvl_peak(poolFor(threads), C.int(detected()), C.int(p), C.int64_t(iters)))
}

// cgoNop and poolOverhead measure the cost of a cgo call and of an empty pool job (tests).
func cgoNop() { C.qvl_nop() }

func poolOverhead(threads, reps int) {
	C.qvl_pool_overhead(poolFor(resolveThreads(threads)), C.int(reps), C.int64_t(resolveThreads(threads)))
}

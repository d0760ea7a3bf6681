package cublas

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/qvl-dev/qvl/bindings/cuda"
	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// Tuned reports whether the plan of this Linear call (its shape and operand alignments) has
// been tuned by TuneLinear. A call without a cached plan is not tuned.
func (h *Handle) Tuned(s LinearShape, x, w, y cuda.DevicePtr) bool {
	if h.plans == nil {
		return false
	}
	p, ok := h.plans.Peek(planKey{LinearShape: s, alignX: alignment(x), alignW: alignment(w), alignY: alignment(y)})
	return ok && p.tuned
}

// SetTuneFlush gives TuneLinear n bytes of device memory at p (the caller's, at least twice the
// GPU's L2) to overwrite before each timed run, so that a candidate is timed reading its weight
// from DRAM, as a decode step does, and not from the L2 its previous run filled: on the H100 the
// 2B's 64-row qkv, o and down weights (8–25 MB) fit the 50 MB L2, and tuning on warm repeats
// picked algorithms whose gains did not show in whole steps (docs/perf-log.md, sixth to eighth
// runs). With p = 0 or n < 4 the runs are timed back to back, as before.
func (h *Handle) SetTuneFlush(p cuda.DevicePtr, n uint64) {
	h.flush, h.flushBytes = p, n&^3
	if p == 0 {
		h.flushBytes = 0
	}
}

// TuneResult is what TuneLinear measured: the time of each candidate algorithm (the
// heuristic's, in its order, then their split-K variants), what each candidate is, and the
// index of the one kept.
type TuneResult struct {
	Times []time.Duration
	// Cands describes each candidate: "heuristic i" or "heuristic i, split-K s".
	Cands []string
	Best  int
}

// TuneLinear times each algorithm cuBLASLt's heuristic offered for this Linear call (up to 8)
// and split-K variants of its first ones (splitKVariants), reps runs each after one warm-up,
// on the handle's stream with events (each run alone, after the flush memory is overwritten,
// when SetTuneFlush gave some), and keeps the fastest for every later Linear call of the
// same shape and alignments. The heuristic's first guess is not always its fastest: for the
// skinny GEMMs of decode steps it can be several times off (on the H100 the 64-row down
// projection, 2048 × 6144, ran at 48% of the bandwidth it reached at 8 rows: a tile grid of
// N/128 = 16 blocks on 132 SMs, which splitting K multiplies).
// y is overwritten (beta = 0) with the product, so the call computes what Linear would. It
// synchronises the stream: never call it while the stream is being captured into a graph.
func (h *Handle) TuneLinear(s LinearShape, x, w, y cuda.DevicePtr, reps int) (TuneResult, error) {
	if reps < 1 {
		return TuneResult{}, fmt.Errorf("cublas: TuneLinear with %d repetitions", reps)
	}
	if h.plans == nil {
		return TuneResult{}, &Error{Func: "TuneLinear", Code: StatusNotSupported, Detail: "the plan cache is disabled: nothing would keep the choice"}
	}
	p, owned, err := h.linearPlan(s, x, w, y)
	if err != nil {
		return TuneResult{}, err
	}
	if owned { // unreachable with a plan cache, checked above
		defer p.destroy()
	}
	start, err := cuda.EventCreate(cuda.EventDefault)
	if err != nil {
		return TuneResult{}, err
	}
	defer start.Destroy()
	end, err := cuda.EventCreate(cuda.EventDefault)
	if err != nil {
		return TuneResult{}, err
	}
	defer end.Destroy()
	res := TuneResult{Best: -1}
	cands, names := p.cands, make([]string, 0, len(p.cands))
	for i := range p.cands {
		names = append(names, fmt.Sprintf("heuristic %d", i))
	}
	if vs, vn := h.splitKVariants(s, p); len(vs) > 0 {
		cands = append(append([]heuristicResult(nil), p.cands...), vs...)
		names = append(names, vn...)
	}
	res.Cands = names
	var best time.Duration
	for i, c := range cands {
		if c.workspace > h.wsSize {
			res.Times = append(res.Times, 0)
			continue
		}
		if err := h.matmul(s, c.algo, p, x, w, y, 0); err != nil {
			// An algorithm the heuristic offered may still refuse the call: skip it.
			res.Times = append(res.Times, 0)
			continue
		}
		ms, err := h.timeRuns(s, c.algo, p, x, w, y, reps, start, end)
		if err != nil {
			return res, err
		}
		d := time.Duration(float64(ms) * 1e6 / float64(reps))
		res.Times = append(res.Times, d)
		if res.Best < 0 || d < best {
			res.Best, best = i, d
		}
	}
	if res.Best < 0 {
		return res, &Error{Func: "TuneLinear", Code: StatusNotSupported,
			Detail: fmt.Sprintf("none of %d candidate algorithms ran M=%d N=%d K=%d", len(cands), s.M, s.N, s.K)}
	}
	p.algo, p.workspace, p.tuned = cands[res.Best].algo, cands[res.Best].workspace, true
	// The winner's product is the last one written to y only if it ran last: write it again.
	return res, h.matmul(s, p.algo, p, x, w, y, 0)
}

// Algorithm capability and configuration attributes and reduction schemes (cublasLt.h).
const (
	capSplitKSupport        = 0 // CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, int32
	capReductionSchemeMask  = 1 // CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, uint32
	configSplitKNum         = 2 // CUBLASLT_ALGO_CONFIG_SPLITK_NUM, uint32
	configReductionScheme   = 3 // CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, uint32
	reductionComputeType    = 2 // CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
	reductionOutputType     = 4 // CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE
	splitKBaseCandidates    = 4 // heuristic candidates whose split-K variants are tried
	splitKMinSlice          = 256
	splitKMaxRowsForVariant = 256
)

// timeRuns returns the milliseconds that reps runs of algo take on the handle's stream: back to
// back between two events, or, with a flush buffer (SetTuneFlush), each run alone between the
// events after the buffer is overwritten, summed.
func (h *Handle) timeRuns(s LinearShape, algo [8]uint64, p *plan, x, w, y cuda.DevicePtr, reps int, start, end cuda.Event) (float32, error) {
	runs, each := 1, reps
	if h.flushBytes > 0 {
		runs, each = reps, 1
	}
	var total float32
	for i := 0; i < runs; i++ {
		if h.flushBytes > 0 {
			if err := cuda.MemsetD32Async(h.flush, uint32(i), h.flushBytes/4, h.stream); err != nil {
				return 0, err
			}
		}
		if err := start.Record(h.stream); err != nil {
			return 0, err
		}
		for r := 0; r < each; r++ {
			if err := h.matmul(s, algo, p, x, w, y, 0); err != nil {
				return 0, err
			}
		}
		if err := end.Record(h.stream); err != nil {
			return 0, err
		}
		if err := end.Synchronize(); err != nil {
			return 0, err
		}
		ms, err := cuda.EventElapsedTime(start, end)
		if err != nil {
			return 0, err
		}
		total += ms
	}
	return total, nil
}

// splitKCounts returns the split-K factors worth trying for a GEMM of M rows and inner size
// K: powers of two from 2 to 16 that leave K slices of at least splitKMinSlice, for decode-
// sized M only (a prefill GEMM has tiles enough without splitting).
func splitKCounts(m, k int) []int {
	if m > splitKMaxRowsForVariant {
		return nil
	}
	var out []int
	for sk := 2; sk <= 16 && k/sk >= splitKMinSlice; sk *= 2 {
		out = append(out, sk)
	}
	return out
}

// reductionScheme picks a deterministic split-K reduction the algorithm supports (mask is its
// CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK): partial sums in the compute type, else in the
// output type, both in the workspace and reduced in a fixed order; 0 when it has neither (the
// in-place scheme is not taken: Linear may add into y, beta = 1).
func reductionScheme(mask uint32) uint32 {
	switch {
	case mask&reductionComputeType != 0:
		return reductionComputeType
	case mask&reductionOutputType != 0:
		return reductionOutputType
	}
	return 0
}

// splitKVariants returns copies of the plan's first heuristic candidates with K split
// splitKCounts ways and a deterministic reduction, each checked by cublasLtMatmulAlgoCheck
// (which also gives its workspace) and kept when it fits the workspace, with their names.
// None when the library lacks the algorithm-configuration calls.
func (h *Handle) splitKVariants(s LinearShape, p *plan) ([]heuristicResult, []string) {
	counts := splitKCounts(s.M, s.K)
	if len(counts) == 0 || api.ltAlgoCapGetAttr == 0 || api.ltAlgoConfigSetAttr == 0 || api.ltAlgoCheck == 0 {
		return nil, nil
	}
	var out []heuristicResult
	var names []string
	for i := 0; i < len(p.cands) && i < splitKBaseCandidates; i++ {
		base := p.cands[i].algo
		var support int32
		var mask uint32
		var written uint64
		if dl.Call(api.ltAlgoCapGetAttr, uintptr(unsafe.Pointer(&base)), capSplitKSupport, uintptr(unsafe.Pointer(&support)), 4,
			uintptr(unsafe.Pointer(&written))) != 0 || support == 0 {
			continue
		}
		if dl.Call(api.ltAlgoCapGetAttr, uintptr(unsafe.Pointer(&base)), capReductionSchemeMask, uintptr(unsafe.Pointer(&mask)), 4,
			uintptr(unsafe.Pointer(&written))) != 0 {
			continue
		}
		scheme := reductionScheme(mask)
		if scheme == 0 {
			continue
		}
		for _, sk := range counts {
			var r heuristicResult
			r.algo = base
			n := uint32(sk)
			if dl.Call(api.ltAlgoConfigSetAttr, uintptr(unsafe.Pointer(&r.algo)), configSplitKNum, uintptr(unsafe.Pointer(&n)), 4) != 0 ||
				dl.Call(api.ltAlgoConfigSetAttr, uintptr(unsafe.Pointer(&r.algo)), configReductionScheme, uintptr(unsafe.Pointer(&scheme)), 4) != 0 {
				continue
			}
			if dl.Call(api.ltAlgoCheck, h.lt, p.desc, p.aDesc, p.bDesc, p.cDesc, p.cDesc,
				uintptr(unsafe.Pointer(&r.algo)), uintptr(unsafe.Pointer(&r))) != 0 || r.state != 0 || r.workspace > h.wsSize {
				continue
			}
			out = append(out, r)
			names = append(names, fmt.Sprintf("heuristic %d, split-K %d", i, sk))
		}
	}
	return out, names
}

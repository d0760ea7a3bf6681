package cublas

import (
	"fmt"
	"time"

	"github.com/qvl-dev/qvl/bindings/cuda"
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

// TuneResult is what TuneLinear measured: the time of each candidate algorithm, in the
// heuristic's order, and the index of the one kept.
type TuneResult struct {
	Times []time.Duration
	Best  int
}

// TuneLinear times each algorithm cuBLASLt's heuristic offered for this Linear call (up to 8),
// reps runs each after one warm-up, on the handle's stream with events, and keeps the fastest
// for every later Linear call of the same shape and alignments. The heuristic's first guess is
// not always its fastest: for the skinny GEMMs of decode steps it can be several times off.
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
	var best time.Duration
	for i, c := range p.cands {
		if c.workspace > h.wsSize {
			res.Times = append(res.Times, 0)
			continue
		}
		if err := h.matmul(s, c.algo, p, x, w, y, 0); err != nil {
			// An algorithm the heuristic offered may still refuse the call: skip it.
			res.Times = append(res.Times, 0)
			continue
		}
		if err := start.Record(h.stream); err != nil {
			return res, err
		}
		for r := 0; r < reps; r++ {
			if err := h.matmul(s, c.algo, p, x, w, y, 0); err != nil {
				return res, err
			}
		}
		if err := end.Record(h.stream); err != nil {
			return res, err
		}
		if err := end.Synchronize(); err != nil {
			return res, err
		}
		ms, err := cuda.EventElapsedTime(start, end)
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
			Detail: fmt.Sprintf("none of %d candidate algorithms ran M=%d N=%d K=%d", len(p.cands), s.M, s.N, s.K)}
	}
	p.algo, p.workspace, p.tuned = p.cands[res.Best].algo, p.cands[res.Best].workspace, true
	// The winner's product is the last one written to y only if it ran last: write it again.
	return res, h.matmul(s, p.algo, p, x, w, y, 0)
}

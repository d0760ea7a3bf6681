package cuda

import (
	"fmt"
	"math"
	"os"
	"sync/atomic"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// MaxTopK is the largest k that TopK accepts (the kernel sorts its winners in shared memory).
const MaxTopK = 1024

// The split of a row of TopK and Sample over several blocks (kernels/sampling.cu's select_fast).
const (
	// sampleCandMax is QVL_CAND_MAX, the candidates one block keeps per row.
	sampleCandMax = 2048
	// sampleMaxSplit caps the blocks per row: the merging block reads up to this many slices'
	// candidates.
	sampleMaxSplit = 8
	// sampleMinSlice is the shortest slice worth a block of its own: 4 float4 loads for each of
	// the 1024 threads.
	sampleMinSlice = 16384
)

// envSampleSplit set to 1 spreads each row of qvl_sample and qvl_topk over splitRows blocks.
// Off by default until a GPU run has measured it (written and checked on the CPU emulation only:
// the session that wrote it had no device time left); scripts/gpu-check.sh runs its tests and a
// benchmark row with it on.
const envSampleSplit = "QVL_CUDA_SAMPLE_SPLIT"

// sampleSplitOn is set when envSampleSplit is "1" (tests set it).
var sampleSplitOn atomic.Bool

func init() { sampleSplitOn.Store(os.Getenv(envSampleSplit) == "1") }

// splitRows is the number of blocks S that share each of rows rows of v logits: as many as fill
// the sms multiprocessors with one wave of the 1024-thread blocks (one per multiprocessor: 64
// registers per thread), at most sampleMaxSplit, and none with a slice shorter than
// sampleMinSlice. At 64 rows of 151,936 on 132 SMs it is 2; at batch 1, 8.
func splitRows(rows, v, sms int) int {
	if rows <= 0 {
		return 1
	}
	return max(1, min(sms/rows, sampleMaxSplit, v/sampleMinSlice))
}

// splitScratch picks S for a launch over rows rows of v logits and, when S > 1, makes room for
// the kernels' split scratch: one arrival counter per row (zero between launches) and, per row
// and block, 16 bytes of results and sampleCandMax candidates of 8 bytes. It returns S and the
// done, meta and cand pointers (0 when S = 1). Run inside do.
func (b *Backend) splitScratch(rows, v int) (int, [3]uintptr, error) {
	s := 1
	if sampleSplitOn.Load() {
		s = splitRows(rows, v, b.info.sms)
	}
	if b.sampleSplit > 0 {
		s = min(b.sampleSplit, sampleMaxSplit)
	}
	if s == 1 {
		return 1, [3]uintptr{}, nil
	}
	if err := b.ensureZeroed(&b.sampleDone, 4*rows); err != nil {
		return 0, [3]uintptr{}, err
	}
	meta := 16 * rows * s
	if err := b.ensure(&b.sampleWork, meta+8*sampleCandMax*rows*s); err != nil {
		return 0, [3]uintptr{}, err
	}
	return s, [3]uintptr{b.sampleDone.p, b.sampleWork.p, b.sampleWork.p + uintptr(meta)}, nil
}

// checkLogits validates a [B, V] f32 logits tensor of this backend and returns B and V.
func (b *Backend) checkLogits(op string, logits ml.Tensor) (int, int, error) {
	if err := b.owns(op, logits); err != nil {
		return 0, 0, err
	}
	s := logits.Shape()
	if logits.DType() != ml.F32 || len(s) != 2 {
		return 0, 0, fmt.Errorf("%s: logits are %s%v, want f32 [B, V]", op, logits.DType(), s)
	}
	if s[1] <= 0 || s[1] > math.MaxInt32/2 {
		return 0, 0, fmt.Errorf("%s: logits have %d columns", op, s[1])
	}
	return s[0], s[1], nil
}

// TopK implements ml.DeviceSampler with qvl_topk (kernels/sampling.cu): per row the entries
// above a bound of the k[r]-th largest logit (the best of the S slices' k[r]-th largest of 1024
// thread maxes; splitRows picks S) sorted in shared memory, or an exact radix select when too
// many pass the bound; the winners best first (ties: lower id first).
// maxK is at most MaxTopK. Rows with fewer than k[r] non-NaN logits end with id −1 and −inf.
func (b *Backend) TopK(logits ml.Tensor, k []int, maxK int, ids []int32, vals []float32) error {
	const op = "TopK"
	rows, v, err := b.checkLogits(op, logits)
	if err != nil {
		return err
	}
	switch {
	case len(k) != rows:
		return fmt.Errorf("%s: %d values of k for %d rows", op, len(k), rows)
	case maxK < 1 || maxK > MaxTopK:
		return fmt.Errorf("%s: maxK = %d, want 1 ... %d", op, maxK, MaxTopK)
	case len(ids) < rows*maxK || len(vals) < rows*maxK:
		return fmt.Errorf("%s: ids and vals hold %d and %d entries, want %d", op, len(ids), len(vals), rows*maxK)
	}
	kk := make([]int32, rows)
	for r, x := range k {
		if x < 0 || x > maxK {
			return fmt.Errorf("%s: k[%d] = %d is outside [0, %d]", op, r, x, maxK)
		}
		kk[r] = int32(x)
	}
	if rows == 0 {
		return nil
	}
	return b.dev.do(func() error {
		if err := b.ensure(&b.topkK, 4*rows); err != nil {
			return err
		}
		if err := b.ensure(&b.topkIDs, 4*rows*maxK); err != nil {
			return err
		}
		if err := b.ensure(&b.topkVals, 4*rows*maxK); err != nil {
			return err
		}
		if err := b.dev.upload(b.topkK.p, i32Bytes(kk)); err != nil {
			return err
		}
		s, w, err := b.splitScratch(rows, v)
		if err != nil {
			return err
		}
		b.a.reset().ptr(ptr(logits)).i32(v).ptr(b.topkK.p).i32(maxK).ptr(b.topkIDs.p).ptr(b.topkVals.p).
			ptr(w[0]).ptr(w[1]).ptr(w[2]).ptr(b.dev.errFlags())
		if err := b.launch(kTopK, dim3{rows, s, 1}, d1(sampleThreads), 0); err != nil {
			return err
		}
		if err := b.dev.download(i32Bytes(ids[:rows*maxK]), b.topkIDs.p); err != nil {
			return err
		}
		if err := b.dev.download(f32Bytes(vals[:rows*maxK]), b.topkVals.p); err != nil {
			return err
		}
		return b.deviceErrors()
	})
}

// paramWords is the size of one row of qvl_sample's parameters: temperature, top_k, top_p,
// min_p, and the uniform draw as an f64 (two words, low first).
const paramWords = 6

// Sample implements ml.DeviceSampler with qvl_sample (kernels/sampling.cu).
func (b *Backend) Sample(logits ml.Tensor, p []ml.SampleParams, out []int32) error {
	const op = "Sample"
	rows, v, err := b.checkLogits(op, logits)
	if err != nil {
		return err
	}
	if len(p) != rows || len(out) < rows {
		return fmt.Errorf("%s: %d parameter rows and %d outputs for %d logit rows", op, len(p), len(out), rows)
	}
	params := make([]float32, paramWords*rows)
	for r, q := range p {
		switch {
		case !(q.Temperature >= 0) || math.IsInf(float64(q.Temperature), 0):
			return fmt.Errorf("%s: row %d: temperature must be a finite number ≥ 0, got %v", op, r, q.Temperature)
		case !(q.TopP >= 0 && q.TopP <= 1):
			return fmt.Errorf("%s: row %d: top_p must be in [0, 1], got %v", op, r, q.TopP)
		case !(q.MinP >= 0 && q.MinP <= 1):
			return fmt.Errorf("%s: row %d: min_p must be in [0, 1], got %v", op, r, q.MinP)
		case !(q.Uniform >= 0 && q.Uniform < 1):
			return fmt.Errorf("%s: row %d: the uniform draw must be in [0, 1), got %v", op, r, q.Uniform)
		}
		topk := q.TopK
		if topk < 0 {
			topk = 0 // -1 means all, as in package sample
		}
		topk = min(topk, math.MaxInt32)
		row := params[paramWords*r : paramWords*(r+1)]
		row[0] = q.Temperature
		row[1] = math.Float32frombits(uint32(int32(topk)))
		row[2] = q.TopP
		row[3] = q.MinP
		u := math.Float64bits(q.Uniform)
		row[4] = math.Float32frombits(uint32(u))
		row[5] = math.Float32frombits(uint32(u >> 32))
	}
	if rows == 0 {
		return nil
	}
	return b.dev.do(func() error {
		if err := b.ensure(&b.params, 4*len(params)); err != nil {
			return err
		}
		if err := b.ensure(&b.sampled, 4*rows); err != nil {
			return err
		}
		if err := b.dev.upload(b.params.p, f32Bytes(params)); err != nil {
			return err
		}
		s, w, err := b.splitScratch(rows, v)
		if err != nil {
			return err
		}
		b.a.reset().ptr(ptr(logits)).i32(v).ptr(b.params.p).ptr(b.sampled.p).ptr(w[0]).ptr(w[1]).ptr(w[2]).
			ptr(b.dev.errFlags())
		if err := b.launch(kSample, dim3{rows, s, 1}, d1(sampleThreads), 0); err != nil {
			return err
		}
		if err := b.dev.download(i32Bytes(out[:rows]), b.sampled.p); err != nil {
			return err
		}
		return b.deviceErrors()
	})
}

var _ ml.DeviceSampler = (*Backend)(nil)

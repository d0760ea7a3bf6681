package cpu

import (
	"fmt"

	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// TopK implements ml.DeviceSampler with the reference top-k of package sample.
func (b *Backend) TopK(logits ml.Tensor, k []int, maxK int, ids []int32, vals []float32) error {
	rows, v, err := sampleShape("TopK", logits, len(k))
	if err != nil {
		return err
	}
	if len(ids) < rows*maxK || len(vals) < rows*maxK {
		return fmt.Errorf("TopK: outputs hold %d and %d entries, need %d", len(ids), len(vals), rows*maxK)
	}
	x := f32(logits)
	var cand []sample.Candidate
	for r := 0; r < rows; r++ {
		if k[r] < 0 || k[r] > maxK {
			return fmt.Errorf("TopK: k[%d] = %d is outside [0, %d]", r, k[r], maxK)
		}
		cand = sample.TopKRow(cand, x[r*v:(r+1)*v], k[r])
		for i, c := range cand {
			ids[r*maxK+i], vals[r*maxK+i] = c.ID, c.Value
		}
	}
	return nil
}

// Sample implements ml.DeviceSampler with package sample's Drawer, so tokens sampled "on the
// device" on the CPU equal those of the host sampler for the same draws.
func (b *Backend) Sample(logits ml.Tensor, p []ml.SampleParams, out []int32) error {
	rows, v, err := sampleShape("Sample", logits, len(p))
	if err != nil {
		return err
	}
	if len(out) < rows {
		return fmt.Errorf("Sample: output holds %d ids, need %d", len(out), rows)
	}
	x := f32(logits)
	for r := 0; r < rows; r++ {
		q := p[r]
		out[r] = b.drawer.Draw(x[r*v:(r+1)*v], q.Temperature, q.TopK, q.TopP, q.MinP, q.Uniform)
	}
	return nil
}

func sampleShape(op string, logits ml.Tensor, rows int) (int, int, error) {
	if logits == nil || logits.DType() != ml.F32 || len(logits.Shape()) != 2 {
		return 0, 0, fmt.Errorf("%s: logits must be an f32 [B, V] tensor", op)
	}
	if s := logits.Shape(); s[0] != rows {
		return 0, 0, ml.ShapeError(op, "logits", s, fmt.Sprintf("[%d V]", rows))
	}
	return rows, logits.Shape()[1], nil
}

var _ ml.DeviceSampler = (*Backend)(nil)

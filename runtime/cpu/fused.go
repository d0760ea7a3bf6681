package cpu

import "github.com/qvl-dev/qvl/runtime/ml"

// The fused ops of ml.NormMatMuler and ml.SwiGLUMatMuler, composed of the backend's own ops:
// on the CPU a fusion saves nothing (no launches), and the composition is the twin that the
// fused GPU kernels are checked against. Profiles name the ops they are made of.

// NormMatMul implements ml.NormMatMuler: AddRMSNorm (RMSNorm when delta is nil), then MatMul.
func (b *Backend) NormMatMul(y, h, x, delta, norm, w ml.Tensor, eps float32) error {
	if err := ml.CheckNormMatMul(y, h, x, delta, norm, w); err != nil {
		return err
	}
	return ml.NormMatMulOps(b, y, h, x, delta, norm, w, eps)
}

// SwiGLUMatMul implements ml.SwiGLUMatMuler: SwiGLU, then MatMul.
func (b *Backend) SwiGLUMatMul(y, act, gu, w ml.Tensor) error {
	if err := ml.CheckSwiGLUMatMul(y, act, gu, w); err != nil {
		return err
	}
	return ml.SwiGLUMatMulOps(b, y, act, gu, w)
}

var (
	_ ml.NormMatMuler   = (*Backend)(nil)
	_ ml.SwiGLUMatMuler = (*Backend)(nil)
)

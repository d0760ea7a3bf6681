package cpu

import (
	"fmt"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// Backend runs qvl's ops on the CPU. The zero value is not usable; call New.
type Backend struct {
	name        string
	k           kernels
	prof        profile
	drawer      sample.Drawer
	copyWeights bool
}

// Options configure the CPU backend.
type Options struct {
	// Reference forces the plain-Go reference ops even where fast kernels are available.
	Reference bool
	// Threads is the number of threads the fast kernels use (0: all cores).
	Threads int
	// Precision is the fast kernels' matmul precision; the zero value (PrecisionExact) defers to
	// $QVL_CPU_MATMUL, which is exact when unset.
	Precision Precision
	// AliasWeights keeps the fast kernels' weights in the checkpoint's memory mapping instead of
	// copying them into anonymous memory (huge pages where the kernel allows); the copy streams
	// faster, the alias saves the memory.
	AliasWeights bool
}

// kernels is the set of op implementations the backend dispatches to: the reference loops, or
// the fast cgo kernels where they exist. Arguments are already validated.
type kernels interface {
	name() string
	matmul(out, x []float32, w *Tensor, n, k, m int)
	rmsNorm(out, x []float32, w *Tensor, h int, eps float32)
	addRMSNorm(out, x, delta []float32, w *Tensor, h int, eps float32)
	swiglu(out, gu []float32, inter int)
	qkv(qkv, qOut []float32, qn, kn *Tensor, pos, slots []int32, kc, vc []float32, a ml.QKVArgs)
	attention(out, q, kc, vc []float32, seqStart, ctxLen, tables []int32, a ml.AttnArgs)
}

// refKernels are the plain-Go reference implementations.
type refKernels struct{}

func (refKernels) name() string { return "cpu-ref" }
func (refKernels) matmul(out, x []float32, w *Tensor, n, k, m int) {
	matmulRef(out, x, w, n, k, m)
}
func (refKernels) rmsNorm(out, x []float32, w *Tensor, h int, eps float32) {
	rmsNormRef(out, x, w, h, eps)
}
func (refKernels) addRMSNorm(out, x, delta []float32, w *Tensor, h int, eps float32) {
	addRMSNormRef(out, x, delta, w, h, eps)
}
func (refKernels) swiglu(out, gu []float32, inter int) { swigluRef(out, gu, inter) }
func (refKernels) qkv(qkv, qOut []float32, qn, kn *Tensor, pos, slots []int32, kc, vc []float32, a ml.QKVArgs) {
	qkvRef(qkv, qOut, qn, kn, pos, slots, kc, vc, a)
}
func (refKernels) attention(out, q, kc, vc []float32, seqStart, ctxLen, tables []int32, a ml.AttnArgs) {
	attentionRef(out, q, kc, vc, seqStart, ctxLen, tables, a)
}

// New returns a CPU backend: the fast kernels when they were built in and not disabled,
// otherwise the plain-Go reference.
func New(o Options) *Backend {
	var k kernels = refKernels{}
	copyWeights := false
	if !o.Reference {
		p := o.Precision
		if p == PrecisionExact {
			p = envPrecision()
		}
		if f := newFastKernels(o.Threads, p); f != nil {
			k, copyWeights = f, !o.AliasWeights
		}
	}
	return &Backend{name: k.name(), k: k, copyWeights: copyWeights}
}

// NewReference returns the plain-Go reference backend.
func NewReference() *Backend { return New(Options{Reference: true}) }

// Name implements ml.Backend.
func (b *Backend) Name() string { return b.name }

// KVDType implements ml.Backend: the CPU keeps the cache in f32.
func (b *Backend) KVDType() ml.DType { return ml.F32 }

func cast(t ml.Tensor) *Tensor {
	if t == nil {
		return nil
	}
	c, ok := t.(*Tensor)
	if !ok {
		panic(fmt.Sprintf("cpu backend given a foreign tensor %T", t))
	}
	return c
}

func f32(t ml.Tensor) []float32 {
	if c := cast(t); c != nil {
		return c.F32
	}
	return nil
}

func i32(t ml.Tensor) []int32 {
	if c := cast(t); c != nil {
		return c.I32
	}
	return nil
}

// Alloc implements ml.Backend.
func (b *Backend) Alloc(dt ml.DType, shape ...int) (ml.Tensor, error) {
	for _, d := range shape {
		if d < 0 {
			return nil, fmt.Errorf("cpu: alloc %s%v: negative dimension", dt, shape)
		}
	}
	return NewTensor(dt, shape...), nil
}

// Weight implements ml.Backend. The reference backend aliases aligned little-endian data; the
// fast one copies it into anonymous memory unless Options.AliasWeights is set.
func (b *Backend) Weight(dt ml.DType, shape []int, data []byte) (ml.Tensor, error) {
	if !b.copyWeights {
		return tensorFromBytes(dt, shape, data)
	}
	data, owner := anonCopy(data)
	t, err := tensorFromBytes(dt, shape, data)
	if t != nil {
		t.owner = owner
	}
	return t, err
}

// Free implements ml.Backend; memory is reclaimed by the garbage collector.
func (b *Backend) Free(t ml.Tensor) {}

// Write implements ml.Backend.
func (b *Backend) Write(t ml.Tensor, src any) error {
	c := cast(t)
	switch s := src.(type) {
	case []float32:
		switch c.dt {
		case ml.F32:
			if len(s) > len(c.F32) {
				return fmt.Errorf("cpu: write %d elements into %s", len(s), c)
			}
			copy(c.F32, s)
			return nil
		case ml.BF16:
			if len(s) > len(c.BF16) {
				return fmt.Errorf("cpu: write %d elements into %s", len(s), c)
			}
			for i, v := range s {
				c.BF16[i] = loader.F32ToBF16(v)
			}
			return nil
		}
	case []int32:
		if c.dt == ml.I32 {
			if len(s) > len(c.I32) {
				return fmt.Errorf("cpu: write %d elements into %s", len(s), c)
			}
			copy(c.I32, s)
			return nil
		}
	}
	return fmt.Errorf("cpu: cannot write %T into %s", src, c)
}

// Read implements ml.Backend.
func (b *Backend) Read(t ml.Tensor, dst any) error {
	c := cast(t)
	switch d := dst.(type) {
	case []float32:
		switch c.dt {
		case ml.F32:
			if len(d) > len(c.F32) {
				return fmt.Errorf("cpu: read %d elements from %s", len(d), c)
			}
			copy(d, c.F32)
			return nil
		case ml.BF16:
			if len(d) > len(c.BF16) {
				return fmt.Errorf("cpu: read %d elements from %s", len(d), c)
			}
			for i := range d {
				d[i] = loader.BF16ToF32(c.BF16[i])
			}
			return nil
		}
	case []int32:
		if c.dt == ml.I32 {
			if len(d) > len(c.I32) {
				return fmt.Errorf("cpu: read %d elements from %s", len(d), c)
			}
			copy(d, c.I32)
			return nil
		}
	}
	return fmt.Errorf("cpu: cannot read %s into %T", c, dst)
}

// Rows implements ml.Backend.
func (b *Backend) Rows(t ml.Tensor, n int) ml.Tensor { return cast(t).rows(n) }

// EmbedProject implements ml.Backend.
func (b *Backend) EmbedProject(out ml.Tensor, a ml.EmbedArgs) error {
	if err := ml.CheckEmbed(out, a); err != nil {
		return err
	}
	h := a.Table.Shape()[1]
	var p *projectorRef
	if a.Projector != nil {
		pr := a.Projector
		p = &projectorRef{fc1: cast(pr.FC1), b1: cast(pr.B1), fc2: cast(pr.FC2), b2: cast(pr.B2), k: pr.K, h: pr.H, tanh: pr.TanhGELU}
	}
	toks := i32(a.Tokens)
	vocab := int32(a.Table.Shape()[0])
	for i, t := range toks {
		if t < 0 || t >= vocab {
			return fmt.Errorf("EmbedProject: token %d at row %d is outside the vocabulary [0, %d)", t, i, vocab)
		}
	}
	if err := checkRowIndex("EmbedProject", "visual_idx", i32(a.VisualIdx), len(toks)); err != nil {
		return err
	}
	if err := checkRowIndex("EmbedProject", "custom_idx", i32(a.CustomIdx), len(toks)); err != nil {
		return err
	}
	if a.CustomIdx != nil {
		ne := a.Custom.Shape()[0]
		if err := checkRowIndex("EmbedProject", "custom_src", i32(a.CustomSrc), ne*a.Projector.K); err != nil {
			return err
		}
	}
	t0 := b.prof.begin()
	embedRef(f32(out), h, toks, cast(a.Table), f32(a.Visual), i32(a.VisualIdx), f32(a.Custom), i32(a.CustomIdx), i32(a.CustomSrc), p)
	b.prof.end("EmbedProject", t0)
	return nil
}

func checkRowIndex(op, name string, idx []int32, n int) error {
	for i, r := range idx {
		if r < 0 || int(r) >= n {
			return fmt.Errorf("%s: %s[%d] = %d is outside [0, %d)", op, name, i, r, n)
		}
	}
	return nil
}

// MatMul implements ml.Backend.
func (b *Backend) MatMul(out, x, w ml.Tensor) error {
	if err := ml.CheckMatMul(out, x, w); err != nil {
		return err
	}
	n, k := x.Shape()[0], x.Shape()[1]
	t0 := b.prof.begin()
	b.k.matmul(f32(out), f32(x), cast(w), n, k, w.Shape()[0])
	b.prof.end("MatMul", t0)
	return nil
}

// RMSNorm implements ml.Backend.
func (b *Backend) RMSNorm(out, x, w ml.Tensor, eps float32) error {
	if err := ml.CheckRMSNorm(out, x, w); err != nil {
		return err
	}
	t0 := b.prof.begin()
	b.k.rmsNorm(f32(out), f32(x), cast(w), x.Shape()[1], eps)
	b.prof.end("RMSNorm", t0)
	return nil
}

// AddRMSNorm implements ml.Backend.
func (b *Backend) AddRMSNorm(out, x, delta, w ml.Tensor, eps float32) error {
	if err := ml.CheckAddRMSNorm(out, x, delta, w); err != nil {
		return err
	}
	t0 := b.prof.begin()
	b.k.addRMSNorm(f32(out), f32(x), f32(delta), cast(w), x.Shape()[1], eps)
	b.prof.end("AddRMSNorm", t0)
	return nil
}

// SwiGLU implements ml.Backend.
func (b *Backend) SwiGLU(out, gu ml.Tensor) error {
	if err := ml.CheckSwiGLU(out, gu); err != nil {
		return err
	}
	t0 := b.prof.begin()
	b.k.swiglu(f32(out), f32(gu), out.Shape()[1])
	b.prof.end("SwiGLU", t0)
	return nil
}

// ScatterAdd implements ml.Backend.
func (b *Backend) ScatterAdd(x, rows, idx ml.Tensor) error {
	if err := ml.CheckScatterAdd(x, rows, idx); err != nil {
		return err
	}
	if err := checkRowIndex("ScatterAdd", "idx", i32(idx), x.Shape()[0]); err != nil {
		return err
	}
	t0 := b.prof.begin()
	scatterAddRef(f32(x), f32(rows), i32(idx), x.Shape()[1])
	b.prof.end("ScatterAdd", t0)
	return nil
}

// Gather implements ml.Backend.
func (b *Backend) Gather(out, x, idx ml.Tensor) error {
	if err := ml.CheckGather(out, x, idx); err != nil {
		return err
	}
	if err := checkRowIndex("Gather", "idx", i32(idx), x.Shape()[0]); err != nil {
		return err
	}
	t0 := b.prof.begin()
	gatherRef(f32(out), f32(x), i32(idx), x.Shape()[1])
	b.prof.end("Gather", t0)
	return nil
}

// QKV implements ml.Backend.
func (b *Backend) QKV(qkv ml.Tensor, a ml.QKVArgs) error {
	if err := ml.CheckQKV(qkv, a); err != nil {
		return err
	}
	if a.K.DType() != ml.F32 {
		return fmt.Errorf("QKV: the CPU cache must be f32, got %s", a.K.DType())
	}
	slots := i32(a.Slots)
	if err := checkRowIndex("QKV", "slots", slots, a.Layout.NumBlocks*a.Layout.BlockSize); err != nil {
		return err
	}
	t0 := b.prof.begin()
	b.k.qkv(f32(qkv), f32(a.Q), cast(a.QNorm), cast(a.KNorm), i32(a.Pos), slots, f32(a.K), f32(a.V), a)
	b.prof.end("QKV", t0)
	return nil
}

// Attention implements ml.Backend.
func (b *Backend) Attention(out, q ml.Tensor, a ml.AttnArgs) error {
	if err := ml.CheckAttention(out, q, a); err != nil {
		return err
	}
	if a.K.DType() != ml.F32 {
		return fmt.Errorf("Attention: the CPU cache must be f32, got %s", a.K.DType())
	}
	seqStart, ctxLen, tables := i32(a.SeqStart), i32(a.CtxLen), i32(a.BlockTables)
	maxBlocks := a.BlockTables.Shape()[1]
	n := q.Shape()[0]
	if seqStart[0] != 0 || int(seqStart[a.NumSeqs]) != n {
		return fmt.Errorf("Attention: seq_start must run from 0 to %d rows, got %d..%d", n, seqStart[0], seqStart[a.NumSeqs])
	}
	for s := 0; s < a.NumSeqs; s++ {
		ql := int(seqStart[s+1] - seqStart[s])
		c := int(ctxLen[s])
		if ql < 0 || c < ql || c > maxBlocks*a.Layout.BlockSize {
			return fmt.Errorf("Attention: sequence %d has %d query rows and context %d (max %d)", s, ql, c, maxBlocks*a.Layout.BlockSize)
		}
		for j := 0; j < (c+a.Layout.BlockSize-1)/a.Layout.BlockSize; j++ {
			if blk := tables[s*maxBlocks+j]; blk < 0 || int(blk) >= a.Layout.NumBlocks {
				return fmt.Errorf("Attention: sequence %d block %d maps to %d, outside [0, %d)", s, j, blk, a.Layout.NumBlocks)
			}
		}
	}
	t0 := b.prof.begin()
	b.k.attention(f32(out), f32(q), f32(a.K), f32(a.V), seqStart, ctxLen, tables, a)
	b.prof.end("Attention", t0)
	return nil
}

// Sync implements ml.Backend; CPU ops are synchronous.
func (b *Backend) Sync() error { return nil }

// Close implements ml.Backend.
func (b *Backend) Close() error { return nil }

var _ ml.Backend = (*Backend)(nil)

// Package cuda is qvl's CUDA backend: ml.Backend on an NVIDIA GPU, driven from Go without cgo
// through the purego bindings of package bindings/cuda (driver API) and bindings/cublas
// (cuBLASLt), with qvl's own kernels (directory kernels/, embedded as PTX and JIT-compiled by
// the driver for the GPU it finds).
//
// Layout on the device: activations are f32 tensors; weights stay as given (bf16 as published,
// f32 norms and biases); the KV cache is bf16 in ml.KVLayout's paged layout (KVDType). MatMul
// multiplies x rounded to bf16 by a bf16 weight with cuBLASLt (bf16×bf16 → f32; f32 weights use
// an f32 GEMM). The ops that produce GEMM inputs (RMSNorm, AddRMSNorm, SwiGLU, Attention,
// Gather) also write a bf16 copy of their output, and MatMul reads that copy when it is
// current instead of launching a conversion kernel (see copies.go). All work runs in order on
// one stream of one device; Sync waits for it, Read copies after it. Every op validates its
// operands on the host (package ml's checks) before it queues anything; index tensors live on
// the device, so the kernels check indices themselves and raise flags that the next Sync or
// Read reports as an error wrapping ErrDeviceCheck.
//
// Without a usable GPU, Available and Open return an error that says why (no driver, no
// device), and callers fall back to the CPU backend.
package cuda

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unsafe"

	"github.com/qvl-dev/qvl/bindings/cublas"
	drv "github.com/qvl-dev/qvl/bindings/cuda"
	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/ml"
)

// Available reports whether a GPU can run this backend: the CUDA driver loads and sees a
// device, and cuBLAS/cuBLASLt load. The error says what is missing.
func Available() error {
	if err := drv.Available(); err != nil {
		return err
	}
	return cublas.Available()
}

// Options configure Open.
type Options struct {
	// Device is the GPU ordinal.
	Device int
}

// Tensor is a tensor in device memory.
type Tensor struct {
	dt    ml.DType
	shape []int
	ptr   uintptr
	view  bool
	owner *Backend
	// root is the allocation a view (Rows) looks into; nil for an allocation itself.
	root *Tensor
	// shadow is a bf16 copy of an f32 weight for kernels that read bf16 operands, made on
	// first use and dropped when the tensor is written or freed.
	shadow *Tensor
	// act is the bf16 copy of an f32 activation that producer ops write beside it (on the
	// allocation, not on views; see copies.go).
	act *bf16Copy
}

// DType implements ml.Tensor.
func (t *Tensor) DType() ml.DType { return t.dt }

// Shape implements ml.Tensor.
func (t *Tensor) Shape() []int { return t.shape }

// Ptr is the tensor's device address (0 for an empty tensor).
func (t *Tensor) Ptr() uintptr { return t.ptr }

// String describes the tensor for error messages.
func (t *Tensor) String() string { return fmt.Sprintf("cuda %s%v", t.dt, t.shape) }

func (t *Tensor) bytes() int { return ml.NumElements(t) * t.dt.Size() }

// scratch is a device buffer that grows on demand.
type scratch struct {
	p uintptr
	n int
}

// Backend runs qvl's ops on one GPU. Its methods must be called from one goroutine at a time,
// as ml.Backend requires.
type Backend struct {
	dev    device
	info   devInfo
	a      kargs
	rope   map[ropeKey]uintptr
	bar    uintptr // the persistent embedding kernel's grid barrier (2 words, zero between launches)
	prof   profiler
	closed bool
	// graphs are the executable graphs by Capture key; capturing is set while one is recorded.
	graphs    graphs
	capturing bool
	// copyGen is the generation of the activations' bf16 copies: a copy is current only if it
	// was written in this generation (see copies.go).
	copyGen uint64
	// decodePart, when positive, replaces decodePartition's choice of the decode attention's
	// partition (tokens): the GPU benchmark sweeps it.
	decodePart int
	// decodeMaxPart, when positive, caps the partitions decodePartition may choose (the GPU
	// benchmark times the cap of 512 that was the rule before the sixth H100 run beside it).
	decodeMaxPart int
	// attnPipe, when not 0, replaces envAttnPipe's choice of decode attention instances: 1 the
	// pipelined ones (where they exist), −1 the plain ones (tests and the benchmark compare them).
	attnPipe int
	// forceSkinnySplit, when positive, replaces skinnySplit's choice of qvl_gemm_skinny's K
	// slices (the GPU benchmark sweeps it).
	forceSkinnySplit int
	// sampleSplit, when positive, replaces splitRows's choice of blocks per row of TopK and
	// Sample (tests use it to split small rows).
	sampleSplit int
	// embedBK64 makes EmbedProject launch qvl_embed_bk64 (QVL_EMBED_BK=64, read by newBackend);
	// embedPhase runs only some of its phases (the GPU benchmark's breakdown; ops.go).
	embedBK64  bool
	embedPhase embedPhase
	// embedPath, when not embedAuto, forces EmbedProject's path (tests and the benchmark).
	embedPath embedPath

	xbf, embedInts, embedMid, embedF32, part, partML, partDone scratch
	topkK, topkIDs, topkVals, params, sampled                  scratch
	sampleDone, sampleWork                                     scratch
	fusedCnt                                                   scratch // qvl_norm_gemv's block counter (fused.go; zero between launches)
	skinnyPart, skinnyCnt                                      scratch // qvl_gemm_skinny's split-K partials and tile counters (skinny.go; the counters zero between launches)
}

// Open opens GPU o.Device with its own stream, cuBLASLt handle and the embedded kernels.
func Open(o Options) (*Backend, error) {
	g, err := openGPU(o.Device)
	if err != nil {
		return nil, err
	}
	b, err := newBackend(g)
	if err != nil {
		_ = g.close()
		return nil, err
	}
	return b, nil
}

// newBackend makes a backend on an opened device.
func newBackend(d device) (*Backend, error) {
	bk64, err := embedBK64FromEnv()
	if err != nil {
		return nil, err
	}
	b := &Backend{dev: d, info: d.info(), rope: map[ropeKey]uintptr{}, embedBK64: bk64}
	if bk64 && embedSmemBK64 > b.info.smemOptin {
		return nil, fmt.Errorf("cuda: %s=64 needs %d bytes of shared memory a block; %s allows %d",
			envEmbedBK, embedSmemBK64, b.info.name, b.info.smemOptin)
	}
	err = d.do(func() error {
		p, err := d.alloc(8)
		if err != nil {
			return fmt.Errorf("cuda: grid barrier: %w", err)
		}
		b.bar = p
		if err := d.memset32(p, 0, 2); err != nil {
			return err
		}
		return d.sync()
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Name implements ml.Backend.
func (b *Backend) Name() string { return b.info.name }

// KVDType implements ml.Backend: the cache is bf16.
func (b *Backend) KVDType() ml.DType { return ml.BF16 }

// tensor returns t as this backend's tensor.
func (b *Backend) tensor(t ml.Tensor) (*Tensor, error) {
	c, ok := t.(*Tensor)
	if !ok || c == nil {
		return nil, fmt.Errorf("cuda: %T is not a CUDA tensor", t)
	}
	if c.owner != b {
		return nil, fmt.Errorf("cuda: %s belongs to another backend", c)
	}
	return c, nil
}

// ptr returns t's device address, 0 for a nil tensor; a foreign tensor is caught by the op's
// own tensor checks (owns) before this is called.
func ptr(t ml.Tensor) uintptr {
	if c, ok := t.(*Tensor); ok && c != nil {
		return c.ptr
	}
	return 0
}

// owns checks that every non-nil tensor belongs to b.
func (b *Backend) owns(op string, ts ...ml.Tensor) error {
	for _, t := range ts {
		if t == nil {
			continue
		}
		if _, err := b.tensor(t); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return nil
}

func (b *Backend) alive() error {
	if b.closed {
		return errors.New("cuda: the backend is closed")
	}
	return nil
}

// Alloc implements ml.Backend.
func (b *Backend) Alloc(dt ml.DType, shape ...int) (ml.Tensor, error) {
	if err := b.alive(); err != nil {
		return nil, err
	}
	t := &Tensor{dt: dt, shape: append([]int(nil), shape...), owner: b}
	n := 1
	for _, d := range shape {
		if d < 0 {
			return nil, fmt.Errorf("cuda: alloc %s%v: negative dimension", dt, shape)
		}
		n *= d
	}
	if n == 0 {
		return t, nil
	}
	err := b.dev.do(func() error {
		var err error
		t.ptr, err = b.dev.alloc(n * dt.Size())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cuda: alloc %s%v (%d bytes): %w", dt, shape, n*dt.Size(), err)
	}
	return t, nil
}

// Weight implements ml.Backend: the bytes are copied to the device.
func (b *Backend) Weight(dt ml.DType, shape []int, data []byte) (ml.Tensor, error) {
	n := 1
	for _, d := range shape {
		n *= d
	}
	if len(data) != n*dt.Size() {
		return nil, fmt.Errorf("cuda: weight %s%v: %d bytes, want %d", dt, shape, len(data), n*dt.Size())
	}
	t, err := b.Alloc(dt, shape...)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return t, nil
	}
	c := t.(*Tensor)
	err = b.dev.do(func() error {
		if err := b.dev.upload(c.ptr, data); err != nil {
			return err
		}
		return b.dev.sync()
	})
	if err != nil {
		b.Free(t)
		return nil, fmt.Errorf("cuda: weight %s%v: %w", dt, shape, err)
	}
	return t, nil
}

// Free implements ml.Backend (a no-op for views and foreign tensors). It discards every
// recorded graph, since a graph may use the tensor.
func (b *Backend) Free(t ml.Tensor) {
	c, err := b.tensor(t)
	if err != nil || c.view || b.closed {
		return
	}
	_ = b.dev.do(func() error {
		// A recorded graph may point into this tensor: replaying it after the memory is reused
		// would read and write someone else's data. Freeing is rare (the model reallocates its
		// step buffers when a batch outgrows them), so every graph goes.
		b.dropGraphs()
		if c.shadow != nil && c.shadow.ptr != 0 {
			_ = b.dev.free(c.shadow.ptr)
		}
		if c.act != nil {
			_ = b.dev.free(c.act.ptr)
		}
		if c.ptr != 0 {
			return b.dev.free(c.ptr)
		}
		return nil
	})
	c.shadow = nil
	c.act = nil
	c.ptr = 0
}

// Rows implements ml.Backend: a view of the first n rows (n is clamped to the tensor's rows).
func (b *Backend) Rows(t ml.Tensor, n int) ml.Tensor {
	c, err := b.tensor(t)
	if err != nil {
		return t
	}
	if len(c.shape) == 0 {
		return c
	}
	n = max(0, min(n, c.shape[0]))
	v := &Tensor{dt: c.dt, shape: append([]int{n}, c.shape[1:]...), ptr: c.ptr, view: true, owner: b, root: c.base()}
	if n == 0 {
		v.ptr = 0
	}
	return v
}

func f32Bytes(s []float32) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), 4*len(s))
}

func i32Bytes(s []int32) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), 4*len(s))
}

func u16Bytes(s []uint16) []byte {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), 2*len(s))
}

// Write implements ml.Backend. The copy is queued on the stream (through page-locked staging),
// so it is ordered with the ops around it.
func (b *Backend) Write(t ml.Tensor, src any) error {
	c, err := b.tensor(t)
	if err != nil {
		return err
	}
	var data []byte
	n := ml.NumElements(c)
	switch s := src.(type) {
	case []float32:
		if len(s) > n {
			return fmt.Errorf("cuda: write %d elements into %s", len(s), c)
		}
		switch c.dt {
		case ml.F32:
			data = f32Bytes(s)
		case ml.BF16:
			h := make([]uint16, len(s))
			for i, v := range s {
				h[i] = loader.F32ToBF16(v)
			}
			data = u16Bytes(h)
		default:
			return fmt.Errorf("cuda: cannot write []float32 into %s", c)
		}
	case []int32:
		if c.dt != ml.I32 {
			return fmt.Errorf("cuda: cannot write []int32 into %s", c)
		}
		if len(s) > n {
			return fmt.Errorf("cuda: write %d elements into %s", len(s), c)
		}
		data = i32Bytes(s)
	default:
		return fmt.Errorf("cuda: cannot write %T into %s", src, c)
	}
	if len(data) == 0 {
		return nil
	}
	b.stale(c)
	shadow := c.shadow
	c.shadow = nil
	return b.dev.do(func() error {
		if shadow != nil {
			if err := b.dev.free(shadow.ptr); err != nil {
				return err
			}
		}
		return b.dev.upload(c.ptr, data)
	})
}

// Read implements ml.Backend: it waits for the queued work, copies, and reports any flag the
// kernels raised.
func (b *Backend) Read(t ml.Tensor, dst any) error {
	c, err := b.tensor(t)
	if err != nil {
		return err
	}
	n := ml.NumElements(c)
	var raw []byte
	var bf []uint16
	switch d := dst.(type) {
	case []float32:
		if len(d) > n {
			return fmt.Errorf("cuda: read %d elements from %s", len(d), c)
		}
		switch c.dt {
		case ml.F32:
			raw = f32Bytes(d)
		case ml.BF16:
			bf = make([]uint16, len(d))
			raw = u16Bytes(bf)
		default:
			return fmt.Errorf("cuda: cannot read %s into []float32", c)
		}
	case []int32:
		if c.dt != ml.I32 {
			return fmt.Errorf("cuda: cannot read %s into []int32", c)
		}
		if len(d) > n {
			return fmt.Errorf("cuda: read %d elements from %s", len(d), c)
		}
		raw = i32Bytes(d)
	default:
		return fmt.Errorf("cuda: cannot read %s into %T", c, dst)
	}
	err = b.dev.do(func() error {
		if len(raw) > 0 {
			if err := b.dev.download(raw, c.ptr); err != nil {
				return err
			}
		} else if err := b.dev.sync(); err != nil {
			return err
		}
		return b.deviceErrors()
	})
	if err != nil {
		return err
	}
	if bf != nil {
		d := dst.([]float32)
		for i, v := range bf {
			d[i] = loader.BF16ToF32(v)
		}
	}
	return nil
}

// Sync implements ml.Backend: it waits for the queued work and reports any flag the kernels raised.
func (b *Backend) Sync() error {
	if err := b.alive(); err != nil {
		return err
	}
	return b.dev.do(func() error {
		if err := b.dev.sync(); err != nil {
			return err
		}
		return b.deviceErrors()
	})
}

// Close implements ml.Backend: it frees the backend's own buffers and releases the device.
// Tensors the caller did not free are released with the device's context.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	err := b.dev.do(func() error {
		var errs []error
		errs = append(errs, b.dev.sync())
		b.dropGraphs()
		for _, s := range []*scratch{&b.xbf, &b.embedInts, &b.embedMid, &b.embedF32, &b.part, &b.partML, &b.partDone, &b.topkK,
			&b.topkIDs, &b.topkVals, &b.params, &b.sampled, &b.sampleDone, &b.sampleWork, &b.fusedCnt} {
			if s.p != 0 {
				errs = append(errs, b.dev.free(s.p))
			}
			*s = scratch{}
		}
		for k, p := range b.rope {
			errs = append(errs, b.dev.free(p))
			delete(b.rope, k)
		}
		if b.bar != 0 {
			errs = append(errs, b.dev.free(b.bar))
		}
		b.prof.release(b.dev)
		return errors.Join(errs...)
	})
	return errors.Join(err, b.dev.close())
}

// ensure grows s to at least bytes (contents are not kept). Run inside do.
func (b *Backend) ensure(s *scratch, bytes int) error {
	if bytes <= s.n {
		return nil
	}
	if b.capturing {
		return fmt.Errorf("cuda: a scratch buffer must grow to %d bytes while a graph is captured", bytes)
	}
	// Recorded graphs point at the old buffer.
	b.dropGraphs()
	if s.p != 0 {
		if err := b.dev.free(s.p); err != nil {
			return err
		}
		*s = scratch{}
	}
	n := max(bytes, 2*s.n, 4096)
	p, err := b.dev.alloc(n)
	if err != nil {
		return fmt.Errorf("cuda: scratch of %d bytes: %w", n, err)
	}
	*s = scratch{p: p, n: n}
	return nil
}

// ensureZeroed is ensure for a buffer that must hold zeros between launches (the kernels that
// use it leave it so): a new buffer is cleared in stream order. Run inside do.
func (b *Backend) ensureZeroed(s *scratch, bytes int) error {
	if bytes <= s.n {
		return nil
	}
	if err := b.ensure(s, bytes); err != nil {
		return err
	}
	return b.dev.memset32(s.p, 0, s.n/4)
}

// launch queues kernel k with the arguments packed in b.a. Run inside do.
func (b *Backend) launch(k kernelID, grid, block dim3, smem int) error {
	spec := kernelTable[k]
	if err := b.a.check(spec); err != nil {
		return err
	}
	if !grid.valid() || !block.valid() {
		return fmt.Errorf("%s: bad launch shape grid %v block %v", spec.name, grid, block)
	}
	if b.prof.on {
		return b.prof.time(b.dev, spec.name, func() error { return b.dev.launch(k, grid, block, smem, &b.a) })
	}
	return b.dev.launch(k, grid, block, smem, &b.a)
}

// linear queues a cuBLASLt GEMM. Run inside do.
func (b *Backend) linear(m, n, k int, bf16 bool, x, w, y uintptr) error {
	if b.prof.on {
		name := "cublasLt gemm f32"
		if bf16 {
			name = "cublasLt gemm bf16"
		}
		return b.prof.time(b.dev, name, func() error { return b.dev.linear(m, n, k, bf16, x, w, y) })
	}
	return b.dev.linear(m, n, k, bf16, x, w, y)
}

// bf16Ptr returns a bf16 copy of weight t's data: t itself when it is bf16, otherwise a shadow
// converted on first use. Run inside do.
func (b *Backend) bf16Ptr(t *Tensor) (uintptr, error) {
	if t.dt == ml.BF16 {
		return t.ptr, nil
	}
	if t.shadow != nil {
		return t.shadow.ptr, nil
	}
	n := ml.NumElements(t)
	p, err := b.dev.alloc(2 * max(n, 1))
	if err != nil {
		return 0, fmt.Errorf("cuda: bf16 copy of %s: %w", t, err)
	}
	if err := b.convertBF16(t.ptr, p, n); err != nil {
		_ = b.dev.free(p)
		return 0, err
	}
	t.shadow = &Tensor{dt: ml.BF16, shape: t.shape, ptr: p, owner: b}
	return p, nil
}

// convertBF16 queues y[i] = bf16(x[i]) for n elements. Run inside do.
func (b *Backend) convertBF16(x, y uintptr, n int) error {
	if n == 0 {
		return nil
	}
	grid := min((n/4+255)/256+1, 8*b.info.sms)
	b.a.reset().ptr(x).ptr(y).i64(int64(n))
	return b.launch(kF32ToBF16, d1(max(grid, 1)), d1(256), 0)
}

// deviceErrors reads and clears the kernels' error flags. Run inside do, after a sync.
func (b *Backend) deviceErrors() error {
	codes, err := b.dev.takeErrors()
	if err != nil || len(codes) == 0 {
		return err
	}
	return deviceCheckError(codes)
}

// ropeKey identifies a rotary table.
type ropeKey struct {
	theta       float64
	headDim     int
	section     [3]int
	nsec        int
	interleaved bool
}

// ropeTable returns the device table of a Rope at head size hd: inv_freq[hd/2] (f64, as the
// CPU reference computes it) followed by axis[hd/2] (i32, ml.Rope.Axis). Run inside do.
func (b *Backend) ropeTable(r ml.Rope, hd int) (uintptr, error) {
	k := ropeKey{theta: r.Theta, headDim: hd, nsec: len(r.Section), interleaved: r.Interleaved}
	copy(k.section[:], r.Section)
	if p, ok := b.rope[k]; ok {
		return p, nil
	}
	if b.capturing {
		return 0, errors.New("cuda: a rotary table must be made while a graph is captured")
	}
	half := hd / 2
	data := make([]byte, 12*half)
	for i := 0; i < half; i++ {
		f := math.Pow(r.Theta, -float64(2*i)/float64(hd))
		binary.LittleEndian.PutUint64(data[8*i:], math.Float64bits(f))
		binary.LittleEndian.PutUint32(data[8*half+4*i:], uint32(int32(r.Axis(i))))
	}
	p, err := b.dev.alloc(len(data))
	if err != nil {
		return 0, fmt.Errorf("cuda: rope table: %w", err)
	}
	if err := b.dev.upload(p, data); err != nil {
		_ = b.dev.free(p)
		return 0, err
	}
	b.rope[k] = p
	return p, nil
}

var _ ml.Backend = (*Backend)(nil)

// Batch implements ml.Batcher: fn and every backend call it makes run on the device thread in
// one hand-off (calls made from there run inline).
func (b *Backend) Batch(fn func() error) error { return b.dev.do(fn) }

var _ ml.Batcher = (*Backend)(nil)

package cublas

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/qvl-dev/qvl/bindings/cuda"
	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// LinearShape is the shape and element types of one Linear product
// Y[M,N] = X[M,K]·W[N,K]ᵀ. Supported types: X = W = R16BF with Y R16BF or
// R32F; X = W = R16F with Y R16F or R32F; X = W = Y = R32F. Accumulation is
// always f32.
type LinearShape struct {
	// M is the number of rows of X and Y (tokens), N the rows of W (output
	// features), K the columns of X and W (input features).
	M, N, K int
	// XType is the element type of X.
	XType DataType
	// WType is the element type of W; it must equal XType.
	WType DataType
	// YType is the element type of Y: XType or R32F.
	YType DataType
}

func (s LinearShape) validate() error {
	if err := checkDims("Linear", s.M, s.N, s.K); err != nil {
		return err
	}
	ok := s.XType == s.WType && (s.YType == s.XType || s.YType == R32F) &&
		(s.XType == R16BF || s.XType == R16F || s.XType == R32F)
	if !ok {
		return &Error{Func: "Linear", Code: StatusInvalidValue,
			Detail: fmt.Sprintf("types X %v W %v Y %v: want X = W in {bf16, f16, f32} and Y = X or f32", s.XType, s.WType, s.YType)}
	}
	return nil
}

// planKey is a LinearShape plus the alignment (in bytes, at most 256) of
// each operand's address: cuBLASLt's heuristic may pick kernels that need
// 16-byte or better alignment, so a plan is only reused for pointers at
// least as aligned as the ones it was chosen for.
type planKey struct {
	LinearShape
	alignX, alignW, alignY uint32
}

// alignment returns the largest power of two, at most 256, dividing p.
func alignment(p cuda.DevicePtr) uint32 {
	a := uint32(256)
	for a > 1 && uintptr(p)%uintptr(a) != 0 {
		a >>= 1
	}
	return a
}

// plan is what cuBLASLt needs for one shape: the operation descriptor, the
// layouts of A (= W), B (= X) and C = D (= Y), and the heuristic's algorithm.
type plan struct {
	desc, aDesc, bDesc, cDesc uintptr
	algo                      [8]uint64
	workspace                 uint64
	// cands are the heuristic's usable algorithms, best guess first; tuned is set once
	// TuneLinear has timed them and put the fastest in algo.
	cands []heuristicResult
	tuned bool
}

func (p *plan) destroy() error {
	var errs []error
	for _, l := range []*uintptr{&p.aDesc, &p.bDesc, &p.cDesc} {
		if *l != 0 {
			errs = append(errs, check("cublasLtMatrixLayoutDestroy", dl.Call(api.ltMatrixLayoutDestroy, *l)))
			*l = 0
		}
	}
	if p.desc != 0 {
		errs = append(errs, check("cublasLtMatmulDescDestroy", dl.Call(api.ltMatmulDescDestroy, p.desc)))
		p.desc = 0
	}
	return errors.Join(errs...)
}

// Attribute ids (cublasLt.h).
const (
	descTransA         = 3 // CUBLASLT_MATMUL_DESC_TRANSA, int32
	descTransB         = 4 // CUBLASLT_MATMUL_DESC_TRANSB, int32
	prefMaxWorkspace   = 1 // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64
	prefMinAlignA      = 5 // CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32 (B, C, D follow)
	heuristicRequested = 8
)

// heuristicResult mirrors cublasLtMatmulHeuristicResult_t (96 bytes).
type heuristicResult struct {
	algo       [8]uint64
	workspace  uint64
	state      int32
	wavesCount float32
	reserved   [4]int32
}

func setAttr(fn uintptr, name string, obj uintptr, attr int, v unsafe.Pointer, size uintptr) error {
	return checkf(name, dl.Call(fn, obj, uintptr(attr), uintptr(v), size), "attribute %d", attr)
}

// layout is a cuBLASLt matrix layout: a column-major rows×cols matrix with
// leading dimension ld.
type layout struct {
	t              DataType
	rows, cols, ld int
}

// linearLayouts returns the column-major layouts of A = W, B = X and
// C = D = Y for Yᵀ = op(A)·op(B) with op(A) = T and op(B) = N (see the
// package doc): a row-major [R,C] matrix is a column-major C×R one with
// leading dimension C.
func linearLayouts(s LinearShape) (a, b, c layout) {
	return layout{s.WType, s.K, s.N, s.K}, layout{s.XType, s.K, s.M, s.K}, layout{s.YType, s.N, s.M, s.N}
}

func newLayout(l layout) (uintptr, error) {
	var p uintptr
	err := checkf("cublasLtMatrixLayoutCreate", dl.Call(api.ltMatrixLayoutCreate, uintptr(unsafe.Pointer(&p)),
		uintptr(l.t), uintptr(l.rows), uintptr(l.cols), uintptr(l.ld)), "%v %dx%d ld %d", l.t, l.rows, l.cols, l.ld)
	return p, err
}

// newPlan builds the descriptors for k and asks the heuristic for the best
// algorithm that fits the workspace.
func (h *Handle) newPlan(k planKey) (*plan, error) {
	p := &plan{}
	fail := func(err error) (*plan, error) {
		_ = p.destroy()
		return nil, fmt.Errorf("Linear M=%d N=%d K=%d (%v·%vᵀ -> %v): %w", k.M, k.N, k.K, k.XType, k.WType, k.YType, err)
	}
	if err := check("cublasLtMatmulDescCreate", dl.Call(api.ltMatmulDescCreate, uintptr(unsafe.Pointer(&p.desc)),
		uintptr(Compute32F), uintptr(R32F))); err != nil {
		return fail(err)
	}
	transA, transB := int32(OpT), int32(OpN)
	if err := setAttr(api.ltMatmulDescSetAttr, "cublasLtMatmulDescSetAttribute", p.desc, descTransA, unsafe.Pointer(&transA), 4); err != nil {
		return fail(err)
	}
	if err := setAttr(api.ltMatmulDescSetAttr, "cublasLtMatmulDescSetAttribute", p.desc, descTransB, unsafe.Pointer(&transB), 4); err != nil {
		return fail(err)
	}
	var err error
	la, lb, lc := linearLayouts(k.LinearShape)
	if p.aDesc, err = newLayout(la); err != nil {
		return fail(err)
	}
	if p.bDesc, err = newLayout(lb); err != nil {
		return fail(err)
	}
	if p.cDesc, err = newLayout(lc); err != nil {
		return fail(err)
	}

	var pref uintptr
	if err := check("cublasLtMatmulPreferenceCreate", dl.Call(api.ltPrefCreate, uintptr(unsafe.Pointer(&pref)))); err != nil {
		return fail(err)
	}
	defer dl.Call(api.ltPrefDestroy, pref)
	ws := h.wsSize
	if err := setAttr(api.ltPrefSetAttr, "cublasLtMatmulPreferenceSetAttribute", pref, prefMaxWorkspace, unsafe.Pointer(&ws), 8); err != nil {
		return fail(err)
	}
	aligns := [4]uint32{k.alignW, k.alignX, k.alignY, k.alignY} // A, B, C, D
	for i := range aligns {
		if err := setAttr(api.ltPrefSetAttr, "cublasLtMatmulPreferenceSetAttribute", pref, prefMinAlignA+i, unsafe.Pointer(&aligns[i]), 4); err != nil {
			return fail(err)
		}
	}

	var results [heuristicRequested]heuristicResult
	var n int32
	if err := check("cublasLtMatmulAlgoGetHeuristic", dl.Call(api.ltAlgoGetHeuristic, h.lt, p.desc,
		p.aDesc, p.bDesc, p.cDesc, p.cDesc, pref, heuristicRequested,
		uintptr(unsafe.Pointer(&results[0])), uintptr(unsafe.Pointer(&n)))); err != nil {
		return fail(err)
	}
	for _, r := range results[:n] {
		if r.state == 0 && r.workspace <= h.wsSize {
			p.cands = append(p.cands, r)
		}
	}
	if len(p.cands) > 0 {
		p.algo, p.workspace = p.cands[0].algo, p.cands[0].workspace
		return p, nil
	}
	return fail(&Error{Func: "cublasLtMatmulAlgoGetHeuristic", Code: StatusNotSupported,
		Detail: fmt.Sprintf("%d candidate algorithms, none usable with %d bytes of workspace", n, h.wsSize)})
}

// Linear computes Y = X·Wᵀ + beta·Y for row-major X [M,K], W [N,K] and
// Y [M,N] (beta = 0 overwrites Y; beta = 1 adds to it, e.g. a residual) with
// cuBLASLt on the handle's stream. The plan for the shape and the operands'
// alignments comes from the cache when present; with a cached plan Linear
// does not allocate.
func (h *Handle) Linear(s LinearShape, x, w, y cuda.DevicePtr, beta float32) error {
	p, owned, err := h.linearPlan(s, x, w, y)
	if err != nil {
		return err
	}
	err = h.matmul(s, p.algo, p, x, w, y, beta)
	if owned {
		err = errors.Join(err, p.destroy())
	}
	return err
}

// linearPlan validates a Linear call and returns its plan: the cached one, or a new one that
// is cached, or (owned, without a plan cache) one the caller must destroy.
func (h *Handle) linearPlan(s LinearShape, x, w, y cuda.DevicePtr) (p *plan, owned bool, err error) {
	if err := s.validate(); err != nil {
		return nil, false, err
	}
	if x == 0 || w == 0 || y == 0 {
		return nil, false, &Error{Func: "Linear", Code: StatusInvalidValue, Detail: "nil device pointer"}
	}
	k := planKey{LinearShape: s, alignX: alignment(x), alignW: alignment(w), alignY: alignment(y)}
	if h.plans != nil {
		if p, ok := h.plans.Get(k); ok {
			return p, false, nil
		}
	}
	if p, err = h.newPlan(k); err != nil {
		return nil, false, err
	}
	if h.plans != nil {
		h.plans.Add(k, p)
		return p, false, nil
	}
	return p, true, nil
}

// matmul queues cublasLtMatmul of plan p with algorithm algo.
func (h *Handle) matmul(s LinearShape, algo [8]uint64, p *plan, x, w, y cuda.DevicePtr, beta float32) error {
	h.alpha, h.beta, h.algo = 1, beta, algo
	h.pin.Pin(h)
	pa, pb, palgo := h.scalarPtrs()
	h.call = [20]uintptr{h.lt, p.desc, pa, uintptr(w), p.aDesc, uintptr(x), p.bDesc, pb,
		uintptr(y), p.cDesc, uintptr(y), p.cDesc, palgo, uintptr(h.ws), uintptr(h.wsSize), uintptr(h.stream)}
	r := dl.CallSlice(api.ltMatmul, h.call[:16])
	h.pin.Unpin()
	if r != 0 {
		return checkf("cublasLtMatmul", r, "M=%d N=%d K=%d (%v·%vᵀ -> %v)", s.M, s.N, s.K, s.XType, s.WType, s.YType)
	}
	return nil
}

// LinearGemmEx computes the same product as Linear with the classic
// cublasGemmEx (T, N, m=N, n=M, k=K) instead of cuBLASLt: no plan, cuBLAS's
// own heuristic each call. It serves as a cross-check and a fallback.
func (h *Handle) LinearGemmEx(s LinearShape, x, w, y cuda.DevicePtr, beta float32) error {
	if err := s.validate(); err != nil {
		return err
	}
	return h.GemmEx(GemmExArgs{
		TransA: OpT, TransB: OpN, M: s.N, N: s.M, K: s.K,
		Alpha: 1, A: w, AType: s.WType, LDA: s.K,
		B: x, BType: s.XType, LDB: s.K,
		Beta: beta, C: y, CType: s.YType, LDC: s.N,
		Compute: Compute32F, Algo: GemmDefault,
	})
}

// PlanCacheLen returns the number of cached Linear plans.
func (h *Handle) PlanCacheLen() int {
	if h.plans == nil {
		return 0
	}
	return h.plans.Len()
}

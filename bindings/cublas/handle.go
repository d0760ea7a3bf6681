package cublas

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/qvl-dev/qvl/bindings/cuda"
	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// DataType is a cudaDataType (library_types.h).
type DataType int32

// Data types qvl uses.
const (
	// R32F is CUDA_R_32F (float).
	R32F DataType = 0
	// R16F is CUDA_R_16F (IEEE half).
	R16F DataType = 2
	// R16BF is CUDA_R_16BF (bfloat16).
	R16BF DataType = 14
)

// Size returns the element size in bytes (0 for types this package does not
// know).
func (t DataType) Size() int {
	switch t {
	case R32F:
		return 4
	case R16F, R16BF:
		return 2
	}
	return 0
}

// String returns the cudaDataType name.
func (t DataType) String() string {
	switch t {
	case R32F:
		return "CUDA_R_32F"
	case R16F:
		return "CUDA_R_16F"
	case R16BF:
		return "CUDA_R_16BF"
	}
	return fmt.Sprintf("cudaDataType(%d)", int32(t))
}

// Operation is a cublasOperation_t.
type Operation int32

const (
	// OpN is CUBLAS_OP_N: use the matrix as stored.
	OpN Operation = 0
	// OpT is CUBLAS_OP_T: use its transpose.
	OpT Operation = 1
)

// ComputeType is a cublasComputeType_t.
type ComputeType int32

const (
	// Compute32F is CUBLAS_COMPUTE_32F: f32 accumulation (bf16/f16 inputs
	// still run on tensor cores).
	Compute32F ComputeType = 68
	// Compute32FPedantic is CUBLAS_COMPUTE_32F_PEDANTIC: no reduced-precision
	// shortcuts anywhere.
	Compute32FPedantic ComputeType = 69
	// Compute32FFastTF32 is CUBLAS_COMPUTE_32F_FAST_TF32: f32 inputs rounded to
	// TF32 for tensor cores.
	Compute32FFastTF32 ComputeType = 77
)

// GemmAlgo is a cublasGemmAlgo_t.
type GemmAlgo int32

// GemmDefault is CUBLAS_GEMM_DEFAULT: let cuBLAS choose.
const GemmDefault GemmAlgo = -1

// MathMode is a cublasMath_t.
type MathMode int32

const (
	// DefaultMath is CUBLAS_DEFAULT_MATH (f32 GEMMs stay f32).
	DefaultMath MathMode = 0
	// PedanticMath is CUBLAS_PEDANTIC_MATH.
	PedanticMath MathMode = 2
	// TF32TensorOpMath is CUBLAS_TF32_TENSOR_OP_MATH: f32 GEMMs may use TF32.
	TF32TensorOpMath MathMode = 3
)

// Defaults for Options.
const (
	// DefaultWorkspaceBytes is the workspace cuBLAS/cuBLASLt get: 32 MiB, what
	// NVIDIA recommends for Hopper.
	DefaultWorkspaceBytes = 32 << 20
	// DefaultPlanCacheSize is the number of Linear plans kept.
	DefaultPlanCacheSize = 256
)

// Options configure New.
type Options struct {
	// WorkspaceBytes is the device workspace shared by cuBLAS and cuBLASLt;
	// 0 means DefaultWorkspaceBytes.
	WorkspaceBytes uint64
	// PlanCacheSize is how many Linear plans (descriptors plus heuristic
	// choice) are kept; 0 means DefaultPlanCacheSize, negative disables the
	// cache (every Linear builds and frees its plan).
	PlanCacheSize int
}

// Handle holds a cuBLAS handle, a cuBLASLt handle, their workspace and the
// Linear plan cache. It is not safe for concurrent use, and, like every
// cuBLAS call, it must be used inside (*cuda.Device).Do.
type Handle struct {
	blas   uintptr
	lt     uintptr
	stream cuda.Stream
	ws     cuda.DevicePtr
	wsSize uint64
	plans  *lru.Cache[planKey, *plan]
	// evictErr keeps the first error from destroying an evicted plan, for
	// Destroy to report.
	evictErr error
	// flush and flushBytes: device memory TuneLinear overwrites before each timed
	// run (SetTuneFlush); none when flushBytes is 0.
	flush      cuda.DevicePtr
	flushBytes uint64

	// Values passed to C by address. They live in the Handle (a heap object,
	// pinned for each call), so the calls do not allocate.
	alpha, beta float32
	algo        [8]uint64
	call        [20]uintptr
	pin         runtime.Pinner
}

// New creates the handles on the current context (call it inside
// (*cuda.Device).Do), allocates the workspace and sets both libraries to
// use it and the legacy default stream until SetStream.
func New(opts Options) (*Handle, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if opts.WorkspaceBytes == 0 {
		opts.WorkspaceBytes = DefaultWorkspaceBytes
	}
	if opts.PlanCacheSize == 0 {
		opts.PlanCacheSize = DefaultPlanCacheSize
	}
	h := &Handle{wsSize: opts.WorkspaceBytes}
	if err := check("cublasCreate_v2", dl.Call(api.cublasCreate, uintptr(unsafe.Pointer(&h.blas)))); err != nil {
		return nil, err
	}
	if err := check("cublasLtCreate", dl.Call(api.ltCreate, uintptr(unsafe.Pointer(&h.lt)))); err != nil {
		_ = h.Destroy()
		return nil, err
	}
	ws, err := cuda.MemAlloc(h.wsSize)
	if err != nil {
		_ = h.Destroy()
		return nil, fmt.Errorf("cublas: workspace: %w", err)
	}
	h.ws = ws
	if err := h.setWorkspace(); err != nil {
		_ = h.Destroy()
		return nil, err
	}
	if opts.PlanCacheSize > 0 {
		h.plans, err = lru.NewWithEvict(opts.PlanCacheSize, func(_ planKey, p *plan) {
			if err := p.destroy(); err != nil && h.evictErr == nil {
				h.evictErr = err
			}
		})
		if err != nil {
			_ = h.Destroy()
			return nil, fmt.Errorf("cublas: plan cache: %w", err)
		}
	}
	return h, nil
}

// setWorkspace gives cuBLAS the workspace (cuBLASLt gets it per call).
// cuBLAS before 11.4 lacks cublasSetWorkspace_v2 and uses its own pool.
func (h *Handle) setWorkspace() error {
	if api.cublasSetWorkspace == 0 {
		return nil
	}
	return check("cublasSetWorkspace_v2", dl.Call(api.cublasSetWorkspace, h.blas, uintptr(h.ws), uintptr(h.wsSize)))
}

// Destroy frees the plans, the workspace and both handles. The handle must
// not be used afterwards.
func (h *Handle) Destroy() error {
	var errs []error
	if h.plans != nil {
		h.plans.Purge()
		h.plans = nil
		errs = append(errs, h.evictErr)
	}
	if h.lt != 0 {
		errs = append(errs, check("cublasLtDestroy", dl.Call(api.ltDestroy, h.lt)))
		h.lt = 0
	}
	if h.blas != 0 {
		errs = append(errs, check("cublasDestroy_v2", dl.Call(api.cublasDestroy, h.blas)))
		h.blas = 0
	}
	if h.ws != 0 {
		errs = append(errs, cuda.MemFree(h.ws))
		h.ws = 0
	}
	return errors.Join(errs...)
}

// SetStream makes later calls run on s. (cublasSetStream resets cuBLAS's
// workspace to its default pool, so the handle's workspace is set again.)
func (h *Handle) SetStream(s cuda.Stream) error {
	if err := check("cublasSetStream_v2", dl.Call(api.cublasSetStream, h.blas, uintptr(s))); err != nil {
		return err
	}
	h.stream = s
	return h.setWorkspace()
}

// Stream returns the stream set by SetStream.
func (h *Handle) Stream() cuda.Stream { return h.stream }

// SetMathMode sets the cuBLAS math mode (not used by Linear, which is
// cuBLASLt with an explicit compute type).
func (h *Handle) SetMathMode(m MathMode) error {
	return check("cublasSetMathMode", dl.Call(api.cublasSetMathMode, h.blas, uintptr(m)))
}

// scalarPtrs returns the addresses of the scalars that calls pass by
// pointer. h must be pinned (h.pin.Pin(h)) from before this call until the
// C call using them returns.
func (h *Handle) scalarPtrs() (alpha, beta, algo uintptr) {
	return uintptr(unsafe.Pointer(&h.alpha)), uintptr(unsafe.Pointer(&h.beta)), uintptr(unsafe.Pointer(&h.algo[0]))
}

func checkDims(fn string, dims ...int) error {
	for _, d := range dims {
		if d <= 0 || d > 1<<31-1 {
			return &Error{Func: fn, Code: StatusInvalidValue, Detail: fmt.Sprintf("dimension %d must be in [1, 2^31)", d)}
		}
	}
	return nil
}

// Sgemm is cublasSgemm_v2: C = alpha·op(A)·op(B) + beta·C on column-major
// f32 matrices, op(A) m×k, op(B) k×n, C m×n.
func (h *Handle) Sgemm(transA, transB Operation, m, n, k int, alpha float32, a cuda.DevicePtr, lda int,
	b cuda.DevicePtr, ldb int, beta float32, c cuda.DevicePtr, ldc int) error {
	if err := checkDims("cublasSgemm_v2", m, n, k, lda, ldb, ldc); err != nil {
		return err
	}
	h.alpha, h.beta = alpha, beta
	h.pin.Pin(h)
	pa, pb, _ := h.scalarPtrs()
	h.call = [20]uintptr{h.blas, uintptr(transA), uintptr(transB), uintptr(m), uintptr(n), uintptr(k),
		pa, uintptr(a), uintptr(lda), uintptr(b), uintptr(ldb), pb, uintptr(c), uintptr(ldc)}
	r := dl.CallSlice(api.cublasSgemm, h.call[:14])
	h.pin.Unpin()
	return checkf("cublasSgemm_v2", r, "m=%d n=%d k=%d", m, n, k)
}

// GemmExArgs are the arguments of cublasGemmEx, in its order. Alpha and Beta
// are f32, so Compute must be one of the 32F compute types.
type GemmExArgs struct {
	// TransA and TransB say whether A and B are used as stored or transposed.
	TransA, TransB Operation
	// M, N, K: op(A) is M×K, op(B) is K×N, C is M×N.
	M, N, K int
	// Alpha scales op(A)·op(B).
	Alpha float32
	// A is the first operand, of type AType, leading dimension LDA.
	A cuda.DevicePtr
	// AType is A's element type.
	AType DataType
	// LDA is A's leading dimension (column stride in elements).
	LDA int
	// B is the second operand, of type BType, leading dimension LDB.
	B cuda.DevicePtr
	// BType is B's element type.
	BType DataType
	// LDB is B's leading dimension.
	LDB int
	// Beta scales the existing C (0 overwrites it).
	Beta float32
	// C is the output, of type CType, leading dimension LDC.
	C cuda.DevicePtr
	// CType is C's element type.
	CType DataType
	// LDC is C's leading dimension.
	LDC int
	// Compute is the accumulation type (a 32F variant).
	Compute ComputeType
	// Algo is the algorithm, usually GemmDefault.
	Algo GemmAlgo
}

// GemmEx is cublasGemmEx (19 arguments: purego passes up to 32 on amd64 and
// arm64): C = alpha·op(A)·op(B) + beta·C, column-major, mixed types.
func (h *Handle) GemmEx(g GemmExArgs) error {
	if err := checkDims("cublasGemmEx", g.M, g.N, g.K, g.LDA, g.LDB, g.LDC); err != nil {
		return err
	}
	switch g.Compute {
	case Compute32F, Compute32FPedantic, Compute32FFastTF32:
	default:
		return &Error{Func: "cublasGemmEx", Code: StatusInvalidValue, Detail: fmt.Sprintf("compute type %d: alpha and beta are f32, so only the 32F compute types are accepted", g.Compute)}
	}
	h.alpha, h.beta = g.Alpha, g.Beta
	h.pin.Pin(h)
	pa, pb, _ := h.scalarPtrs()
	h.call = [20]uintptr{h.blas, uintptr(g.TransA), uintptr(g.TransB), uintptr(g.M), uintptr(g.N), uintptr(g.K),
		pa, uintptr(g.A), uintptr(g.AType), uintptr(g.LDA), uintptr(g.B), uintptr(g.BType), uintptr(g.LDB),
		pb, uintptr(g.C), uintptr(g.CType), uintptr(g.LDC), uintptr(g.Compute), dl.Int(int64(g.Algo))}
	r := dl.CallSlice(api.cublasGemmEx, h.call[:19])
	h.pin.Unpin()
	return checkf("cublasGemmEx", r, "m=%d n=%d k=%d A %v B %v C %v", g.M, g.N, g.K, g.AType, g.BType, g.CType)
}

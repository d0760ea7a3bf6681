package cublas

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/bindings/cuda"
	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

func TestStatusNamesAndErrors(t *testing.T) {
	assert.Equal(t, "CUBLAS_STATUS_NOT_SUPPORTED (15)", StatusNotSupported.Error())
	assert.Equal(t, "cublasStatus_t(99)", Status(99).Name())
	for s, name := range statusNames {
		assert.Regexp(t, `^(CUBLAS_STATUS_[A-Z_]+|QVL_CUBLAS_[A-Z_]+)$`, name, "status %d", s)
	}
	err := checkf("cublasLtMatmul", 15, "M=%d", 5)
	require.EqualError(t, err, "cublasLtMatmul: CUBLAS_STATUS_NOT_SUPPORTED (15): M=5")
	require.ErrorIs(t, err, StatusNotSupported)
	require.NotErrorIs(t, err, StatusInvalidValue)
	require.NoError(t, check("cublasCreate_v2", 0))

	notLoaded := check("cublasSgemm_v2", dl.CallSlice(0, nil))
	require.ErrorIs(t, notLoaded, StatusSymbolNotLoaded)
	require.ErrorContains(t, notLoaded, "call cublas.Available first")
}

// TestStatusNamesMatchHeader checks the table against cublas_api.h when one
// is installed (Debian's nvidia-cuda-dev).
func TestStatusNamesMatchHeader(t *testing.T) {
	b, err := os.ReadFile("/usr/include/cublas_api.h")
	if err != nil {
		t.Skipf("no /usr/include/cublas_api.h to compare with: %v", err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(strings.TrimSuffix(strings.TrimSpace(line), ","))
		if len(f) == 3 && strings.HasPrefix(f[0], "CUBLAS_STATUS_") && f[1] == "=" {
			v, err := parseInt(f[2])
			require.NoError(t, err)
			assert.Equal(t, f[0], statusNames[Status(v)])
			n++
		}
	}
	require.Equal(t, 10, n)
}

func parseInt(s string) (int, error) {
	var v int
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, &Error{Func: "parseInt", Code: StatusInvalidValue, Detail: s}
		}
		v = v*10 + int(c-'0')
	}
	return v, nil
}

func TestLibraryCandidatesOrder(t *testing.T) {
	target := "/usr/local/cuda/targets/" + targetDir(runtime.GOARCH) + "/lib/"
	c := LibraryCandidates("", "")
	require.Len(t, c, 12)
	assert.Equal(t, Pair{"libcublas.so.13", "libcublasLt.so.13"}, c[0])
	assert.Equal(t, Pair{target + "libcublas.so.13", target + "libcublasLt.so.13"}, c[1])
	assert.Equal(t, Pair{"/usr/local/cuda/lib64/libcublas.so.13", "/usr/local/cuda/lib64/libcublasLt.so.13"}, c[2])
	assert.Equal(t, Pair{"libcublas.so.12", "libcublasLt.so.12"}, c[3])
	assert.Equal(t, Pair{"libcublas.so.11", "libcublasLt.so.11"}, c[6])
	assert.Equal(t, Pair{"libcublas.so", "libcublasLt.so"}, c[9])

	assert.Equal(t, []Pair{{"/opt/cuda/lib/libcublas.so.12", "/opt/cuda/lib/libcublasLt.so.12"}},
		LibraryCandidates("/opt/cuda/lib/libcublas.so.12", ""))
	assert.Equal(t, []Pair{{"/x/libcublas.so.13", "/x/libcublasLt.so.13"}},
		LibraryCandidates("", "/x/libcublasLt.so.13"))
	assert.Equal(t, []Pair{{"/a/libcublas.so", "/b/libcublasLt.so"}},
		LibraryCandidates("/a/libcublas.so", "/b/libcublasLt.so"))
	assert.Equal(t, "sbsa-linux", targetDir("arm64"))
}

func TestLoadFromReportsEveryPair(t *testing.T) {
	_, _, err := loadFrom([]Pair{{"/nonexistent/libcublas.so.13", "/nonexistent/libcublasLt.so.13"}})
	require.Error(t, err)
	require.ErrorContains(t, err, "/nonexistent/libcublasLt.so.13")
	require.ErrorContains(t, err, EnvLibCUBLAS)
}

// TestHelperNew is run as a subprocess by TestNewWithoutGPUIsAnError.
func TestHelperNew(t *testing.T) {
	if os.Getenv("QVL_CUBLAS_HELPER") != "1" {
		t.Skip("helper process for TestNewWithoutGPUIsAnError")
	}
	if err := Available(); err != nil {
		os.Stdout.WriteString("AVAILABLE=" + err.Error() + "\n")
		return
	}
	os.Stdout.WriteString("LOADED=" + Loaded().BLAS + "\n")
	_, err := New(Options{})
	if err == nil {
		os.Stdout.WriteString("NEW=ok\n")
		return
	}
	os.Stdout.WriteString("NEW=" + err.Error() + "\n")
}

// TestNewWithoutGPUIsAnError creates a handle in a fresh process on a
// machine without a GPU: it must fail with a named status, not crash.
func TestNewWithoutGPUIsAnError(t *testing.T) {
	if cuda.Available() == nil {
		t.Skip("a GPU is present; the no-GPU path is not reachable here")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperNew$", "-test.v")
	cmd.Env = append(os.Environ(), "QVL_CUBLAS_HELPER=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "helper must exit normally:\n%s", out)
	s := string(out)
	if strings.Contains(s, "AVAILABLE=") {
		assert.Contains(t, s, "no usable cuBLAS/cuBLASLt pair")
		return
	}
	assert.Regexp(t, `NEW=cublasCreate_v2: CUBLAS_STATUS_[A-Z_]+ \(\d+\)`, s)
}

func TestLinearShapeValidation(t *testing.T) {
	good := []LinearShape{
		{5, 769, 160, R16BF, R16BF, R32F},
		{5, 769, 160, R16BF, R16BF, R16BF},
		{1, 8, 8, R16F, R16F, R16F},
		{1, 8, 8, R32F, R32F, R32F},
	}
	for _, s := range good {
		require.NoError(t, s.validate(), "%+v", s)
	}
	bad := []LinearShape{
		{0, 8, 8, R16BF, R16BF, R32F},
		{1, -1, 8, R16BF, R16BF, R32F},
		{1, 8, 8, R16BF, R16F, R32F},
		{1, 8, 8, R16BF, R16BF, R16F},
		{1, 8, 8, R32F, R32F, R16BF},
	}
	for _, s := range bad {
		err := s.validate()
		require.ErrorIs(t, err, StatusInvalidValue, "%+v", s)
	}
	assert.Equal(t, 2, R16BF.Size())
	assert.Equal(t, "CUDA_R_16BF", R16BF.String())
}

func TestAlignment(t *testing.T) {
	assert.Equal(t, uint32(256), alignment(0x7f0000000000))
	assert.Equal(t, uint32(256), alignment(0x7f0000000100))
	assert.Equal(t, uint32(128), alignment(0x7f0000000080))
	assert.Equal(t, uint32(16), alignment(0x7f0000000010))
	assert.Equal(t, uint32(2), alignment(0x7f0000000002))
	assert.Equal(t, uint32(1), alignment(0x7f0000000001))
}

func TestHeuristicResultMatchesCLayout(t *testing.T) {
	// cublasLtMatmulHeuristicResult_t: algo (64) + size_t (8) + status (4) +
	// float (4) + int[4] (16).
	require.Equal(t, uintptr(96), unsafe.Sizeof(heuristicResult{}))
	require.Equal(t, uintptr(72), unsafe.Offsetof(heuristicResult{}.state))
}

// gemmColMajor is a reference for what cuBLAS computes: C = op(A)·op(B) +
// beta·C on column-major matrices, op(A) m×k, op(B) k×n.
func gemmColMajor(transA, transB Operation, m, n, k int, a []float64, lda int, b []float64, ldb int, beta float64, c []float64, ldc int) {
	at := func(i, p int) float64 { // op(A)[i,p]
		if transA == OpT {
			return a[p+i*lda]
		}
		return a[i+p*lda]
	}
	bt := func(p, j int) float64 {
		if transB == OpT {
			return b[j+p*ldb]
		}
		return b[p+j*ldb]
	}
	for j := 0; j < n; j++ {
		for i := 0; i < m; i++ {
			var s float64
			for p := 0; p < k; p++ {
				s += at(i, p) * bt(p, j)
			}
			c[i+j*ldc] = s + beta*c[i+j*ldc]
		}
	}
}

// linearRef is the row-major PyTorch Linear: y[i,j] = sum_p x[i,p]·w[j,p] + beta·y.
func linearRef(m, n, k int, x, w []float64, beta float64, y []float64) {
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				s += x[i*k+p] * w[j*k+p]
			}
			y[i*n+j] = s + beta*y[i*n+j]
		}
	}
}

func randVec(r *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = r.Float64()*2 - 1
	}
	return v
}

// TestLinearLayoutsComputeRowMajorLinear feeds the exact layouts and
// operations Linear gives cuBLASLt to a column-major GEMM reference and
// checks that the row-major buffers come out as PyTorch's Linear.
func TestLinearLayoutsComputeRowMajorLinear(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, s := range []LinearShape{{5, 769, 160, R16BF, R16BF, R32F}, {1, 7, 3, R32F, R32F, R32F}, {9, 2, 13, R16F, R16F, R16F}} {
		x, w, y0 := randVec(r, s.M*s.K), randVec(r, s.N*s.K), randVec(r, s.M*s.N)
		want := append([]float64(nil), y0...)
		linearRef(s.M, s.N, s.K, x, w, 0.5, want)

		a, b, c := linearLayouts(s)
		require.Equal(t, s.WType, a.t)
		require.Equal(t, s.XType, b.t)
		require.Equal(t, s.YType, c.t)
		// op(A) = T: A is a.rows×a.cols, op(A) is a.cols×a.rows = m×k.
		m, k, n := a.cols, a.rows, b.cols
		require.Equal(t, k, b.rows)
		require.Equal(t, []int{m, n}, []int{c.rows, c.cols})
		got := append([]float64(nil), y0...)
		gemmColMajor(OpT, OpN, m, n, k, w, a.ld, x, b.ld, 0.5, got, c.ld)
		require.InDeltaSlice(t, want, got, 1e-9, "%+v", s)
	}
}

// TestLinearGemmExArgumentsComputeRowMajorLinear does the same for the
// classic path: cublasGemmEx is replaced by libc's sched_yield (returns 0,
// ignores its arguments) and the arguments left in the handle's call array
// are decoded and run through the reference.
func TestLinearGemmExArgumentsComputeRowMajorLinear(t *testing.T) {
	stub := libcSymbol(t, "sched_yield")
	saved := api.cublasGemmEx
	api.cublasGemmEx = stub
	defer func() { api.cublasGemmEx = saved }()

	s := LinearShape{5, 769, 160, R16BF, R16BF, R32F}
	h := &Handle{blas: 0x1234}
	const xp, wp, yp = cuda.DevicePtr(0x10000), cuda.DevicePtr(0x20000), cuda.DevicePtr(0x30000)
	require.NoError(t, h.LinearGemmEx(s, xp, wp, yp, 1))
	c := h.call
	require.Equal(t, uintptr(0x1234), c[0])
	transA, transB := Operation(c[1]), Operation(c[2])
	m, n, k := int(c[3]), int(c[4]), int(c[5])
	require.Equal(t, []uintptr{uintptr(wp), uintptr(R16BF)}, []uintptr{c[7], c[8]})
	require.Equal(t, []uintptr{uintptr(xp), uintptr(R16BF)}, []uintptr{c[10], c[11]})
	require.Equal(t, []uintptr{uintptr(yp), uintptr(R32F)}, []uintptr{c[14], c[15]})
	require.Equal(t, uintptr(Compute32F), c[17])
	require.Equal(t, dl.Int(-1), c[18])
	require.Equal(t, float32(1), h.alpha)
	require.Equal(t, float32(1), h.beta)

	r := rand.New(rand.NewPCG(3, 4))
	x, w, y0 := randVec(r, s.M*s.K), randVec(r, s.N*s.K), randVec(r, s.M*s.N)
	want := append([]float64(nil), y0...)
	linearRef(s.M, s.N, s.K, x, w, 1, want)
	got := append([]float64(nil), y0...)
	gemmColMajor(transA, transB, m, n, k, w, int(c[9]), x, int(c[12]), 1, got, int(c[16]))
	require.InDeltaSlice(t, want, got, 1e-9)
}

// TestCachedLinearDoesNotAllocate runs Linear against a cached plan with
// cublasLtMatmul replaced by a stand-in C function.
func TestCachedLinearDoesNotAllocate(t *testing.T) {
	stub := libcSymbol(t, "sched_yield")
	saved := api.ltMatmul
	api.ltMatmul = stub
	defer func() { api.ltMatmul = saved }()

	h := &Handle{lt: 0x1, ws: 0x9000, wsSize: 1 << 20}
	var err error
	h.plans, err = lru.New[planKey, *plan](4)
	require.NoError(t, err)
	s := LinearShape{5, 769, 160, R16BF, R16BF, R16BF}
	const xp, wp, yp = cuda.DevicePtr(0x7f0000000000), cuda.DevicePtr(0x7f0000100000), cuda.DevicePtr(0x7f0000200040)
	key := planKey{LinearShape: s, alignX: 256, alignW: 256, alignY: 64}
	h.plans.Add(key, &plan{algo: [8]uint64{42}})

	allocs := testing.AllocsPerRun(200, func() { err = h.Linear(s, xp, wp, yp, 0) })
	require.NoError(t, err)
	require.Zero(t, allocs)
	require.Equal(t, 1, h.PlanCacheLen())
	require.Equal(t, uint64(42), h.algo[0], "the cached plan's algorithm was passed")
	require.Equal(t, uintptr(wp), h.call[3], "A = W")
	require.Equal(t, uintptr(xp), h.call[5], "B = X")
	require.Equal(t, uintptr(yp), h.call[8], "C = Y")
	require.Equal(t, uintptr(yp), h.call[10], "D = Y")
	require.Equal(t, uintptr(unsafe.Pointer(&h.algo[0])), h.call[12])
	require.Equal(t, []uintptr{0x9000, 1 << 20}, h.call[13:15])
}

func libcSymbol(t *testing.T, name string) uintptr {
	t.Helper()
	lib, err := dl.Open([]string{"libc.so.6"})
	if err != nil {
		t.Skipf("no libc.so.6 to stand in for cuBLAS: %v", err)
	}
	p, err := lib.Symbol(name)
	require.NoError(t, err)
	return p
}

// TestSplitKVariantChoices: which split-K factors and reduction schemes TuneLinear tries.
func TestSplitKVariantChoices(t *testing.T) {
	assert.Equal(t, []int{2, 4, 8, 16}, splitKCounts(64, 6144))
	assert.Equal(t, []int{2, 4, 8}, splitKCounts(1, 2048))
	assert.Equal(t, []int{2}, splitKCounts(8, 767))
	assert.Empty(t, splitKCounts(8, 511), "slices under 256")
	assert.Empty(t, splitKCounts(512, 6144), "prefill-sized M")
	assert.Equal(t, uint32(reductionComputeType), reductionScheme(1|2|4))
	assert.Equal(t, uint32(reductionOutputType), reductionScheme(1|4))
	assert.Zero(t, reductionScheme(1), "in place only")
	assert.Zero(t, reductionScheme(0))
}

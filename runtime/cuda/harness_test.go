package cuda

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/stretchr/testify/require"
)

// The op harness runs each op on the CPU reference backend and on the CUDA backends under test
// with the same inputs, and compares. CUDA backends under test: "sim", the CPU emulation of
// the kernels (always, where a C++ compiler is found), and "gpu", GPU 0 (skipped, with the
// reason from Available, where there is none).

var (
	gpuOnce sync.Once
	gpuB    *Backend
	gpuErr  error
)

// TestMain closes the shared GPU backend after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if gpuB != nil {
		if err := gpuB.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "closing the GPU backend:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// gpuBackend returns the shared backend on GPU 0, or skips the test with the reason there is none.
func gpuBackend(t testing.TB) *Backend {
	t.Helper()
	if os.Getenv("QVL_SIM_AS_GPU") == "1" {
		return simAsGPU(t)
	}
	if err := Available(); err != nil {
		t.Skipf("no GPU: %v", err)
	}
	gpuOnce.Do(func() { gpuB, gpuErr = Open(Options{}) })
	require.NoError(t, gpuErr)
	return gpuB
}

// simAsGPU is gpuBackend under QVL_SIM_AS_GPU=1: one backend on the emulation of a device of
// the H100's 132 multiprocessors, so that the GPU halves of the tests — their GPU-sized
// shapes, the code that only their GPU runs reach — run here before a GPU run finds their bugs
// (slowly: minutes; not in CI). Tests of the driver itself (bindings, PDL launches, cuBLASLt
// tuning) still need the GPU.
func simAsGPU(t testing.TB) *Backend {
	t.Helper()
	gpuOnce.Do(func() {
		lib, skip, err := loadSim()
		switch {
		case err != nil:
			gpuErr = err
		case skip != "":
			gpuErr = errors.New(skip)
		default:
			gpuB, gpuErr = newBackend(newSimDevice(lib, 132))
		}
	})
	require.NoError(t, gpuErr)
	return gpuB
}

// simBackend returns a fresh backend on the CPU emulation, or skips the test when it cannot be built.
func simBackend(t testing.TB) *Backend { return simBackendSMs(t, 4) }

// simBackendSMs is simBackend on an emulated device of sms multiprocessors (132: the H100's
// partition and split choices).
func simBackendSMs(t testing.TB, sms int) *Backend {
	t.Helper()
	if os.Getenv("QVL_SKIP_SIM") != "" {
		t.Skip("QVL_SKIP_SIM is set")
	}
	lib, skip, err := loadSim()
	require.NoError(t, err)
	if skip != "" {
		t.Skip(skip)
	}
	b, err := newBackend(newSimDevice(lib, sms))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })
	return b
}

// skipShortSim skips an end-to-end test on the emulation (seconds of CPU) under -short; on a
// GPU it always runs.
func skipShortSim(t testing.TB, gpu bool) {
	t.Helper()
	if !gpu && testing.Short() {
		t.Skip("an end-to-end run on the CPU emulation: skipped with -short")
	}
}

// forEachCUDA runs fn as subtests on the emulation and on the GPU.
func forEachCUDA(t *testing.T, fn func(t *testing.T, b *Backend, gpu bool)) {
	t.Run("sim", func(t *testing.T) { fn(t, simBackend(t), false) })
	t.Run("gpu", func(t *testing.T) { fn(t, gpuBackend(t), true) })
}

// withSwitch runs fn with one of the backend's switches (the atomic.Bools its environment
// variables set) at v and puts it back after.
func withSwitch(sw *atomic.Bool, v bool, fn func()) {
	was := sw.Load()
	sw.Store(v)
	defer sw.Store(was)
	fn()
}

// env allocates a test's tensors on one backend and frees them at the end.
type env struct {
	t  testing.TB
	b  ml.Backend
	ts []ml.Tensor
}

func newEnv(t testing.TB, b ml.Backend) *env {
	e := &env{t: t, b: b}
	t.Cleanup(func() {
		for _, x := range e.ts {
			b.Free(x)
		}
	})
	return e
}

// in allocates a tensor holding data ([]float32 or []int32).
func (e *env) in(dt ml.DType, data any, shape ...int) ml.Tensor {
	e.t.Helper()
	x, err := e.b.Alloc(dt, shape...)
	require.NoError(e.t, err)
	e.ts = append(e.ts, x)
	require.NoError(e.t, e.b.Write(x, data))
	return x
}

// weight uploads data as a weight of dtype dt (through Weight, as the model loads them).
func (e *env) weight(dt ml.DType, data []float32, shape ...int) ml.Tensor {
	e.t.Helper()
	var raw []byte
	if dt == ml.BF16 {
		raw = make([]byte, 2*len(data))
		for i, v := range data {
			b := loader.F32ToBF16(v)
			raw[2*i], raw[2*i+1] = byte(b), byte(b>>8)
		}
	} else {
		raw = loader.F32Bytes(data)
	}
	x, err := e.b.Weight(dt, shape, raw)
	require.NoError(e.t, err)
	e.ts = append(e.ts, x)
	return x
}

// out allocates an output tensor poisoned with NaN, so that elements an op does not write show.
func (e *env) out(dt ml.DType, shape ...int) ml.Tensor {
	e.t.Helper()
	x, err := e.b.Alloc(dt, shape...)
	require.NoError(e.t, err)
	e.ts = append(e.ts, x)
	n := ml.NumElements(x)
	if dt == ml.I32 {
		p := make([]int32, n)
		for i := range p {
			p[i] = -7
		}
		require.NoError(e.t, e.b.Write(x, p))
	} else {
		p := make([]float32, n)
		for i := range p {
			p[i] = float32(math.NaN())
		}
		require.NoError(e.t, e.b.Write(x, p))
	}
	return x
}

func (e *env) read(x ml.Tensor) []float32 {
	e.t.Helper()
	out := make([]float32, ml.NumElements(x))
	require.NoError(e.t, e.b.Read(x, out))
	return out
}

// tol bounds the difference of an output from the reference: relL2 = ‖got − want‖₂ / ‖want‖₂,
// maxAbs = max |got − want| / max(max |want|, 1e-30). An element that is NaN in got but not in
// want (an unwritten, poisoned element) always fails.
type tol struct {
	relL2, maxAbs float64
}

// compare checks got against want under tolerance name.
func compare(t testing.TB, what, name string, got, want []float32) {
	t.Helper()
	tl, ok := tolerances[name]
	require.True(t, ok, "no tolerance %q", name)
	require.Equal(t, len(want), len(got), "%s: length", what)
	var num, den, maxd, maxw float64
	for i := range want {
		w, g := float64(want[i]), float64(got[i])
		if math.IsNaN(w) {
			if !math.IsNaN(g) {
				t.Fatalf("%s: element %d is %v, the reference has NaN", what, i, g)
			}
			continue
		}
		if math.IsNaN(g) || math.IsInf(g, 0) != math.IsInf(w, 0) {
			t.Fatalf("%s: element %d is %v, want %v (unwritten or overflowed)", what, i, g, w)
		}
		if math.IsInf(w, 0) {
			require.Equal(t, w, g, "%s: element %d", what, i)
			continue
		}
		d := math.Abs(g - w)
		num += d * d
		den += w * w
		maxd = max(maxd, d)
		maxw = max(maxw, math.Abs(w))
	}
	rel := 0.0
	if den > 0 {
		rel = math.Sqrt(num / den)
	} else if num > 0 {
		rel = math.Inf(1)
	}
	abs := maxd / max(maxw, 1e-30)
	t.Logf("%s: rel L2 %.2e (bound %.0e), max |Δ|/max|ref| %.2e (bound %.0e)", what, rel, tl.relL2, abs, tl.maxAbs)
	if rel > tl.relL2 || abs > tl.maxAbs {
		t.Fatalf("%s: rel L2 %.3e, max |Δ| %.3e of max |ref| %.3e: beyond the %s tolerance (%.0e, %.0e)", what, rel, maxd, maxw, name, tl.relL2, tl.maxAbs)
	}
}

// randn returns n normal values with standard deviation s.
func randn(r *rand.Rand, n int, s float64) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * s)
	}
	return x
}

// bf16Round rounds every value to bf16 (in place) and returns x.
func bf16Round(x []float32) []float32 {
	for i, v := range x {
		x[i] = loader.BF16ToF32(loader.F32ToBF16(v))
	}
	return x
}

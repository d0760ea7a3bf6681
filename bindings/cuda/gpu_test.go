package cuda

import (
	_ "embed"
	"math"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The tests in this file need a GPU. Without one they skip and say why; on
// a GPU machine without a Go toolchain build them here with
//
//	go test -c -o cuda.test ./bindings/cuda
//
// and run ./cuda.test -test.v there. require inside a Do function is fine:
// its t.FailNow ends the device thread and then the test goroutine (see
// ErrDeviceThreadExited), and each test opens its own Device.

//go:embed testdata/saxpy.ptx
var saxpyPTX []byte

// openGPU opens device 0 or skips the test with Available's reason.
func openGPU(t testing.TB) *Device {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("no GPU found, skipping: %v", err)
	}
	d, err := Open(0)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, d.Close()) })
	return d
}

func TestGPUOpenAndProperties(t *testing.T) {
	d := openGPU(t)
	p := d.Properties()
	t.Log(p.String())
	assert.NotEmpty(t, p.Name)
	assert.GreaterOrEqual(t, p.ComputeMajor, 5)
	assert.Positive(t, p.Multiprocessors)
	assert.Positive(t, p.TotalMemory)
	assert.Equal(t, 32, p.WarpSize)
	assert.GreaterOrEqual(t, p.SharedMemoryPerBlockOptin, p.SharedMemoryPerBlock)
	assert.Positive(t, p.L2CacheBytes)
	assert.GreaterOrEqual(t, p.DriverVersion, 11040)
	if p.MemoryClockKHz > 0 && p.MemoryBusWidthBits > 0 {
		t.Logf("peak DRAM bandwidth %.2f TB/s", p.PeakMemoryBandwidth()/1e12)
	}
	free, total, err := d.MemInfo()
	require.NoError(t, err)
	assert.Positive(t, free)
	assert.LessOrEqual(t, free, total)
	assert.Empty(t, MissingSymbols())
}

func TestGPUDriverCallOutsideDoHasNoContext(t *testing.T) {
	openGPU(t)
	errc := make(chan error, 1)
	go func() {
		// A fresh locked thread has no context current.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		p, err := MemAlloc(1024)
		if err == nil {
			_ = MemFree(p)
		}
		errc <- err
	}()
	require.ErrorIs(t, <-errc, ErrorInvalidContext)
}

func TestGPUMemoryRoundTrip(t *testing.T) {
	d := openGPU(t)
	const n = 769
	src := make([]float32, n)
	for i := range src {
		src[i] = float32(i)*0.5 - 100
	}
	require.NoError(t, d.Do(func() error {
		a, err := MemAlloc(n * 4)
		require.NoError(t, err)
		defer func() { assert.NoError(t, MemFree(a)) }()
		b, err := MemAlloc(n * 4)
		require.NoError(t, err)
		defer func() { assert.NoError(t, MemFree(b)) }()

		require.NoError(t, MemcpyHtoD(a, src))
		require.NoError(t, MemcpyDtoD(b, a, n*4))
		got := make([]float32, n)
		require.NoError(t, MemcpyDtoH(got, b))
		require.Equal(t, src, got)

		require.NoError(t, MemsetD8(b, 0, n*4))
		require.NoError(t, MemcpyDtoH(got, b))
		require.Equal(t, make([]float32, n), got)

		// Pinned buffers and async copies on a stream.
		s, err := StreamCreate(StreamNonBlocking)
		require.NoError(t, err)
		defer func() { assert.NoError(t, s.Destroy()) }()
		in, err := MemAllocHost(n * 4)
		require.NoError(t, err)
		defer func() { assert.NoError(t, in.Free()) }()
		out, err := MemAllocHost(n * 4)
		require.NoError(t, err)
		defer func() { assert.NoError(t, out.Free()) }()
		copy(HostSlice[float32](in), src)
		require.NoError(t, MemcpyHtoDAsync(a, in, 0, n*4, s))
		require.NoError(t, MemcpyDtoDAsync(b, a, n*4, s))
		require.NoError(t, MemsetD32Async(a, math.Float32bits(7), n, s))
		require.NoError(t, MemcpyDtoHAsync(out, 0, b, n*4, s))
		require.NoError(t, s.Synchronize())
		require.Equal(t, src, HostSlice[float32](out))
		require.NoError(t, MemcpyDtoHAsync(out, 0, a, n*4, s))
		require.NoError(t, s.Synchronize())
		for i, v := range HostSlice[float32](out) {
			require.Equal(t, float32(7), v, "element %d", i)
		}
		// Bounds are checked before the driver sees the range.
		require.ErrorIs(t, MemcpyDtoHAsync(out, 4, a, n*4, s), ErrorInvalidValue)
		return nil
	}))
}

func TestGPUMemAllocTooLargeNamesOutOfMemory(t *testing.T) {
	d := openGPU(t)
	require.NoError(t, d.Do(func() error {
		_, err := MemAlloc(1 << 50)
		require.ErrorIs(t, err, ErrorOutOfMemory)
		require.ErrorContains(t, err, "cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2)")
		return nil
	}))
}

// saxpyFixture loads the PTX kernel and allocates x and y of n floats.
type saxpyFixture struct {
	mod  Module
	fn   Function
	x, y DevicePtr
	n    int
}

func newSaxpy(t *testing.T, n int, x, y []float32) *saxpyFixture {
	t.Helper()
	m, log, err := ModuleLoadDataEx(saxpyPTX, true)
	require.NoError(t, err, "JIT log: %s", log.Error)
	t.Logf("JIT info log: %s", log.Info)
	f, err := m.Function("saxpy")
	require.NoError(t, err)
	xp, err := MemAlloc(uint64(n * 4))
	require.NoError(t, err)
	yp, err := MemAlloc(uint64(n * 4))
	require.NoError(t, err)
	require.NoError(t, MemcpyHtoD(xp, x))
	require.NoError(t, MemcpyHtoD(yp, y))
	return &saxpyFixture{mod: m, fn: f, x: xp, y: yp, n: n}
}

func (s *saxpyFixture) free(t *testing.T) {
	assert.NoError(t, MemFree(s.x))
	assert.NoError(t, MemFree(s.y))
	assert.NoError(t, s.mod.Unload())
}

func (s *saxpyFixture) launch(a *Args, alpha float32, st Stream) error {
	a.Reset().Ptr(s.y).Ptr(s.x).F32(alpha).U32(uint32(s.n))
	return LaunchKernel(s.fn, D1(uint32((s.n+127)/128)), D1(128), 0, st, a)
}

func testVectors(n int) (x, y []float32) {
	x, y = make([]float32, n), make([]float32, n)
	for i := range x {
		x[i] = float32(i%13) - 6
		y[i] = float32(i%7) * 0.25
	}
	return x, y
}

func TestGPUPTXKernelLaunch(t *testing.T) {
	d := openGPU(t)
	const n = 1000 // not a multiple of the block size
	x, y := testVectors(n)
	require.NoError(t, d.Do(func() error {
		s := newSaxpy(t, n, x, y)
		defer s.free(t)
		a := NewArgs()
		require.NoError(t, s.launch(a, 2.5, 0))
		require.NoError(t, CtxSynchronize())
		got := make([]float32, n)
		require.NoError(t, MemcpyDtoH(got, s.y))
		for i := range got {
			require.Equal(t, 2.5*x[i]+y[i], got[i], "element %d", i)
		}
		// The launch path does not allocate with a reused Args.
		allocs := testing.AllocsPerRun(100, func() { _ = s.launch(a, 0, 0) })
		require.Zero(t, allocs)
		require.NoError(t, s.fn.SetMaxDynamicSharedMemory(0))
		return CtxSynchronize()
	}))
}

func TestGPUInvalidPTXCarriesJITLog(t *testing.T) {
	d := openGPU(t)
	require.NoError(t, d.Do(func() error {
		bad := []byte(".version 7.8\n.target sm_80\n.address_size 64\n.visible .entry k() { bogus.instruction; }\n")
		_, err := ModuleLoadData(bad)
		require.ErrorIs(t, err, ErrorInvalidPTX)
		var ce *Error
		require.ErrorAs(t, err, &ce)
		assert.NotEmpty(t, ce.Detail, "the JIT error log should explain the failure")
		t.Logf("error as reported: %v", err)

		m, err := ModuleLoadData(saxpyPTX)
		require.NoError(t, err)
		_, err = m.Function("no_such_kernel")
		require.ErrorIs(t, err, ErrorNotFound)
		require.ErrorContains(t, err, `"no_such_kernel"`)
		return m.Unload()
	}))
}

func TestGPUEventsTimeKernels(t *testing.T) {
	d := openGPU(t)
	const n = 1 << 20
	x, y := testVectors(n)
	require.NoError(t, d.Do(func() error {
		s := newSaxpy(t, n, x, y)
		defer s.free(t)
		st, err := StreamCreate(StreamNonBlocking)
		require.NoError(t, err)
		defer func() { assert.NoError(t, st.Destroy()) }()
		start, err := EventCreate(EventDefault)
		require.NoError(t, err)
		defer func() { assert.NoError(t, start.Destroy()) }()
		stop, err := EventCreate(EventBlockingSync)
		require.NoError(t, err)
		defer func() { assert.NoError(t, stop.Destroy()) }()

		a := NewArgs()
		require.NoError(t, start.Record(st))
		const launches = 50
		for i := 0; i < launches; i++ {
			require.NoError(t, s.launch(a, 1, st))
		}
		require.NoError(t, stop.Record(st))
		require.NoError(t, stop.Synchronize())
		ms, err := EventElapsedTime(start, stop)
		require.NoError(t, err)
		require.Positive(t, ms)
		bytes := float64(launches) * 3 * n * 4
		t.Logf("%d saxpy launches of %d floats: %.3f ms, %.0f GB/s", launches, n, ms, bytes/(float64(ms)*1e-3)/1e9)

		never, err := EventCreate(EventDefault)
		require.NoError(t, err)
		defer func() { assert.NoError(t, never.Destroy()) }()
		_, err = EventElapsedTime(start, never)
		require.Error(t, err, "an event that was never recorded has no time")
		t.Logf("unrecorded event: %v", err)
		return nil
	}))
}

func TestGPUGraphCaptureAndReplay(t *testing.T) {
	d := openGPU(t)
	const n, perGraph, replays = 4099, 3, 5
	x, y := testVectors(n)
	require.NoError(t, d.Do(func() error {
		s := newSaxpy(t, n, x, y)
		defer s.free(t)
		st, err := StreamCreate(StreamNonBlocking)
		require.NoError(t, err)
		defer func() { assert.NoError(t, st.Destroy()) }()

		a := NewArgs()
		require.NoError(t, st.BeginCapture(CaptureThreadLocal))
		for i := 0; i < perGraph; i++ {
			require.NoError(t, s.launch(a, 0.5, st))
		}
		g, err := st.EndCapture()
		require.NoError(t, err)
		exec, err := g.Instantiate()
		require.NoError(t, err)
		require.NoError(t, g.Destroy())
		defer func() { assert.NoError(t, exec.Destroy()) }()

		// Capturing did not run anything.
		got := make([]float32, n)
		require.NoError(t, st.Synchronize())
		require.NoError(t, MemcpyDtoH(got, s.y))
		require.Equal(t, y, got)

		allocs := testing.AllocsPerRun(replays-1, func() { require.NoError(t, exec.Launch(st)) })
		require.Zero(t, allocs)
		require.NoError(t, st.Synchronize())
		require.NoError(t, MemcpyDtoH(got, s.y))
		// AllocsPerRun runs the function once more than asked, to warm up.
		for i := range got {
			want := y[i]
			for k := 0; k < replays*perGraph; k++ {
				want += 0.5 * x[i]
			}
			require.Equal(t, want, got[i], "element %d", i)
		}
		return nil
	}))
}

func TestGPUConcurrentDoCallers(t *testing.T) {
	d := openGPU(t)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				errs <- d.Do(func() error {
					p, err := MemAlloc(uint64(4096 * (g + 1)))
					if err != nil {
						return err
					}
					want := []int32{int32(g), int32(i)}
					if err := MemcpyHtoD(p, want); err != nil {
						return err
					}
					got := make([]int32, 2)
					if err := MemcpyDtoH(got, p); err != nil {
						return err
					}
					if got[0] != want[0] || got[1] != want[1] {
						return &Error{Func: "round trip", Code: ErrorUnknown}
					}
					return MemFree(p)
				})
			}
		}(g)
	}
	go func() { wg.Wait(); close(errs) }()
	for err := range errs {
		require.NoError(t, err)
	}
}

// BenchmarkGPULaunch measures the host-side cost of one kernel launch (the
// kernel is tiny; the stream is synchronised once at the end).
func BenchmarkGPULaunch(b *testing.B) {
	d := openGPU(b)
	const n = 1024
	x, y := testVectors(n)
	_ = d.Do(func() error {
		m, err := ModuleLoadData(saxpyPTX)
		require.NoError(b, err)
		defer m.Unload()
		f, err := m.Function("saxpy")
		require.NoError(b, err)
		xp, _ := MemAlloc(n * 4)
		yp, _ := MemAlloc(n * 4)
		defer MemFree(xp)
		defer MemFree(yp)
		require.NoError(b, MemcpyHtoD(xp, x))
		require.NoError(b, MemcpyHtoD(yp, y))
		st, err := StreamCreate(StreamNonBlocking)
		require.NoError(b, err)
		defer st.Destroy()
		a := NewArgs()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			a.Reset().Ptr(yp).Ptr(xp).F32(0).U32(n)
			if err := LaunchKernel(f, D1(8), D1(128), 0, st, a); err != nil {
				b.Fatal(err)
			}
		}
		return st.Synchronize()
	})
}

//go:embed testdata/pdl.ptx
var pdlPTX []byte

// TestGPULaunchKernelExPDL chains pdl_step launches (y = 3y + 1) with programmatic stream
// serialization, on the stream and captured into a graph, and checks that every launch saw the
// previous one complete; and launches with no attributes.
func TestGPULaunchKernelExPDL(t *testing.T) {
	d := openGPU(t)
	if p := d.Properties(); p.ComputeMajor < 9 {
		t.Skipf("programmatic dependent launch needs compute capability 9.0; this GPU is %d.%d", p.ComputeMajor, p.ComputeMinor)
	}
	require.True(t, LaunchKernelExAvailable(), "the driver lacks cuLaunchKernelEx")
	const n, chain = 100_003, 16
	require.NoError(t, d.Do(func() error {
		m, log, err := ModuleLoadDataEx(pdlPTX, true)
		require.NoError(t, err, "JIT log: %s", log.Error)
		defer func() { assert.NoError(t, m.Unload()) }()
		f, err := m.Function("pdl_step")
		require.NoError(t, err)
		y, err := MemAlloc(n * 4)
		require.NoError(t, err)
		defer func() { assert.NoError(t, MemFree(y)) }()
		st, err := StreamCreate(StreamNonBlocking)
		require.NoError(t, err)
		defer func() { assert.NoError(t, st.Destroy()) }()
		a := NewArgs()
		launch := func(attrs LaunchAttrs) error {
			a.Reset().Ptr(y).U32(n).F32(3)
			return LaunchKernelEx(f, D1((n+255)/256), D1(256), 0, st, attrs, a)
		}
		check := func(what string, applications int) {
			got := make([]float32, n)
			require.NoError(t, st.Synchronize())
			require.NoError(t, MemcpyDtoH(got, y))
			want := float32(0)
			for k := 0; k < applications; k++ {
				want = 3*want + 1
			}
			for i := range got {
				require.Equal(t, want, got[i], "%s: element %d after %d launches", what, i, applications)
			}
		}
		pdl := LaunchAttrs{ProgrammaticStreamSerialization: true}
		require.NoError(t, MemsetD8(y, 0, n*4))
		require.NoError(t, CtxSynchronize())
		require.NoError(t, launch(LaunchAttrs{}))
		for i := 1; i < chain; i++ {
			require.NoError(t, launch(pdl))
		}
		check("stream", chain)

		require.NoError(t, MemsetD8(y, 0, n*4))
		require.NoError(t, CtxSynchronize())
		require.NoError(t, st.BeginCapture(CaptureThreadLocal))
		for i := 0; i < chain; i++ {
			require.NoError(t, launch(pdl))
		}
		g, err := st.EndCapture()
		require.NoError(t, err)
		exec, err := g.Instantiate()
		require.NoError(t, err)
		require.NoError(t, g.Destroy())
		defer func() { assert.NoError(t, exec.Destroy()) }()
		require.NoError(t, exec.Launch(st))
		check("graph", chain)

		allocs := testing.AllocsPerRun(10, func() { _ = launch(pdl) })
		require.Zero(t, allocs)
		return st.Synchronize()
	}))
}

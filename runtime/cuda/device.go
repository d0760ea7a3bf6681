package cuda

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/qvl-dev/qvl/bindings/cublas"
	drv "github.com/qvl-dev/qvl/bindings/cuda"
	"github.com/qvl-dev/qvl/kernels"
)

// devInfo describes what the backend's launch heuristics need to know about a device.
type devInfo struct {
	// name is the device's description for logs.
	name string
	// sms is the multiprocessor count.
	sms int
	// persistent is the number of blocks of a persistent kernel (qvl_embed) that are certain
	// to be resident at once.
	persistent int
	// smemOptin is the largest dynamic shared memory a block may be given after opting in.
	smemOptin int
}

// device is everything the backend does on a GPU. gpuDevice implements it with the driver API
// and cuBLASLt; the tests implement it with a CPU emulation of the kernels, so that the
// backend's own logic and the kernels are checked on machines without a GPU. Except for info
// and do, the methods run inside do.
type device interface {
	info() devInfo
	// do runs fn with the device current (on the GPU, on its locked OS thread).
	do(fn func() error) error
	alloc(bytes int) (uintptr, error)
	free(p uintptr) error
	// upload copies src to device memory at dst in stream order; src may be reused on return.
	upload(dst uintptr, src []byte) error
	// download copies device memory at src into dst once all queued work is done.
	download(dst []byte, src uintptr) error
	// memset32 sets n 32-bit words at dst to v in stream order.
	memset32(dst uintptr, v uint32, n int) error
	// launch queues kernel k (kernelTable order) with the packed arguments.
	launch(k kernelID, grid, block dim3, smem int, a *kargs) error
	// linear queues y[m, n] = x[m, k]·w[n, k]ᵀ, bf16 (or f32) operands, f32 accumulation and output.
	linear(m, n, k int, bf16 bool, x, w, y uintptr) error
	// sync waits for the queued work.
	sync() error
	// errFlags is the device address of the kernels' error flags (QVL_ERR_COUNT words);
	// takeErrors reads and clears them (after sync).
	errFlags() uintptr
	takeErrors() ([]uint32, error)
	// beginCapture starts recording the queued work into a graph instead of running it;
	// endCapture ends it and returns the executable graph (or discards it and returns err
	// when abort is set). launchGraph queues one replay.
	beginCapture() error
	endCapture(abort bool) (uintptr, error)
	launchGraph(g uintptr) error
	destroyGraph(g uintptr)
	// newEvent, record and elapsed time the queued work for the profiler.
	newEvent() (uintptr, error)
	record(ev uintptr) error
	elapsed(start, end uintptr) (time.Duration, error)
	destroyEvent(ev uintptr)
	close() error
}

// errFlagCount is QVL_ERR_COUNT in kernels/common.cuh.
const errFlagCount = 16

// stagingBytes is the page-locked buffer that uploads go through.
const stagingBytes = 32 << 20

// gpuDevice is a device driven through the driver API (package bindings/cuda) and cuBLASLt.
type gpuDevice struct {
	dev     *drv.Device
	props   drv.Properties
	stream  drv.Stream
	blas    *cublas.Handle
	modules []drv.Module
	fns     []drv.Function
	args    *drv.Args
	stage   *drv.HostBuffer
	stageAt int
	flags   *drv.HostBuffer
	// capturing is set between beginCapture and endCapture, when the stream records instead of
	// running and nothing may wait for it.
	capturing bool
	// tuneLog has a line per GEMM shape tuned (envTune): the candidate kept and the heuristic's
	// first guess, for the benchmark's report.
	tuneLog []string
	// tuneFlush is the memory cuBLASLt's tuning overwrites before each timed run (twice the
	// L2, allocated at the first tuning; cublas.Handle.SetTuneFlush), 0 until then.
	tuneFlush uintptr
	// graphEdges counts the edges of the last graph captured with PDL on, and how many of them
	// are programmatic (known: the driver could say).
	graphEdges struct {
		known               bool
		total, programmatic int
	}
	// pdl is set when the kernels run with programmatic dependent launch (envPDL): the modules
	// are kernels.PDLModules and every launch goes through cuLaunchKernelEx with programmatic
	// stream serialization.
	pdl bool
}

var errCapturing = errors.New("cuda: not allowed while a graph is being captured")

// envTune set to "1" tunes cuBLASLt's algorithm for each decode-sized GEMM on first use. Off
// by default until a GPU run has measured it (the session that wrote it had no device time
// left); scripts/gpu-check.sh runs its test and a benchmark with it on.
const envTune = "QVL_CUBLASLT_TUNE"

// tuneMaxRows bounds the GEMMs whose cuBLASLt algorithm is tuned on first use: decode steps,
// whose row counts are few (graphs pad them to powers of two) and whose skinny shapes the
// heuristic guesses worst (the H100's o projection at 64 rows ran at 35% of bandwidth).
// Prefill GEMMs (hundreds to thousands of rows, each length a new shape) keep the heuristic's
// choice, which ran at 97% of the bf16 peak there.
const tuneMaxRows = 256

// tuneReps is how many timed runs each candidate algorithm gets.
const tuneReps = 5

// envPDL set to "1" launches the kernels with programmatic dependent launch (PDL) on GPUs of
// compute capability 9.0 and newer: each kernel is launched while the one before it is still
// running, its blocks get resident and prefetch what they can (the GEMVs: their weights), and
// wait on griddepcontrol.wait (kernels/common.cuh's QVL_PDL_ENTER) for the previous kernel's
// results. It is off by default until a GPU run has measured it (written on the CPU emulation,
// where it cannot run: the emulation has no PDL); scripts/gpu-check.sh runs the op tests, the
// goldens, the benchmark and the 2B run with it on. On an older GPU or driver it is ignored,
// with a line on standard error that says why.
const envPDL = "QVL_CUDA_PDL"

// pdlWanted is set when envPDL is "1".
var pdlWanted atomic.Bool

func init() { pdlWanted.Store(os.Getenv(envPDL) == "1") }

// pdlMode decides whether a device of props runs the kernels with PDL: the reason is empty
// when it does or was not asked to, and says why not otherwise.
func pdlMode(want bool, props drv.Properties, haveLaunchEx bool) (on bool, why string) {
	switch {
	case !want:
		return false, ""
	case props.ComputeMajor < 9:
		return false, fmt.Sprintf("%s=1 ignored: programmatic dependent launch needs compute capability 9.0, %s is %d.%d",
			envPDL, props.Name, props.ComputeMajor, props.ComputeMinor)
	case !haveLaunchEx:
		return false, fmt.Sprintf("%s=1 ignored: the CUDA driver has no cuLaunchKernelEx", envPDL)
	}
	return true, ""
}

// tuneOff is set unless envTune is "1".
var tuneOff atomic.Bool

func init() { tuneOff.Store(os.Getenv(envTune) != "1") }

// openGPU opens device ordinal: its context on a locked thread, a stream, cuBLASLt on that
// stream, the embedded PTX modules (JIT-compiled by the driver for this GPU), the upload
// staging buffer and the error flags.
func openGPU(ordinal int) (*gpuDevice, error) {
	if err := drv.Available(); err != nil {
		return nil, err
	}
	if err := cublas.Available(); err != nil {
		return nil, err
	}
	d, err := drv.Open(ordinal)
	if err != nil {
		return nil, err
	}
	g := &gpuDevice{dev: d, props: d.Properties(), args: drv.NewArgs()}
	var why string
	g.pdl, why = pdlMode(pdlWanted.Load(), g.props, drv.LaunchKernelExAvailable())
	if why != "" {
		fmt.Fprintln(os.Stderr, "qvl: cuda:", why)
	}
	err = d.Do(func() error {
		var err error
		if g.stream, err = drv.StreamCreate(drv.StreamNonBlocking); err != nil {
			return err
		}
		if g.blas, err = cublas.New(cublas.Options{}); err != nil {
			return err
		}
		if err = g.blas.SetStream(g.stream); err != nil {
			return err
		}
		if g.stage, err = drv.MemAllocHost(stagingBytes); err != nil {
			return fmt.Errorf("upload staging buffer: %w", err)
		}
		if g.flags, err = drv.MemAllocHost(4 * errFlagCount); err != nil {
			return fmt.Errorf("error flags: %w", err)
		}
		clear(drv.HostSlice[uint32](g.flags))
		return g.loadKernels()
	})
	if err != nil {
		_ = g.close()
		return nil, err
	}
	return g, nil
}

func (g *gpuDevice) loadKernels() error {
	load := kernels.Modules
	if g.pdl {
		load = kernels.PDLModules
	}
	mods, err := load()
	if err != nil {
		return err
	}
	found := map[string]drv.Module{}
	for _, m := range mods {
		mod, err := drv.ModuleLoadData(m.PTX)
		if err != nil {
			return fmt.Errorf("loading kernels/%s.ptx: %w", m.Name, err)
		}
		g.modules = append(g.modules, mod)
		entries, err := kernels.Entries(m.PTX)
		if err != nil {
			return err
		}
		for _, e := range entries {
			found[e.Name] = mod
		}
	}
	g.fns = make([]drv.Function, len(kernelTable))
	for i, k := range kernelTable {
		mod, ok := found[k.name]
		if !ok {
			return fmt.Errorf("kernel %s is not in the embedded PTX (rebuild with make kernels)", k.name)
		}
		if g.fns[i], err = mod.Function(k.name); err != nil {
			return err
		}
		if k.smem != nil {
			need := 0
			for _, hd := range []int{32, 64, 128} {
				need = max(need, k.smem(hd))
			}
			if need > 48<<10 {
				if need > g.props.SharedMemoryPerBlockOptin && k.optional {
					continue // newBackend refuses the opt-in that would launch it
				}
				if need > g.props.SharedMemoryPerBlockOptin {
					return fmt.Errorf("kernel %s needs %d bytes of shared memory; the device allows %d", k.name, need, g.props.SharedMemoryPerBlockOptin)
				}
				if err := g.fns[i].SetMaxDynamicSharedMemory(need); err != nil {
					return fmt.Errorf("kernel %s: %w", k.name, err)
				}
			}
		}
	}
	return nil
}

func (g *gpuDevice) info() devInfo {
	name := g.props.String()
	if g.pdl {
		name += ", programmatic dependent launch"
	}
	return devInfo{name: name, sms: g.props.Multiprocessors, persistent: g.props.Multiprocessors,
		smemOptin: g.props.SharedMemoryPerBlockOptin}
}

func (g *gpuDevice) do(fn func() error) error { return g.dev.Do(fn) }

func (g *gpuDevice) alloc(bytes int) (uintptr, error) {
	p, err := drv.MemAlloc(uint64(bytes))
	return uintptr(p), err
}

func (g *gpuDevice) free(p uintptr) error {
	if g.capturing {
		return errCapturing
	}
	// cuMemFree does not wait for the stream: queued kernels may still use p.
	if err := g.stream.Synchronize(); err != nil {
		return err
	}
	g.stageAt = 0
	return drv.MemFree(drv.DevicePtr(p))
}

func (g *gpuDevice) upload(dst uintptr, src []byte) error {
	if g.capturing {
		// A captured copy would replay whatever the staging buffer holds at replay time.
		return errCapturing
	}
	buf := g.stage.Bytes()
	for len(src) > 0 {
		if g.stageAt >= len(buf) || (len(buf)-g.stageAt < len(src) && g.stageAt > 0) {
			// The staged bytes may still be in flight: wait for them before reusing the buffer.
			if err := g.stream.Synchronize(); err != nil {
				return err
			}
			g.stageAt = 0
		}
		n := min(len(src), len(buf)-g.stageAt)
		copy(buf[g.stageAt:], src[:n])
		if err := drv.MemcpyHtoDAsync(drv.DevicePtr(dst), g.stage, g.stageAt, n, g.stream); err != nil {
			return err
		}
		g.stageAt += (n + 255) &^ 255
		src, dst = src[n:], dst+uintptr(n)
	}
	return nil
}

func (g *gpuDevice) download(dst []byte, src uintptr) error {
	if err := g.sync(); err != nil {
		return err
	}
	return drv.MemcpyDtoH(dst, drv.DevicePtr(src))
}

func (g *gpuDevice) memset32(dst uintptr, v uint32, n int) error {
	if n == 0 {
		return nil
	}
	return drv.MemsetD32Async(drv.DevicePtr(dst), v, uint64(n), g.stream)
}

func (g *gpuDevice) launch(k kernelID, grid, block dim3, smem int, a *kargs) error {
	g.args.Reset()
	for _, v := range a.vals[:a.n] {
		g.args.U64(v)
	}
	gd := drv.Dim3{X: uint32(grid.x), Y: uint32(grid.y), Z: uint32(grid.z)}
	bd := drv.Dim3{X: uint32(block.x), Y: uint32(block.y), Z: uint32(block.z)}
	var err error
	if g.pdl {
		err = drv.LaunchKernelEx(g.fns[k], gd, bd, uint32(smem), g.stream, drv.LaunchAttrs{ProgrammaticStreamSerialization: true}, g.args)
	} else {
		err = drv.LaunchKernel(g.fns[k], gd, bd, uint32(smem), g.stream, g.args)
	}
	if err != nil {
		return fmt.Errorf("%s grid %v block %v smem %d: %w", kernelTable[k].name, grid, block, smem, err)
	}
	return nil
}

func (g *gpuDevice) linear(m, n, k int, bf16 bool, x, w, y uintptr) error {
	t := cublas.R32F
	if bf16 {
		t = cublas.R16BF
	}
	s := cublas.LinearShape{M: m, N: n, K: k, XType: t, WType: t, YType: cublas.R32F}
	if m <= tuneMaxRows && !tuneOff.Load() && !g.capturing && !g.blas.Tuned(s, drv.DevicePtr(x), drv.DevicePtr(w), drv.DevicePtr(y)) {
		// The first call of a decode-sized shape times the heuristic's candidates and keeps the
		// fastest (it writes y as the GEMM would); on any error the plain call below runs. Each
		// candidate run is timed with a cold L2, as a decode step reads its weights.
		g.ensureTuneFlush()
		if res, err := g.blas.TuneLinear(s, drv.DevicePtr(x), drv.DevicePtr(w), drv.DevicePtr(y), tuneReps); err == nil {
			g.tuneLog = append(g.tuneLog, fmt.Sprintf("%d×%d×%d: kept %s %v (heuristic 0 %v) of %d candidates",
				m, n, k, res.Cands[res.Best], res.Times[res.Best], res.Times[0], len(res.Times)))
			return nil
		}
	}
	err := g.blas.Linear(s, drv.DevicePtr(x), drv.DevicePtr(w), drv.DevicePtr(y), 0)
	if err != nil && !g.capturing {
		// cuBLASLt's heuristic may offer no algorithm for an odd shape or alignment; classic
		// cublasGemmEx takes any leading dimension.
		if err2 := g.blas.LinearGemmEx(s, drv.DevicePtr(x), drv.DevicePtr(w), drv.DevicePtr(y), 0); err2 == nil {
			return nil
		}
	}
	return err
}

// ensureTuneFlush allocates the tuning's L2 flush memory (twice the L2) once and hands it to
// cuBLASLt's tuning; without it (no L2 size, or no memory) the tuning times warm repeats.
func (g *gpuDevice) ensureTuneFlush() {
	n := 2 * g.props.L2CacheBytes
	if g.tuneFlush != 0 || n <= 0 {
		return
	}
	p, err := drv.MemAlloc(uint64(n))
	if err != nil {
		return
	}
	g.tuneFlush = uintptr(p)
	g.blas.SetTuneFlush(p, uint64(n))
}

func (g *gpuDevice) sync() error {
	if g.capturing {
		return errCapturing
	}
	if err := g.stream.Synchronize(); err != nil {
		return err
	}
	g.stageAt = 0
	return nil
}

func (g *gpuDevice) errFlags() uintptr {
	// Page-locked memory from cuMemAllocHost is mapped into the device's address space at the
	// same address (unified addressing, every 64-bit platform CUDA supports).
	return uintptr(unsafe.Pointer(&g.flags.Bytes()[0]))
}

func (g *gpuDevice) takeErrors() ([]uint32, error) {
	f := drv.HostSlice[uint32](g.flags)
	var out []uint32
	for i, v := range f {
		if v != 0 {
			out = append(out, uint32(i))
			f[i] = 0
		}
	}
	return out, nil
}

func (g *gpuDevice) beginCapture() error {
	if err := g.stream.BeginCapture(drv.CaptureThreadLocal); err != nil {
		return err
	}
	g.capturing = true
	return nil
}

func (g *gpuDevice) endCapture(abort bool) (uintptr, error) {
	g.capturing = false
	graph, err := g.stream.EndCapture()
	if err != nil {
		return 0, err
	}
	defer graph.Destroy()
	if g.pdl && !abort {
		// What the capture kept of programmatic dependent launch: the programmatic edges
		// (graphEdges; a driver without cuGraphGetEdges_v2 leaves it unknown).
		if types, err := graph.EdgeTypes(); err == nil {
			g.graphEdges.known, g.graphEdges.total, g.graphEdges.programmatic = true, len(types), 0
			for _, t := range types {
				if t == drv.DependencyProgrammatic {
					g.graphEdges.programmatic++
				}
			}
		}
	}
	if abort {
		return 0, nil
	}
	exec, err := graph.Instantiate()
	return uintptr(exec), err
}

func (g *gpuDevice) launchGraph(e uintptr) error { return drv.GraphExec(e).Launch(g.stream) }

func (g *gpuDevice) destroyGraph(e uintptr) { _ = drv.GraphExec(e).Destroy() }

func (g *gpuDevice) newEvent() (uintptr, error) {
	ev, err := drv.EventCreate(drv.EventDefault)
	return uintptr(ev), err
}

func (g *gpuDevice) record(ev uintptr) error { return drv.Event(ev).Record(g.stream) }

func (g *gpuDevice) elapsed(start, end uintptr) (time.Duration, error) {
	ms, err := drv.EventElapsedTime(drv.Event(start), drv.Event(end))
	return time.Duration(float64(ms) * float64(time.Millisecond)), err
}

func (g *gpuDevice) destroyEvent(ev uintptr) { _ = drv.Event(ev).Destroy() }

func (g *gpuDevice) close() error {
	if g.dev == nil {
		return nil
	}
	var errs []error
	errs = append(errs, g.dev.Do(func() error {
		var errs []error
		if g.stream != 0 {
			errs = append(errs, g.stream.Synchronize())
		}
		if g.blas != nil {
			errs = append(errs, g.blas.Destroy())
		}
		if g.tuneFlush != 0 {
			errs = append(errs, drv.MemFree(drv.DevicePtr(g.tuneFlush)))
		}
		for _, m := range g.modules {
			errs = append(errs, m.Unload())
		}
		if g.stage != nil {
			errs = append(errs, g.stage.Free())
		}
		if g.flags != nil {
			errs = append(errs, g.flags.Free())
		}
		if g.stream != 0 {
			errs = append(errs, g.stream.Destroy())
		}
		return errors.Join(errs...)
	}))
	errs = append(errs, g.dev.Close())
	g.dev = nil
	return errors.Join(errs...)
}

package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// Dev is a CUdevice: the driver's handle for a device ordinal.
type Dev int32

// Context is a CUcontext.
type Context uintptr

// DevicePtr is a CUdeviceptr: an address in device memory.
type DevicePtr uintptr

// Offset returns p advanced by bytes.
func (p DevicePtr) Offset(bytes uint64) DevicePtr { return p + DevicePtr(bytes) }

// Stream is a CUstream. The zero Stream is the legacy default stream.
type Stream uintptr

// Event is a CUevent.
type Event uintptr

// Module is a CUmodule: a loaded PTX or cubin image.
type Module uintptr

// Function is a CUfunction: a kernel entry point of a Module.
type Function uintptr

// Graph is a CUgraph, as produced by stream capture.
type Graph uintptr

// GraphExec is a CUgraphExec: an instantiated, launchable Graph.
type GraphExec uintptr

// Element is the set of element types that may be copied between Go slices
// and device memory: plain numbers, no Go pointers. bf16 and f16 data travel
// as uint16.
type Element interface {
	~uint8 | ~int8 | ~uint16 | ~int16 | ~uint32 | ~int32 | ~uint64 | ~int64 | ~float32 | ~float64
}

// argBuf is a reusable argument array for calls whose arguments are all
// integers, handles or C/device addresses (no Go pointers), so they can go
// through dl.CallSlice without allocating.
type argBuf [8]uintptr

var argPool = sync.Pool{New: func() any { return new(argBuf) }}

// callH calls fn with the first n of a0..a4 without allocating. Only for
// arguments that are not Go pointers.
func callH(fn uintptr, n int, a0, a1, a2, a3, a4 uintptr) uint32 {
	b := argPool.Get().(*argBuf)
	b[0], b[1], b[2], b[3], b[4] = a0, a1, a2, a3, a4
	r := dl.CallSlice(fn, b[:n])
	argPool.Put(b)
	return r
}

// DriverVersion returns the CUDA version the driver supports, as
// 1000*major + 10*minor (13000 for CUDA 13.0). It loads libcuda if needed
// and does not need cuInit or a device.
func DriverVersion() (int, error) {
	if err := load(); err != nil {
		return 0, err
	}
	var v int32
	if err := check("cuDriverGetVersion", dl.Call(api.cuDriverGetVersion, uintptr(unsafe.Pointer(&v)))); err != nil {
		return 0, err
	}
	return int(v), nil
}

// DeviceCount returns the number of CUDA devices. cuInit must have
// succeeded (Available does both).
func DeviceCount() (int, error) {
	var n int32
	if err := check("cuDeviceGetCount", dl.Call(api.cuDeviceGetCount, uintptr(unsafe.Pointer(&n)))); err != nil {
		return 0, err
	}
	return int(n), nil
}

// DeviceGet returns the handle of device ordinal.
func DeviceGet(ordinal int) (Dev, error) {
	var d int32
	if err := check("cuDeviceGet", dl.Call(api.cuDeviceGet, uintptr(unsafe.Pointer(&d)), uintptr(ordinal))); err != nil {
		return 0, err
	}
	return Dev(d), nil
}

// Name returns the device's marketing name, e.g. "NVIDIA H100 80GB HBM3".
func (d Dev) Name() (string, error) {
	buf := make([]byte, 256)
	if err := check("cuDeviceGetName", dl.Call(api.cuDeviceGetName, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), uintptr(d))); err != nil {
		return "", err
	}
	return dl.GoString(&buf[0]), nil
}

// DeviceAttribute is a CUdevice_attribute.
type DeviceAttribute int32

// Device attributes qvl reads (values from cuda.h).
const (
	// AttrMaxThreadsPerBlock is CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK.
	AttrMaxThreadsPerBlock DeviceAttribute = 1
	// AttrMaxSharedMemoryPerBlock is CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK
	// (the default limit, 48 KiB, without opt-in).
	AttrMaxSharedMemoryPerBlock DeviceAttribute = 8
	// AttrWarpSize is CU_DEVICE_ATTRIBUTE_WARP_SIZE.
	AttrWarpSize DeviceAttribute = 10
	// AttrMaxRegistersPerBlock is CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK.
	AttrMaxRegistersPerBlock DeviceAttribute = 12
	// AttrClockRate is CU_DEVICE_ATTRIBUTE_CLOCK_RATE in kHz (deprecated in
	// CUDA 13; may be unavailable).
	AttrClockRate DeviceAttribute = 13
	// AttrMultiprocessorCount is CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT.
	AttrMultiprocessorCount DeviceAttribute = 16
	// AttrMemoryClockRate is CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE in kHz
	// (deprecated in CUDA 13; may be unavailable).
	AttrMemoryClockRate DeviceAttribute = 36
	// AttrGlobalMemoryBusWidth is CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH in bits.
	AttrGlobalMemoryBusWidth DeviceAttribute = 37
	// AttrL2CacheSize is CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE in bytes.
	AttrL2CacheSize DeviceAttribute = 38
	// AttrMaxThreadsPerMultiprocessor is CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR.
	AttrMaxThreadsPerMultiprocessor DeviceAttribute = 39
	// AttrComputeCapabilityMajor is CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR.
	AttrComputeCapabilityMajor DeviceAttribute = 75
	// AttrComputeCapabilityMinor is CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR.
	AttrComputeCapabilityMinor DeviceAttribute = 76
	// AttrMaxSharedMemoryPerMultiprocessor is CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR.
	AttrMaxSharedMemoryPerMultiprocessor DeviceAttribute = 81
	// AttrMaxSharedMemoryPerBlockOptin is CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN:
	// the most dynamic shared memory a kernel may request after
	// Function.SetMaxDynamicSharedMemory.
	AttrMaxSharedMemoryPerBlockOptin DeviceAttribute = 97
)

// Attribute returns one integer device attribute.
func (d Dev) Attribute(attr DeviceAttribute) (int, error) {
	var v int32
	if err := check("cuDeviceGetAttribute", dl.Call(api.cuDeviceGetAttribute, uintptr(unsafe.Pointer(&v)), uintptr(attr), uintptr(d))); err != nil {
		return 0, fmt.Errorf("device attribute %d: %w", attr, err)
	}
	return int(v), nil
}

// TotalMem returns the device's memory size in bytes.
func (d Dev) TotalMem() (uint64, error) {
	var n uint64
	if err := check("cuDeviceTotalMem_v2", dl.Call(api.cuDeviceTotalMem, uintptr(unsafe.Pointer(&n)), uintptr(d))); err != nil {
		return 0, err
	}
	return n, nil
}

// PrimaryCtxRetain retains (creating on first use) the device's primary
// context. Every successful call must be matched by PrimaryCtxRelease.
func (d Dev) PrimaryCtxRetain() (Context, error) {
	var c Context
	if err := check("cuDevicePrimaryCtxRetain", dl.Call(api.cuDevicePrimaryCtxRetain, uintptr(unsafe.Pointer(&c)), uintptr(d))); err != nil {
		return 0, err
	}
	return c, nil
}

// PrimaryCtxRelease releases one reference to the primary context.
func (d Dev) PrimaryCtxRelease() error {
	return check("cuDevicePrimaryCtxRelease_v2", callH(api.cuDevicePrimaryCtxRelease, 1, uintptr(d), 0, 0, 0, 0))
}

// SetCurrent binds c to the calling OS thread (Context(0) unbinds). Only
// meaningful on a thread locked with runtime.LockOSThread; Device does this.
func (c Context) SetCurrent() error {
	return check("cuCtxSetCurrent", callH(api.cuCtxSetCurrent, 1, uintptr(c), 0, 0, 0, 0))
}

// CtxSynchronize waits for all work in the current context.
func CtxSynchronize() error {
	return check("cuCtxSynchronize", callH(api.cuCtxSynchronize, 0, 0, 0, 0, 0, 0))
}

// MemGetInfo returns the free and total device memory in bytes.
func MemGetInfo() (free, total uint64, err error) {
	var f, t uint64
	if err := check("cuMemGetInfo_v2", dl.Call(api.cuMemGetInfo, uintptr(unsafe.Pointer(&f)), uintptr(unsafe.Pointer(&t)))); err != nil {
		return 0, 0, err
	}
	return f, t, nil
}

// MemAlloc allocates bytes of device memory (256-byte aligned).
func MemAlloc(bytes uint64) (DevicePtr, error) {
	if bytes == 0 {
		return 0, &Error{Func: "cuMemAlloc_v2", Code: ErrorInvalidValue, Detail: "size 0"}
	}
	var p DevicePtr
	if err := check("cuMemAlloc_v2", dl.Call(api.cuMemAlloc, uintptr(unsafe.Pointer(&p)), uintptr(bytes))); err != nil {
		return 0, &Error{Func: "cuMemAlloc_v2", Code: err.(*Error).Code, Detail: fmt.Sprintf("%d bytes", bytes)}
	}
	return p, nil
}

// MemFree frees device memory from MemAlloc.
func MemFree(p DevicePtr) error {
	return check("cuMemFree_v2", callH(api.cuMemFree, 1, uintptr(p), 0, 0, 0, 0))
}

// sliceBytes returns the address and byte size of s's backing array.
func sliceBytes[T Element](s []T) (unsafe.Pointer, uint64) {
	if len(s) == 0 {
		return nil, 0
	}
	return unsafe.Pointer(unsafe.SliceData(s)), uint64(len(s)) * uint64(unsafe.Sizeof(s[0]))
}

// MemcpyHtoD copies src into device memory at dst, synchronously with
// respect to the host (src may be reused when it returns).
func MemcpyHtoD[T Element](dst DevicePtr, src []T) error {
	p, n := sliceBytes(src)
	if n == 0 {
		return nil
	}
	return check("cuMemcpyHtoD_v2", dl.Call(api.cuMemcpyHtoD, uintptr(dst), uintptr(p), uintptr(n)))
}

// MemcpyDtoH copies len(dst) elements from device memory at src into dst and
// returns when the data is in dst.
func MemcpyDtoH[T Element](dst []T, src DevicePtr) error {
	p, n := sliceBytes(dst)
	if n == 0 {
		return nil
	}
	return check("cuMemcpyDtoH_v2", dl.Call(api.cuMemcpyDtoH, uintptr(p), uintptr(src), uintptr(n)))
}

// MemcpyDtoD copies bytes between device buffers.
func MemcpyDtoD(dst, src DevicePtr, bytes uint64) error {
	return check("cuMemcpyDtoD_v2", callH(api.cuMemcpyDtoD, 3, uintptr(dst), uintptr(src), uintptr(bytes), 0, 0))
}

// MemcpyDtoDAsync copies bytes between device buffers in stream order.
func MemcpyDtoDAsync(dst, src DevicePtr, bytes uint64, s Stream) error {
	return check("cuMemcpyDtoDAsync_v2", callH(api.cuMemcpyDtoDAsync, 4, uintptr(dst), uintptr(src), uintptr(bytes), uintptr(s), 0))
}

// MemsetD8 sets bytes bytes at p to v, synchronously.
func MemsetD8(p DevicePtr, v byte, bytes uint64) error {
	return check("cuMemsetD8_v2", callH(api.cuMemsetD8, 3, uintptr(p), uintptr(v), uintptr(bytes), 0, 0))
}

// MemsetD32Async sets count 32-bit words at p (4-byte aligned) to v in
// stream order.
func MemsetD32Async(p DevicePtr, v uint32, count uint64, s Stream) error {
	return check("cuMemsetD32Async", callH(api.cuMemsetD32Async, 4, uintptr(p), uintptr(v), uintptr(count), uintptr(s), 0))
}

// HostBuffer is page-locked host memory from cuMemAllocHost. The device can
// read and write it by DMA while the host goes on, so it is the only host
// memory the Async copies accept. It lives outside the Go heap: free it with
// Free (inside Device.Do).
type HostBuffer struct {
	p unsafe.Pointer
	n int
}

// MemAllocHost allocates bytes of page-locked host memory.
func MemAllocHost(bytes int) (*HostBuffer, error) {
	if bytes <= 0 {
		return nil, &Error{Func: "cuMemAllocHost_v2", Code: ErrorInvalidValue, Detail: fmt.Sprintf("size %d", bytes)}
	}
	var p unsafe.Pointer
	if err := check("cuMemAllocHost_v2", dl.Call(api.cuMemAllocHost, uintptr(unsafe.Pointer(&p)), uintptr(bytes))); err != nil {
		return nil, err
	}
	return &HostBuffer{p: p, n: bytes}, nil
}

// Len returns the buffer's size in bytes (0 after Free).
func (h *HostBuffer) Len() int { return h.n }

// Bytes returns the buffer as a byte slice; it is invalid after Free.
func (h *HostBuffer) Bytes() []byte {
	if h.p == nil {
		return nil
	}
	return unsafe.Slice((*byte)(h.p), h.n)
}

// HostSlice views h as a slice of T (len = h.Len()/sizeof(T)); it is invalid
// after Free.
func HostSlice[T Element](h *HostBuffer) []T {
	var zero T
	if h.p == nil {
		return nil
	}
	return unsafe.Slice((*T)(h.p), h.n/int(unsafe.Sizeof(zero)))
}

// Free releases the memory. Calling Free twice is a no-op.
func (h *HostBuffer) Free() error {
	if h.p == nil {
		return nil
	}
	err := check("cuMemFreeHost", dl.Call(api.cuMemFreeHost, uintptr(h.p)))
	if err == nil {
		h.p, h.n = nil, 0
	}
	return err
}

func (h *HostBuffer) span(fn string, off, bytes int) (uintptr, error) {
	if h.p == nil {
		return 0, &Error{Func: fn, Code: ErrorInvalidValue, Detail: "host buffer is freed"}
	}
	if off < 0 || bytes < 0 || off+bytes > h.n {
		return 0, &Error{Func: fn, Code: ErrorInvalidValue, Detail: fmt.Sprintf("host range [%d, %d) outside buffer of %d bytes", off, off+bytes, h.n)}
	}
	return uintptr(h.p) + uintptr(off), nil
}

// MemcpyHtoDAsync copies bytes from src[srcOff:] to dst in stream order. The
// host memory must stay untouched until the stream reaches the copy.
func MemcpyHtoDAsync(dst DevicePtr, src *HostBuffer, srcOff, bytes int, s Stream) error {
	hp, err := src.span("cuMemcpyHtoDAsync_v2", srcOff, bytes)
	if err != nil {
		return err
	}
	return check("cuMemcpyHtoDAsync_v2", callH(api.cuMemcpyHtoDAsync, 4, uintptr(dst), hp, uintptr(bytes), uintptr(s), 0))
}

// MemcpyDtoHAsync copies bytes from src to dst[dstOff:] in stream order; the
// data is there once the stream (or an event recorded after it) completes.
func MemcpyDtoHAsync(dst *HostBuffer, dstOff int, src DevicePtr, bytes int, s Stream) error {
	hp, err := dst.span("cuMemcpyDtoHAsync_v2", dstOff, bytes)
	if err != nil {
		return err
	}
	return check("cuMemcpyDtoHAsync_v2", callH(api.cuMemcpyDtoHAsync, 4, hp, uintptr(src), uintptr(bytes), uintptr(s), 0))
}

// StreamFlags are cuStreamCreate flags.
type StreamFlags uint32

const (
	// StreamDefault is CU_STREAM_DEFAULT: synchronises with the legacy
	// default stream.
	StreamDefault StreamFlags = 0
	// StreamNonBlocking is CU_STREAM_NON_BLOCKING: no implicit
	// synchronisation with stream 0. Streams that are captured into graphs
	// must be non-blocking.
	StreamNonBlocking StreamFlags = 1
)

// StreamCreate creates a stream.
func StreamCreate(flags StreamFlags) (Stream, error) {
	var s Stream
	if err := check("cuStreamCreate", dl.Call(api.cuStreamCreate, uintptr(unsafe.Pointer(&s)), uintptr(flags))); err != nil {
		return 0, err
	}
	return s, nil
}

// Synchronize waits until all work queued on s is done.
func (s Stream) Synchronize() error {
	return check("cuStreamSynchronize", callH(api.cuStreamSynchronize, 1, uintptr(s), 0, 0, 0, 0))
}

// Destroy destroys s once its queued work completes.
func (s Stream) Destroy() error {
	return check("cuStreamDestroy_v2", callH(api.cuStreamDestroy, 1, uintptr(s), 0, 0, 0, 0))
}

// CaptureMode is a CUstreamCaptureMode.
type CaptureMode uint32

const (
	// CaptureGlobal is CU_STREAM_CAPTURE_MODE_GLOBAL: other threads may not
	// make unsafe calls while this capture runs.
	CaptureGlobal CaptureMode = 0
	// CaptureThreadLocal is CU_STREAM_CAPTURE_MODE_THREAD_LOCAL: only this
	// thread is restricted. Right for Device's single driver thread.
	CaptureThreadLocal CaptureMode = 1
	// CaptureRelaxed is CU_STREAM_CAPTURE_MODE_RELAXED.
	CaptureRelaxed CaptureMode = 2
)

// BeginCapture starts recording the work queued on s into a graph instead
// of running it.
func (s Stream) BeginCapture(mode CaptureMode) error {
	return check("cuStreamBeginCapture_v2", callH(api.cuStreamBeginCapture, 2, uintptr(s), uintptr(mode), 0, 0, 0))
}

// EndCapture ends the capture started by BeginCapture and returns the graph.
func (s Stream) EndCapture() (Graph, error) {
	var g Graph
	if err := check("cuStreamEndCapture", dl.Call(api.cuStreamEndCapture, uintptr(s), uintptr(unsafe.Pointer(&g)))); err != nil {
		return 0, err
	}
	return g, nil
}

// Instantiate turns g into an executable graph.
func (g Graph) Instantiate() (GraphExec, error) {
	var e GraphExec
	if err := check("cuGraphInstantiateWithFlags", dl.Call(api.cuGraphInstantiateWithFlags, uintptr(unsafe.Pointer(&e)), uintptr(g), 0)); err != nil {
		return 0, err
	}
	return e, nil
}

// Dependency types of a graph edge (CUgraphDependencyType).
const (
	// DependencyDefault: the downstream node waits for the upstream one to finish.
	DependencyDefault uint8 = 0
	// DependencyProgrammatic: the downstream kernel may start when the upstream kernel's blocks
	// have triggered (griddepcontrol.launch_dependents) or exited; what a launch with
	// programmatic stream serialization becomes when a stream capture keeps it.
	DependencyProgrammatic uint8 = 1
)

// EdgeTypes returns the dependency type of each edge of g (cuGraphGetEdges_v2, CUDA 12.3 and
// later; ErrorSymbolNotLoaded from an older driver).
func (g Graph) EdgeTypes() ([]uint8, error) {
	var n uintptr
	if err := check("cuGraphGetEdges_v2", dl.Call(api.cuGraphGetEdges, uintptr(g), 0, 0, 0, uintptr(unsafe.Pointer(&n)))); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	from, to := make([]uintptr, n), make([]uintptr, n)
	data := make([][8]byte, n) // CUgraphEdgeData: from_port, to_port, type, reserved[5]
	if err := check("cuGraphGetEdges_v2", dl.Call(api.cuGraphGetEdges, uintptr(g), uintptr(unsafe.Pointer(&from[0])),
		uintptr(unsafe.Pointer(&to[0])), uintptr(unsafe.Pointer(&data[0])), uintptr(unsafe.Pointer(&n)))); err != nil {
		return nil, err
	}
	types := make([]uint8, min(int(n), len(data)))
	for i := range types {
		types[i] = data[i][2]
	}
	return types, nil
}

// Destroy destroys the graph (its instantiations stay valid).
func (g Graph) Destroy() error {
	return check("cuGraphDestroy", callH(api.cuGraphDestroy, 1, uintptr(g), 0, 0, 0, 0))
}

// Launch queues one replay of the graph on s. It does not allocate.
func (e GraphExec) Launch(s Stream) error {
	return check("cuGraphLaunch", callH(api.cuGraphLaunch, 2, uintptr(e), uintptr(s), 0, 0, 0))
}

// Destroy destroys the executable graph.
func (e GraphExec) Destroy() error {
	return check("cuGraphExecDestroy", callH(api.cuGraphExecDestroy, 1, uintptr(e), 0, 0, 0, 0))
}

// EventFlags are cuEventCreate flags.
type EventFlags uint32

const (
	// EventDefault is CU_EVENT_DEFAULT: records timing, spins on sync.
	EventDefault EventFlags = 0
	// EventBlockingSync is CU_EVENT_BLOCKING_SYNC: Synchronize sleeps
	// instead of spinning.
	EventBlockingSync EventFlags = 1
	// EventDisableTiming is CU_EVENT_DISABLE_TIMING: cheaper, no ElapsedTime.
	EventDisableTiming EventFlags = 2
)

// EventCreate creates an event.
func EventCreate(flags EventFlags) (Event, error) {
	var e Event
	if err := check("cuEventCreate", dl.Call(api.cuEventCreate, uintptr(unsafe.Pointer(&e)), uintptr(flags))); err != nil {
		return 0, err
	}
	return e, nil
}

// Record records e at the current end of s's queue.
func (e Event) Record(s Stream) error {
	return check("cuEventRecord", callH(api.cuEventRecord, 2, uintptr(e), uintptr(s), 0, 0, 0))
}

// Synchronize waits until the work before e's last Record is done.
func (e Event) Synchronize() error {
	return check("cuEventSynchronize", callH(api.cuEventSynchronize, 1, uintptr(e), 0, 0, 0, 0))
}

// Destroy destroys e.
func (e Event) Destroy() error {
	return check("cuEventDestroy_v2", callH(api.cuEventDestroy, 1, uintptr(e), 0, 0, 0, 0))
}

// EventElapsedTime returns the milliseconds between two completed events
// (resolution about half a microsecond).
func EventElapsedTime(start, end Event) (float32, error) {
	var ms float32
	if err := check("cuEventElapsedTime", dl.Call(api.cuEventElapsedTime, uintptr(unsafe.Pointer(&ms)), uintptr(start), uintptr(end))); err != nil {
		return 0, err
	}
	return ms, nil
}

// cImage returns image NUL-terminated (PTX is text and the driver reads it
// up to the NUL), copying only when needed.
func cImage(image []byte) []byte {
	if len(image) > 0 && image[len(image)-1] == 0 {
		return image
	}
	b := make([]byte, len(image)+1)
	copy(b, image)
	return b
}

// ModuleLoadData loads a PTX (text) or cubin image into the current
// context; PTX is JIT-compiled for the device. When loading fails, the load
// is repeated with cuModuleLoadDataEx to put the JIT compiler's error log in
// the returned error's Detail.
func ModuleLoadData(image []byte) (Module, error) {
	if len(image) == 0 {
		return 0, &Error{Func: "cuModuleLoadData", Code: ErrorInvalidValue, Detail: "empty image"}
	}
	img := cImage(image)
	var m Module
	err := check("cuModuleLoadData", dl.Call(api.cuModuleLoadData, uintptr(unsafe.Pointer(&m)), uintptr(unsafe.Pointer(&img[0]))))
	runtime.KeepAlive(img)
	if err == nil {
		return m, nil
	}
	m2, log, exErr := ModuleLoadDataEx(img, false)
	switch {
	case exErr == nil:
		// The second attempt worked (a transient failure): keep its module.
		return m2, nil
	case log.Error != "":
		err.(*Error).Detail = log.Error
	}
	return 0, err
}

// JITLog holds the PTX JIT compiler's messages from ModuleLoadDataEx.
type JITLog struct {
	// Info is the informational log (register use etc. when verbose).
	Info string
	// Error is the error log; empty on success.
	Error string
}

// CUjit_option values used for the logs (cuda.h).
const (
	jitInfoLogBuffer           = 3
	jitInfoLogBufferSizeBytes  = 4
	jitErrorLogBuffer          = 5
	jitErrorLogBufferSizeBytes = 6
	jitLogVerbose              = 12
	jitLogSize                 = 16 << 10
)

// ModuleLoadDataEx is ModuleLoadData that also returns the JIT logs; verbose
// asks the compiler for per-kernel resource usage in the info log. On
// failure the error log is also in the error's Detail.
func ModuleLoadDataEx(image []byte, verbose bool) (Module, JITLog, error) {
	if len(image) == 0 {
		return 0, JITLog{}, &Error{Func: "cuModuleLoadDataEx", Code: ErrorInvalidValue, Detail: "empty image"}
	}
	img := cImage(image)
	infoLog := make([]byte, jitLogSize)
	errLog := make([]byte, jitLogSize)
	opts := []int32{jitInfoLogBuffer, jitInfoLogBufferSizeBytes, jitErrorLogBuffer, jitErrorLogBufferSizeBytes, jitLogVerbose}
	// optionValues holds two Go pointers (the log buffers), so they are
	// pinned for the call; the sizes are passed as pointer-sized integers,
	// and the driver writes back the number of bytes it logged.
	var pin runtime.Pinner
	pin.Pin(&infoLog[0])
	pin.Pin(&errLog[0])
	defer pin.Unpin()
	verb := uintptr(0)
	if verbose {
		verb = 1
	}
	vals := []uintptr{
		uintptr(unsafe.Pointer(&infoLog[0])), uintptr(len(infoLog)),
		uintptr(unsafe.Pointer(&errLog[0])), uintptr(len(errLog)),
		verb,
	}
	var m Module
	r := dl.Call(api.cuModuleLoadDataEx, uintptr(unsafe.Pointer(&m)), uintptr(unsafe.Pointer(&img[0])),
		uintptr(len(opts)), uintptr(unsafe.Pointer(&opts[0])), uintptr(unsafe.Pointer(&vals[0])))
	runtime.KeepAlive(img)
	log := JITLog{Info: logString(infoLog, vals[1]), Error: logString(errLog, vals[3])}
	if err := check("cuModuleLoadDataEx", r); err != nil {
		err.(*Error).Detail = log.Error
		return 0, log, err
	}
	return m, log, nil
}

// logString returns the NUL-terminated text the JIT wrote into buf; n is the
// size it reported (it may or may not count the NUL).
func logString(buf []byte, n uintptr) string {
	if n > uintptr(len(buf)) {
		n = uintptr(len(buf))
	}
	b := buf[:n]
	for i, c := range b {
		if c == 0 {
			b = b[:i]
			break
		}
	}
	return string(b)
}

// Function returns the kernel called name (the extern "C" or .entry name).
func (m Module) Function(name string) (Function, error) {
	cname := dl.CString(name)
	var f Function
	if err := check("cuModuleGetFunction", dl.Call(api.cuModuleGetFunction, uintptr(unsafe.Pointer(&f)), uintptr(m), uintptr(unsafe.Pointer(&cname[0])))); err != nil {
		err.(*Error).Detail = fmt.Sprintf("kernel %q", name)
		return 0, err
	}
	return f, nil
}

// Unload unloads the module; its Functions become invalid.
func (m Module) Unload() error {
	return check("cuModuleUnload", callH(api.cuModuleUnload, 1, uintptr(m), 0, 0, 0, 0))
}

// FunctionAttribute is a CUfunction_attribute.
type FunctionAttribute int32

// FuncAttrMaxDynamicSharedSizeBytes is
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
const FuncAttrMaxDynamicSharedSizeBytes FunctionAttribute = 8

// SetAttribute sets an integer function attribute.
func (f Function) SetAttribute(attr FunctionAttribute, value int) error {
	return check("cuFuncSetAttribute", callH(api.cuFuncSetAttribute, 3, uintptr(f), uintptr(attr), dl.Int(int64(value)), 0, 0))
}

// SetMaxDynamicSharedMemory lets f be launched with up to bytes of dynamic
// shared memory; above 48 KiB this opt-in is required (the device's limit is
// Properties.SharedMemoryPerBlockOptin).
func (f Function) SetMaxDynamicSharedMemory(bytes int) error {
	return f.SetAttribute(FuncAttrMaxDynamicSharedSizeBytes, bytes)
}

// Dim3 is a grid or block shape.
type Dim3 struct {
	// X, Y and Z are the extents; none may be 0.
	X, Y, Z uint32
}

// D1 returns the one-dimensional shape (x, 1, 1).
func D1(x uint32) Dim3 { return Dim3{x, 1, 1} }

// errArgsOverflow is reported by LaunchKernel for an Args that overflowed.
var errArgsOverflow = errors.New("more than MaxKernelArgs kernel arguments")

// LaunchKernel queues f on s with the given grid, block, dynamic shared
// memory and arguments (nil for a kernel without parameters). With a reused
// Args it does not allocate. args may be reused as soon as it returns: the
// driver copies the parameter values at launch.
func LaunchKernel(f Function, grid, block Dim3, sharedMem uint32, s Stream, args *Args) error {
	if args == nil {
		return check("cuLaunchKernel", dl.Call(api.cuLaunchKernel, uintptr(f),
			uintptr(grid.X), uintptr(grid.Y), uintptr(grid.Z),
			uintptr(block.X), uintptr(block.Y), uintptr(block.Z),
			uintptr(sharedMem), uintptr(s), 0, 0))
	}
	if args.overflow {
		return &Error{Func: "cuLaunchKernel", Code: ErrorInvalidValue, Detail: errArgsOverflow.Error()}
	}
	args.pin.Pin(args)
	c := &args.call
	c[0] = uintptr(f)
	c[1], c[2], c[3] = uintptr(grid.X), uintptr(grid.Y), uintptr(grid.Z)
	c[4], c[5], c[6] = uintptr(block.X), uintptr(block.Y), uintptr(block.Z)
	c[7] = uintptr(sharedMem)
	c[8] = uintptr(s)
	c[9] = args.kernelParams()
	c[10] = 0
	r := dl.CallSlice(api.cuLaunchKernel, c[:])
	args.pin.Unpin()
	return check("cuLaunchKernel", r)
}

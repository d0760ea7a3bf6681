package cuda

import (
	"unsafe"

	"github.com/qvl-dev/qvl/bindings/internal/dl"
)

// LaunchAttrs are the launch attributes LaunchKernelEx can set (CUlaunchAttribute).
type LaunchAttrs struct {
	// ProgrammaticStreamSerialization (CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION)
	// lets the kernel be launched before the previous kernel on the stream completes:
	// programmatic dependent launch, on compute capability 9.0 and newer. Its blocks may then
	// run as soon as every block of the previous kernel has executed
	// griddepcontrol.launch_dependents (or exited), and they must execute griddepcontrol.wait
	// before touching memory that earlier work on the stream writes or reads. Stream capture
	// records it as a programmatic edge of the graph.
	ProgrammaticStreamSerialization bool
}

// launchAttrProgrammaticStreamSerialization is CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION.
const launchAttrProgrammaticStreamSerialization = 6

// launchAttribute is CUlaunchAttribute: the id, padding to 8 bytes, and a 64-byte value union.
type launchAttribute struct {
	id    uint32
	_     uint32
	value [64]byte
}

// launchConfig is CUlaunchConfig.
type launchConfig struct {
	gridDimX, gridDimY, gridDimZ    uint32
	blockDimX, blockDimY, blockDimZ uint32
	sharedMemBytes                  uint32
	_                               uint32
	hStream                         uintptr
	attrs                           uintptr // *launchAttribute
	numAttrs                        uint32
	_                               uint32
}

// launchEx is the part of an Args that LaunchKernelEx hands to the driver: it lives in the
// Args, which the launch pins, so that the driver reads memory that cannot move.
type launchEx struct {
	cfg   launchConfig
	attrs [1]launchAttribute
}

// LaunchKernelExAvailable reports whether the loaded driver has cuLaunchKernelEx (CUDA 11.8
// and newer drivers).
func LaunchKernelExAvailable() bool { return api.cuLaunchKernelEx != 0 }

// LaunchKernelEx queues f on s as LaunchKernel does, with the launch attributes attrs
// (cuLaunchKernelEx). args must not be nil (an empty Args launches a kernel without
// parameters); it may be reused as soon as LaunchKernelEx returns.
func LaunchKernelEx(f Function, grid, block Dim3, sharedMem uint32, s Stream, attrs LaunchAttrs, args *Args) error {
	if args == nil {
		return &Error{Func: "cuLaunchKernelEx", Code: ErrorInvalidValue, Detail: "nil Args"}
	}
	if args.overflow {
		return &Error{Func: "cuLaunchKernelEx", Code: ErrorInvalidValue, Detail: errArgsOverflow.Error()}
	}
	args.pin.Pin(args)
	defer args.pin.Unpin()
	ex := &args.ex
	ex.cfg = launchConfig{
		gridDimX: grid.X, gridDimY: grid.Y, gridDimZ: grid.Z,
		blockDimX: block.X, blockDimY: block.Y, blockDimZ: block.Z,
		sharedMemBytes: sharedMem, hStream: uintptr(s),
	}
	if attrs.ProgrammaticStreamSerialization {
		ex.attrs[0] = launchAttribute{id: launchAttrProgrammaticStreamSerialization}
		ex.attrs[0].value[0] = 1 // int programmaticStreamSerializationAllowed = 1 (little-endian)
		ex.cfg.attrs = uintptr(unsafe.Pointer(&ex.attrs[0]))
		ex.cfg.numAttrs = 1
	}
	c := &args.call
	c[0] = uintptr(unsafe.Pointer(&ex.cfg))
	c[1] = uintptr(f)
	c[2] = args.kernelParams()
	c[3] = 0
	return check("cuLaunchKernelEx", dl.CallSlice(api.cuLaunchKernelEx, c[:4]))
}

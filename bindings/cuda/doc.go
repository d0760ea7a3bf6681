// Package cuda binds the CUDA driver API (libcuda.so.1) for qvl without cgo
// and without CUDA headers: the library is opened at run time with purego,
// so every build of qvl, CGO_ENABLED=0 included, compiles and runs on
// machines without a GPU, where Available and Open return an error that says
// why (no libcuda, a cuInit error such as CUDA_ERROR_NO_DEVICE, or zero
// devices) and the caller falls back to the CPU backend.
//
// # Threads and contexts
//
// A CUDA context is current per OS thread. Open starts one goroutine locked
// to an OS thread, makes the device's primary context current there, and
// runs every function given to (*Device).Do on that thread. All the
// package-level functions and handle methods in this package (MemAlloc,
// LaunchKernel, Stream.Synchronize, ...) must be called from inside Do; when
// they are not, the driver answers CUDA_ERROR_INVALID_CONTEXT (or, worse,
// works on whichever context that thread has current). The exceptions are
// Available, DriverVersion, DeviceCount and the Result/Error helpers, which
// need no context.
//
// # Errors
//
// Every failing driver call returns an *Error that carries the function name
// and the CUresult with its name, e.g.
//
//	cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (2)
//
// Names come from a table in this package, so they are right even when
// cuGetErrorName cannot be called. errors.Is(err, cuda.ErrorOutOfMemory)
// matches on the code.
//
// # Calls
//
// Driver functions are resolved once with dlsym and called through
// purego.SyscallN. Kernel launches (LaunchKernel with a reusable Args) and
// graph launches do not allocate.
package cuda

package cpu

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Precision selects how the fast kernels multiply many rows of activations (prefill) by bf16
// weights. Few-row products (decode) always use Exact: they are bound by memory bandwidth, so
// rounding activations would buy nothing there.
type Precision int

const (
	// PrecisionExact widens bf16 weights to f32 (exactly) and multiplies with f32 FMA. Results
	// match the plain-Go reference to float32 rounding. This is the default.
	PrecisionExact Precision = iota
	// PrecisionBF16 rounds activations to bf16 and uses AVX512_BF16's vdpbf16ps, twice the
	// multiply rate of f32 FMA at about 1e-3 relative error per product (llama.cpp's choice).
	// CPUs without AVX512_BF16 use PrecisionExact.
	PrecisionBF16
	// PrecisionHiLo splits each activation into two bf16 terms (x ≈ hi + lo, about 2^-17
	// relative) and runs vdpbf16ps twice: the f32 FMA rate without widening the weights.
	// CPUs without AVX512_BF16 use PrecisionExact.
	PrecisionHiLo
)

// String returns the name used by ParsePrecision.
func (p Precision) String() string {
	switch p {
	case PrecisionExact:
		return "exact"
	case PrecisionBF16:
		return "bf16"
	case PrecisionHiLo:
		return "hilo"
	}
	return fmt.Sprintf("precision(%d)", int(p))
}

// ParsePrecision reads "exact", "bf16" or "hilo" (empty means exact).
func ParsePrecision(s string) (Precision, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "exact", "f32":
		return PrecisionExact, nil
	case "bf16":
		return PrecisionBF16, nil
	case "hilo":
		return PrecisionHiLo, nil
	}
	return 0, fmt.Errorf("cpu: unknown matmul precision %q (want exact, bf16 or hilo)", s)
}

// PrecisionEnv is the environment variable that sets the fast kernels' matmul precision for
// backends made by New (default exact).
const PrecisionEnv = "QVL_CPU_MATMUL"

// envPrecision reads PrecisionEnv; an unknown value is reported and falls back to exact.
func envPrecision() Precision {
	p, err := ParsePrecision(os.Getenv(PrecisionEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return PrecisionExact
	}
	return p
}

// ProbeBandwidth streams data once as bf16 values with the given number of threads (0: all
// cores), widening each to f32 and multiplying it by a small vector, and returns the rate in
// GB/s (1e9 bytes per second). It is the memory-bandwidth yardstick of a batch-1 decode step,
// which streams every weight once; measure it in the same run as the thing it is compared to.
func ProbeBandwidth(data []byte, threads int) float64 {
	if len(data) < 2 {
		return 0
	}
	vals := len(data) / 2
	t0 := time.Now()
	probeBandwidth(data[:2*vals], threads)
	return float64(2*vals) / time.Since(t0).Seconds() / 1e9
}

// ProbePeak runs the fast GEMM micro-kernel of precision p on cache-resident data on every
// thread for about d and returns the rate in GFLOP/s: the practical matmul peak of this
// machine for that kernel, against which prefill throughput is judged.
func ProbePeak(threads int, p Precision, d time.Duration) float64 {
	iters := int64(1 << 16)
	for {
		t0 := time.Now()
		flops := probePeak(threads, p, iters)
		el := time.Since(t0)
		if el >= d || iters >= 1<<40 {
			return flops / el.Seconds() / 1e9
		}
		iters *= 2
	}
}

// KernelLevel names the instruction set the fast kernels use on this CPU ("avx512-bf16",
// "avx512", "avx2", "generic"), or "none" in builds without cgo.
func KernelLevel() string { return kernelLevel() }

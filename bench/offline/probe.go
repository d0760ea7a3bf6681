package offline

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/ml"
)

// Measured is a machine rate used for a floor: measured in the run, or given on the command
// line, with how it was obtained.
type Measured struct {
	// Value is bytes/s for bandwidth, FLOP/s for peak compute.
	Value float64 `json:"value"`
	// Method says how Value was obtained ("given", "go-read 512 MiB x2 threads", ...).
	Method string `json:"method"`
}

// BandwidthProber is implemented by backends that measure their own memory bandwidth (a GPU
// backend with a device-to-device copy, for instance).
type BandwidthProber interface {
	// ProbeBandwidth returns the device's measured memory bandwidth in bytes/s.
	ProbeBandwidth() (float64, error)
}

// ProbeBandwidth measures the memory bandwidth that bounds b's decode: the backend's own probe
// when it has one (BandwidthProber), runtime/cpu's streaming probe (bf16 widened to f32 and
// multiplied by a vector, as a batch-1 decode streams its weights) for CPU backends, else a
// batch-1 matmul through the backend over bf16 weights. size is the bytes streamed (far larger
// than the caches: 1 GiB is a good value). Best of three, in bytes/s.
func ProbeBandwidth(b ml.Backend, threads int, size int64) (Measured, error) {
	if p, ok := b.(BandwidthProber); ok {
		v, err := p.ProbeBandwidth()
		if err != nil {
			return Measured{}, fmt.Errorf("bandwidth probe of %s: %w", b.Name(), err)
		}
		return Measured{Value: v, Method: b.Name() + " bandwidth probe"}, nil
	}
	if size < 1<<20 {
		return Measured{}, fmt.Errorf("bandwidth probe: %d bytes is too small to measure memory", size)
	}
	if _, ok := b.(*cpu.Backend); ok {
		data := make([]byte, size)
		one := loader.F32ToBF16(0.5)
		for i := 0; i < len(data); i += 2 {
			data[i], data[i+1] = byte(one), byte(one>>8)
		}
		best := 0.0
		for range 3 {
			best = max(best, cpu.ProbeBandwidth(data, threads)*1e9)
		}
		th := "all"
		if threads > 0 {
			th = strconv.Itoa(threads)
		}
		return Measured{Value: best, Method: fmt.Sprintf("cpu.ProbeBandwidth: %d MiB of bf16 streamed into f32 FMAs, %s threads, best of 3", size>>20, th)}, nil
	}
	const k = 4096
	m := int(size / (2 * k))
	return probeGEMV(b, k, m, 3)
}

// probeGEMV times a batch-1 matmul over an [m, k] bf16 weight (best of reps) and returns the
// weight bytes streamed per second.
func probeGEMV(b ml.Backend, k, m, reps int) (Measured, error) {
	w, err := randomWeight(b, m, k)
	if err != nil {
		return Measured{}, fmt.Errorf("bandwidth probe: %w", err)
	}
	defer b.Free(w)
	x, err := b.Alloc(ml.F32, 1, k)
	if err != nil {
		return Measured{}, fmt.Errorf("bandwidth probe: %w", err)
	}
	defer b.Free(x)
	out, err := b.Alloc(ml.F32, 1, m)
	if err != nil {
		return Measured{}, fmt.Errorf("bandwidth probe: %w", err)
	}
	defer b.Free(out)
	xs := make([]float32, k)
	for i := range xs {
		xs[i] = 1
	}
	if err := b.Write(x, xs); err != nil {
		return Measured{}, fmt.Errorf("bandwidth probe: %w", err)
	}
	best := 0.0
	for range reps + 1 { // the first call warms up
		start := time.Now()
		if err := b.MatMul(out, x, w); err != nil {
			return Measured{}, fmt.Errorf("bandwidth probe: %w", err)
		}
		if err := b.Sync(); err != nil {
			return Measured{}, fmt.Errorf("bandwidth probe: %w", err)
		}
		best = max(best, float64(2*m*k)/time.Since(start).Seconds())
	}
	return Measured{Value: best, Method: fmt.Sprintf("%s batch-1 matmul over %d MiB of bf16 weights, best of %d", b.Name(), (2*m*k)>>20, reps)}, nil
}

// randomWeight uploads an [m, k] bf16 weight of small random values.
func randomWeight(b ml.Backend, m, k int) (ml.Tensor, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 2*m*k)
	for i := 0; i < m*k; i++ {
		v := loader.F32ToBF16(float32(rng.NormFloat64() * 0.02))
		data[2*i], data[2*i+1] = byte(v), byte(v>>8)
	}
	w, err := b.Weight(ml.BF16, []int{m, k}, data)
	if err != nil {
		return nil, fmt.Errorf("weight [%d, %d]: %w", m, k, err)
	}
	return w, nil
}

// ProbePeak measures the matmul rate that bounds b's prefill, in FLOP/s: runtime/cpu's
// micro-kernel peak for the fast CPU backend (at the precision the backend was built with),
// otherwise ProbeMatMul on the shape [n, k]·[m, k]ᵀ through the backend.
func ProbePeak(b ml.Backend, threads, n, k, m int) (Measured, error) {
	if cb, ok := b.(*cpu.Backend); ok && cpu.KernelLevel() != "none" && cb.Name() != "cpu-ref" {
		prec, err := cpu.ParsePrecision(os.Getenv(cpu.PrecisionEnv))
		if err != nil {
			return Measured{}, err
		}
		v := cpu.ProbePeak(threads, prec, time.Second) * 1e9
		return Measured{Value: v, Method: fmt.Sprintf("cpu.ProbePeak: %s GEMM micro-kernel (%s), cache-resident, 1 s", cpu.KernelLevel(), prec)}, nil
	}
	return ProbeMatMul(b, n, k, m, time.Second)
}

// ProbeMatMul measures the backend's matmul rate in FLOP/s on out[n, m] = x[n, k] · w[m, k]ᵀ with
// bf16 weights (the shape of a prefill's largest projection): repeated until minTime has passed,
// doubling n while one call takes under minTime/8 (a fast device needs large shapes), best call.
func ProbeMatMul(b ml.Backend, n, k, m int, minTime time.Duration) (Measured, error) {
	rng := rand.New(rand.NewPCG(3, 4))
	w, err := randomWeight(b, m, k)
	if err != nil {
		return Measured{}, fmt.Errorf("matmul probe: %w", err)
	}
	defer b.Free(w)
	const maxN = 16384
	best := 0.0
	var total time.Duration
	for {
		x, err := b.Alloc(ml.F32, n, k)
		if err != nil {
			return Measured{}, fmt.Errorf("matmul probe: x [%d, %d]: %w", n, k, err)
		}
		out, err := b.Alloc(ml.F32, n, m)
		if err != nil {
			b.Free(x)
			return Measured{}, fmt.Errorf("matmul probe: out [%d, %d]: %w", n, m, err)
		}
		xs := make([]float32, n*k)
		for i := range xs {
			xs[i] = float32(rng.NormFloat64())
		}
		err = b.Write(x, xs)
		var dt time.Duration
		for err == nil && total < minTime {
			start := time.Now()
			if err = b.MatMul(out, x, w); err == nil {
				err = b.Sync()
			}
			dt = time.Since(start)
			total += dt
			best = max(best, 2*float64(n)*float64(k)*float64(m)/dt.Seconds())
			if dt < minTime/8 && n < maxN {
				break
			}
		}
		b.Free(x)
		b.Free(out)
		if err != nil {
			return Measured{}, fmt.Errorf("matmul probe: %w", err)
		}
		if total >= minTime || n >= maxN || dt >= minTime/8 {
			break
		}
		n *= 2
	}
	if best == 0 || math.IsInf(best, 0) {
		return Measured{}, fmt.Errorf("matmul probe: no measurable time")
	}
	return Measured{Value: best, Method: fmt.Sprintf("%s matmul bf16 weights, up to [%d, %d]·[%d, %d]ᵀ, best call", b.Name(), n, k, m, k)}, nil
}

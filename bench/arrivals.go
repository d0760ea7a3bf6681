package bench

import (
	"fmt"
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/stat/distuv"
)

// Arrivals draws request arrival gaps as `vllm bench serve` does: gamma-distributed with shape
// burstiness and mean 1/rate (burstiness 1 is a Poisson process: exponential gaps; below 1
// burstier, above 1 more even; +Inf a constant gap of 1/rate). With an infinite rate every gap
// is 0.
type Arrivals struct {
	rate, burstiness float64
	gamma            distuv.Gamma
}

// NewArrivals returns a seeded gap generator; rate is in requests per second.
func NewArrivals(rate, burstiness float64, seed uint64) (*Arrivals, error) {
	if !(rate > 0) {
		return nil, fmt.Errorf("request rate must be > 0 (or inf), got %v", rate)
	}
	if !(burstiness > 0) {
		return nil, fmt.Errorf("burstiness must be > 0, got %v", burstiness)
	}
	a := &Arrivals{rate: rate, burstiness: burstiness}
	if !math.IsInf(rate, 1) && !math.IsInf(burstiness, 1) {
		a.gamma = distuv.Gamma{Alpha: burstiness, Beta: rate * burstiness, Src: rand.NewPCG(seed, 0xa11)}
	}
	return a, nil
}

// Next is the gap in seconds before the next request.
func (a *Arrivals) Next() float64 {
	switch {
	case math.IsInf(a.rate, 1):
		return 0
	case math.IsInf(a.burstiness, 1):
		return 1 / a.rate
	}
	return a.gamma.Rand()
}

// Schedule returns the send times (seconds from the start) of n requests, the first at the
// first gap. As vLLM does for a fixed number of requests, the times are scaled so that the
// last is at exactly n/rate, which removes the 1–2% run-to-run spread of the total send time
// that the random gaps would otherwise add to throughput numbers.
func (a *Arrivals) Schedule(n int) []float64 {
	t := make([]float64, n)
	var acc float64
	for i := range t {
		acc += a.Next()
		t[i] = acc
	}
	if n > 0 && acc > 0 && !math.IsInf(a.rate, 1) {
		f := float64(n) / a.rate / acc
		for i := range t {
			t[i] *= f
		}
	}
	return t
}

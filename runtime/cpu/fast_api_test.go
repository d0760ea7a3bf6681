package cpu

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The probes and the precision names exist in every build (with cgo or without).

func TestProbes(t *testing.T) {
	data := make([]byte, 1<<22)
	for i := range data {
		data[i] = byte(i * 7)
	}
	bw := ProbeBandwidth(data, 2)
	assert.Greater(t, bw, 0.0)
	assert.False(t, math.IsInf(bw, 0))
	assert.Equal(t, 0.0, ProbeBandwidth(nil, 2))
	// An odd byte count and an unaligned start still probe.
	assert.Greater(t, ProbeBandwidth(data[1:1001], 1), 0.0)
	for _, p := range []Precision{PrecisionExact, PrecisionBF16} {
		assert.Greater(t, ProbePeak(2, p, 0), 0.0, p.String())
	}
	assert.NotEmpty(t, KernelLevel())
}

func TestParsePrecision(t *testing.T) {
	for _, p := range []Precision{PrecisionExact, PrecisionBF16, PrecisionHiLo} {
		got, err := ParsePrecision(p.String())
		require.NoError(t, err)
		assert.Equal(t, p, got)
	}
	_, err := ParsePrecision("fp8")
	assert.ErrorContains(t, err, "fp8")
}

package bench

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func gaps(t *testing.T, rate, burstiness float64, seed uint64, n int) []float64 {
	a, err := NewArrivals(rate, burstiness, seed)
	require.NoError(t, err)
	g := make([]float64, n)
	for i := range g {
		g[i] = a.Next()
	}
	return g
}

func TestPoissonArrivalsMeanRate(t *testing.T) {
	const rate, n = 8.0, 40000
	g := gaps(t, rate, 1, 7, n)
	// The mean gap of n exponential draws has a relative standard error of 1/sqrt(n) = 0.5%:
	// 3% is six standard errors.
	assert.InEpsilon(t, 1/rate, Mean(g), 0.03)
	// Exponential gaps: the standard deviation equals the mean.
	assert.InEpsilon(t, 1/rate, Std(g), 0.05)
	for _, v := range g {
		require.GreaterOrEqual(t, v, 0.0)
	}
}

func TestBurstinessShapesTheGaps(t *testing.T) {
	const rate, n = 4.0, 40000
	for _, k := range []float64{0.5, 4} {
		g := gaps(t, rate, k, 3, n)
		assert.InEpsilon(t, 1/rate, Mean(g), 0.04, "burstiness %v keeps the mean rate", k)
		cv2 := math.Pow(Std(g)/Mean(g), 2)
		assert.InEpsilon(t, 1/k, cv2, 0.15, "gamma of shape %v has squared CV 1/%v", k, k)
	}
	g := gaps(t, rate, math.Inf(1), 3, 5)
	assert.Equal(t, []float64{0.25, 0.25, 0.25, 0.25, 0.25}, g, "infinite burstiness: constant gaps")
}

func TestArrivalsAreSeeded(t *testing.T) {
	assert.Equal(t, gaps(t, 2, 1, 11, 50), gaps(t, 2, 1, 11, 50))
	assert.NotEqual(t, gaps(t, 2, 1, 11, 50), gaps(t, 2, 1, 12, 50))
}

func TestScheduleEndsAtNOverRate(t *testing.T) {
	a, err := NewArrivals(5, 1, 1)
	require.NoError(t, err)
	s := a.Schedule(100)
	require.Len(t, s, 100)
	assert.InDelta(t, 20.0, s[99], 1e-9, "vLLM scales the send times so the last is at n/rate")
	for i := 1; i < len(s); i++ {
		require.GreaterOrEqual(t, s[i], s[i-1])
	}
	a, err = NewArrivals(math.Inf(1), 1, 1)
	require.NoError(t, err)
	assert.Equal(t, []float64{0, 0, 0}, a.Schedule(3), "infinite rate: all at once")
}

func TestArrivalsRejectBadParameters(t *testing.T) {
	_, err := NewArrivals(0, 1, 1)
	assert.ErrorContains(t, err, "request rate must be > 0")
	_, err = NewArrivals(math.NaN(), 1, 1)
	assert.Error(t, err)
	_, err = NewArrivals(1, 0, 1)
	assert.ErrorContains(t, err, "burstiness must be > 0")
}

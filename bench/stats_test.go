package bench

import (
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The expected values are worked by hand from numpy's definitions: percentile "linear" reads
// the sorted sample at index (n−1)·p/100 and interpolates; std is the population deviation.

func TestPercentileLinearInterpolation(t *testing.T) {
	x := []float64{4, 1, 3, 2} // unsorted on purpose; sorted 1 2 3 4
	cases := []struct{ p, want float64 }{
		{0, 1}, {25, 1.75}, {50, 2.5}, {99, 3.97}, {100, 4},
		{33.3, 1.999}, // index 0.999: 1 + 0.999·1
	}
	for _, c := range cases {
		assert.InDelta(t, c.want, Percentile(x, c.p), 1e-12, "p%v", c.p)
	}
	assert.Equal(t, []float64{4, 1, 3, 2}, x, "Percentile must not reorder its input")

	// numpy's documented example: np.percentile([15, 20, 35, 40, 50], [40, 90]) = [29, 46].
	y := []float64{15, 20, 35, 40, 50}
	assert.InDelta(t, 29.0, Percentile(y, 40), 1e-12)
	assert.InDelta(t, 46.0, Percentile(y, 90), 1e-12)
	assert.InDeltaSlice(t, []float64{29, 46, 50}, Percentiles(y, []float64{40, 90, 100}), 1e-12)

	assert.Equal(t, 7.0, Percentile([]float64{7}, 99), "one sample is every percentile")
	assert.Equal(t, 0.0, Percentile(nil, 99), "vLLM reports 0 for an empty sample")
	assert.True(t, math.IsNaN(Percentile(y, 101)))
	assert.True(t, math.IsNaN(Percentile(y, -1)))
}

func TestMeanMedianStd(t *testing.T) {
	x := []float64{2, 4, 4, 4, 5, 5, 7, 9}
	assert.Equal(t, 5.0, Mean(x))
	assert.Equal(t, 2.0, Std(x), "population standard deviation (ddof=0)")
	assert.Equal(t, 4.5, Median(x), "even count: mean of the two middle values")
	assert.Equal(t, 3.0, Median([]float64{5, 1, 3}))
	assert.Equal(t, 0.0, Mean(nil))
	assert.Equal(t, 0.0, Std(nil))
	assert.Equal(t, 0.0, Median(nil))
	assert.Equal(t, 0.0, Std([]float64{3, 3, 3}))
}

func TestSummarizeConvertsSecondsToMilliseconds(t *testing.T) {
	d := Summarize([]float64{0.010, 0.020, 0.030, 0.040}, []float64{50, 99})
	assert.InDelta(t, 25.0, d.Mean, 1e-9)
	assert.InDelta(t, 25.0, d.Median, 1e-9)
	assert.InDelta(t, math.Sqrt(125), d.Std, 1e-9) // deviations ±5, ±15 ms
	p99, ok := d.At(99)
	require.True(t, ok)
	assert.InDelta(t, 39.7, p99, 1e-9)
	_, ok = d.At(90)
	assert.False(t, ok)
}

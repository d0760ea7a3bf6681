package bench

import (
	"math"
	"slices"
)

// The statistics below follow numpy, because `vllm bench serve` computes its numbers with
// numpy and results are meant to be compared with its files side by side. As in vLLM, an empty
// sample gives 0 (vLLM passes `values or 0` to numpy).

// Mean is the arithmetic mean of x (numpy.mean); 0 for an empty x.
func Mean(x []float64) float64 {
	if len(x) == 0 {
		return 0
	}
	var s float64
	for _, v := range x {
		s += v
	}
	return s / float64(len(x))
}

// Std is the population standard deviation of x (numpy.std with its default ddof=0); 0 for an
// empty x.
func Std(x []float64) float64 {
	if len(x) == 0 {
		return 0
	}
	m := Mean(x)
	var s float64
	for _, v := range x {
		d := v - m
		s += d * d
	}
	return math.Sqrt(s / float64(len(x)))
}

// Median is the middle of x, or the mean of the two middle values when len(x) is even
// (numpy.median); 0 for an empty x.
func Median(x []float64) float64 { return Percentile(x, 50) }

// Percentile is the p-th percentile (0 ≤ p ≤ 100) of x with numpy.percentile's default
// "linear" method: the sorted values are read at the virtual index (n−1)·p/100, interpolating
// linearly between its two neighbours. It returns 0 for an empty x and NaN for p outside
// [0, 100]. x is not modified.
func Percentile(x []float64, p float64) float64 {
	if len(x) == 0 {
		return 0
	}
	if !(p >= 0 && p <= 100) {
		return math.NaN()
	}
	s := slices.Clone(x)
	slices.Sort(s)
	return sortedPercentile(s, p)
}

// Percentiles returns Percentile(x, p) for each p, sorting x once.
func Percentiles(x []float64, ps []float64) []float64 {
	out := make([]float64, len(ps))
	if len(x) == 0 {
		return out
	}
	s := slices.Clone(x)
	slices.Sort(s)
	for i, p := range ps {
		if !(p >= 0 && p <= 100) {
			out[i] = math.NaN()
			continue
		}
		out[i] = sortedPercentile(s, p)
	}
	return out
}

// sortedPercentile reads the sorted sample s at the virtual index (n−1)·q, q = p/100, the way
// numpy does (including its two-sided lerp, which is exact at both ends).
func sortedPercentile(s []float64, p float64) float64 {
	q := p / 100
	vi := float64(len(s)-1) * q
	lo := math.Floor(vi)
	i := int(lo)
	if i >= len(s)-1 {
		return s[len(s)-1]
	}
	g := vi - lo
	return lerp(s[i], s[i+1], g)
}

// lerp is numpy's _lerp: a + (b−a)·t, computed from b's side when t ≥ 0.5.
func lerp(a, b, t float64) float64 {
	d := b - a
	if t >= 0.5 {
		return b - d*(1-t)
	}
	return a + d*t
}

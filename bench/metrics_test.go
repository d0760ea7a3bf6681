package bench

import (
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// timeline is a synthetic run whose every number below was worked out by hand.
//
//	A sent at 0.00: chunks at +0.100 +0.150 +0.250 +0.300, usage at +0.310; 4 tokens, prompt 10
//	B sent at 0.25: one chunk at +0.200, usage at +0.205; 1 token, prompt 20
//	C sent at 0.20: failed
//	D sent at 1.00: chunks at +0.05 +0.09 +0.13 bundling 5 tokens (usage says 5), prompt 30
func timeline() []Output {
	return []Output{
		{Success: true, PromptLen: 10, OutputTokens: 4, Chunks: 4, TTFT: 0.100, ITL: []float64{0.05, 0.10, 0.05}, Latency: 0.310, StartTime: 0},
		{Success: true, PromptLen: 20, OutputTokens: 1, Chunks: 1, TTFT: 0.200, Latency: 0.205, StartTime: 0.25},
		{Success: false, PromptLen: 15, Error: "HTTP 500", StartTime: 0.20},
		{Success: true, PromptLen: 30, OutputTokens: 5, Chunks: 3, TTFT: 0.05, ITL: []float64{0.04, 0.04}, Latency: 0.13, StartTime: 1.0},
	}
}

func TestTPOTDefinition(t *testing.T) {
	v, ok := TPOT(0.310, 0.100, 4)
	require.True(t, ok)
	assert.InDelta(t, 0.07, v, 1e-12, "(e2e − ttft)/(tokens − 1)")
	_, ok = TPOT(0.2, 0.2, 1)
	assert.False(t, ok, "a single-token request has no TPOT")
	_, ok = TPOT(0.2, 0.2, 0)
	assert.False(t, ok)
}

func TestCalculateOnSyntheticTimeline(t *testing.T) {
	m := Calculate(timeline(), 2.0, []float64{99}, nil)
	assert.Equal(t, 3, m.Completed)
	assert.Equal(t, 1, m.Failed)
	assert.Equal(t, 60, m.TotalInput, "failed requests' prompts are not counted")
	assert.Equal(t, 10, m.TotalOutput, "usage counts, not chunks: D bundles 5 tokens in 3 chunks")
	assert.Equal(t, []int{4, 1, 0, 5}, m.OutputLens)
	assert.InDelta(t, 1.5, m.RequestThroughput, 1e-12)
	assert.InDelta(t, 5.0, m.OutputThroughput, 1e-12)
	assert.InDelta(t, 35.0, m.TotalTokenThroughput, 1e-12)

	// TTFT ms: 100, 200, 50.
	assert.InDelta(t, 350.0/3, m.TTFT.Mean, 1e-9)
	assert.InDelta(t, 100.0, m.TTFT.Median, 1e-9)
	assert.InDelta(t, math.Sqrt(35000.0/9), m.TTFT.Std, 1e-9)
	p, _ := m.TTFT.At(99)
	assert.InDelta(t, 198.0, p, 1e-9, "sorted 50 100 200 at index 1.98")

	// TPOT ms: A (310−100)/3 = 70, D (130−50)/4 = 20; B has one token and no TPOT.
	assert.InDelta(t, 45.0, m.TPOT.Mean, 1e-9)
	assert.InDelta(t, 45.0, m.TPOT.Median, 1e-9)
	assert.InDelta(t, 25.0, m.TPOT.Std, 1e-9)
	p, _ = m.TPOT.At(99)
	assert.InDelta(t, 69.5, p, 1e-9)

	// ITL ms: 50 100 50 40 40, pooled over requests.
	assert.InDelta(t, 56.0, m.ITL.Mean, 1e-9)
	assert.InDelta(t, 50.0, m.ITL.Median, 1e-9)
	assert.InDelta(t, math.Sqrt(504), m.ITL.Std, 1e-9)
	p, _ = m.ITL.At(99)
	assert.InDelta(t, 98.0, p, 1e-9, "sorted 40 40 50 50 100 at index 3.96")

	// E2EL ms: 310 205 130.
	assert.InDelta(t, 215.0, m.E2EL.Mean, 1e-9)
	assert.InDelta(t, 205.0, m.E2EL.Median, 1e-9)
	p, _ = m.E2EL.At(99)
	assert.InDelta(t, 307.9, p, 1e-9)

	// Chunks per second from the first start: A's 4 and B's 1 in [0,1), D's 3 in [1,2).
	assert.Equal(t, 5.0, m.MaxOutputTokensPerS)
	// A [0, 0.31) and B [0.25, 0.455) overlap; D runs alone.
	assert.Equal(t, 2, m.MaxConcurrentRequests)
}

func TestCalculateOutputLengthWithoutUsage(t *testing.T) {
	outs := []Output{{Success: true, PromptLen: 3, Chunks: 3, GeneratedText: "a b c d", TTFT: 0.1, ITL: []float64{0.1, 0.1}, Latency: 0.3}}
	m := Calculate(outs, 1, nil, nil)
	assert.Equal(t, 3, m.TotalOutput, "without usage or a tokenizer: one token per chunk")
	m = Calculate(outs, 1, nil, func(s string) int { return len(strings.Fields(s)) })
	assert.Equal(t, 4, m.TotalOutput, "with a tokenizer: the generated text's token count")
	assert.InDelta(t, 200.0/3, m.TPOT.Mean, 1e-9)
}

func TestConcurrencyIntervalsAreHalfOpen(t *testing.T) {
	outs := []Output{
		{Success: true, OutputTokens: 1, Latency: 0.5, StartTime: 0},
		{Success: true, OutputTokens: 1, Latency: 0.5, StartTime: 0.5}, // starts as the first ends
	}
	m := Calculate(outs, 1, nil, nil)
	assert.Equal(t, 1, m.MaxConcurrentRequests)
}

func TestCalculateAllFailed(t *testing.T) {
	m := Calculate([]Output{{Error: "x"}, {Error: "y"}}, 1, []float64{99}, nil)
	assert.Equal(t, 0, m.Completed)
	assert.Equal(t, 2, m.Failed)
	assert.Equal(t, 0.0, m.TTFT.Mean)
	p, ok := m.TTFT.At(99)
	assert.True(t, ok)
	assert.Equal(t, 0.0, p)
	assert.Equal(t, 0, m.MaxConcurrentRequests)
}

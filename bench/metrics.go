package bench

import (
	"math"
	"slices"
	"time"
)

// Output is what one benchmark request measured (vLLM's RequestFuncOutput). Times are in
// seconds, as in vLLM's result files.
type Output struct {
	// Success is false when the request failed; Error then says why.
	Success bool
	Error   string
	// PromptLen is the prompt's token count: the server's usage.prompt_tokens when it sent
	// usage, otherwise the dataset's count.
	PromptLen int
	// OutputTokens is usage.completion_tokens from the stream's usage chunk (0 when the server
	// sent none).
	OutputTokens int
	// Chunks counts the streamed chunks that carried generated text or a finish reason.
	Chunks int
	// GeneratedText is the concatenated streamed text.
	GeneratedText string
	// TTFT is the time from sending the request to the first chunk with generated text.
	TTFT float64
	// ITL are the gaps between successive chunks with generated text.
	ITL []float64
	// Latency is the time from sending the request to the stream's last chunk.
	Latency float64
	// StartTime is when the request was sent, in seconds since the benchmark started.
	StartTime float64
	// QueueTime is how long the request waited on the client for a concurrency slot.
	QueueTime float64

	// sent is when the request was sent (the origin of TTFT and Latency).
	sent time.Time
}

// Metrics are a benchmark run's aggregates (vLLM's BenchmarkMetrics). Latencies are in
// milliseconds; throughputs per second of benchmark duration.
type Metrics struct {
	Completed, Failed     int
	TotalInput            int
	TotalOutput           int
	RequestThroughput     float64
	OutputThroughput      float64
	TotalTokenThroughput  float64
	TTFT, TPOT, ITL, E2EL Dist
	// MaxOutputTokensPerS is the most output chunks that arrived within one second (vLLM's
	// max_output_tokens_per_s: tokens are counted per chunk, bucketed from the first start).
	MaxOutputTokensPerS float64
	// MaxConcurrentRequests is the peak number of requests in flight at once.
	MaxConcurrentRequests int
	// OutputLens is each request's output token count (0 for failed requests).
	OutputLens []int
}

// Dist summarizes one latency metric in milliseconds.
type Dist struct {
	Mean, Median, Std float64
	// Percentiles holds the value at each requested percentile, in the order requested.
	Percentiles []PercentileValue
}

// PercentileValue is one percentile of a Dist.
type PercentileValue struct {
	P, Value float64
}

// At returns the value at percentile p and whether it was computed.
func (d Dist) At(p float64) (float64, bool) {
	for _, pv := range d.Percentiles {
		if pv.P == p {
			return pv.Value, true
		}
	}
	return 0, false
}

// Summarize computes a Dist (in milliseconds) of samples given in seconds.
func Summarize(seconds []float64, percentiles []float64) Dist {
	ms := make([]float64, len(seconds))
	for i, s := range seconds {
		ms[i] = s * 1000
	}
	d := Dist{Mean: Mean(ms), Median: Median(ms), Std: Std(ms)}
	for i, v := range Percentiles(ms, percentiles) {
		d.Percentiles = append(d.Percentiles, PercentileValue{P: percentiles[i], Value: v})
	}
	return d
}

// TPOT is a request's time per output token after the first, (latency − ttft)/(outputTokens − 1),
// and false when the request produced fewer than two tokens.
func TPOT(latency, ttft float64, outputTokens int) (float64, bool) {
	if outputTokens <= 1 {
		return 0, false
	}
	return (latency - ttft) / float64(outputTokens-1), true
}

// Calculate aggregates a run's outputs over its duration (seconds) as vLLM's calculate_metrics
// does. A successful request's output length is its usage.completion_tokens; when the server
// sent no usage it is countTokens(GeneratedText) when countTokens is set, else its chunk count.
func Calculate(outputs []Output, duration float64, percentiles []float64, countTokens func(string) int) Metrics {
	var m Metrics
	var ttfts, tpots, itls, e2els []float64
	m.OutputLens = make([]int, len(outputs))
	for i, o := range outputs {
		if !o.Success {
			m.Failed++
			continue
		}
		n := o.OutputTokens
		if n == 0 {
			if countTokens != nil {
				n = countTokens(o.GeneratedText)
			} else {
				n = o.Chunks
			}
		}
		m.OutputLens[i] = n
		m.TotalInput += o.PromptLen
		m.TotalOutput += n
		if t, ok := TPOT(o.Latency, o.TTFT, n); ok {
			tpots = append(tpots, t)
		}
		itls = append(itls, o.ITL...)
		ttfts = append(ttfts, o.TTFT)
		e2els = append(e2els, o.Latency)
		m.Completed++
	}
	if duration > 0 {
		m.RequestThroughput = float64(m.Completed) / duration
		m.OutputThroughput = float64(m.TotalOutput) / duration
		m.TotalTokenThroughput = float64(m.TotalInput+m.TotalOutput) / duration
	}
	m.TTFT = Summarize(ttfts, percentiles)
	m.TPOT = Summarize(tpots, percentiles)
	m.ITL = Summarize(itls, percentiles)
	m.E2EL = Summarize(e2els, percentiles)
	m.MaxOutputTokensPerS, m.MaxConcurrentRequests = peaks(outputs)
	return m
}

// peaks computes vLLM's max_output_tokens_per_s (token chunks per one-second bucket counted
// from the earliest start) and the exact peak concurrency (a sweep over half-open
// [start, start+latency) intervals) of the successful requests.
func peaks(outputs []Output) (maxTokensPerS float64, maxConcurrent int) {
	var ok []Output
	for _, o := range outputs {
		if o.Success {
			ok = append(ok, o)
		}
	}
	if len(ok) == 0 {
		return 0, 0
	}
	minStart, maxEnd := math.Inf(1), math.Inf(-1)
	for _, o := range ok {
		minStart = min(minStart, o.StartTime)
		maxEnd = max(maxEnd, o.StartTime+o.Latency)
	}
	buckets := make([]float64, int(math.Ceil(maxEnd-minStart))+1)
	for _, o := range ok {
		t := o.StartTime + o.TTFT
		add := func(t float64) {
			if b := int(t - minStart); b >= 0 && b < len(buckets) {
				buckets[b]++
			}
		}
		add(t)
		for _, g := range o.ITL {
			t += g
			add(t)
		}
	}
	type event struct {
		t float64
		d int
	}
	events := make([]event, 0, 2*len(ok))
	for _, o := range ok {
		events = append(events, event{o.StartTime, 1}, event{o.StartTime + o.Latency, -1})
	}
	// Departures sort before arrivals at the same instant (half-open intervals).
	slices.SortFunc(events, func(a, b event) int {
		if a.t != b.t {
			if a.t < b.t {
				return -1
			}
			return 1
		}
		return a.d - b.d
	})
	cur := 0
	for _, e := range events {
		cur += e.d
		maxConcurrent = max(maxConcurrent, cur)
	}
	return slices.Max(buckets), maxConcurrent
}

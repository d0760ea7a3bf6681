package bench

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// center pads s with fill to width n, the extra character on the right (Python's "^" format).
func center(s string, n int, fill byte) string {
	pad := n - len(s)
	if pad <= 0 {
		return s
	}
	l := pad / 2
	return strings.Repeat(string(fill), l) + s + strings.Repeat(string(fill), pad-l)
}

// WriteTable prints r in the layout of `vllm bench serve`'s summary, with the percentiles that
// were recorded, and End-to-end Latency after the three streaming metrics.
func WriteTable(w io.Writer, r *Result) {
	row := func(name string, v any) {
		var s string
		switch x := v.(type) {
		case float64:
			s = strconv.FormatFloat(x, 'f', 2, 64)
		default:
			s = fmt.Sprint(x)
		}
		fmt.Fprintf(w, "%-40s %-10s\n", name, s)
	}
	fmt.Fprintln(w, center(" Serving Benchmark Result ", 50, '='))
	row("Successful requests:", r.Completed)
	row("Failed requests:", r.Failed)
	if r.MaxConcurrency != nil {
		row("Maximum request concurrency:", *r.MaxConcurrency)
	}
	if !math.IsInf(r.RequestRate, 1) {
		row("Request rate configured (RPS):", r.RequestRate)
	}
	row("Benchmark duration (s):", r.Duration)
	row("Total input tokens:", r.TotalInputTokens)
	row("Total generated tokens:", r.TotalOutputTokens)
	row("Request throughput (req/s):", r.RequestThroughput)
	row("Output token throughput (tok/s):", r.OutputThroughput)
	row("Peak output token throughput (tok/s):", r.MaxOutputTokensPerS)
	row("Peak concurrent requests:", float64(r.MaxConcurrentRequests))
	row("Total token throughput (tok/s):", r.TotalTokenThroughput)
	metric := func(key, name, header string, mean, median float64) {
		fmt.Fprintln(w, center(header, 50, '-'))
		row(fmt.Sprintf("Mean %s (ms):", name), mean)
		row(fmt.Sprintf("Median %s (ms):", name), median)
		for _, p := range r.percentilesOf(key) {
			v, _ := r.Percentile(key, p)
			row(fmt.Sprintf("P%s %s (ms):", pyNumber(p), name), v)
		}
	}
	metric("ttft", "TTFT", "Time to First Token", r.MeanTTFTMs, r.MedianTTFTMs)
	metric("tpot", "TPOT", "Time per Output Token (excl. 1st token)", r.MeanTPOTMs, r.MedianTPOTMs)
	metric("itl", "ITL", "Inter-token Latency", r.MeanITLMs, r.MedianITLMs)
	metric("e2el", "E2EL", "End-to-end Latency", r.MeanE2ELMs, r.MedianE2ELMs)
	fmt.Fprintln(w, strings.Repeat("=", 50))
}

// percentilesOf lists the percentiles recorded for a metric, in increasing order.
func (r *Result) percentilesOf(metric string) []float64 {
	var ps []float64
	suffix := "_" + metric + "_ms"
	for k := range r.Percentiles {
		if strings.HasSuffix(k, suffix) {
			if p, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(k, "p"), suffix), 64); err == nil {
				ps = append(ps, p)
			}
		}
	}
	sort.Float64s(ps)
	return ps
}

// WriteErrors prints up to max distinct failure messages with their counts, most frequent first.
func WriteErrors(w io.Writer, r *Result, max int) {
	counts := map[string]int{}
	for _, e := range r.Errors {
		if e != "" {
			counts[e]++
		}
	}
	if len(counts) == 0 {
		return
	}
	msgs := make([]string, 0, len(counts))
	for m := range counts {
		msgs = append(msgs, m)
	}
	sort.Slice(msgs, func(i, j int) bool {
		if counts[msgs[i]] != counts[msgs[j]] {
			return counts[msgs[i]] > counts[msgs[j]]
		}
		return msgs[i] < msgs[j]
	})
	fmt.Fprintf(w, "Failed requests (%d, by message):\n", r.Failed)
	for i, m := range msgs {
		if i == max {
			fmt.Fprintf(w, "  ... and %d more distinct messages\n", len(msgs)-max)
			break
		}
		fmt.Fprintf(w, "  %5d × %s\n", counts[m], m)
	}
}

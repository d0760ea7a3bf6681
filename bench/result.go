package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Result is a serving benchmark's result file. Its JSON uses the field names of
// `vllm bench serve --save-result --save-detailed`, so files from both tools can be compared
// side by side: per-metric mean_*_ms, median_*_ms, std_*_ms and p{P}_*_ms (one per requested
// percentile, e.g. p99_ttft_ms), totals, throughputs and the per-request arrays. Metadata
// entries are written as extra top-level string fields, as vLLM's --metadata KEY=VALUE does.
type Result struct {
	Date         string `json:"date"`
	EndpointType string `json:"endpoint_type"`
	Backend      string `json:"backend"`
	Label        string `json:"label"`
	ModelID      string `json:"model_id"`
	TokenizerID  string `json:"tokenizer_id"`
	NumPrompts   int    `json:"num_prompts"`
	// RequestRate is requests per second; +Inf is written as "inf" as vLLM does.
	RequestRate    float64 `json:"-"`
	Burstiness     float64 `json:"burstiness"`
	MaxConcurrency *int    `json:"max_concurrency"`

	Duration             float64  `json:"duration"`
	Completed            int      `json:"completed"`
	Failed               int      `json:"failed"`
	TotalInputTokens     int      `json:"total_input_tokens"`
	TotalOutputTokens    int      `json:"total_output_tokens"`
	RequestThroughput    float64  `json:"request_throughput"`
	RequestGoodput       *float64 `json:"request_goodput"`
	OutputThroughput     float64  `json:"output_throughput"`
	TotalTokenThroughput float64  `json:"total_token_throughput"`

	InputLens      []int       `json:"input_lens"`
	OutputLens     []int       `json:"output_lens"`
	TTFTs          []float64   `json:"ttfts"`
	ITLs           [][]float64 `json:"itls"`
	Latencies      []float64   `json:"latencies"`
	StartTimes     []float64   `json:"start_times"`
	QueueTimes     []float64   `json:"queue_times"`
	GeneratedTexts []string    `json:"generated_texts,omitempty"`
	Errors         []string    `json:"errors"`

	MaxOutputTokensPerS   float64 `json:"max_output_tokens_per_s"`
	MaxConcurrentRequests int     `json:"max_concurrent_requests"`

	MeanTTFTMs   float64 `json:"mean_ttft_ms"`
	MedianTTFTMs float64 `json:"median_ttft_ms"`
	StdTTFTMs    float64 `json:"std_ttft_ms"`
	MeanTPOTMs   float64 `json:"mean_tpot_ms"`
	MedianTPOTMs float64 `json:"median_tpot_ms"`
	StdTPOTMs    float64 `json:"std_tpot_ms"`
	MeanITLMs    float64 `json:"mean_itl_ms"`
	MedianITLMs  float64 `json:"median_itl_ms"`
	StdITLMs     float64 `json:"std_itl_ms"`
	MeanE2ELMs   float64 `json:"mean_e2el_ms"`
	MedianE2ELMs float64 `json:"median_e2el_ms"`
	StdE2ELMs    float64 `json:"std_e2el_ms"`

	// Percentiles maps vLLM's percentile keys ("p99_ttft_ms", "p50_itl_ms", ...) to their values.
	Percentiles map[string]float64 `json:"-"`
	// Metadata are extra top-level string fields: the command line, commit, machine, and any
	// --metadata KEY=VALUE.
	Metadata map[string]string `json:"-"`
}

// RunInfo describes a run for its Result.
type RunInfo struct {
	Endpoint       Endpoint
	Label          string
	ModelID        string
	TokenizerID    string
	RequestRate    float64
	Burstiness     float64
	MaxConcurrency int
	// Percentiles are the percentiles to record (e.g. 99).
	Percentiles []float64
	// SaveTexts keeps the generated texts in the file.
	SaveTexts bool
	Metadata  map[string]string
	// CountTokens counts output tokens when a server sends no usage (nil: count chunks).
	CountTokens func(string) int
	Date        time.Time
}

// NewResult computes a Result from a run's outcome.
func NewResult(info RunInfo, oc *Outcome) *Result {
	m := Calculate(oc.Outputs, oc.Duration, info.Percentiles, info.CountTokens)
	backend := info.Endpoint.Backend()
	label := info.Label
	if label == "" {
		label = backend
	}
	r := &Result{
		Date: info.Date.Format("20060102-150405"), EndpointType: backend, Backend: backend, Label: label,
		ModelID: info.ModelID, TokenizerID: info.TokenizerID, NumPrompts: len(oc.Outputs),
		RequestRate: info.RequestRate, Burstiness: info.Burstiness,
		Duration: oc.Duration, Completed: m.Completed, Failed: m.Failed,
		TotalInputTokens: m.TotalInput, TotalOutputTokens: m.TotalOutput,
		RequestThroughput: m.RequestThroughput, OutputThroughput: m.OutputThroughput,
		TotalTokenThroughput: m.TotalTokenThroughput,
		OutputLens:           m.OutputLens,
		MaxOutputTokensPerS:  m.MaxOutputTokensPerS, MaxConcurrentRequests: m.MaxConcurrentRequests,
		Percentiles: map[string]float64{}, Metadata: map[string]string{},
	}
	if info.MaxConcurrency > 0 {
		c := info.MaxConcurrency
		r.MaxConcurrency = &c
	}
	for _, o := range oc.Outputs {
		r.InputLens = append(r.InputLens, o.PromptLen)
		r.TTFTs = append(r.TTFTs, o.TTFT)
		itl := o.ITL
		if itl == nil {
			itl = []float64{}
		}
		r.ITLs = append(r.ITLs, itl)
		r.Latencies = append(r.Latencies, o.Latency)
		r.StartTimes = append(r.StartTimes, o.StartTime)
		r.QueueTimes = append(r.QueueTimes, o.QueueTime)
		r.Errors = append(r.Errors, o.Error)
		if info.SaveTexts {
			r.GeneratedTexts = append(r.GeneratedTexts, o.GeneratedText)
		}
	}
	set := func(name string, d Dist, mean, median, std *float64) {
		*mean, *median, *std = d.Mean, d.Median, d.Std
		for _, pv := range d.Percentiles {
			r.Percentiles[PercentileKey(pv.P, name)] = pv.Value
		}
	}
	set("ttft", m.TTFT, &r.MeanTTFTMs, &r.MedianTTFTMs, &r.StdTTFTMs)
	set("tpot", m.TPOT, &r.MeanTPOTMs, &r.MedianTPOTMs, &r.StdTPOTMs)
	set("itl", m.ITL, &r.MeanITLMs, &r.MedianITLMs, &r.StdITLMs)
	set("e2el", m.E2EL, &r.MeanE2ELMs, &r.MedianE2ELMs, &r.StdE2ELMs)
	for k, v := range info.Metadata {
		r.Metadata[k] = v
	}
	return r
}

// PercentileKey is vLLM's name for a percentile of a metric: "p99_ttft_ms", "p99.9_itl_ms".
func PercentileKey(p float64, metric string) string {
	return "p" + pyNumber(p) + "_" + metric + "_ms"
}

// pyNumber writes p as vLLM does: str(int(p)) when p is whole, else str(p).
func pyNumber(p float64) string {
	if p == math.Trunc(p) && math.Abs(p) < 1e15 {
		return strconv.FormatInt(int64(p), 10)
	}
	return strconv.FormatFloat(p, 'f', -1, 64)
}

// PyFloat writes f as Python's str(float) does for ordinary magnitudes ("1.0", "2.5", "inf"),
// as vLLM's result file names use it.
func PyFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "inf"
	case f == math.Trunc(f) && math.Abs(f) < 1e16:
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// Percentile returns the recorded value of metric ("ttft", "tpot", "itl", "e2el") at p.
func (r *Result) Percentile(metric string, p float64) (float64, bool) {
	v, ok := r.Percentiles[PercentileKey(p, metric)]
	return v, ok
}

// FileName is vLLM's default result file name:
// {label}-{rate}qps[-concurrency{N}]-{model}-{date}.json.
func (r *Result) FileName() string {
	c := ""
	if r.MaxConcurrency != nil {
		c = fmt.Sprintf("-concurrency%d", *r.MaxConcurrency)
	}
	model := r.ModelID
	if i := strings.LastIndex(model, "/"); i >= 0 {
		model = model[i+1:]
	}
	return fmt.Sprintf("%s-%sqps%s-%s-%s.json", r.Label, PyFloat(r.RequestRate), c, model, r.Date)
}

var percentileKeyRE = regexp.MustCompile(`^p[0-9]+(\.[0-9]+)?_(ttft|tpot|itl|e2el)_ms$`)

// resultAlias has Result's fields without its methods, for the default JSON coding.
type resultAlias Result

// MarshalJSON writes the vLLM field names, request_rate as a number or "inf", then the
// percentile keys and metadata in sorted order.
func (r *Result) MarshalJSON() ([]byte, error) {
	var rate any = r.RequestRate
	if math.IsInf(r.RequestRate, 1) {
		rate = "inf"
	}
	base, err := json.Marshal(struct {
		*resultAlias
		RequestRate any `json:"request_rate"`
	}{(*resultAlias)(r), rate})
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Write(base[:len(base)-1])
	keys := make([]string, 0, len(r.Percentiles))
	for k := range r.Percentiles {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	known := resultKeys()
	for _, k := range keys {
		if !percentileKeyRE.MatchString(k) {
			return nil, fmt.Errorf("result: %q is not a percentile key like p99_ttft_ms", k)
		}
		v, err := json.Marshal(r.Percentiles[k])
		if err != nil {
			return nil, fmt.Errorf("result: %s: %w", k, err)
		}
		fmt.Fprintf(&buf, ",%q:%s", k, v)
	}
	keys = keys[:0]
	for k := range r.Metadata {
		if known[k] || percentileKeyRE.MatchString(k) {
			return nil, fmt.Errorf("result: metadata key %q collides with a result field", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, _ := json.Marshal(r.Metadata[k])
		kb, _ := json.Marshal(k)
		fmt.Fprintf(&buf, ",%s:%s", kb, v)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// UnmarshalJSON reads a result file written by qvl or by vLLM: percentile keys go to
// Percentiles, other unknown string fields to Metadata.
func (r *Result) UnmarshalJSON(data []byte) error {
	aux := struct {
		*resultAlias
		RequestRate json.RawMessage `json:"request_rate"`
	}{resultAlias: (*resultAlias)(r)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return err
	}
	switch s := strings.TrimSpace(string(aux.RequestRate)); s {
	case `"inf"`, `"Infinity"`, `Infinity`:
		r.RequestRate = math.Inf(1)
	case "", "null":
		r.RequestRate = 0
	default:
		v, err := strconv.ParseFloat(strings.Trim(s, `"`), 64)
		if err != nil {
			return fmt.Errorf("request_rate %s is not a number or \"inf\"", s)
		}
		r.RequestRate = v
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(data, &all); err != nil {
		return err
	}
	known := resultKeys()
	r.Percentiles, r.Metadata = map[string]float64{}, map[string]string{}
	for k, raw := range all {
		switch {
		case known[k] || k == "request_rate":
		case percentileKeyRE.MatchString(k):
			var v float64
			if err := json.Unmarshal(raw, &v); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
			r.Percentiles[k] = v
		default:
			var s string
			if json.Unmarshal(raw, &s) == nil {
				r.Metadata[k] = s
			}
		}
	}
	return nil
}

// resultKeys are the JSON names of Result's fixed fields.
func resultKeys() map[string]bool {
	keys := map[string]bool{}
	t := reflect.TypeOf(Result{})
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			keys[name] = true
		}
	}
	return keys
}

// WriteFile writes r as indented JSON.
func (r *Result) WriteFile(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// ReadResult reads a result file.
func ReadResult(path string) (*Result, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Result
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

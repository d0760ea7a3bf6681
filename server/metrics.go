package server

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/qvl-dev/qvl/runtime/engine"
)

// Histogram buckets, after vLLM's (with finer low buckets for small models).
var (
	ttftBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560}
	itlBuckets  = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}
	e2eBuckets  = []float64{0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680}
)

// metrics are the server's Prometheus metrics, named like vLLM's with the qvl: prefix.
type metrics struct {
	reg      *prometheus.Registry
	ttft     prometheus.Histogram
	itl      prometheus.Histogram
	e2e      prometheus.Histogram
	queue    prometheus.Histogram
	requests *prometheus.CounterVec
	reloads  prometheus.Counter
}

func newMetrics(s *Server) *metrics {
	labels := prometheus.Labels{"model_name": s.cfg.ServedModelName}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets, ConstLabels: labels})
	}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		ttft: hist("qvl:time_to_first_token_seconds",
			"Time from a request's arrival to its first generated token, per choice.", ttftBuckets),
		itl: hist("qvl:inter_token_latency_seconds",
			"Time between consecutive generated tokens of a choice (between the engine steps that made them).", itlBuckets),
		e2e: hist("qvl:e2e_request_latency_seconds",
			"Time from a request's arrival to its last token, per choice.", e2eBuckets),
		queue: hist("qvl:request_queue_time_seconds",
			"Time from submission to the engine to the step that first scheduled the request.", e2eBuckets),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "qvl:http_requests_total",
			Help: "HTTP requests answered, by endpoint and status code.", ConstLabels: labels}, []string{"endpoint", "code"}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{Name: "qvl:reloads_total",
			Help: "Successful swaps of the embedding store and/or projector.", ConstLabels: labels}),
	}
	m.reg.MustRegister(m.ttft, m.itl, m.e2e, m.queue, m.requests, m.reloads, &engineCollector{s: s, labels: labels},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// engineCollector reads the engine's state and counters, and the caches', at scrape time.
type engineCollector struct {
	s      *Server
	labels prometheus.Labels
}

type desc struct {
	d *prometheus.Desc
	t prometheus.ValueType
}

func (c *engineCollector) descs() map[string]desc {
	mk := func(name, help string, t prometheus.ValueType, vars ...string) desc {
		return desc{prometheus.NewDesc(name, help, vars, c.labels), t}
	}
	g, ctr := prometheus.GaugeValue, prometheus.CounterValue
	return map[string]desc{
		"running":        mk("qvl:num_requests_running", "Requests in the engine's running batch.", g),
		"waiting":        mk("qvl:num_requests_waiting", "Requests waiting to be scheduled.", g),
		"kv":             mk("qvl:kv_cache_usage_perc", "Fraction of KV-cache blocks in use by requests (1 = full).", g),
		"kvblocks":       mk("qvl:kv_cache_blocks", "KV-cache blocks in all.", g),
		"prefixQueries":  mk("qvl:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", ctr),
		"prefixHits":     mk("qvl:prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", ctr),
		"preemptions":    mk("qvl:num_preemptions_total", "Requests preempted (their blocks freed, to be recomputed) for lack of cache room.", ctr),
		"promptTokens":   mk("qvl:prompt_tokens_total", "Prompt tokens computed.", ctr),
		"genTokens":      mk("qvl:generation_tokens_total", "Tokens generated.", ctr),
		"finished":       mk("qvl:request_success_total", "Engine requests (choices) ended, by finish reason (stop, length, cancelled, error).", ctr, "finished_reason"),
		"projHits":       mk("qvl:projected_cache_hits_total", "Store items whose projected tokens were found in the cache.", ctr),
		"projMisses":     mk("qvl:projected_cache_misses_total", "Store items that had to be projected.", ctr),
		"projBytes":      mk("qvl:projected_cache_bytes", "Bytes held by the projected-token cache.", g),
		"projEntries":    mk("qvl:projected_cache_entries", "Items held by the projected-token cache.", g),
		"storeItems":     mk("qvl:embedding_store_items", "Items in the current embedding store (0 when none is loaded).", g),
		"maxModelLen":    mk("qvl:max_model_len", "Longest prompt plus output a request may have.", g),
		"projGeneration": mk("qvl:projector_generation", "Number of projector swaps since start.", g),
	}
}

// Describe implements prometheus.Collector.
func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d.d
	}
}

// Collect implements prometheus.Collector.
func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	ds := c.descs()
	put := func(name string, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(ds[name].d, ds[name].t, v, lv...)
	}
	var st engine.Stats
	if m := c.s.model(); m != nil {
		st = m.Engine.Stats()
	}
	put("running", float64(st.Running))
	put("waiting", float64(st.Waiting))
	put("kv", st.KVUsage)
	put("kvblocks", float64(st.KVBlocks))
	put("prefixQueries", float64(st.PrefixQueries))
	put("prefixHits", float64(st.PrefixHits))
	put("preemptions", float64(st.Preemptions))
	put("promptTokens", float64(st.PromptTokens))
	put("genTokens", float64(st.GenerationTokens))
	put("maxModelLen", float64(st.MaxModelLen))
	reasons := []string{string(engine.FinishStop), string(engine.FinishLength), string(engine.FinishCancelled), string(engine.FinishError)}
	for r := range st.Finished {
		found := false
		for _, x := range reasons {
			found = found || x == string(r)
		}
		if !found {
			reasons = append(reasons, string(r))
		}
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		put("finished", float64(st.Finished[engine.FinishReason(r)]), r)
	}
	entries, bytes := c.s.cache.stats()
	put("projHits", float64(c.s.cache.hits.Load()))
	put("projMisses", float64(c.s.cache.misses.Load()))
	put("projBytes", float64(bytes))
	put("projEntries", float64(entries))
	items := 0
	if r := c.s.acquireStore(); r != nil {
		items = r.st.Len()
		r.release()
	}
	put("storeItems", float64(items))
	put("projGeneration", float64(c.s.projGenerationLocked()))
}

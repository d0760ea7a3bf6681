// Package bench is qvl's serving benchmark: a load generator that drives any OpenAI-compatible
// server (qvl serve, vLLM, SGLang, ...) over HTTP with streaming requests and measures what
// serving engineers compare — time to first token (TTFT), time per output token (TPOT),
// inter-token latency (ITL), end-to-end latency (E2EL), request and token throughput — exactly as
// `vllm bench serve` defines them, and writes its result file with vLLM's field names so the two
// can be read side by side.
//
// Definitions (per successful request; times on the client, from sending the request):
//   - TTFT: until the first streamed chunk that carries generated text (or a finish reason);
//   - ITL: the gaps between successive such chunks (a chunk may hold several tokens);
//   - E2EL: until the last chunk of the stream (the usage chunk when the server sends one);
//   - TPOT: (E2EL − TTFT) / (output tokens − 1), for requests with more than one output token,
//     where output tokens come from the stream's usage chunk (stream_options.include_usage).
//
// Arrivals follow vLLM: with a finite request rate the gaps are drawn from a gamma distribution
// of shape burstiness and mean 1/rate (burstiness 1 is a Poisson process), optionally capped
// by a maximum concurrency; with an infinite rate every request is sent at once.
//
// The subpackages measure the engine without HTTP (offline), write per-op backend times as
// pprof profiles (opprof), draw PNG plots (plots) and generate docs/performance.md (report).
package bench

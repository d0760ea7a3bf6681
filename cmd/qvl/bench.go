package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qvl-dev/qvl/bench"
	"github.com/qvl-dev/qvl/bench/offline"
	"github.com/qvl-dev/qvl/bench/opprof"
	"github.com/qvl-dev/qvl/bench/plots"
	"github.com/qvl-dev/qvl/bench/report"
	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/loader/tokenizer"
	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
	"github.com/qvl-dev/qvl/runtime/model"
)

func init() {
	register("bench", "measure a running server (bench serve) or the engine (bench offline); bench report writes docs/performance.md", runBench)
	register("bench serve", "load-test an OpenAI-compatible server: TTFT, TPOT, ITL, E2E latency and throughput as vllm bench serve reports them", runBenchServe)
	register("bench offline", "measure the engine without HTTP: decode and prefill tokens/s beside the machine's floor", runBenchOffline)
	register("bench report", "generate the results page (docs/performance.md) from benchmark result files", runBenchReport)
	register("bench compare", "result files side by side: each workload's value, change against the first file, better or worse", runBenchCompare)
}

func runBench(args []string) error {
	fmt.Fprint(os.Stderr, `Usage: qvl bench <serve|offline|report|compare> [flags]

  serve     drive a running OpenAI-compatible server over HTTP (fixed concurrency or Poisson arrivals)
  offline   drive the engine directly: batch-size sweep of decode and prefill beside the hardware floor
  report    generate docs/performance.md from result files
  compare   result files side by side (BASE.json OTHER.json...): change against the base, better or worse

Run 'qvl bench serve -h' (and so on) for the flags.
`)
	if len(args) > 0 {
		return fmt.Errorf("unknown bench command %q", args[0])
	}
	return nil
}

// commandLine is the command as typed, for result files.
func commandLine() string {
	parts := []string{"qvl"}
	for _, a := range os.Args[1:] {
		if a == "" || strings.ContainsAny(a, " \t\"'$`\\|&;<>*?") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// kvFlags collects repeated KEY=VALUE flags.
type kvFlags map[string]string

// String implements flag.Value.
func (k kvFlags) String() string { return fmt.Sprint(map[string]string(k)) }

// Set implements flag.Value: it adds one KEY=VALUE.
func (k kvFlags) Set(s string) error {
	key, v, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(key) == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", s)
	}
	k[strings.TrimSpace(key)] = strings.TrimSpace(v)
	return nil
}

// parseRate reads a request rate: a positive number or "inf".
func parseRate(s string) (float64, error) {
	if strings.EqualFold(strings.TrimSpace(s), "inf") {
		return math.Inf(1), nil
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || !(v > 0) {
		return 0, fmt.Errorf("request rate %q: want a number > 0 or inf", s)
	}
	return v, nil
}

// parseFloats reads "1,2,4.5".
func parseFloats(s string, check func(float64) bool, what string) ([]float64, error) {
	var out []float64
	for _, item := range strings.Split(s, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(item), 64)
		if err != nil || !check(v) {
			return nil, fmt.Errorf("%s: %q is not valid", what, item)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: %q lists nothing", what, s)
	}
	return out, nil
}

func runBenchServe(args []string) error {
	fs := flag.NewFlagSet("bench serve", flag.ExitOnError)
	url := fs.String("url", "http://127.0.0.1:8000", "the server's base URL (without /v1)")
	modelName := fs.String("model", "", "the model name to request (default: the first one the server lists)")
	endpoint := fs.String("endpoint", "chat", "API: chat (/v1/chat/completions) or completions (/v1/completions)")
	concurrency := fs.Int("concurrency", 0, "maximum requests in flight (0: no cap; vLLM's --max-concurrency)")
	rateFlag := fs.String("request-rate", "inf", "mean arrival rate in requests/s, or inf to send every request at once")
	burstiness := fs.Float64("burstiness", 1, "gamma shape of the arrival gaps: 1 is Poisson, < 1 burstier, > 1 more even")
	sweep := fs.String("sweep-rates", "", "run once per request rate in this list (e.g. 1,2,4,8), one result file each")
	numPrompts := fs.Int("num-prompts", 200, "requests to send (ignored with --duration)")
	duration := fs.Duration("duration", 0, "send requests for this long (cycling through the dataset), then wait for those in flight")
	warmup := fs.Int("warmup", 1, "warm-up requests before measuring (the first must succeed)")
	dataset := fs.String("dataset", "random", "random, or a JSONL file of {\"prompt\", \"output_tokens\", \"images\", \"parts\"}")
	inLen := fs.Int("random-input-len", 1024, "random dataset: prompt tokens")
	outLen := fs.Int("random-output-len", 128, "random dataset: output tokens (max_tokens); also the default of file lines without output_tokens")
	ratio := fs.Float64("random-range-ratio", 0, "random dataset: lengths drawn from [len·(1−r), len·(1+r)]")
	prefixLen := fs.Int("random-prefix-len", 0, "random dataset: tokens of a prefix shared by every prompt")
	imageProb := fs.Float64("image-ref-prob", 0, "probability that a request carries an image (1 when --image-embeds is given alone)")
	imageIDs := fs.String("image-ids", "demo-0..demo-255", "catalog ids for image_ref parts (comma list; ranges like demo-0..demo-255)")
	imageEmbeds := fs.String("image-embeds", "", "JSON file with an image_embeds part (or its object) to send as the image instead of an image_ref")
	resultJSON := fs.String("result-json", "", "write the result (vLLM's field names) to this file")
	resultDir := fs.String("result-dir", "", "write results here under vLLM's file names (required with --sweep-rates)")
	label := fs.String("label", "", "label of the result (default: the backend name, openai-chat or openai)")
	ignoreEOS := fs.Bool("ignore-eos", false, "send ignore_eos so outputs run to max_tokens (always on for the random dataset, as in vLLM)")
	temperature := fs.Float64("temperature", 0, "sampling temperature sent with every request")
	seed := fs.Uint64("seed", 0, "seed of the dataset and the arrival times")
	percentiles := fs.String("metric-percentiles", "99", "percentiles to report, e.g. 50,90,99")
	tokPath := fs.String("tokenizer", "", "tokenizer.json (or its directory) for prompt lengths (default: the built-in Qwen3 tokenizer)")
	profileDir := fs.String("profile", "", "fetch a Go CPU profile of the server (/debug/pprof/profile) during each run into this directory")
	saveTexts := fs.Bool("save-texts", false, "keep the generated texts in the result file")
	timeout := fs.Duration("request-timeout", 6*time.Hour, "give up on a request after this long")
	meta := kvFlags{}
	fs.Var(meta, "metadata", "KEY=VALUE written into the result (repeatable), e.g. server=H100")
	headers := kvFlags{}
	fs.Var(headers, "header", "KEY=VALUE HTTP header sent with every request (repeatable)")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	setFlags := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { setFlags[f.Name] = true })

	ep, err := bench.ParseEndpoint(*endpoint)
	if err != nil {
		return err
	}
	rates := []float64{0}
	if *sweep != "" {
		if setFlags["request-rate"] {
			return errors.New("give either --request-rate or --sweep-rates")
		}
		if *resultJSON != "" || *resultDir == "" {
			return errors.New("--sweep-rates writes one file per rate: give --result-dir DIR (and no --result-json)")
		}
		if rates, err = parseFloats(*sweep, func(v float64) bool { return v > 0 }, "--sweep-rates"); err != nil {
			return err
		}
	} else if rates[0], err = parseRate(*rateFlag); err != nil {
		return err
	}
	ps, err := parseFloats(*percentiles, func(v float64) bool { return v >= 0 && v <= 100 }, "--metric-percentiles")
	if err != nil {
		return err
	}
	if *concurrency < 0 || *numPrompts < 1 || *warmup < 0 || !(*burstiness > 0) {
		return errors.New("--concurrency and --warmup must be ≥ 0, --num-prompts ≥ 1 and --burstiness > 0")
	}
	if *imageProb < 0 || *imageProb > 1 {
		return fmt.Errorf("--image-ref-prob must be in [0, 1], got %v", *imageProb)
	}

	// The tokenizer makes random prompts of exact lengths and counts file prompts.
	var tok *tokenizer.Tokenizer
	tokID := "qwen3 (built in)"
	if *tokPath != "" {
		tok, err = tokenizer.Load(*tokPath)
		tokID = *tokPath
	} else {
		tok, err = tokenizer.FromJSON(qwen3.TokenizerJSON())
	}
	if err != nil {
		return err
	}
	words, err := bench.NewWords(tok)
	if err != nil {
		return err
	}
	var reqs []bench.Request
	datasetDesc := ""
	n := *numPrompts
	if *duration > 0 {
		n = max(n, 1000) // a pool to cycle through
	}
	if *dataset == "random" {
		*ignoreEOS = true
		reqs, err = bench.RandomRequests(words, bench.RandomConfig{NumPrompts: n, InputLen: *inLen, OutputLen: *outLen,
			RangeRatio: *ratio, PrefixLen: *prefixLen, Seed: *seed})
		datasetDesc = fmt.Sprintf("random: %d input tokens, %d output tokens, range ratio %v, shared prefix %d, seed %d", *inLen, *outLen, *ratio, *prefixLen, *seed)
	} else {
		reqs, err = bench.LoadJSONL(*dataset, *outLen, words.Count)
		if err == nil && *duration == 0 {
			for len(reqs) < n {
				reqs = append(reqs, reqs[:min(len(reqs), n-len(reqs))]...)
			}
			reqs = reqs[:n]
		}
		datasetDesc = "file " + *dataset
	}
	if err != nil {
		return err
	}
	prob := *imageProb
	if *imageEmbeds != "" {
		part, err := bench.LoadImageEmbedsPart(*imageEmbeds)
		if err != nil {
			return err
		}
		if !setFlags["image-ref-prob"] {
			prob = 1
		}
		bench.AddImages(reqs, prob, *seed, func(*rand.Rand) json.RawMessage { return part })
		datasetDesc += fmt.Sprintf("; image_embeds from %s with probability %v", *imageEmbeds, prob)
	} else if prob > 0 {
		ids, err := bench.ParseIDs(*imageIDs)
		if err != nil {
			return err
		}
		bench.AddImages(reqs, prob, *seed, func(r *rand.Rand) json.RawMessage { return bench.ImageRefPart(ids[r.IntN(len(ids))]) })
		datasetDesc += fmt.Sprintf("; image_ref from %d ids with probability %v", len(ids), prob)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hc := bench.NewHTTPClient(max(*concurrency, 256))
	hc.Timeout = *timeout
	if *modelName == "" {
		if *modelName, err = bench.FirstModel(ctx, hc, *url); err != nil {
			return err
		}
	}
	temp := *temperature
	client := &bench.Client{BaseURL: *url, Endpoint: ep, Model: *modelName, HTTP: hc, IgnoreEOS: *ignoreEOS, Temperature: &temp, Headers: headers}
	machine := bench.DescribeMachine()
	sweepID := ""
	if len(rates) > 1 {
		sweepID = time.Now().Format("20060102-150405")
	}
	var results []*bench.Result
	for i, rate := range rates {
		if ctx.Err() != nil {
			break
		}
		if *profileDir != "" {
			if err := os.MkdirAll(*profileDir, 0o755); err != nil {
				return err
			}
		}
		var prof *bench.CPUProfiler
		cfg := bench.Config{Sender: client, Requests: reqs, RequestRate: rate, Burstiness: *burstiness, MaxConcurrency: *concurrency,
			Duration: *duration, Warmup: *warmup, Seed: *seed + uint64(i),
			Progress: progressLine(),
		}
		if *profileDir != "" {
			prof = &bench.CPUProfiler{HTTP: hc, BaseURL: *url}
			cfg.OnStart = func() { prof.Start(ctx) }
		}
		amount := fmt.Sprintf("%d requests", len(reqs))
		if *duration > 0 {
			amount = fmt.Sprintf("for %s (cycling %d prompts)", *duration, len(reqs))
		}
		fmt.Fprintf(os.Stderr, "bench serve: %s%s, model %s, rate %s req/s, burstiness %v, max concurrency %d, %s\n",
			*url, ep.Path(), *modelName, bench.PyFloat(rate), *burstiness, *concurrency, amount)
		date := time.Now()
		oc, err := bench.Run(ctx, cfg)
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return err
		}
		md := machine.Metadata()
		md[report.KeyCommand] = commandLine()
		md["dataset"] = datasetDesc
		if sweepID != "" {
			md[report.KeySweep] = sweepID
		}
		profPath := ""
		if prof != nil {
			profPath = filepath.Join(*profileDir, fmt.Sprintf("cpu-%sqps.pb.gz", bench.PyFloat(rate)))
			md[report.KeyServerProfile] = profPath
		}
		for k, v := range meta {
			md[k] = v
		}
		res := bench.NewResult(bench.RunInfo{Endpoint: ep, Label: *label, ModelID: *modelName, TokenizerID: tokID, RequestRate: rate,
			Burstiness: *burstiness, MaxConcurrency: *concurrency, Percentiles: ps, SaveTexts: *saveTexts, Metadata: md,
			CountTokens: words.Count, Date: date}, oc)
		bench.WriteErrors(os.Stderr, res, 10)
		bench.WriteTable(os.Stdout, res)
		if prof != nil {
			if err := prof.Stop(profPath); err != nil {
				return fmt.Errorf("server CPU profile: %w", err)
			}
			fmt.Fprintf(os.Stderr, "server CPU profile: %s (go tool pprof -top %s)\n", profPath, profPath)
		}
		path := *resultJSON
		if *resultDir != "" {
			if err := os.MkdirAll(*resultDir, 0o755); err != nil {
				return err
			}
			path = filepath.Join(*resultDir, res.FileName())
		}
		if path != "" {
			if err := res.WriteFile(path); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "result: %s\n", path)
		}
		results = append(results, res)
	}
	if len(results) > 1 {
		png := filepath.Join(*resultDir, report.SweepPlotName(results[0].Label, *modelName, sweepID))
		if err := plots.LatencyThroughput(png, *modelName+": latency against throughput", results); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "plot: %s\n", png)
	}
	return ctx.Err()
}

// progressLine returns a Progress callback that redraws one line on stderr at most twice a
// second (and on the last request).
func progressLine() func(done, failed, total int) {
	var mu sync.Mutex
	var last time.Time
	return func(done, failed, total int) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) < 500*time.Millisecond && done != total {
			return
		}
		last = time.Now()
		if total > 0 {
			fmt.Fprintf(os.Stderr, "\r%d/%d done, %d failed", done, total, failed)
		} else {
			fmt.Fprintf(os.Stderr, "\r%d done, %d failed", done, failed)
		}
	}
}

// synthDir returns the cached checkpoint of a synthetic shape, writing it on first use (the 2B
// shape is 3.4 GB): base/synth-NAME-seedS, made in a temporary directory and renamed when complete.
func synthDir(base, name string, seed uint64) (string, error) {
	s, ok := synth.Shapes[name]
	if !ok {
		return "", fmt.Errorf("unknown shape %q (want one of %s)", name, strings.Join(synth.ShapeNames(), ", "))
	}
	dir := filepath.Join(base, fmt.Sprintf("synth-%s-seed%d", name, seed))
	if _, err := os.Stat(filepath.Join(dir, loader.ConfigFileName)); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(base, ".synth-")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "synthesizing %s (%.2fB parameters) into %s once\n", name, float64(s.Params())/1e9, dir)
	err = synth.Write(tmp, s, synth.Options{Seed: seed, Progress: progressPrinter("writing")})
	fmt.Fprintln(os.Stderr)
	if err == nil {
		err = os.Rename(tmp, dir)
	}
	if err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(filepath.Join(dir, loader.ConfigFileName)); serr == nil {
			return dir, nil // another process finished it first
		}
		return "", err
	}
	return dir, nil
}

// cacheBase is where synthesized checkpoints are kept: $QVL_CACHE_DIR or the user cache's qvl.
func cacheBase() string {
	if d := os.Getenv("QVL_CACHE_DIR"); d != "" {
		return d
	}
	c, err := os.UserCacheDir()
	if err != nil {
		c = os.TempDir()
	}
	return filepath.Join(c, "qvl")
}

func runBenchOffline(args []string) error {
	fs := flag.NewFlagSet("bench offline", flag.ExitOnError)
	modelDir := fs.String("model", "", "checkpoint directory")
	shape := fs.String("shape", "", "synthesize this shape instead ("+strings.Join(synth.ShapeNames(), ", ")+"), cached under --cache-dir")
	cacheDir := fs.String("cache-dir", cacheBase(), "where --shape checkpoints are kept")
	backendName := fs.String("backend", "cpu", "backend: cpu, cpu-ref or cuda")
	threads := fs.Int("threads", 0, "CPU threads (0: all cores)")
	batches := fs.String("batch", "1,8,64", "decode batch sizes")
	contextLen := fs.Int("context", 512, "prompt tokens of every decode request")
	prefill := fs.String("prefill", "8x512", "prefill cases SEQSxLEN, comma-separated (empty: none)")
	steps := fs.Int("steps", 32, "timed decode steps per batch size")
	warmSteps := fs.Int("warmup-steps", 2, "untimed decode steps before the timed ones")
	reps := fs.Int("prefill-reps", 3, "timed repetitions of each prefill case (after one untimed)")
	bw := fs.Float64("bandwidth", 0, "memory bandwidth in GB/s for the decode floor (0: measure)")
	peak := fs.Float64("peak-tflops", 0, "matmul peak in TFLOP/s for the prefill floor (0: measure)")
	profilePath := fs.String("profile", "", "write per-op backend time to this file in pprof format (go tool pprof -top FILE)")
	resultJSON := fs.String("result-json", "", "write the report as JSON to this file")
	plotPath := fs.String("plot", "", "write the tokens/s-against-batch plot to this PNG")
	seed := fs.Uint64("seed", 0, "seed of the prompts (and of a synthesized checkpoint)")
	meta := kvFlags{}
	fs.Var(meta, "metadata", "KEY=VALUE note written into the report (repeatable), e.g. note=\"other jobs were running\"")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if (*modelDir == "") == (*shape == "") {
		return errors.New("give --model DIR or --shape NAME")
	}
	bs, err := offline.ParseInts(*batches)
	if err != nil {
		return fmt.Errorf("--batch: %w", err)
	}
	pcs, err := offline.ParsePrefill(*prefill)
	if err != nil {
		return err
	}
	dir, name := *modelDir, filepath.Base(filepath.Clean(*modelDir))
	if *shape != "" {
		if dir, err = synthDir(*cacheDir, *shape, *seed); err != nil {
			return err
		}
		name = *shape
	}
	b, err := openBackend(*backendName, *threads)
	if err != nil {
		return err
	}
	defer b.Close()
	m, err := model.Open(b, dir, model.Options{Progress: progressPrinter("loading")})
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return err
	}
	defer m.Close()
	cfg := offline.Config{Model: m, Backend: b, ModelName: name, Dir: dir, Batches: bs, Context: *contextLen, Steps: *steps,
		WarmupSteps: *warmSteps, Prefill: pcs, PrefillReps: *reps, Threads: *threads, Profile: *profilePath != "", Seed: *seed,
		Log: func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }}
	if *bw > 0 {
		cfg.Bandwidth = offline.Measured{Value: *bw * 1e9, Method: "given (--bandwidth)"}
	}
	if *peak > 0 {
		cfg.Peak = offline.Measured{Value: *peak * 1e12, Method: "given (--peak-tflops)"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	rep, err := offline.Run(ctx, cfg)
	if err != nil {
		return err
	}
	rep.Command = commandLine()
	if len(meta) > 0 {
		rep.Metadata = meta
	}
	printOffline(rep)
	if *profilePath != "" {
		var samples []opprof.Sample
		for _, ph := range rep.Ops {
			for _, o := range ph.Ops {
				samples = append(samples, opprof.Sample{Op: o.Name, Calls: o.Calls, Total: time.Duration(o.TotalMs * 1e6), Labels: ph.Labels})
			}
		}
		f, err := os.Create(*profilePath)
		if err != nil {
			return err
		}
		err = opprof.Write(f, samples, time.Since(start), "qvl bench offline", "backend "+rep.Backend, "model "+rep.Model, "commit "+rep.Machine.Commit)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "per-op profile: %s (go tool pprof -top %s; -tagfocus phase=decode)\n", *profilePath, *profilePath)
	}
	if *resultJSON != "" {
		data, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*resultJSON, append(data, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "result: %s\n", *resultJSON)
	}
	if *plotPath != "" && len(rep.Decode) > 0 {
		if err := plots.DecodeScaling(*plotPath, rep); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "plot: %s\n", *plotPath)
	}
	return nil
}

// printOffline prints the report's tables.
func printOffline(r *offline.Report) {
	fmt.Printf("%s on %s; bandwidth %.1f GB/s (%s); matmul peak %.1f GFLOP/s (%s)\n", r.Model, r.Backend,
		r.Bandwidth.Value/1e9, r.Bandwidth.Method, r.Peak.Value/1e9, r.Peak.Method)
	if len(r.Decode) > 0 {
		fmt.Printf("\ndecode at context %d\n%6s %10s %10s %10s %12s %8s %9s %10s\n", r.Context, "batch", "TPOT ms", "tok/s", "floor ms", "floor tok/s", "bound", "of floor", "GB/s")
		for _, d := range r.Decode {
			fmt.Printf("%6d %10.2f %10.1f %10.2f %12.1f %8s %8.0f%% %10.1f\n", d.Batch, d.TPOTMs, d.TokensPerS, d.FloorMs, d.FloorTokensPerS, d.Bound, 100*d.OfFloor, d.AchievedBandwidth/1e9)
		}
	}
	if len(r.Prefill) > 0 {
		fmt.Printf("\nprefill\n%10s %10s %10s %10s %12s %8s %9s %10s\n", "case", "ms", "tok/s", "floor ms", "floor tok/s", "bound", "of floor", "GFLOP/s")
		for _, p := range r.Prefill {
			fmt.Printf("%10s %10.1f %10.1f %10.1f %12.1f %8s %8.0f%% %10.1f\n", fmt.Sprintf("%dx%d", p.Seqs, p.Len), p.MedianMs, p.TokensPerS, p.FloorMs, p.FloorTokensPerS, p.Bound, 100*p.OfFloor, p.AchievedFLOPS/1e9)
		}
	}
}

func runBenchReport(args []string) error {
	fs := flag.NewFlagSet("bench report", flag.ExitOnError)
	results := fs.String("results", "docs/perf", "directory of result files (*.json); plots are written next to them")
	out := fs.String("out", "docs/performance.md", "the page to write")
	fs.Parse(args)
	if err := report.Generate(*results, *out); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", *out)
	return nil
}

func runBenchCompare(args []string) error { return benchCompare(os.Stdout, os.Stderr, args) }

// benchCompare is `qvl bench compare`, writing the table to out (and flag help to errOut).
// Flags may come before, between or after the files.
func benchCompare(out, errOut io.Writer, args []string) error {
	fs := flag.NewFlagSet("bench compare", flag.ContinueOnError)
	fs.SetOutput(errOut)
	format := fs.String("format", "text", "text (an aligned table) or markdown (for docs/perf-log.md)")
	names := fs.String("names", "", "column names, one per file, comma-separated (default: the file names without .json)")
	only := fs.String("only", "", "keep the workloads whose name (leading spaces trimmed) matches this regular expression")
	threshold := fs.Float64("threshold", 1, "a change smaller than this many percent reads \"same\" rather than better or worse")
	fs.Usage = func() {
		fmt.Fprint(errOut, `Usage: qvl bench compare [flags] BASE.json OTHER.json [MORE.json...]

Matches the rows of GPU (runtime/cuda TestGPUBenchmark) or offline (qvl bench offline) result files by
workload and prints each file's value, its change against BASE in percent and whether that is better or
worse: lower is better for times (ms, µs, ms/tok) and ratios, higher for rates (tok/s); other units show
the change only. A workload missing from a file shows —.

`)
		fs.PrintDefaults()
	}
	var paths []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		paths = append(paths, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(paths) < 2 {
		return fmt.Errorf("want a base result file and at least one other to compare with it, got %d file(s)", len(paths))
	}
	opts := report.CompareOptions{Threshold: *threshold}
	if *names != "" {
		for _, n := range strings.Split(*names, ",") {
			opts.Names = append(opts.Names, strings.TrimSpace(n))
		}
		if len(opts.Names) != len(paths) {
			return fmt.Errorf("--names gives %d names for %d files", len(opts.Names), len(paths))
		}
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			return fmt.Errorf("--only: %w", err)
		}
		opts.Only = re
	}
	var write func(*report.Comparison, io.Writer) error
	switch *format {
	case "text":
		write = (*report.Comparison).WriteText
	case "markdown", "md":
		write = (*report.Comparison).WriteMarkdown
	default:
		return fmt.Errorf("--format %q: want text or markdown", *format)
	}
	files := make([]*report.ResultFile, len(paths))
	for i, p := range paths {
		f, err := report.ReadResultFile(p)
		if err != nil {
			return err
		}
		files[i] = f
	}
	c, err := report.Compare(files, opts)
	if err != nil {
		return err
	}
	return write(c, out)
}

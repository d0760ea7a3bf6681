// Package offline measures qvl's engine without HTTP: decode throughput and time per output
// token at several batch sizes and a given context, and prefill throughput, each beside its
// floor — the roofline bound from the model's bytes and FLOPs (Cost) and the machine's memory
// bandwidth and matmul peak, measured in the same run (or given). It drives the real engine
// (scheduler, batch building, sampling) step by step, so the numbers are what serving sees.
package offline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qvl-dev/qvl/bench"
	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// PrefillCase is a prefill of Seqs prompts of Len tokens, scheduled in one step.
type PrefillCase struct{ Seqs, Len int }

// String is "8x512".
func (p PrefillCase) String() string { return fmt.Sprintf("%dx%d", p.Seqs, p.Len) }

// ParsePrefill reads "8x512,1x2048".
func ParsePrefill(s string) ([]PrefillCase, error) {
	var out []PrefillCase
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		a, b, ok := strings.Cut(item, "x")
		n, err1 := strconv.Atoi(a)
		l, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || n < 1 || l < 1 {
			return nil, fmt.Errorf("prefill case %q: want SEQSxLEN such as 8x512", item)
		}
		out = append(out, PrefillCase{Seqs: n, Len: l})
	}
	return out, nil
}

// ParseInts reads a comma-separated list of positive integers ("1,8,64").
func ParseInts(s string) ([]int, error) {
	var out []int
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		n, err := strconv.Atoi(item)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", item)
		}
		out = append(out, n)
	}
	return out, nil
}

// Config describes an offline benchmark.
type Config struct {
	// Model is the loaded model; Backend the backend it runs on.
	Model   *model.Model
	Backend ml.Backend
	// ModelName names the model in the report (a directory or a shape).
	ModelName string
	// Dir is the checkpoint directory the model was opened from (its dtypes set the weight bytes).
	Dir string
	// Batches are the decode batch sizes; Context the prompt length of every decode request.
	Batches []int
	Context int
	// Steps is the number of timed decode steps per batch size (after WarmupSteps untimed).
	Steps, WarmupSteps int
	// Prefill cases, each timed PrefillReps times after one untimed run.
	Prefill     []PrefillCase
	PrefillReps int
	// Bandwidth (bytes/s) and Peak (FLOP/s) set the floors; zero values are measured.
	Bandwidth, Peak Measured
	// Threads is passed to the probes (0: all cores).
	Threads int
	// ProbeBytes is the size of the bandwidth probe (default 1 GiB).
	ProbeBytes int64
	// Profile collects per-op times (the backend must implement ml.Profiler).
	Profile bool
	// Seed draws the prompts.
	Seed uint64
	// Log, when set, receives progress lines.
	Log func(format string, args ...any)
}

// Report is an offline benchmark's result file.
type Report struct {
	Kind    string        `json:"kind"`
	Date    string        `json:"date"`
	Command string        `json:"command,omitempty"`
	Machine bench.Machine `json:"machine"`
	// Backend is the backend's name ("cpu (avx512-bf16, 2 threads)", "cuda:0 NVIDIA H100 ...").
	Backend string `json:"backend"`
	Model   string `json:"model"`
	// Params is the language model's parameter count; WeightBytes what a step reads of them.
	Params          int64 `json:"params"`
	WeightBytes     int64 `json:"weight_bytes"`
	KVBytesPerToken int64 `json:"kv_bytes_per_token"`
	// Bandwidth is in bytes/s and Peak in FLOP/s, each with how it was obtained.
	Bandwidth Measured        `json:"bandwidth"`
	Peak      Measured        `json:"peak"`
	Context   int             `json:"context"`
	Decode    []DecodeResult  `json:"decode"`
	Prefill   []PrefillResult `json:"prefill"`
	// Profiled says per-op timing was on during the measurements (it may slow them slightly).
	Profiled bool `json:"profiled"`
	// Ops are the per-op times gathered while profiling, by phase.
	Ops []PhaseOps `json:"ops,omitempty"`
	// Metadata are notes about the run (--metadata KEY=VALUE), e.g. what else loaded the machine.
	Metadata map[string]string `json:"metadata,omitempty"`
}

// PhaseOps are the op times of the timed steps of one phase ("decode b=8", "prefill 8x512").
type PhaseOps struct {
	Phase  string            `json:"phase"`
	Labels map[string]string `json:"labels"`
	Ops    []OpTime          `json:"ops"`
	// StepsMs is the wall time of the timed steps the ops ran in: the ops' share of it is the
	// model's; the rest is the engine's (scheduling, batch building, sampling) and the host's.
	StepsMs float64 `json:"steps_ms"`
}

// OpTime is one op's time in a phase.
type OpTime struct {
	Name    string  `json:"name"`
	Calls   int64   `json:"calls"`
	TotalMs float64 `json:"total_ms"`
}

// DecodeResult is decode at one batch size.
type DecodeResult struct {
	Batch int `json:"batch"`
	// Context is the prompt length; MeanContext the mean context over the timed steps.
	Context     int     `json:"context"`
	MeanContext float64 `json:"mean_context"`
	Steps       int     `json:"steps"`
	// Step times in milliseconds: each step gives every request one token, so the median step
	// is the time per output token.
	MeanStepMs   float64 `json:"mean_step_ms"`
	MedianStepMs float64 `json:"median_step_ms"`
	P99StepMs    float64 `json:"p99_step_ms"`
	TPOTMs       float64 `json:"tpot_ms"`
	// TokensPerS is batch / mean step time.
	TokensPerS float64 `json:"tokens_per_s"`
	// BytesPerStep and FLOPsPerStep are the napkin math at MeanContext.
	BytesPerStep float64 `json:"bytes_per_step"`
	FLOPsPerStep float64 `json:"flops_per_step"`
	// The floor: the least time a step can take on this machine, and the speed it allows.
	FloorMs         float64 `json:"floor_ms"`
	FloorTokensPerS float64 `json:"floor_tokens_per_s"`
	Bound           string  `json:"bound"`
	// OfFloor is floor time / measured mean step time: 1 means at the floor.
	OfFloor float64 `json:"of_floor"`
	// AchievedBandwidth is BytesPerStep / mean step time, in bytes/s.
	AchievedBandwidth float64 `json:"achieved_bandwidth"`
}

// PrefillResult is one prefill case.
type PrefillResult struct {
	Seqs   int `json:"seqs"`
	Len    int `json:"len"`
	Tokens int `json:"tokens"`
	Reps   int `json:"reps"`
	// Step times in milliseconds (the step that computes every prompt and samples the first tokens).
	MeanMs   float64 `json:"mean_ms"`
	MedianMs float64 `json:"median_ms"`
	MinMs    float64 `json:"min_ms"`
	// TokensPerS is tokens / median time.
	TokensPerS      float64 `json:"tokens_per_s"`
	FLOPs           float64 `json:"flops"`
	Bytes           float64 `json:"bytes"`
	FloorMs         float64 `json:"floor_ms"`
	FloorTokensPerS float64 `json:"floor_tokens_per_s"`
	Bound           string  `json:"bound"`
	OfFloor         float64 `json:"of_floor"`
	// AchievedFLOPS is FLOPs / median time.
	AchievedFLOPS float64 `json:"achieved_flops"`
}

const blockSize = 16

// Run measures the configured cases.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Model == nil || cfg.Backend == nil {
		return nil, errors.New("offline: no model or backend")
	}
	if len(cfg.Batches) == 0 && len(cfg.Prefill) == 0 {
		return nil, errors.New("offline: nothing to measure (no batch sizes and no prefill cases)")
	}
	if len(cfg.Batches) > 0 && (cfg.Context < 1 || cfg.Steps < 1) {
		return nil, fmt.Errorf("offline: decode needs a context ≥ 1 and steps ≥ 1, got %d and %d", cfg.Context, cfg.Steps)
	}
	if cfg.PrefillReps < 1 {
		cfg.PrefillReps = 1
	}
	logf := cfg.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	mc := cfg.Model.Config
	we, err := WeightElem(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cost := NewCost(mc, we, cfg.Backend.KVDType().Size())
	rep := &Report{Kind: "offline", Date: time.Now().Format("20060102-150405"), Machine: bench.DescribeMachine(),
		Backend: cfg.Backend.Name(), Model: cfg.ModelName, Params: params(cost), WeightBytes: cost.WeightBytes(),
		KVBytesPerToken: cost.KVBytesPerToken, Context: cfg.Context, Profiled: cfg.Profile}

	if rep.Bandwidth = cfg.Bandwidth; rep.Bandwidth.Value == 0 {
		logf("probing memory bandwidth")
		if rep.Bandwidth, err = ProbeBandwidth(cfg.Backend, cfg.Threads, cmp.Or(cfg.ProbeBytes, 1<<30)); err != nil {
			return nil, err
		}
	}
	if rep.Peak = cfg.Peak; rep.Peak.Value == 0 {
		logf("probing matmul peak")
		n := 256
		if len(cfg.Prefill) > 0 {
			n = cfg.Prefill[0].Seqs * cfg.Prefill[0].Len
		}
		if rep.Peak, err = ProbePeak(cfg.Backend, cfg.Threads, min(n, 512), mc.HiddenSize, 2*mc.IntermediateSize); err != nil {
			return nil, err
		}
	}
	logf("bandwidth %.1f GB/s (%s); peak %.1f GFLOP/s (%s)", rep.Bandwidth.Value/1e9, rep.Bandwidth.Method, rep.Peak.Value/1e9, rep.Peak.Method)

	var prof ml.Profiler
	if cfg.Profile {
		p, ok := cfg.Backend.(ml.Profiler)
		if !ok {
			return nil, fmt.Errorf("offline: backend %s cannot time its ops (it does not implement ml.Profiler)", cfg.Backend.Name())
		}
		prof = p
		prof.ResetProfile()
		prof.SetProfiling(true)
		defer prof.SetProfiling(false)
	}

	e, budget, err := newEngine(cfg)
	if err != nil {
		return nil, err
	}
	d := &driver{e: e, rng: rand.New(rand.NewPCG(cfg.Seed, 0x0ff1)), vocab: mc.VocabSize, imagePad: mc.ImageTokenID}
	if prof != nil {
		// Only the timed steps count: the driver calls this before the first of them.
		d.onTimed = prof.ResetProfile
	}
	phase := func(name string, labels map[string]string, run func() ([]float64, error)) error {
		times, err := run()
		if err != nil {
			return err
		}
		if prof != nil {
			var sum float64
			for _, t := range times {
				sum += t
			}
			po := PhaseOps{Phase: name, Labels: labels, StepsMs: sum * 1e3}
			for _, o := range prof.Profile() {
				po.Ops = append(po.Ops, OpTime{Name: o.Name, Calls: o.Calls, TotalMs: float64(o.Total) / 1e6})
			}
			rep.Ops = append(rep.Ops, po)
		}
		return ctx.Err()
	}
	for _, b := range cfg.Batches {
		logf("decode: batch %d at context %d, %d steps", b, cfg.Context, cfg.Steps)
		var times []float64
		err := phase(fmt.Sprintf("decode b=%d", b), map[string]string{"phase": "decode", "batch": strconv.Itoa(b)}, func() ([]float64, error) {
			var err error
			times, err = d.decode(b, cfg.Context, cfg.WarmupSteps, cfg.Steps, extraTokens(b, cfg.Context, budget))
			return times, err
		})
		if err != nil {
			return nil, fmt.Errorf("decode at batch %d: %w", b, err)
		}
		rep.Decode = append(rep.Decode, decodeResult(cost, rep, b, cfg.Context, cfg.WarmupSteps, times))
		r := rep.Decode[len(rep.Decode)-1]
		logf("  %.2f ms/step, %.1f tok/s; floor %.2f ms (%s), %.0f%% of floor speed", r.MeanStepMs, r.TokensPerS, r.FloorMs, r.Bound, 100*r.OfFloor)
	}
	for _, pc := range cfg.Prefill {
		logf("prefill %s", pc)
		var times []float64
		err := phase("prefill "+pc.String(), map[string]string{"phase": "prefill", "case": pc.String()}, func() ([]float64, error) {
			var err error
			times, err = d.prefill(pc, cfg.PrefillReps)
			return times, err
		})
		if err != nil {
			return nil, fmt.Errorf("prefill %s: %w", pc, err)
		}
		rep.Prefill = append(rep.Prefill, prefillResult(cost, rep, pc, times))
		r := rep.Prefill[len(rep.Prefill)-1]
		logf("  %.1f ms, %.1f tok/s; floor %.1f ms (%s), %.0f%% of floor speed", r.MedianMs, r.TokensPerS, r.FloorMs, r.Bound, 100*r.OfFloor)
	}
	return rep, nil
}

// WeightElem reads the dtype of the decoder weights in the checkpoint at dir and returns the
// bytes per element the model holds on a backend: bf16 stays bf16 (2), f32 and f16 are held as
// f32 (4).
func WeightElem(dir string) (int, error) {
	ck, err := loader.OpenCheckpoint(dir)
	if err != nil {
		return 0, err
	}
	defer ck.Close()
	for _, name := range ck.Names() {
		if !strings.HasSuffix(name, "layers.0.mlp.down_proj.weight") {
			continue
		}
		t, err := ck.Tensor(name)
		if err != nil {
			return 0, err
		}
		if t.DType == loader.BF16 {
			return 2, nil
		}
		return 4, nil
	}
	return 0, fmt.Errorf("%s: no layers.0.mlp.down_proj.weight to read the weight dtype from", dir)
}

func params(c Cost) int64 {
	return c.WeightBytes() / int64(c.WeightElem)
}

// newEngine sizes an engine for the largest case: every decode request must fit its context
// plus all its steps, and every prefill case must fit in one step. It returns the engine and its
// step budget in tokens.
func newEngine(cfg Config) (*engine.Engine, int, error) {
	maxSeqs, budget, blocks := 1, 2048, 0
	perSeq := func(tokens int) int { return (tokens+blockSize-1)/blockSize + 1 }
	for _, b := range cfg.Batches {
		maxSeqs = max(maxSeqs, b)
		budget = max(budget, 2*b)
	}
	for _, p := range cfg.Prefill {
		maxSeqs = max(maxSeqs, p.Seqs)
		budget = max(budget, p.Seqs*p.Len)
		blocks = max(blocks, p.Seqs*perSeq(p.Len+2))
	}
	for _, b := range cfg.Batches {
		blocks = max(blocks, b*perSeq(cfg.Context+cfg.WarmupSteps+cfg.Steps+extraTokens(b, cfg.Context, budget)))
	}
	e, err := engine.New(cfg.Model, engine.Config{BlockSize: blockSize, NumBlocks: blocks, MaxNumSeqs: maxSeqs,
		MaxNumBatchedTokens: budget, DisablePrefixCaching: true})
	if err != nil {
		kv := int64(blocks) * int64(cfg.Model.KVBytesPerBlock(blockSize))
		return nil, 0, fmt.Errorf("offline: an engine with a %d-block KV cache (%.2f GB) for the largest case: %w", blocks, float64(kv)/1e9, err)
	}
	return e, budget, nil
}

// extraTokens bounds the tokens a decode request may generate beyond the timed and warm-up
// steps: b prompts of ctxLen tokens take at most this many steps to prefill under a budget of
// budget tokens a step (decodes of the prompts done first share the budget), plus one.
func extraTokens(b, ctxLen, budget int) int {
	per := max(budget-b, 1)
	return (b*ctxLen+per-1)/per + 2
}

// driver steps an engine from the calling goroutine.
type driver struct {
	e        *engine.Engine
	rng      *rand.Rand
	vocab    int
	imagePad int
	// onTimed, when set, is called before the first timed step of a phase.
	onTimed func()
}

func (d *driver) timedStart() {
	if d.onTimed != nil {
		d.onTimed()
	}
}

// prompt draws n random token ids, avoiding the image-pad id (which would need an image).
func (d *driver) prompt(n int) []int {
	p := make([]int, n)
	for i := range p {
		for {
			p[i] = d.rng.IntN(d.vocab)
			if p[i] != d.imagePad {
				break
			}
		}
	}
	return p
}

func (d *driver) submit(n, promptLen, maxTokens int) ([]*engine.Stream, error) {
	streams := make([]*engine.Stream, 0, n)
	for range n {
		st, err := d.e.Submit(&engine.Request{Prompt: d.prompt(promptLen), MaxTokens: maxTokens, IgnoreEOS: true,
			Sampling: sample.Params{Logprobs: -1}})
		if err != nil {
			return nil, err
		}
		streams = append(streams, st)
	}
	return streams, nil
}

// step runs one engine step and returns how many tokens it generated and how long it took.
func (d *driver) step() (int64, time.Duration, error) {
	g0 := d.e.Stats().GenerationTokens
	start := time.Now()
	busy, err := d.e.Step()
	dt := time.Since(start)
	if err != nil {
		return 0, dt, err
	}
	if !busy {
		return 0, dt, errors.New("the engine had nothing to schedule")
	}
	return d.e.Stats().GenerationTokens - g0, dt, nil
}

// finish cancels the streams and steps until the engine is idle.
func (d *driver) finish(streams []*engine.Stream) error {
	for _, st := range streams {
		st.Cancel()
	}
	for range 1000 {
		if _, err := d.e.Step(); err != nil {
			return err
		}
		if s := d.e.Stats(); s.Running == 0 && s.Waiting == 0 {
			for _, st := range streams {
				st.Drop()
			}
			return nil
		}
	}
	return errors.New("the engine did not go idle after cancelling the benchmark's requests")
}

// decode prefills b requests of length ctxLen, runs warm untimed decode steps, then returns the
// times (seconds) of steps timed decode steps, each of which must give every request a token.
// Prefills larger than a step's token budget are chunked over several steps, during which the
// requests prefilled first already decode; their extra tokens (at most extra, see newEngine)
// make their context slightly longer than the others'.
func (d *driver) decode(b, ctxLen, warm, steps, extra int) ([]float64, error) {
	streams, err := d.submit(b, ctxLen, warm+steps+extra)
	if err != nil {
		return nil, err
	}
	started := make([]bool, len(streams))
	poll, cancel := context.WithCancel(context.Background())
	cancel() // Next with a done context only takes what is queued
	for n := 0; n < b; {
		if _, _, err := d.step(); err != nil {
			return nil, err
		}
		for i, st := range streams {
			if started[i] {
				continue
			}
			if _, err := st.Next(poll); err == nil {
				started[i] = true
				n++
			}
		}
	}
	times := make([]float64, 0, steps)
	for i := range warm + steps {
		if i == warm {
			d.timedStart()
		}
		n, dt, err := d.step()
		if err != nil {
			return nil, err
		}
		if n != int64(b) {
			return nil, fmt.Errorf("decode step %d produced %d tokens, want %d (were requests preempted?)", i, n, b)
		}
		if i >= warm {
			times = append(times, dt.Seconds())
		}
		if i%32 == 31 {
			for _, st := range streams {
				st.Drop()
			}
		}
	}
	return times, d.finish(streams)
}

// prefill times reps steps (after one untimed) that each compute pc.Seqs fresh prompts.
func (d *driver) prefill(pc PrefillCase, reps int) ([]float64, error) {
	var times []float64
	for r := range reps + 1 {
		streams, err := d.submit(pc.Seqs, pc.Len, 1)
		if err != nil {
			return nil, err
		}
		if r == 1 {
			d.timedStart()
		}
		n, dt, err := d.step()
		if err != nil {
			return nil, err
		}
		if n != int64(pc.Seqs) {
			return nil, fmt.Errorf("the prefill step finished %d of %d prompts (the step budget is too small?)", n, pc.Seqs)
		}
		if r > 0 {
			times = append(times, dt.Seconds())
		}
		if err := d.finish(streams); err != nil {
			return nil, err
		}
	}
	return times, nil
}

func decodeResult(c Cost, rep *Report, b, ctxLen, warm int, times []float64) DecodeResult {
	steps := len(times)
	// Request tokens during timed step i: ctxLen + warm + i + 1 (the new token included).
	meanCtx := float64(ctxLen+warm) + float64(steps+1)/2
	seqs := make([]Seq, b)
	for i := range seqs {
		seqs[i] = Seq{Query: 1, Ctx: int(meanCtx + 0.5)}
	}
	fl := c.FloorOf(seqs, rep.Bandwidth.Value, rep.Peak.Value)
	mean := bench.Mean(times)
	r := DecodeResult{Batch: b, Context: ctxLen, MeanContext: meanCtx, Steps: steps,
		MeanStepMs: mean * 1e3, MedianStepMs: bench.Median(times) * 1e3, P99StepMs: bench.Percentile(times, 99) * 1e3,
		TokensPerS: float64(b) / mean, BytesPerStep: c.Bytes(seqs), FLOPsPerStep: c.FLOPs(seqs),
		FloorMs: fl.Seconds * 1e3, FloorTokensPerS: float64(b) / fl.Seconds, Bound: fl.Bound, OfFloor: fl.Seconds / mean}
	r.TPOTMs = r.MedianStepMs
	r.AchievedBandwidth = r.BytesPerStep / mean
	return r
}

func prefillResult(c Cost, rep *Report, pc PrefillCase, times []float64) PrefillResult {
	seqs := make([]Seq, pc.Seqs)
	for i := range seqs {
		seqs[i] = Seq{Query: pc.Len, Ctx: pc.Len}
	}
	fl := c.FloorOf(seqs, rep.Bandwidth.Value, rep.Peak.Value)
	med := bench.Median(times)
	tokens := pc.Seqs * pc.Len
	return PrefillResult{Seqs: pc.Seqs, Len: pc.Len, Tokens: tokens, Reps: len(times),
		MeanMs: bench.Mean(times) * 1e3, MedianMs: med * 1e3, MinMs: slices.Min(times) * 1e3,
		TokensPerS: float64(tokens) / med, FLOPs: c.FLOPs(seqs), Bytes: c.Bytes(seqs),
		FloorMs: fl.Seconds * 1e3, FloorTokensPerS: float64(tokens) / fl.Seconds, Bound: fl.Bound, OfFloor: fl.Seconds / med,
		AchievedFLOPS: c.FLOPs(seqs) / med}
}

// Package engine is qvl's serving core: requests in, token streams out. It runs continuous
// batching over a paged KV cache with prefix caching (package kvcache), a vLLM-v1-style
// scheduler that mixes decodes and chunked prefills in every step, and the sampler of package
// sample, over any backend through the one model definition of package model.
//
// The engine is a Go library first: the HTTP server and the benchmarks are its clients.
package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/runtime/kvcache"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// Model is what the engine runs: package model's *Model implements it.
type Model interface {
	// Forward runs one step and returns the logits of the batch's LogitRows.
	Forward(b *model.Batch) ([]float32, error)
	// InitCache allocates the KV cache.
	InitCache(numBlocks, blockSize int) error
	// KVBytesPerBlock is the memory of one cache block.
	KVBytesPerBlock(blockSize int) int
	// Spec describes the model.
	Spec() model.Spec
}

// Config sets the engine's limits.
type Config struct {
	// BlockSize is the number of tokens per KV block (default 16).
	BlockSize int
	// NumBlocks is the number of KV blocks; when 0 it is KVCacheBytes / (bytes per block).
	NumBlocks int
	// KVCacheBytes is the memory budget of the KV cache (default 256 MiB) when NumBlocks is 0.
	KVCacheBytes int64
	// MaxNumSeqs caps the requests in one step (default 256).
	MaxNumSeqs int
	// MaxNumBatchedTokens caps the tokens in one step (default 2048).
	MaxNumBatchedTokens int
	// MaxModelLen caps prompt plus output (default: the model's max positions, and never more than the cache holds).
	MaxModelLen int
	// MaxWaiting caps the queue of requests not yet running; Submit then fails with ErrQueueFull (0: unbounded).
	MaxWaiting int
	// DisablePrefixCaching turns off block sharing between requests.
	DisablePrefixCaching bool
	// NewDetokenizer returns a fresh incremental detokenizer per request (nil: events carry no text and stop strings are refused).
	NewDetokenizer func() Detokenizer
	// EOSTokenIDs end generation (default: the model's).
	EOSTokenIDs []int
}

// Errors returned by Submit.
var (
	// ErrQueueFull means the waiting queue is at MaxWaiting; retry later.
	ErrQueueFull = errors.New("the request queue is full")
	// ErrClosed means the engine is shutting down.
	ErrClosed = errors.New("the engine is closed")
)

// Stats is a snapshot of the engine's state and counters.
type Stats struct {
	Running, Waiting int
	// KVBlocks and KVBlocksUsed count cache blocks; KVUsage is their ratio.
	KVBlocks, KVBlocksUsed int
	KVUsage                float64
	// PrefixQueries and PrefixHits are prompt tokens looked up in, and found in, the prefix cache.
	PrefixQueries, PrefixHits int64
	// PrefixCachedBlocks is the number of blocks registered in the prefix cache.
	PrefixCachedBlocks int
	Preemptions        int64
	// PromptTokens and GenerationTokens are computed prompt tokens and generated tokens.
	PromptTokens, GenerationTokens int64
	Steps                          int64
	// Finished counts ended requests by reason.
	Finished map[FinishReason]int64
	// MaxModelLen is the longest prompt plus output the engine accepts.
	MaxModelLen int
}

// Engine schedules requests onto a model. Submit, Cancel and Stats are safe from any goroutine;
// the steps run on one goroutine (Run) or are driven by the caller (Step).
type Engine struct {
	m           Model
	spec        model.Spec // fixed fields only; the projector's live in proj
	proj        atomic.Pointer[projSpec]
	cfg         Config
	kv          *kvcache.Manager
	sc          scheduler
	maxModelLen int
	eos         map[int32]bool

	mu      sync.Mutex
	pending []*seqState
	cancels []*seqState
	calls   []call
	closed  bool
	wake    chan struct{}
	ids     atomic.Uint64

	statsMu sync.Mutex
	stats   Stats

	batch  model.Batch
	spanOf []rowSpan
	sp     []ml.SampleParams
	now    time.Time
}

// call is a function to run on the step goroutine between steps.
type call struct {
	fn   func() error
	done chan error
}

// rowSpan records where a scheduled request's rows and logits sit in the step's batch.
type rowSpan struct {
	firstLogit, numLogits int
	samples               bool
}

// New makes an engine for m and allocates the KV cache.
func New(m Model, cfg Config) (*Engine, error) {
	if cfg.BlockSize == 0 {
		cfg.BlockSize = 16
	}
	if cfg.KVCacheBytes == 0 {
		cfg.KVCacheBytes = 256 << 20
	}
	if cfg.MaxNumSeqs == 0 {
		cfg.MaxNumSeqs = 256
	}
	if cfg.MaxNumBatchedTokens == 0 {
		cfg.MaxNumBatchedTokens = 2048
	}
	if cfg.BlockSize < 1 || cfg.MaxNumSeqs < 1 || cfg.MaxNumBatchedTokens < 1 || cfg.NumBlocks < 0 || cfg.MaxWaiting < 0 {
		return nil, fmt.Errorf("engine: block size, max-num-seqs and max-num-batched-tokens must be positive: %+v", cfg)
	}
	spec := m.Spec()
	if cfg.NumBlocks == 0 {
		per := int64(m.KVBytesPerBlock(cfg.BlockSize))
		cfg.NumBlocks = int(cfg.KVCacheBytes / per)
		if cfg.NumBlocks < 1 {
			return nil, fmt.Errorf("engine: a KV budget of %d bytes holds no block of %d bytes", cfg.KVCacheBytes, per)
		}
	}
	if err := m.InitCache(cfg.NumBlocks, cfg.BlockSize); err != nil {
		return nil, err
	}
	kv, err := kvcache.NewManager(cfg.NumBlocks, cfg.BlockSize, !cfg.DisablePrefixCaching)
	if err != nil {
		return nil, err
	}
	e := &Engine{m: m, spec: spec, cfg: cfg, kv: kv, wake: make(chan struct{}, 1)}
	e.proj.Store(&projSpec{inputDim: spec.ProjectorInputDim, tokens: spec.ProjectorTokens})
	e.sc = scheduler{kv: kv, maxSeqs: cfg.MaxNumSeqs, maxTokens: cfg.MaxNumBatchedTokens}
	e.maxModelLen = cfg.NumBlocks * cfg.BlockSize
	if spec.MaxPositions > 0 {
		e.maxModelLen = min(e.maxModelLen, spec.MaxPositions)
	}
	if cfg.MaxModelLen > 0 {
		e.maxModelLen = min(e.maxModelLen, cfg.MaxModelLen)
	}
	eos := cfg.EOSTokenIDs
	if eos == nil {
		eos = spec.EOSTokenIDs
	}
	e.eos = map[int32]bool{}
	for _, id := range eos {
		e.eos[int32(id)] = true
	}
	e.stats.Finished = map[FinishReason]int64{}
	e.publishStats()
	return e, nil
}

// MaxModelLen is the longest prompt plus output the engine accepts.
func (e *Engine) MaxModelLen() int { return e.maxModelLen }

// Spec describes the engine's model.
func (e *Engine) Spec() model.Spec {
	s := e.spec
	p := e.proj.Load()
	s.ProjectorInputDim, s.ProjectorTokens = p.inputDim, p.tokens
	return s
}

// Submit validates a request and queues it. Invalid requests fail at once with an error
// wrapping ErrInvalid that names what is wrong.
func (e *Engine) Submit(r *Request) (*Stream, error) {
	spans, err := e.validate(r)
	if err != nil {
		return nil, err
	}
	if len(r.Stop) > 0 && e.cfg.NewDetokenizer == nil {
		return nil, invalid("stop strings need a tokenizer, and this engine has none")
	}
	s := &seqState{r: r, spans: spans, promptLen: len(r.Prompt)}
	s.tokens = make([]int32, len(r.Prompt), len(r.Prompt)+16)
	for i, t := range r.Prompt {
		s.tokens[i] = int32(t)
	}
	ispans := make([]model.ImageSpan, len(spans))
	for i, sp := range spans {
		ispans[i] = model.ImageSpan{Start: sp.start, Grid: sp.grid}
	}
	s.pos, s.delta, err = model.Positions(len(r.Prompt), ispans)
	if err != nil {
		return nil, invalid("%v", err)
	}
	s.maxTokens = e.maxModelLen - len(r.Prompt)
	if r.MaxTokens > 0 {
		s.maxTokens = r.MaxTokens
	}
	s.sampler = sample.NewState(r.Sampling, s.tokens)
	if e.cfg.NewDetokenizer != nil {
		s.text = textState{dec: e.cfg.NewDetokenizer(), stops: r.Stop}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	if e.cfg.MaxWaiting > 0 && len(e.pending)+e.waitingCount() >= e.cfg.MaxWaiting {
		return nil, ErrQueueFull
	}
	n := e.ids.Add(1)
	s.arrival = n
	s.submitted = time.Now()
	s.id = r.ID
	if s.id == "" {
		s.id = "req-" + strconv.FormatUint(n, 10)
	}
	s.stream = newStream(e, s)
	e.pending = append(e.pending, s)
	e.signal()
	return s.stream, nil
}

func (e *Engine) waitingCount() int {
	e.statsMu.Lock()
	defer e.statsMu.Unlock()
	return e.stats.Waiting
}

// Generate submits a request and waits for its whole output; the engine must be running (Run)
// or be stepped by another goroutine.
func (e *Engine) Generate(ctx context.Context, r *Request) (*Result, error) {
	st, err := e.Submit(r)
	if err != nil {
		return nil, err
	}
	res, err := st.Collect(ctx)
	if ctx.Err() != nil {
		st.Cancel()
	}
	return res, err
}

func (e *Engine) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *Engine) cancel(s *seqState) {
	e.mu.Lock()
	e.cancels = append(e.cancels, s)
	e.mu.Unlock()
	e.signal()
}

// Do runs fn on the step goroutine between two steps, where it may use the model and its
// backend, and returns fn's error. The engine must be running (Run) or be stepped.
func (e *Engine) Do(ctx context.Context, fn func() error) error {
	c := call{fn: fn, done: make(chan error, 1)}
	e.mu.Lock()
	e.calls = append(e.calls, c)
	e.mu.Unlock()
	e.signal()
	select {
	case err := <-c.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Projector is implemented by models that can run their projector outside a step.
type Projector interface {
	// Project maps n proprietary embeddings [n·D] to their n·K tokens [n·K, H].
	Project(emb []float32) ([]float32, error)
}

// Project runs the model's projector on proprietary embeddings between steps (e.g. to cache
// the tokens of a catalog item). It returns [n·K, H] for n = len(emb)/D.
func (e *Engine) Project(ctx context.Context, emb []float32) ([]float32, error) {
	p, ok := e.m.(Projector)
	if !ok {
		return nil, fmt.Errorf("this model cannot project embeddings")
	}
	var out []float32
	err := e.Do(ctx, func() error {
		var err error
		out, err = p.Project(emb)
		return err
	})
	return out, err
}

// projSpec is the loaded projector's shape, swapped atomically with the projector.
type projSpec struct{ inputDim, tokens int }

// ProjectorSwapper is implemented by models whose projector can be replaced while serving.
type ProjectorSwapper interface {
	// SwapProjector replaces the projector (nil removes it) and returns the model's new Spec.
	SwapProjector(p *loader.Projector) (model.Spec, error)
}

// SwapProjector replaces the model's projector between steps. Requests whose custom
// embeddings (Image.Custom) are projected in a later step use the new projector; tokens already
// computed, and images given as embeddings, are unaffected.
func (e *Engine) SwapProjector(ctx context.Context, p *loader.Projector) error {
	sw, ok := e.m.(ProjectorSwapper)
	if !ok {
		return fmt.Errorf("this model cannot swap its projector")
	}
	return e.Do(ctx, func() error {
		spec, err := sw.SwapProjector(p)
		if err != nil {
			return err
		}
		e.proj.Store(&projSpec{inputDim: spec.ProjectorInputDim, tokens: spec.ProjectorTokens})
		return nil
	})
}

// Close stops accepting requests; Run returns once the queued and running ones have finished.
func (e *Engine) Close() {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.signal()
}

// Stats returns a snapshot of the engine's state.
func (e *Engine) Stats() Stats {
	e.statsMu.Lock()
	defer e.statsMu.Unlock()
	s := e.stats
	s.Finished = make(map[FinishReason]int64, len(e.stats.Finished))
	for k, v := range e.stats.Finished {
		s.Finished[k] = v
	}
	return s
}

func (e *Engine) publishStats() {
	e.statsMu.Lock()
	defer e.statsMu.Unlock()
	p := e.kv.Pool()
	e.stats.Running, e.stats.Waiting = len(e.sc.running), len(e.sc.waiting)
	e.stats.KVBlocks = p.NumBlocks()
	e.stats.KVBlocksUsed = p.NumBlocks() - p.NumFree()
	e.stats.KVUsage = p.Usage()
	e.stats.PrefixQueries, e.stats.PrefixHits = e.kv.PrefixStats()
	e.stats.PrefixCachedBlocks = p.NumCached()
	e.stats.Preemptions = e.sc.preemptions
	e.stats.MaxModelLen = e.maxModelLen
}

// Run steps the engine until ctx is done, or until Close was called and no request is left.
// Requests still queued when ctx ends are cancelled.
func (e *Engine) Run(ctx context.Context) error {
	for {
		busy, err := e.Step()
		if err != nil {
			return err
		}
		if busy {
			if ctx.Err() != nil {
				e.cancelAll()
				return ctx.Err()
			}
			continue
		}
		e.mu.Lock()
		closed := e.closed && len(e.pending) == 0
		e.mu.Unlock()
		if closed && len(e.sc.running) == 0 && len(e.sc.waiting) == 0 {
			return nil
		}
		select {
		case <-e.wake:
		case <-ctx.Done():
			e.cancelAll()
			return ctx.Err()
		}
	}
}

func (e *Engine) cancelAll() {
	e.mu.Lock()
	pending := e.pending
	e.pending = nil
	e.closed = true
	e.mu.Unlock()
	for _, s := range pending {
		e.finish(s, FinishCancelled, nil)
	}
	for _, q := range [][]*seqState{append([]*seqState(nil), e.sc.running...), append([]*seqState(nil), e.sc.waiting...)} {
		for _, s := range q {
			_ = e.sc.drop(s)
			e.finish(s, FinishCancelled, nil)
		}
	}
	e.publishStats()
}

// Step runs one scheduling step: it takes in new requests and cancellations, schedules, runs
// the model once and emits the resulting tokens. It reports whether there was work. Only one
// goroutine may call Step (Run does).
func (e *Engine) Step() (busy bool, err error) {
	e.intake()
	e.now = time.Now()
	e.sc.now = e.now
	work := e.sc.schedule()
	if len(work) == 0 {
		// Nothing can run until a request arrives or is cancelled.
		e.publishStats()
		return false, nil
	}
	logits, ids, ferr := e.forward(work)
	if ferr != nil {
		// A failed step fails the requests in it; the engine keeps serving the others.
		for _, w := range work {
			_ = e.sc.drop(w.s)
			e.finish(w.s, FinishError, fmt.Errorf("model step failed: %w", ferr))
		}
		e.publishStats()
		return true, nil
	}
	e.update(work, logits, ids)
	e.statsMu.Lock()
	e.stats.Steps++
	e.statsMu.Unlock()
	e.publishStats()
	return true, nil
}

// DeviceSampling is implemented by models whose backend samples on the device (see
// ml.DeviceSampler); the engine uses it for steps whose every sampled request needs nothing else.
type DeviceSampling interface {
	CanSampleOnDevice() bool
	ForwardSample(b *model.Batch, p []ml.SampleParams) ([]int32, error)
}

// forward builds the batch and runs the model, sampling on the device when every sampled
// request of the step allows it; a panic becomes an error.
func (e *Engine) forward(work []scheduled) (logits []float32, ids []int32, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in model step: %v\n%s", p, debug.Stack())
		}
	}()
	e.build(work)
	if ds, ok := e.m.(DeviceSampling); ok && ds.CanSampleOnDevice() && e.deviceEligible(work) {
		e.sp = e.sp[:0]
		for k, w := range work {
			if e.spanOf[k].samples {
				p := w.s.r.Sampling
				e.sp = append(e.sp, ml.SampleParams{Temperature: p.Temperature, TopK: p.TopK, TopP: p.TopP, MinP: p.MinP,
					Uniform: w.s.sampler.Uniform()})
			}
		}
		ids, err = ds.ForwardSample(&e.batch, e.sp)
		return nil, ids, err
	}
	logits, err = e.m.Forward(&e.batch)
	return logits, nil, err
}

// deviceEligible reports whether every request sampled in this step needs only its logits and
// a uniform draw: no penalties, logprobs, returned logits, forced tokens or MinTokens mask, and
// no prompt logits anywhere in the step.
func (e *Engine) deviceEligible(work []scheduled) bool {
	for k, w := range work {
		s := w.s
		if s.r.PromptLogits {
			return false
		}
		if !e.spanOf[k].samples {
			continue
		}
		if !s.sampler.Simple() || s.r.ReturnLogits || len(s.tokens)-s.promptLen < len(s.r.Forced) || !s.checkStops() {
			return false
		}
	}
	return true
}

// intake moves submitted requests into the scheduler and applies cancellations.
func (e *Engine) intake() {
	e.mu.Lock()
	pending, cancels, calls := e.pending, e.cancels, e.calls
	e.pending, e.cancels, e.calls = nil, nil, nil
	e.mu.Unlock()
	for _, c := range calls {
		c.done <- c.fn()
	}
	for _, s := range pending {
		e.sc.add(s)
	}
	for _, s := range cancels {
		if s.done {
			continue
		}
		_ = e.sc.drop(s)
		e.finish(s, FinishCancelled, nil)
	}
}

// build lays the scheduled tokens out as a model batch.
func (e *Engine) build(work []scheduled) {
	b := &e.batch
	b.Tokens, b.Pos, b.Slots, b.Seqs = b.Tokens[:0], b.Pos[:0], b.Slots[:0], b.Seqs[:0]
	b.Visual, b.VisualIdx, b.DeepStackIdx = b.Visual[:0], b.VisualIdx[:0], b.DeepStackIdx[:0]
	b.Custom, b.CustomIdx, b.CustomSrc, b.LogitRows = b.Custom[:0], b.CustomIdx[:0], b.CustomSrc[:0], b.LogitRows[:0]
	if cap(b.DeepStack) < e.spec.DeepStackLevels {
		b.DeepStack = make([][]float32, e.spec.DeepStackLevels)
	}
	b.DeepStack = b.DeepStack[:e.spec.DeepStackLevels]
	for l := range b.DeepStack {
		b.DeepStack[l] = b.DeepStack[l][:0]
	}
	e.spanOf = e.spanOf[:0]
	bs := int32(e.kv.BlockSize())
	h := e.spec.HiddenSize
	var pos [3]int32
	for _, w := range work {
		s, c := w.s, w.s.computed
		row0 := int32(len(b.Tokens))
		for i := c; i < c+w.n; i++ {
			b.Tokens = append(b.Tokens, s.tokens[i])
			s.position(i, pos[:])
			b.Pos = append(b.Pos, pos[0], pos[1], pos[2])
			b.Slots = append(b.Slots, s.kv.Blocks[int32(i)/bs]*bs+int32(i)%bs)
		}
		b.Seqs = append(b.Seqs, model.Seq{QueryLen: w.n, CtxLen: c + w.n, Blocks: s.kv.Blocks})
		for k := s.firstSpan(c); k < len(s.spans) && s.spans[k].start < c+w.n; k++ {
			sp := s.spans[k]
			lo, hi := max(c, sp.start), min(c+w.n, sp.start+sp.n)
			if sp.custom {
				src := int32(len(b.Custom) / len(sp.img.Custom) * sp.n)
				b.Custom = append(b.Custom, sp.img.Custom...)
				for i := lo; i < hi; i++ {
					b.CustomIdx = append(b.CustomIdx, row0+int32(i-c))
					b.CustomSrc = append(b.CustomSrc, src+int32(i-sp.start))
				}
				continue
			}
			for i := lo; i < hi; i++ {
				r := i - sp.start
				b.VisualIdx = append(b.VisualIdx, row0+int32(i-c))
				b.Visual = append(b.Visual, sp.img.Embeds[r*h:(r+1)*h]...)
				if sp.img.DeepStack != nil {
					b.DeepStackIdx = append(b.DeepStackIdx, row0+int32(i-c))
					for l, d := range sp.img.DeepStack {
						b.DeepStack[l] = append(b.DeepStack[l], d[r*h:(r+1)*h]...)
					}
				}
			}
		}
		span := rowSpan{firstLogit: len(b.LogitRows)}
		if s.r.PromptLogits && c < s.promptLen {
			for i := c; i < min(c+w.n, s.promptLen); i++ {
				b.LogitRows = append(b.LogitRows, row0+int32(i-c))
			}
		}
		if c+w.n == len(s.tokens) {
			span.samples = true
			if last := row0 + int32(w.n-1); len(b.LogitRows) == span.firstLogit || b.LogitRows[len(b.LogitRows)-1] != last {
				b.LogitRows = append(b.LogitRows, last)
			}
		}
		span.numLogits = len(b.LogitRows) - span.firstLogit
		e.spanOf = append(e.spanOf, span)
	}
	if len(b.DeepStackIdx) == 0 {
		b.DeepStack = b.DeepStack[:0]
	}
}

// update advances the scheduled requests after a step: records computed tokens, registers full
// blocks in the prefix cache, and gives each request whose tokens are all computed its next
// token — chosen from its logits row, or already sampled on the device (ids, one per sampling
// request in work order).
func (e *Engine) update(work []scheduled, logits []float32, ids []int32) {
	v := e.spec.VocabSize
	var promptTokens, genTokens int64
	next := 0
	for k, w := range work {
		s, span := w.s, e.spanOf[k]
		if s.computed < s.promptLen {
			promptTokens += int64(min(s.computed+w.n, s.promptLen) - s.computed)
		}
		s.computed += w.n
		e.kv.Commit(&s.kv, s, s.computed)
		var rows []float32
		if logits != nil {
			rows = logits[span.firstLogit*v : (span.firstLogit+span.numLogits)*v]
		}
		if s.r.PromptLogits && len(s.promptLogits) < s.promptLen*v {
			np := min(span.numLogits, s.promptLen-len(s.promptLogits)/v)
			s.promptLogits = append(s.promptLogits, rows[:np*v]...)
		}
		if !span.samples {
			continue
		}
		genTokens++
		if ids != nil {
			s.sampler.Observe(ids[next])
			e.emit(s, nil, sample.Result{ID: ids[next]})
			next++
			continue
		}
		e.emit(s, rows[(span.numLogits-1)*v:], e.choose(s, rows[(span.numLogits-1)*v:]))
	}
	e.statsMu.Lock()
	e.stats.PromptTokens += promptTokens
	e.stats.GenerationTokens += genTokens
	e.statsMu.Unlock()
}

// checkStops reports whether a request's stop conditions apply to its next token (MinTokens).
func (s *seqState) checkStops() bool { return len(s.tokens)-s.promptLen+1 > s.r.MinTokens }

// choose picks a request's next token from its logits row on the host: forced, or sampled
// with penalties, logprobs and the MinTokens mask.
func (e *Engine) choose(s *seqState, row []float32) sample.Result {
	generated := len(s.tokens) - s.promptLen
	if generated < len(s.r.Forced) {
		res := sample.Result{ID: int32(s.r.Forced[generated])}
		s.sampler.Logprobs(row, &res)
		s.sampler.Observe(res.ID)
		return res
	}
	if !s.checkStops() {
		e.maskStops(s, row)
	}
	return s.sampler.Sample(row)
}

// emit streams a request's next token and ends the request when a stop condition holds. row is
// the logits row it was chosen from (nil when sampled on the device).
func (e *Engine) emit(s *seqState, row []float32, res sample.Result) {
	ev := Event{Time: e.now}
	if s.r.ReturnLogits {
		ev.Logits = append([]float32(nil), row...)
	}
	checkStops := s.checkStops()
	if s.r.Sampling.Logprobs >= 0 {
		ev.Logprob = &res
	}
	generated := len(s.tokens) - s.promptLen
	if generated == 0 {
		ev.QueueTime = s.scheduled.Sub(s.submitted)
		if s.r.PromptLogits {
			ev.PromptLogits = s.promptLogits
			s.promptLogits = nil
		}
	}
	ev.Token = int(res.ID)
	s.tokens = append(s.tokens, res.ID)
	generated++
	isStop := checkStops && ((!s.r.IgnoreEOS && e.eos[res.ID]) || containsID(s.r.StopTokenIDs, res.ID))
	var stopText bool
	if !isStop {
		ev.Text, stopText = s.text.push(int(res.ID), checkStops)
	}
	switch {
	case isStop || stopText:
		ev.Finish = FinishStop
	case generated >= s.maxTokens:
		ev.Finish = FinishLength
	}
	if ev.Finish == "" {
		s.stream.push(ev)
		return
	}
	if !stopText {
		ev.Text += s.text.finish()
	}
	_ = e.sc.drop(s)
	e.finishWith(s, ev)
}

// maskStops keeps a request from ending before its MinTokens.
func (e *Engine) maskStops(s *seqState, row []float32) {
	neg := float32(-1e30)
	if !s.r.IgnoreEOS {
		for id := range e.eos {
			if int(id) < len(row) {
				row[id] = neg
			}
		}
	}
	for _, id := range s.r.StopTokenIDs {
		row[id] = neg
	}
}

func containsID(ids []int, id int32) bool {
	for _, x := range ids {
		if int32(x) == id {
			return true
		}
	}
	return false
}

// finish ends a request with a final event that carries no token.
func (e *Engine) finish(s *seqState, reason FinishReason, err error) {
	e.finishWith(s, Event{Token: -1, Finish: reason, Err: err, Time: time.Now()})
}

func (e *Engine) finishWith(s *seqState, ev Event) {
	if s.done {
		return
	}
	s.done = true
	ev.Usage = &Usage{PromptTokens: s.promptLen, CompletionTokens: len(s.tokens) - s.promptLen, CachedTokens: s.cached}
	e.statsMu.Lock()
	e.stats.Finished[ev.Finish]++
	e.statsMu.Unlock()
	s.stream.push(ev)
}

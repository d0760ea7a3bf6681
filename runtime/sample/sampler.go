package sample

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// MaxLogprobs is the largest number of alternative log-probabilities a request may ask for.
const MaxLogprobs = 20

// Params are one request's sampling parameters. The zero value is greedy decoding.
type Params struct {
	// Temperature divides the logits; 0 selects greedy decoding (argmax).
	Temperature float32
	// TopK keeps the k most likely tokens; 0 (or -1) keeps all.
	TopK int
	// TopP keeps the smallest set of most likely tokens whose probability reaches TopP; 0 or 1 keeps all.
	TopP float32
	// MinP drops tokens whose probability is below MinP times the most likely token's; 0 keeps all.
	MinP float32
	// RepetitionPenalty divides positive (multiplies negative) logits of tokens seen in the prompt
	// or the output (transformers' rule); 0 or 1 is off.
	RepetitionPenalty float32
	// PresencePenalty and FrequencyPenalty subtract p·[count>0] and f·count from the logits of
	// tokens in the output so far (OpenAI's rule).
	PresencePenalty, FrequencyPenalty float32
	// Logprobs asks for the log-probability of the chosen token (≥ 0) and of the Logprobs most
	// likely alternatives; -1 asks for none.
	Logprobs int
	// Seed makes the draws of this request reproducible, whatever else shares its batch.
	Seed *uint64
}

// Validate checks the ranges of the parameters and names the first one out of range.
func (p Params) Validate() error {
	switch {
	case p.Temperature < 0 || isBad(p.Temperature):
		return fmt.Errorf("temperature must be a number ≥ 0, got %v", p.Temperature)
	case p.TopK < -1:
		return fmt.Errorf("top_k must be -1, 0 or positive, got %d", p.TopK)
	case p.TopP < 0 || p.TopP > 1 || isBad(p.TopP):
		return fmt.Errorf("top_p must be in [0, 1], got %v", p.TopP)
	case p.MinP < 0 || p.MinP > 1 || isBad(p.MinP):
		return fmt.Errorf("min_p must be in [0, 1], got %v", p.MinP)
	case p.RepetitionPenalty < 0 || isBad(p.RepetitionPenalty):
		return fmt.Errorf("repetition_penalty must be > 0, got %v", p.RepetitionPenalty)
	case p.PresencePenalty < -2 || p.PresencePenalty > 2 || isBad(p.PresencePenalty):
		return fmt.Errorf("presence_penalty must be in [-2, 2], got %v", p.PresencePenalty)
	case p.FrequencyPenalty < -2 || p.FrequencyPenalty > 2 || isBad(p.FrequencyPenalty):
		return fmt.Errorf("frequency_penalty must be in [-2, 2], got %v", p.FrequencyPenalty)
	case p.Logprobs < -1 || p.Logprobs > MaxLogprobs:
		return fmt.Errorf("logprobs must be in [0, %d], got %d", MaxLogprobs, p.Logprobs)
	}
	return nil
}

func isBad(f float32) bool { return math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) }

// Greedy reports whether the parameters select argmax decoding.
func (p Params) Greedy() bool { return p.Temperature == 0 || p.TopK == 1 }

// Logprob is a token with its log-probability.
type Logprob struct {
	ID      int32
	Logprob float32
}

// Result is one sampled token.
type Result struct {
	// ID is the chosen token.
	ID int32
	// Logprob is its log-probability under the model (raw logits, before penalties and
	// temperature, as vLLM reports them); set when Params.Logprobs ≥ 0.
	Logprob float32
	// Top are the most likely tokens, best first (Params.Logprobs of them).
	Top []Logprob
}

// State is a request's sampling state: its random stream and the token counts the penalties use.
type State struct {
	p      Params
	rng    *rand.Rand
	prompt map[int32]struct{}
	counts map[int32]int32
	cand   []Candidate
	d      Drawer
}

// NewState prepares sampling for one request with the given prompt. Without a seed, the stream
// is seeded from the runtime's random source.
func NewState(p Params, prompt []int32) *State {
	seed := rand.Uint64()
	if p.Seed != nil {
		seed = *p.Seed
	}
	s := &State{p: p, rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)), counts: map[int32]int32{}}
	if p.RepetitionPenalty != 0 && p.RepetitionPenalty != 1 {
		s.prompt = make(map[int32]struct{}, len(prompt))
		for _, t := range prompt {
			s.prompt[t] = struct{}{}
		}
	}
	return s
}

// Params returns the request's parameters.
func (s *State) Params() Params { return s.p }

// Uniform takes the request's next random draw, for a sampler that runs elsewhere (on a device)
// with the same rule as Draw; greedy requests take none, as Sample does.
func (s *State) Uniform() float64 {
	if s.p.Greedy() {
		return 0
	}
	return s.rng.Float64()
}

// Simple reports whether sampling this request needs nothing but the logits and a uniform draw:
// no penalties and no log-probabilities (so a device sampler can serve it).
func (s *State) Simple() bool {
	p := s.p
	return p.Logprobs < 0 && (p.RepetitionPenalty == 0 || p.RepetitionPenalty == 1) &&
		p.PresencePenalty == 0 && p.FrequencyPenalty == 0
}

// Observe records an output token (sampled or forced) for the penalties.
func (s *State) Observe(id int32) { s.counts[id]++ }

// Logprobs fills r's log-probabilities from the raw logits row.
func (s *State) Logprobs(row []float32, r *Result) {
	if s.p.Logprobs < 0 {
		return
	}
	var lse float64
	lse, r.Top = s.rawLogprobs(row)
	r.Logprob = float32(float64(row[r.ID]) - lse)
}

// rawLogprobs returns log Σ exp(row) and the Params.Logprobs most likely tokens' log-probabilities.
func (s *State) rawLogprobs(row []float32) (float64, []Logprob) {
	lse := logSumExp(row)
	if s.p.Logprobs <= 0 {
		return lse, nil
	}
	s.cand = TopKRow(s.cand, row, s.p.Logprobs)
	top := make([]Logprob, len(s.cand))
	for i, c := range s.cand {
		top[i] = Logprob{c.ID, float32(float64(c.Value) - lse)}
	}
	return lse, top
}

// Sample chooses the next token from a logits row and records it for the penalties. The row
// is modified (penalties are applied in place).
func (s *State) Sample(row []float32) Result {
	var lse float64
	var top []Logprob
	if s.p.Logprobs >= 0 {
		// Log-probabilities describe the raw logits, so take them before any processing.
		lse, top = s.rawLogprobs(row)
	}
	raw := s.penalize(row)
	var u float64
	if !s.p.Greedy() {
		u = s.rng.Float64()
	}
	id := s.d.Draw(row, s.p.Temperature, s.p.TopK, s.p.TopP, s.p.MinP, u)
	r := Result{ID: id, Top: top}
	if s.p.Logprobs >= 0 {
		v, ok := raw[id]
		if !ok {
			v = row[id]
		}
		r.Logprob = float32(float64(v) - lse)
	}
	s.Observe(id)
	return r
}

// penalize applies the repetition, presence and frequency penalties in place and returns the
// original values of the logits it changed.
func (s *State) penalize(row []float32) map[int32]float32 {
	rep := s.p.RepetitionPenalty
	hasRep := rep != 0 && rep != 1
	if !hasRep && s.p.PresencePenalty == 0 && s.p.FrequencyPenalty == 0 {
		return nil
	}
	raw := map[int32]float32{}
	if hasRep {
		apply := func(t int32) {
			if _, done := raw[t]; done || int(t) >= len(row) || t < 0 {
				return
			}
			raw[t] = row[t]
			if row[t] > 0 {
				row[t] /= rep
			} else {
				row[t] *= rep
			}
		}
		for t := range s.prompt {
			apply(t)
		}
		for t := range s.counts {
			apply(t)
		}
	}
	for t, c := range s.counts {
		if int(t) >= len(row) || t < 0 {
			continue
		}
		if _, ok := raw[t]; !ok {
			raw[t] = row[t]
		}
		row[t] -= s.p.PresencePenalty + s.p.FrequencyPenalty*float32(c)
	}
	return raw
}

// argmax returns the index of the largest entry, the lowest index on ties; NaN never wins.
func argmax(row []float32) int32 {
	best, bv := int32(0), float32(math.Inf(-1))
	for i, v := range row {
		if v > bv {
			best, bv = int32(i), v
		}
	}
	return best
}

// Drawer chooses tokens from logits rows; it holds scratch space, so reuse one per goroutine.
type Drawer struct {
	cand  []Candidate
	probs []float64
}

// Draw chooses a token from a logits row with the uniform draw u ∈ [0, 1): greedy (argmax,
// lowest id on ties) when temperature is 0 or topK is 1; otherwise from softmax(row/temperature)
// after top-k, then top-p, then min-p (transformers' order), by inverse CDF over the kept tokens
// best first — or over all tokens in id order when no filter is set. The row is not modified.
func (d *Drawer) Draw(row []float32, temperature float32, topK int, topP, minP float32, u float64) int32 {
	switch {
	case temperature == 0 || topK == 1:
		return argmax(row)
	case topK > 0 || (topP > 0 && topP < 1) || minP > 0:
		return d.sampleFiltered(row, temperature, topK, topP, minP, u)
	}
	return d.sampleAll(row, temperature, u)
}

// sampleAll draws from softmax(row/T) over the whole vocabulary, walking tokens in id order.
func (d *Drawer) sampleAll(row []float32, temperature float32, u float64) int32 {
	invT := 1 / float64(temperature)
	m := float64(row[argmax(row)])
	w := d.probs[:0]
	var total float64
	for _, v := range row {
		p := 0.0
		if v == v {
			p = math.Exp((float64(v) - m) * invT)
		}
		w = append(w, p)
		total += p
	}
	d.probs = w
	u *= total
	var acc float64
	last := int32(0)
	for i, p := range w {
		if p == 0 {
			continue
		}
		acc += p
		last = int32(i)
		if acc > u {
			return last
		}
	}
	return last
}

// sampleFiltered applies top-k, then top-p, then min-p (transformers' order) to softmax(row/T)
// and draws from what is left, walking the kept tokens best first. Each filter keeps a prefix of
// the tokens sorted best first, so the kept set is the shortest of the three prefixes.
func (d *Drawer) sampleFiltered(row []float32, temperature float32, topK int, topP32, minP float32, u float64) int32 {
	invT := 1 / float64(temperature)
	k := len(row)
	if topK > 0 {
		k = min(topK, len(row))
	}
	m := float64(row[argmax(row)])
	weight := func(v float32) float64 { return math.Exp((float64(v) - m) * invT) }
	topP := float64(topP32)
	if topP <= 0 || topP >= 1 {
		topP = 1
	}
	// The normaliser of the top-k distribution, which top-p measures mass against.
	var z float64
	if k == len(row) {
		for _, v := range row {
			if v == v {
				z += weight(v)
			}
		}
	} else {
		d.cand = TopKRow(d.cand, row, k)
		for _, c := range d.cand {
			z += weight(c.Value)
		}
	}
	var cand []Candidate
	switch {
	case minP > 0:
		// Min-p's prefix: every token within a factor min_p of the best, found in one pass.
		thr := float64(minP)
		if k < len(row) {
			cand = d.cand
			for len(cand) > 1 && weight(cand[len(cand)-1].Value) < thr {
				cand = cand[:len(cand)-1]
			}
		} else {
			cand = d.cand[:0]
			for i, v := range row {
				if v == v && weight(v) >= thr {
					cand = append(cand, Candidate{int32(i), v})
				}
			}
			slices.SortFunc(cand, compare)
		}
	case topP < 1 && k == len(row):
		// Grow a best-first candidate set until it holds the top-p nucleus.
		for want := 64; ; want *= 4 {
			d.cand = TopKRow(d.cand, row, min(want, k))
			var acc float64
			for _, c := range d.cand {
				acc += weight(c.Value)
			}
			if acc >= topP*z || want >= k {
				break
			}
		}
		cand = d.cand
	default:
		if k == len(row) {
			d.cand = TopKRow(d.cand, row, k)
		}
		cand = d.cand
	}
	if len(cand) == 0 {
		// Every logit is NaN: nothing can be drawn; token 0, as argmax and the kernels give.
		return argmax(row)
	}
	// Top-p: the shortest prefix whose mass reaches topP of the top-k distribution.
	keep, acc := len(cand), 0.0
	probs := d.probs[:0]
	for i, c := range cand {
		p := weight(c.Value)
		probs = append(probs, p)
		acc += p
		if acc >= topP*z {
			keep = i + 1
			break
		}
	}
	d.probs = probs
	probs = probs[:keep]
	var total float64
	for _, p := range probs {
		total += p
	}
	u *= total
	acc = 0
	for i, p := range probs {
		acc += p
		if acc > u {
			return cand[i].ID
		}
	}
	return cand[keep-1].ID
}

// logSumExp is log(Σ exp(x)) in float64, ignoring NaN.
func logSumExp(row []float32) float64 {
	m := math.Inf(-1)
	for _, v := range row {
		if float64(v) > m {
			m = float64(v)
		}
	}
	if math.IsInf(m, -1) {
		return m
	}
	var s float64
	for _, v := range row {
		if v == v {
			s += math.Exp(float64(v) - m)
		}
	}
	return m + math.Log(s)
}

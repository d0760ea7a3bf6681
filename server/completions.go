package server

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// parsedCompletion is a text completion request checked against the model.
type parsedCompletion struct {
	p       genParams
	prompts []promptInput
	echo    bool
}

// parseCompletion checks a text completion body and resolves its generation settings. Every
// error is a 4xx that names the field.
func parseCompletion(body []byte, served string, spec model.Spec, d SamplingDefaults) (*parsedCompletion, *APIError) {
	var req completionRequest
	if err := decodeBody(body, &req); err != nil {
		return nil, err
	}
	if req.Model != nil && *req.Model != "" && *req.Model != served {
		return nil, notFound("model", "model_not_found", "the model %q does not exist; this server serves %q", *req.Model, served)
	}
	if req.Suffix != nil && *req.Suffix != "" {
		return nil, badRequest("suffix", "suffix is not supported by this server")
	}
	lp := -1
	if req.Logprobs != nil {
		if *req.Logprobs < 0 || *req.Logprobs > sample.MaxLogprobs {
			return nil, badRequest("logprobs", "logprobs must be in [0, %d], got %d", sample.MaxLogprobs, *req.Logprobs)
		}
		lp = *req.Logprobs
	}
	pc := &parsedCompletion{echo: req.Echo != nil && *req.Echo}
	if pc.echo && lp >= 0 {
		return nil, badRequest("echo", "echo together with logprobs (prompt log-probabilities) is not supported by this server")
	}
	var err *APIError
	if pc.p, err = req.resolve(d, spec.VocabSize, lp, req.MaxTokens, "max_tokens", defaultCompletionMaxTokens); err != nil {
		return nil, err
	}
	if req.BestOf != nil && *req.BestOf != pc.p.n {
		return nil, badRequest("best_of", "best_of is not supported by this server (it may only equal n)")
	}
	if pc.prompts, err = parsePrompts(req.Prompt, spec.VocabSize); err != nil {
		return nil, err
	}
	if len(pc.prompts)*pc.p.n > maxChoices {
		return nil, badRequest("prompt", "%d prompts × n = %d choices; at most %d per request", len(pc.prompts), len(pc.prompts)*pc.p.n, maxChoices)
	}
	return pc, nil
}

// handleCompletions is POST /v1/completions.
func (s *Server) handleCompletions(w http.ResponseWriter, r *http.Request, m *Model, body []byte) *APIError {
	arrival := time.Now()
	spec := m.Engine.Spec()
	pc, err := parseCompletion(body, s.cfg.ServedModelName, spec, m.Defaults)
	if err != nil {
		return err
	}
	p, prompts, echo := pc.p, pc.prompts, pc.echo
	maxLen := m.Engine.MaxModelLen()
	ids := make([][]int, len(prompts))
	echoText := make([]string, len(prompts))
	for i, pr := range prompts {
		if pr.ids != nil {
			ids[i] = pr.ids
			if echo {
				echoText[i] = m.Tokenizer.Decode(pr.ids, false)
			}
		} else {
			ids[i] = m.Tokenizer.Encode(pr.text)
			echoText[i] = pr.text
			if len(ids[i]) == 0 {
				return badRequest("prompt", "the prompt is empty")
			}
		}
		q := p
		param := "prompt"
		if len(prompts) > 1 {
			param = "prompt[" + strconv.Itoa(i) + "]"
		}
		if err := fitMaxTokens(&q, len(ids[i]), maxLen, param); err != nil {
			return err
		}
		// A defaulted max_tokens is fitted to the shortest room of all prompts.
		p.maxTokens = q.maxTokens
	}
	ctx, cancel := s.requestContext(r)
	defer cancel()
	id := newID("cmpl-")
	run, err := s.submit(ctx, m, requests(id, ids, nil, p), &resolvedImages{}, arrival)
	if err != nil {
		return err
	}
	defer run.close()
	if !echo {
		echoText = make([]string, len(prompts))
	}
	if p.stream {
		return s.streamCompletions(ctx, w, m, run, id, p, echoText)
	}
	return s.collectCompletions(ctx, w, m, run, id, p, echoText)
}

// textLogprobs accumulates a choice's legacy logprobs object.
type textLogprobs struct {
	lp     completionLogprobs
	offset int // characters of the choice's text so far
}

func newTextLogprobs(offset int) *textLogprobs {
	return &textLogprobs{offset: offset, lp: completionLogprobs{TextOffset: []int{}, TokenLogprobs: []float64{}, Tokens: []string{}, TopLogprobs: []map[string]float64{}}}
}

func (t *textLogprobs) add(m *Model, r *sample.Result) {
	text, _ := tokenInfo(m.Tokenizer, int(r.ID))
	t.lp.TextOffset = append(t.lp.TextOffset, t.offset)
	t.lp.Tokens = append(t.lp.Tokens, text)
	t.lp.TokenLogprobs = append(t.lp.TokenLogprobs, jsonLogprob(r.Logprob))
	top := make(map[string]float64, len(r.Top))
	for _, a := range r.Top {
		at, _ := tokenInfo(m.Tokenizer, int(a.ID))
		if _, dup := top[at]; !dup {
			top[at] = jsonLogprob(a.Logprob)
		}
	}
	t.lp.TopLogprobs = append(t.lp.TopLogprobs, top)
	t.offset += utf8.RuneCountInString(text)
}

func (s *Server) collectCompletions(ctx context.Context, w http.ResponseWriter, m *Model, run *run, id string, p genParams, echo []string) *APIError {
	n := len(run.streams)
	texts := make([]strings.Builder, n)
	lps := make([]*textLogprobs, n)
	for i := range texts {
		texts[i].WriteString(echo[i/p.n])
		if p.sampling.Logprobs >= 0 {
			lps[i] = newTextLogprobs(0)
		}
	}
	finals := make([]engine.Event, n)
	for run.remaining() > 0 {
		ce, err := run.next(ctx)
		if err != nil {
			return s.clientGone()
		}
		if ae := s.finishError(ce.ev); ae != nil {
			return ae
		}
		texts[ce.index].WriteString(ce.ev.Text)
		if lps[ce.index] != nil && keepLogprob(m, ce.ev) {
			lps[ce.index].add(m, ce.ev.Logprob)
		}
		if ce.ev.Finish != "" {
			finals[ce.index] = ce.ev
		}
	}
	resp := textCompletion{ID: id, Object: "text_completion", Created: time.Now().Unix(), Model: s.cfg.ServedModelName,
		SystemFingerprint: systemFingerprint}
	u := totals(finals, p.n)
	resp.Usage = usageJSON(&u)
	for i := range finals {
		reason := string(finals[i].Finish)
		c := textChoice{Index: i, Text: texts[i].String(), FinishReason: &reason}
		if lps[i] != nil {
			c.Logprobs = &lps[i].lp
		}
		resp.Choices = append(resp.Choices, c)
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) streamCompletions(ctx context.Context, w http.ResponseWriter, m *Model, run *run, id string, p genParams, echo []string) *APIError {
	out := newSSE(w)
	created := time.Now().Unix()
	chunk := func(c textChoice) textCompletion {
		t := textCompletion{ID: id, Object: "text_completion", Created: created, Model: s.cfg.ServedModelName,
			SystemFingerprint: systemFingerprint, Choices: []textChoice{c}}
		if p.includeUsage {
			t.Usage = usageJSON(nil)
		}
		return t
	}
	n := len(run.streams)
	lps := make([]*textLogprobs, n)
	for i := range lps {
		if echo[i/p.n] != "" {
			_ = out.send(chunk(textChoice{Index: i, Text: echo[i/p.n]}))
		}
		if p.sampling.Logprobs >= 0 {
			lps[i] = newTextLogprobs(0)
		}
	}
	finals := make([]engine.Event, n)
	for run.remaining() > 0 && out.err == nil {
		ce, done, ret := s.nextStreamed(ctx, run, out)
		if done {
			return ret
		}
		ev := ce.ev
		var lp *completionLogprobs
		if l := lps[ce.index]; l != nil && keepLogprob(m, ev) {
			one := newTextLogprobs(l.offset)
			one.add(m, ev.Logprob)
			l.offset = one.offset
			lp = &one.lp
		}
		if ev.Text != "" || lp != nil {
			_ = out.send(chunk(textChoice{Index: ce.index, Text: ev.Text, Logprobs: lp}))
		}
		if ev.Finish != "" {
			finals[ce.index] = ev
			reason := string(ev.Finish)
			_ = out.send(chunk(textChoice{Index: ce.index, FinishReason: &reason}))
		}
	}
	if out.err != nil {
		return s.clientGone()
	}
	if p.includeUsage {
		u := totals(finals, p.n)
		t := textCompletion{ID: id, Object: "text_completion", Created: created, Model: s.cfg.ServedModelName,
			SystemFingerprint: systemFingerprint, Choices: []textChoice{}, Usage: usageJSON(&u)}
		_ = out.send(t)
	}
	_ = out.send("[DONE]")
	return nil
}

package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/qvl-dev/qvl/loader/chat"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/model"
)

// requests builds one engine request per prompt and choice (prompt-major), sharing the images'
// data; choice j of a seeded request gets the seed seed+j.
func requests(id string, prompts [][]int, images []engine.Image, p genParams) []*engine.Request {
	var out []*engine.Request
	for pi, prompt := range prompts {
		for j := 0; j < p.n; j++ {
			sp := p.sampling
			if p.seed != nil {
				seed := uint64(*p.seed + int64(j))
				sp.Seed = &seed
			}
			out = append(out, &engine.Request{
				ID:     fmt.Sprintf("%s-%d", id, pi*p.n+j),
				Prompt: prompt,
				// The engine records each image's hash in its own copy of the list.
				Images:       append([]engine.Image(nil), images...),
				Sampling:     sp,
				MaxTokens:    p.maxTokens,
				MinTokens:    p.minTokens,
				StopTokenIDs: p.stopIDs,
				IgnoreEOS:    p.ignoreEOS,
				Stop:         p.stop,
			})
		}
	}
	return out
}

// fitMaxTokens checks a prompt against the context and caps a defaulted max_tokens to the room
// left (a max_tokens the client gave is the engine's to check).
func fitMaxTokens(p *genParams, promptLen, maxLen int, param string) *APIError {
	if promptLen >= maxLen {
		return badRequest(param, "the prompt has %d tokens; this model's maximum context length is %d tokens, and at least one token must be generated", promptLen, maxLen).withCode("context_length_exceeded")
	}
	if !p.maxFromRequest && p.maxTokens > maxLen-promptLen {
		p.maxTokens = maxLen - promptLen
	}
	return nil
}

// parsedChat is a chat request checked up to the point where the store and the projector come
// in.
type parsedChat struct {
	req   chatRequest
	p     genParams
	msgs  []chat.Message
	parts []imagePart
}

// parseChat checks a chat completion body against the model (spec, context length maxLen) and
// resolves its generation settings. Every error is a 4xx that names the field.
func parseChat(body []byte, served string, spec model.Spec, d SamplingDefaults, maxLen, defMax int) (*parsedChat, *APIError) {
	pc := &parsedChat{}
	req := &pc.req
	body, blobs := extractBlobs(body)
	if err := decodeBody(body, req); err != nil {
		return nil, err
	}
	if req.Model != nil && *req.Model != "" && *req.Model != served {
		return nil, notFound("model", "model_not_found", "the model %q does not exist; this server serves %q", *req.Model, served)
	}
	if err := req.refuseUnsupported(); err != nil {
		return nil, err
	}
	lp, err := req.chatLogprobs()
	if err != nil {
		return nil, err
	}
	maxTok, maxParam, err := req.maxTokensField()
	if err != nil {
		return nil, err
	}
	if pc.p, err = req.resolve(d, spec.VocabSize, lp, maxTok, maxParam, defMax); err != nil {
		return nil, err
	}
	if !notNull(req.Messages) {
		return nil, badRequest("messages", "messages is required: an array of chat messages")
	}
	msgs, perr := chat.ParseMessages(req.Messages)
	if perr != nil {
		return nil, badRequest("messages", "%s", strings.TrimPrefix(perr.Error(), "chat "))
	}
	if len(msgs) == 0 {
		return nil, badRequest("messages", "messages must not be empty")
	}
	pc.msgs = msgs
	if pc.parts, err = parseImageParts(msgs, imageLimits{spec: spec, maxTokens: maxLen - 1, blobs: blobs}); err != nil {
		return nil, err
	}
	return pc, nil
}

// handleChat is POST /v1/chat/completions.
func (s *Server) handleChat(w http.ResponseWriter, r *http.Request, m *Model, body []byte) *APIError {
	arrival := time.Now()
	spec := m.Engine.Spec()
	maxLen := m.Engine.MaxModelLen()
	pc, err := parseChat(body, s.cfg.ServedModelName, spec, m.Defaults, maxLen, s.cfg.DefaultMaxTokens)
	if err != nil {
		return err
	}
	p := pc.p
	ctx, cancel := s.requestContext(r)
	defer cancel()
	if s.hook != nil {
		s.hook("chat")
	}
	images, err := s.resolveImages(ctx, m, pc.parts)
	if err != nil {
		return err
	}
	handedOff := false
	defer func() {
		// Until submit owns the images, they are this handler's to release (a panic included).
		if !handedOff {
			images.release()
		}
	}()
	agp := pc.req.AddGenerationPrompt == nil || *pc.req.AddGenerationPrompt
	prompt, eerr := m.Template.Encode(m.Tokenizer, pc.msgs, chat.Options{AddGenerationPrompt: agp, Vars: pc.req.ChatTemplateKwargs}, spec.ImageTokenID, images.tokens)
	if eerr != nil {
		return badRequest("messages", "%v", eerr)
	}
	if err := fitMaxTokens(&p, len(prompt), maxLen, "messages"); err != nil {
		return err
	}
	id := newID("chatcmpl-")
	if s.hook != nil {
		s.hook("submit")
	}
	handedOff = true
	run, err := s.submit(ctx, m, requests(id, [][]int{prompt}, images.images, p), images, arrival)
	if err != nil {
		return err
	}
	defer run.close()
	if p.stream {
		return s.streamChat(ctx, w, m, run, id, p)
	}
	return s.collectChat(ctx, w, m, run, id, p)
}

// keepLogprob reports whether a token's log-probabilities belong in the output: not for the
// end-of-sequence token that stopped a choice.
func keepLogprob(m *Model, ev engine.Event) bool {
	return ev.Logprob != nil && !(ev.Finish == engine.FinishStop && ev.Text == "" && m.Tokenizer.IsSpecial(ev.Token))
}

func (s *Server) collectChat(ctx context.Context, w http.ResponseWriter, m *Model, run *run, id string, p genParams) *APIError {
	n := len(run.streams)
	texts := make([]strings.Builder, n)
	lps := make([][]tokenLogprob, n)
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
		if keepLogprob(m, ce.ev) {
			lps[ce.index] = append(lps[ce.index], chatLogprob(m.Tokenizer, ce.ev.Logprob))
		}
		if ce.ev.Finish != "" {
			finals[ce.index] = ce.ev
		}
	}
	resp := chatCompletion{ID: id, Object: "chat.completion", Created: time.Now().Unix(), Model: s.cfg.ServedModelName,
		Usage: totals(finals, n), SystemFingerprint: systemFingerprint}
	for i := range finals {
		c := chatChoice{Index: i, Message: chatMessage{Role: "assistant", Content: texts[i].String()}, FinishReason: string(finals[i].Finish)}
		if p.sampling.Logprobs >= 0 {
			c.Logprobs = &chatLogprobs{Content: lps[i]}
			if c.Logprobs.Content == nil {
				c.Logprobs.Content = []tokenLogprob{}
			}
		}
		resp.Choices = append(resp.Choices, c)
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) streamChat(ctx context.Context, w http.ResponseWriter, m *Model, run *run, id string, p genParams) *APIError {
	out := newSSE(w)
	created := time.Now().Unix()
	chunk := func(choices []chunkChoice) chatChunk {
		c := chatChunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: s.cfg.ServedModelName,
			SystemFingerprint: systemFingerprint, Choices: choices}
		if p.includeUsage {
			c.Usage = usageJSON(nil)
		}
		return c
	}
	n := len(run.streams)
	empty := ""
	for i := 0; i < n; i++ {
		_ = out.send(chunk([]chunkChoice{{Index: i, Delta: chunkDelta{Role: "assistant", Content: &empty}}}))
	}
	finals := make([]engine.Event, n)
	for run.remaining() > 0 && out.err == nil {
		ce, done, ret := s.nextStreamed(ctx, run, out)
		if done {
			return ret
		}
		ev := ce.ev
		var lp *chatLogprobs
		if keepLogprob(m, ev) {
			lp = &chatLogprobs{Content: []tokenLogprob{chatLogprob(m.Tokenizer, ev.Logprob)}}
		}
		if ev.Text != "" || lp != nil {
			text := ev.Text
			_ = out.send(chunk([]chunkChoice{{Index: ce.index, Delta: chunkDelta{Content: &text}, Logprobs: lp}}))
		}
		if ev.Finish != "" {
			finals[ce.index] = ev
			reason := string(ev.Finish)
			_ = out.send(chunk([]chunkChoice{{Index: ce.index, FinishReason: &reason}}))
		}
	}
	if out.err != nil {
		return s.clientGone()
	}
	if p.includeUsage {
		u := totals(finals, n)
		c := chunk([]chunkChoice{})
		c.Usage = usageJSON(&u)
		_ = out.send(c)
	}
	_ = out.send("[DONE]")
	return nil
}

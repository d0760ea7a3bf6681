package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/qvl-dev/qvl/runtime/engine"
)

// choiceEvent is an event of one choice as the fan-in delivers it.
type choiceEvent struct {
	index int
	ev    engine.Event
	at    time.Time // when the server received it
	err   error     // the stream failed (the request's context ended)
}

// run is the engine requests of one API call: one per choice.
type run struct {
	s        *Server
	streams  []*engine.Stream
	arrival  time.Time
	images   *resolvedImages
	events   chan choiceEvent
	done     []bool
	lastTime []time.Time // engine time of each choice's last token
	cancel   context.CancelFunc
}

// submit queues the choices' requests; it owns images from the call on (the run releases them
// once the engine is done with every choice). On error none stays queued.
func (s *Server) submit(ctx context.Context, m *Model, reqs []*engine.Request, images *resolvedImages, arrival time.Time) (*run, *APIError) {
	ctx, cancel := context.WithCancel(ctx)
	r := &run{s: s, arrival: arrival, images: images, events: make(chan choiceEvent, 4*len(reqs)),
		done: make([]bool, len(reqs)), lastTime: make([]time.Time, len(reqs)), cancel: cancel}
	for _, rq := range reqs {
		st, err := m.Engine.Submit(rq)
		if err != nil {
			r.close()
			switch {
			case errors.Is(err, engine.ErrQueueFull):
				return nil, &APIError{Status: http.StatusTooManyRequests, Type: typeRateLimit, Code: "queue_full",
					Message: "the server's request queue is full; retry shortly", RetryAfter: s.cfg.RetryAfter}
			case errors.Is(err, engine.ErrClosed):
				return nil, &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "draining",
					Message: "the server is shutting down", RetryAfter: s.cfg.RetryAfter}
			case errors.Is(err, engine.ErrInvalid):
				return nil, badRequest("", "%s", strings.TrimPrefix(err.Error(), engine.ErrInvalid.Error()+": "))
			}
			return nil, internalError("submitting the request failed: %v", err)
		}
		r.streams = append(r.streams, st)
	}
	for i, st := range r.streams {
		go r.forward(ctx, i, st)
	}
	return r, nil
}

// forward delivers one stream's events to the run's channel until its end or ctx's.
func (r *run) forward(ctx context.Context, i int, st *engine.Stream) {
	for {
		ev, err := st.Next(ctx)
		if err == io.EOF {
			return
		}
		select {
		case r.events <- choiceEvent{index: i, ev: ev, at: time.Now(), err: err}:
		case <-ctx.Done():
			return
		}
		if err != nil || ev.Finish != "" {
			return
		}
	}
}

// next returns the next event of any choice, observing the latency metrics. A failed stream or
// a done ctx is an error.
func (r *run) next(ctx context.Context) (choiceEvent, error) {
	select {
	case ce := <-r.events:
		if ce.err != nil {
			return ce, ce.err
		}
		r.observe(ce)
		return ce, nil
	case <-ctx.Done():
		return choiceEvent{}, ctx.Err()
	}
}

func (r *run) observe(ce choiceEvent) {
	i, ev, mt := ce.index, ce.ev, r.s.metrics
	if ev.Token >= 0 {
		if r.lastTime[i].IsZero() {
			mt.ttft.Observe(ce.at.Sub(r.arrival).Seconds())
			mt.queue.Observe(max(0, ev.QueueTime.Seconds()))
		} else {
			mt.itl.Observe(max(0, ev.Time.Sub(r.lastTime[i]).Seconds()))
		}
		r.lastTime[i] = ev.Time
	}
	if ev.Finish != "" {
		r.done[i] = true
		if ev.Finish == engine.FinishStop || ev.Finish == engine.FinishLength {
			mt.e2e.Observe(ce.at.Sub(r.arrival).Seconds())
		}
	}
}

// remaining counts the choices not yet finished.
func (r *run) remaining() int {
	n := 0
	for _, d := range r.done {
		if !d {
			n++
		}
	}
	return n
}

// close ends the run: unfinished choices are cancelled (their cache blocks are freed at the
// engine's next step), and the images are released once the engine is done with every choice.
func (r *run) close() {
	r.cancel()
	var pending []*engine.Stream
	for i, st := range r.streams {
		if !r.done[i] {
			st.Cancel()
			pending = append(pending, st)
		}
	}
	if len(pending) == 0 {
		r.images.release()
		return
	}
	go func() {
		for _, st := range pending {
			for {
				if _, err := st.Next(context.Background()); err != nil {
					break
				}
			}
		}
		r.images.release()
	}()
}

// finishError maps a choice that ended without stop or length to the error its client gets
// (the engine's error goes to the log: it may hold internals such as a stack trace).
func (s *Server) finishError(ev engine.Event) *APIError {
	switch ev.Finish {
	case engine.FinishCancelled:
		return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "cancelled",
			Message: "the request was cancelled: the server is shutting down"}
	case engine.FinishError:
		s.log.Error("generation failed", "err", ev.Err)
		return internalError("generation failed; the server log has the details")
	}
	return nil
}

// clientGone is returned when the request's context ended (the client disconnected).
func (s *Server) clientGone() *APIError {
	if s.aborted() {
		return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "cancelled",
			Message: "the request was cancelled: the server is shutting down"}
	}
	return &APIError{Status: statusClientClosed, Type: typeInvalidRequest, Message: "the client went away"}
}

// sse writes server-sent events.
type sse struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
	err     error
}

func newSSE(w http.ResponseWriter) *sse { return &sse{w: w, rc: http.NewResponseController(w)} }

func (e *sse) start() {
	if e.started {
		return
	}
	e.started = true
	h := e.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	e.w.WriteHeader(http.StatusOK)
}

// send writes one "data:" event holding v as JSON (or the raw text of a string).
func (e *sse) send(v any) error {
	if e.err != nil {
		return e.err
	}
	e.start()
	var data []byte
	if s, ok := v.(string); ok {
		data = []byte(s)
	} else {
		var err error
		if data, err = json.Marshal(v); err != nil {
			e.err = err
			return err
		}
	}
	if _, err := fmt.Fprintf(e.w, "data: %s\n\n", data); err != nil {
		e.err = err
		return err
	}
	if err := e.rc.Flush(); err != nil {
		e.err = err
	}
	return e.err
}

// fail ends a stream with an error event and [DONE].
func (e *sse) fail(ae *APIError) {
	_ = e.send(ae.body())
	_ = e.send("[DONE]")
}

// usageJSON marshals a usage object for a chunk's "usage" field (null when u is nil).
func usageJSON(u *usage) json.RawMessage {
	if u == nil {
		return json.RawMessage("null")
	}
	b, _ := json.Marshal(u)
	return b
}

// totals sums the usage of a run's final events: the prompt once per distinct prompt, the
// completions of every choice, and the cached prompt tokens of the first choice of each prompt.
func totals(finals []engine.Event, n int) usage {
	var u usage
	cached := 0
	for i, ev := range finals {
		if ev.Usage == nil {
			continue
		}
		if i%n == 0 {
			u.PromptTokens += ev.Usage.PromptTokens
			cached += ev.Usage.CachedTokens
		}
		u.CompletionTokens += ev.Usage.CompletionTokens
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	u.PromptTokensDetails = &promptTokenDetails{CachedTokens: cached}
	return u
}

// requestContext is the context a request's work runs under: the client's, also ended when a
// drain runs out of time.
func (s *Server) requestContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	stop := context.AfterFunc(s.abortCtx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

func (s *Server) aborted() bool { return s.abortCtx.Err() != nil }

// nextStreamed takes the next event of a streaming run. When the stream must end instead — the
// client went away, or a choice failed (sent to the client as an error event) — it reports
// done with what the handler returns.
func (s *Server) nextStreamed(ctx context.Context, run *run, out *sse) (ce choiceEvent, done bool, ret *APIError) {
	ce, err := run.next(ctx)
	if err != nil {
		ae := s.clientGone()
		if ae.Status != statusClientClosed {
			out.fail(ae)
		}
		return ce, true, ae
	}
	if ae := s.finishError(ce.ev); ae != nil {
		out.fail(ae)
		return ce, true, nil
	}
	return ce, false, nil
}

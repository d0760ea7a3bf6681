package engine

import (
	"context"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/qvl-dev/qvl/runtime/sample"
)

// FinishReason says why a request ended.
type FinishReason string

// Finish reasons, as the OpenAI API names them (plus cancelled and error).
const (
	FinishStop      FinishReason = "stop"
	FinishLength    FinishReason = "length"
	FinishCancelled FinishReason = "cancelled"
	FinishError     FinishReason = "error"
)

// Usage counts a request's tokens.
type Usage struct {
	PromptTokens, CompletionTokens int
	// CachedTokens are prompt tokens found in the prefix cache.
	CachedTokens int
}

// Event is one step of a request's output: a generated token with its text, and, on the last
// event, the finish reason and usage.
type Event struct {
	// Token is the generated token id, -1 on a final event that carries no token.
	Token int
	// Text is the new text (held back while it could be the start of a stop string).
	Text string
	// Logprob is the token's log-probability and the top alternatives, when asked for.
	Logprob *sample.Result
	// Logits is the logits row the token was chosen from (Request.ReturnLogits).
	Logits []float32
	// PromptLogits are the logits of every prompt position (Request.PromptLogits), on the first event.
	PromptLogits []float32
	// Finish is set on the last event.
	Finish FinishReason
	// Err explains FinishError.
	Err error
	// Usage is set on the last event.
	Usage *Usage
	// Time is when the engine produced the event.
	Time time.Time
	// QueueTime, on the first token's event, is the wait from Submit to the step that first
	// scheduled the request.
	QueueTime time.Duration
}

// Stream delivers a request's events in order. The engine never blocks on a slow reader: events
// queue in the stream.
type Stream struct {
	id     string
	e      *Engine
	s      *seqState
	mu     sync.Mutex
	q      []Event
	closed bool
	signal chan struct{}
}

func newStream(e *Engine, s *seqState) *Stream {
	return &Stream{id: s.id, e: e, s: s, signal: make(chan struct{}, 1)}
}

// ID is the request's id.
func (st *Stream) ID() string { return st.id }

func (st *Stream) push(ev Event) {
	st.mu.Lock()
	st.q = append(st.q, ev)
	if ev.Finish != "" {
		st.closed = true
	}
	st.mu.Unlock()
	select {
	case st.signal <- struct{}{}:
	default:
	}
}

// Next returns the next event; after the final event it returns io.EOF. A done context returns
// its error (the request keeps running: call Cancel to stop it).
func (st *Stream) Next(ctx context.Context) (Event, error) {
	for {
		st.mu.Lock()
		if len(st.q) > 0 {
			ev := st.q[0]
			st.q[0] = Event{}
			st.q = st.q[1:]
			st.mu.Unlock()
			return ev, nil
		}
		closed := st.closed
		st.mu.Unlock()
		if closed {
			return Event{}, io.EOF
		}
		select {
		case <-st.signal:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

// Drop discards the events queued so far (for callers that only need the request to run).
func (st *Stream) Drop() {
	st.mu.Lock()
	clear(st.q)
	st.q = st.q[:0]
	st.mu.Unlock()
}

// Cancel stops the request at the engine's next step and frees its cache blocks; the stream
// then ends with a FinishCancelled event.
func (st *Stream) Cancel() { st.e.cancel(st.s) }

// Result is a finished request's whole output.
type Result struct {
	Tokens       []int
	Text         string
	Logprobs     []sample.Result
	Logits       [][]float32
	PromptLogits []float32
	Finish       FinishReason
	Usage        Usage
}

// Collect reads the stream to its end.
func (st *Stream) Collect(ctx context.Context) (*Result, error) {
	r := &Result{}
	var text strings.Builder
	for {
		ev, err := st.Next(ctx)
		if err == io.EOF {
			r.Text = text.String()
			return r, nil
		}
		if err != nil {
			return r, err
		}
		if ev.PromptLogits != nil {
			r.PromptLogits = ev.PromptLogits
		}
		if ev.Token >= 0 {
			r.Tokens = append(r.Tokens, ev.Token)
			if ev.Logprob != nil {
				r.Logprobs = append(r.Logprobs, *ev.Logprob)
			}
			if ev.Logits != nil {
				r.Logits = append(r.Logits, ev.Logits)
			}
		}
		text.WriteString(ev.Text)
		if ev.Finish != "" {
			r.Finish = ev.Finish
			if ev.Usage != nil {
				r.Usage = *ev.Usage
			}
			if ev.Err != nil {
				r.Text = text.String()
				return r, ev.Err
			}
		}
	}
}

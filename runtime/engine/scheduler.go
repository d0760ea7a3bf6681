package engine

import (
	"slices"
	"time"

	"github.com/qvl-dev/qvl/runtime/kvcache"
)

// scheduled is one request's share of a step: n tokens starting at its computed count.
type scheduled struct {
	s *seqState
	n int
}

// scheduler decides, step by step, how many tokens of which requests to compute, after vLLM
// v1's: a request is a list of tokens and a count of those already in the cache, and a step
// hands out token counts under a budget. It never distinguishes prefill from decode: a new
// prompt, the rest of a chunked prompt and a one-token decode are all "the tokens not yet
// computed". Requests are served in arrival order; when blocks run out, the latest arrivals are
// preempted (their blocks freed, to be recomputed later), so the oldest request always progresses.
type scheduler struct {
	kv        *kvcache.Manager
	maxSeqs   int
	maxTokens int
	// waiting and running are sorted by arrival.
	waiting, running []*seqState
	preemptions      int64
	out              []scheduled
	// now is the time of the step being scheduled.
	now time.Time
}

func byArrival(a, b *seqState) int {
	switch {
	case a.arrival < b.arrival:
		return -1
	case a.arrival > b.arrival:
		return 1
	}
	return 0
}

// insert adds s to a queue sorted by arrival.
func insert(q []*seqState, s *seqState) []*seqState {
	i, _ := slices.BinarySearchFunc(q, s, byArrival)
	return slices.Insert(q, i, s)
}

// remove deletes s from a queue, reporting whether it was there.
func remove(q []*seqState, s *seqState) ([]*seqState, bool) {
	i, ok := slices.BinarySearchFunc(q, s, byArrival)
	if !ok || q[i] != s {
		return q, false
	}
	return slices.Delete(q, i, i+1), true
}

// add queues a new request.
func (sc *scheduler) add(s *seqState) { sc.waiting = insert(sc.waiting, s) }

// preempt frees a running request's blocks and requeues it to be recomputed from scratch.
func (sc *scheduler) preempt(s *seqState) {
	sc.running, _ = remove(sc.running, s)
	_ = sc.kv.Free(&s.kv)
	s.computed = 0
	s.running = false
	sc.waiting = insert(sc.waiting, s)
	sc.preemptions++
}

// drop removes a finished or cancelled request from the queues and frees its blocks.
func (sc *scheduler) drop(s *seqState) error {
	var ok bool
	if sc.running, ok = remove(sc.running, s); !ok {
		sc.waiting, _ = remove(sc.waiting, s)
	}
	s.running = false
	return sc.kv.Free(&s.kv)
}

// schedule picks this step's work. Running requests come first, oldest first; then waiting
// requests are admitted in arrival order while the token budget, the sequence limit and the
// free blocks allow (none are admitted in a step that had to preempt).
func (sc *scheduler) schedule() []scheduled {
	out := sc.out[:0]
	budget := sc.maxTokens
	preempted := false
	for i := 0; i < len(sc.running) && budget > 0; i++ {
		s := sc.running[i]
		n := min(len(s.tokens)-s.computed, budget)
		if n <= 0 {
			continue
		}
		for !sc.kv.Allocate(&s.kv, nil, s.computed, n) {
			victim := sc.running[len(sc.running)-1]
			sc.preempt(victim)
			preempted = true
			if victim == s {
				n = 0
				break
			}
		}
		if n == 0 {
			break
		}
		out = append(out, scheduled{s, n})
		budget -= n
	}
	for !preempted && len(sc.waiting) > 0 && budget > 0 && len(sc.running) < sc.maxSeqs {
		s := sc.waiting[0]
		var cached []int32
		computed := s.computed
		if computed == 0 && !s.r.PromptLogits {
			// A request that wants every prompt position's logits must compute them all.
			cached, computed = sc.kv.CachedPrefix(&s.kv, s, len(s.tokens))
		}
		n := min(len(s.tokens)-computed, budget)
		if !sc.kv.Allocate(&s.kv, cached, computed, n) {
			break
		}
		if !s.admitted {
			s.admitted = true
			s.scheduled = sc.now
			s.cached = computed
			sc.kv.CountPrefix(len(s.tokens), computed)
		}
		s.computed = computed
		s.running = true
		sc.waiting = sc.waiting[1:]
		sc.running = insert(sc.running, s)
		out = append(out, scheduled{s, n})
		budget -= n
	}
	sc.out = out
	return out
}

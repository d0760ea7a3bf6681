package engine

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/runtime/kvcache"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// newSeq makes a request of n prompt tokens for scheduler tests (no model involved).
func newSeq(arrival uint64, n int) *seqState {
	s := &seqState{arrival: arrival, r: &Request{Sampling: sample.Params{Logprobs: -1}}, promptLen: n}
	s.tokens = make([]int32, n)
	for i := range s.tokens {
		s.tokens[i] = int32(arrival*1000) + int32(i)
	}
	return s
}

func newScheduler(t *testing.T, blocks, bs, maxSeqs, maxTokens int) *scheduler {
	kv, err := kvcache.NewManager(blocks, bs, true)
	require.NoError(t, err)
	return &scheduler{kv: kv, maxSeqs: maxSeqs, maxTokens: maxTokens}
}

// advance applies a schedule as the engine would: computed tokens move on, and a request that
// has computed all its tokens gets one more (a decode).
func advance(sc *scheduler, work []scheduled) {
	for _, w := range work {
		w.s.computed += w.n
		sc.kv.Commit(&w.s.kv, w.s, w.s.computed)
		if w.s.computed == len(w.s.tokens) {
			w.s.tokens = append(w.s.tokens, 7)
		}
	}
}

func counts(work []scheduled) map[uint64]int {
	m := map[uint64]int{}
	for _, w := range work {
		m[w.s.arrival] = w.n
	}
	return m
}

// TestChunkedPrefillMixesWithDecode: one step holds decodes of running requests and a chunk of a
// new prompt under the token budget; FCFS order.
func TestChunkedPrefillMixesWithDecode(t *testing.T) {
	sc := newScheduler(t, 64, 4, 8, 10)
	a, b := newSeq(1, 6), newSeq(2, 25)
	sc.add(a)
	sc.add(b)
	w := sc.schedule()
	require.Equal(t, map[uint64]int{1: 6, 2: 4}, counts(w), "a whole, b chunked to the budget")
	advance(sc, w)
	w = sc.schedule()
	require.Equal(t, map[uint64]int{1: 1, 2: 9}, counts(w), "a decodes while b's prefill continues")
	advance(sc, w)
	w = sc.schedule()
	require.Equal(t, map[uint64]int{1: 1, 2: 9}, counts(w))
	advance(sc, w)
	w = sc.schedule()
	require.Equal(t, map[uint64]int{1: 1, 2: 3}, counts(w), "b finishes its prompt")
	advance(sc, w)
	w = sc.schedule()
	require.Equal(t, map[uint64]int{1: 1, 2: 1}, counts(w), "both decode")
}

func TestMaxNumSeqs(t *testing.T) {
	sc := newScheduler(t, 64, 4, 2, 100)
	for i := uint64(1); i <= 3; i++ {
		sc.add(newSeq(i, 3))
	}
	w := sc.schedule()
	require.Equal(t, map[uint64]int{1: 3, 2: 3}, counts(w))
	require.Len(t, sc.waiting, 1)
}

// TestPreemptsLatestArrival: when blocks run out, the latest arrival is preempted, freed and
// requeued in arrival order, and recomputes from scratch when it comes back.
func TestPreemptsLatestArrival(t *testing.T) {
	sc := newScheduler(t, 4, 4, 8, 100)
	a, b := newSeq(1, 8), newSeq(2, 7)
	sc.add(a)
	sc.add(b)
	w := sc.schedule()
	require.Equal(t, map[uint64]int{1: 8, 2: 7}, counts(w))
	advance(sc, w) // a: 9 tokens (needs 3 blocks), b: 8 tokens (needs 2)
	w = sc.schedule()
	require.Equal(t, map[uint64]int{1: 1}, counts(w), "b is preempted so a can grow")
	require.Equal(t, int64(1), sc.preemptions)
	require.Equal(t, []*seqState{b}, sc.waiting)
	require.Zero(t, b.computed)
	require.Empty(t, b.kv.Blocks)
	advance(sc, w)
	// b waits while a holds 3 of 4 blocks; then a finishes and b comes back.
	require.NoError(t, sc.drop(a))
	w = sc.schedule()
	// b's 8 tokens: its first full block is still in the prefix cache, the other 4 are recomputed.
	require.Equal(t, 4, b.computed)
	require.Equal(t, 4, counts(w)[2])
	require.Equal(t, 4, sc.kv.Pool().NumFree()+len(b.kv.Blocks))
}

// TestOldestNeverStarves: a stream of new short requests never keeps the oldest long one waiting.
func TestOldestNeverStarves(t *testing.T) {
	sc := newScheduler(t, 8, 4, 4, 8)
	long := newSeq(1, 20)
	sc.add(long)
	next := uint64(2)
	for step := 0; step < 40 && long.computed < 20; step++ {
		sc.add(newSeq(next, 2))
		next++
		w := sc.schedule()
		advance(sc, w)
		// Finish every other request after its first output token.
		for _, s := range append([]*seqState(nil), sc.running...) {
			if s != long && len(s.tokens) > s.promptLen {
				require.NoError(t, sc.drop(s))
			}
		}
	}
	require.GreaterOrEqual(t, long.computed, 20)
}

type fakeDetok struct{ words map[int]string }

func (f fakeDetok) Add(id int) string { return f.words[id] }
func (f fakeDetok) Flush() string     { return "" }

// TestStopStrings: stop strings match across token boundaries, are not emitted, and text that
// could begin one is held back until it cannot.
func TestStopStrings(t *testing.T) {
	words := map[int]string{1: "Hello", 2: " wor", 3: "ld", 4: "!", 5: " E", 6: "ND", 7: " x"}
	run := func(stops []string, ids ...int) (string, bool) {
		ts := textState{dec: fakeDetok{words}, stops: stops}
		var out string
		for _, id := range ids {
			s, stop := ts.push(id, true)
			out += s
			if stop {
				return out, true
			}
		}
		return out + ts.finish(), false
	}
	out, stop := run([]string{"world"}, 1, 2, 3, 4)
	require.True(t, stop)
	require.Equal(t, "Hello ", out)
	out, stop = run([]string{" END"}, 1, 5, 6, 7)
	require.True(t, stop)
	require.Equal(t, "Hello", out)
	out, stop = run([]string{"wxyz"}, 1, 2, 3)
	require.False(t, stop)
	require.Equal(t, "Hello world", out)
	// Held back: " wor" could start " world!" until "x" arrives.
	ts := textState{dec: fakeDetok{words}, stops: []string{" world!"}}
	s, _ := ts.push(1, true)
	require.Equal(t, "Hello", s)
	s, _ = ts.push(2, true)
	require.Equal(t, "", s)
	s, _ = ts.push(7, true)
	require.Equal(t, " wor x", s)
}

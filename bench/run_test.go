package bench

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sleeper is a Sender that takes a fixed time per request and tracks how many run at once.
type sleeper struct {
	d        time.Duration
	inFlight atomic.Int32
	peak     atomic.Int32
	calls    atomic.Int32
	fail     func(n int32) bool
}

func (s *sleeper) Send(ctx context.Context, r Request) Output {
	n := s.calls.Add(1)
	cur := s.inFlight.Add(1)
	for {
		p := s.peak.Load()
		if cur <= p || s.peak.CompareAndSwap(p, cur) {
			break
		}
	}
	defer s.inFlight.Add(-1)
	o := Output{PromptLen: r.PromptLen, sent: time.Now()}
	select {
	case <-time.After(s.d):
	case <-ctx.Done():
		o.Error = ctx.Err().Error()
		return o
	}
	if s.fail != nil && s.fail(n) {
		o.Error = "injected"
		return o
	}
	o.Success, o.OutputTokens, o.Chunks = true, r.OutputLen, r.OutputLen
	o.TTFT = s.d.Seconds() / 2
	o.Latency = s.d.Seconds()
	return o
}

func requests(n int) []Request {
	r := make([]Request, n)
	for i := range r {
		r[i] = Request{Prompt: "p", PromptLen: 10 + i, OutputLen: 4}
	}
	return r
}

func TestRunCapsConcurrency(t *testing.T) {
	s := &sleeper{d: 20 * time.Millisecond}
	oc, err := Run(context.Background(), Config{Sender: s, Requests: requests(24), RequestRate: math.Inf(1), MaxConcurrency: 4})
	require.NoError(t, err)
	require.Len(t, oc.Outputs, 24)
	assert.Equal(t, int32(4), s.peak.Load())
	for i, o := range oc.Outputs {
		require.True(t, o.Success)
		assert.Equal(t, 10+i, o.PromptLen, "outputs stay in dataset order")
	}
	// 24 requests, 4 at a time, 20 ms each: at least 6 rounds.
	assert.GreaterOrEqual(t, oc.Duration, 0.12)
	m := Calculate(oc.Outputs, oc.Duration, nil, nil)
	assert.Equal(t, 4, m.MaxConcurrentRequests)
	var queued int
	for _, o := range oc.Outputs {
		if o.QueueTime > 0.015 {
			queued++
		}
	}
	assert.GreaterOrEqual(t, queued, 16, "requests beyond the cap wait on the client")
}

func TestRunFollowsTheArrivalSchedule(t *testing.T) {
	s := &sleeper{d: time.Millisecond}
	const rate = 50.0
	oc, err := Run(context.Background(), Config{Sender: s, Requests: requests(20), RequestRate: rate, Burstiness: 1, Seed: 5})
	require.NoError(t, err)
	a, _ := NewArrivals(rate, 1, 5)
	want := a.Schedule(20)
	var late float64
	for i, o := range oc.Outputs {
		assert.GreaterOrEqual(t, o.StartTime, want[i]-1e-3, "request %d is never sent before its arrival time", i)
		late += o.StartTime - want[i]
	}
	assert.Less(t, late/20, 0.1, "on average a request is sent close to its arrival time (loose: CI machines are busy)")
	assert.GreaterOrEqual(t, oc.Duration, 20/rate, "the last arrival is at n/rate")
}

func TestRunForADuration(t *testing.T) {
	s := &sleeper{d: 10 * time.Millisecond}
	start := time.Now()
	oc, err := Run(context.Background(), Config{Sender: s, Requests: requests(3), RequestRate: math.Inf(1), MaxConcurrency: 2, Duration: 150 * time.Millisecond})
	require.NoError(t, err)
	el := time.Since(start)
	assert.Less(t, el, 2*time.Second)
	// About 2 × 150/10 = 30 requests, cycling through the 3 prompts.
	assert.Greater(t, len(oc.Outputs), 5)
	assert.LessOrEqual(t, int(s.peak.Load()), 2)
	assert.Equal(t, 10, oc.Outputs[3].PromptLen, "the dataset is cycled")
	assert.Equal(t, 11, oc.Outputs[4].PromptLen)
	for _, o := range oc.Outputs {
		assert.Less(t, o.StartTime, 0.15, "nothing is sent after the deadline")
	}

	_, err = Run(context.Background(), Config{Sender: s, Requests: requests(1), RequestRate: math.Inf(1), Duration: time.Second})
	assert.ErrorContains(t, err, "needs a concurrency cap")
}

func TestRunWarmup(t *testing.T) {
	s := &sleeper{d: time.Millisecond}
	oc, err := Run(context.Background(), Config{Sender: s, Requests: requests(5), RequestRate: math.Inf(1), Warmup: 3, MaxConcurrency: 2})
	require.NoError(t, err)
	assert.Len(t, oc.Outputs, 5, "warm-up requests are not measured")
	assert.Equal(t, int32(8), s.calls.Load())

	bad := &sleeper{d: time.Millisecond, fail: func(n int32) bool { return n == 1 }}
	_, err = Run(context.Background(), Config{Sender: bad, Requests: requests(5), RequestRate: math.Inf(1), Warmup: 1})
	assert.ErrorContains(t, err, "first warm-up request failed: injected")
}

func TestRunCountsFailuresAndReportsProgress(t *testing.T) {
	s := &sleeper{d: time.Millisecond, fail: func(n int32) bool { return n%3 == 0 }}
	var mu sync.Mutex
	var last [3]int
	oc, err := Run(context.Background(), Config{Sender: s, Requests: requests(9), RequestRate: math.Inf(1),
		Progress: func(d, f, total int) { mu.Lock(); last = [3]int{max(last[0], d), max(last[1], f), total}; mu.Unlock() }})
	require.NoError(t, err)
	m := Calculate(oc.Outputs, oc.Duration, nil, nil)
	assert.Equal(t, 6, m.Completed)
	assert.Equal(t, 3, m.Failed)
	assert.Equal(t, [3]int{9, 3, 9}, last)
}

func TestRunStopsWhenCancelled(t *testing.T) {
	s := &sleeper{d: 5 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	oc, err := Run(ctx, Config{Sender: s, Requests: requests(10), RequestRate: 20, MaxConcurrency: 1})
	require.NoError(t, err)
	assert.Less(t, time.Since(start), time.Second)
	for _, o := range oc.Outputs {
		assert.False(t, o.Success)
		assert.Equal(t, context.Canceled.Error(), o.Error)
	}
}

func TestRunAgainstFakeServer(t *testing.T) {
	srv := newFakeServer(t, func(body map[string]any) (int, []sseEvent) {
		n := int(body["max_tokens"].(float64))
		var evs []sseEvent
		for i := 0; i < n; i++ {
			evs = append(evs, pause(2*time.Millisecond, chatChunk("x")))
		}
		return 200, append(evs, usageChunk(7, n), done)
	})
	c := &Client{BaseURL: srv.URL, Endpoint: EndpointChat, Model: "demo", HTTP: NewHTTPClient(4)}
	oc, err := Run(context.Background(), Config{Sender: c, Requests: requests(12), RequestRate: math.Inf(1), MaxConcurrency: 4, Warmup: 1})
	require.NoError(t, err)
	r := NewResult(RunInfo{Endpoint: EndpointChat, ModelID: "demo", RequestRate: math.Inf(1), Burstiness: 1, MaxConcurrency: 4,
		Percentiles: []float64{99}, Date: time.Now()}, oc)
	assert.Equal(t, 12, r.Completed)
	assert.Equal(t, 12*4, r.TotalOutputTokens)
	assert.Equal(t, 12*7, r.TotalInputTokens)
	assert.Greater(t, r.MeanE2ELMs, 8.0, "four chunks written 2 ms apart")
	assert.Positive(t, r.MeanTPOTMs)
	assert.Positive(t, r.MeanITLMs)
	for _, itl := range r.ITLs {
		assert.Len(t, itl, 3)
	}
}

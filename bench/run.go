package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Sender sends one request and measures it; *Client implements it.
type Sender interface {
	Send(ctx context.Context, r Request) Output
}

// Config describes one benchmark run.
type Config struct {
	// Sender sends the requests.
	Sender Sender
	// Requests is the dataset. Without Duration each is sent once, in order; with Duration they
	// are sent in order and cycled until the time is up.
	Requests []Request
	// RequestRate is the mean arrival rate in requests per second (+Inf: all at once).
	RequestRate float64
	// Burstiness is the gamma shape of the arrival gaps (1: Poisson).
	Burstiness float64
	// MaxConcurrency caps the requests in flight (0: no cap). Requests that arrive while the cap
	// is reached wait on the client; the wait is recorded as QueueTime.
	MaxConcurrency int
	// Duration, when positive, bounds the time during which requests are sent; requests in
	// flight at the end are waited for.
	Duration time.Duration
	// Warmup requests (copies of Requests[0]) run before the measurement, under the same
	// concurrency cap; the first runs alone and must succeed.
	Warmup int
	// Seed seeds the arrival times.
	Seed uint64
	// OnStart, when set, is called as the measurement starts (e.g. to start a profiler).
	OnStart func()
	// Progress, when set, is called after each measured request with the counts so far
	// (total is 0 in duration mode).
	Progress func(done, failed, total int)
}

// Outcome is a finished run: each request's Output in the order they were sent, and the
// benchmark's duration in seconds (from the first send to the last response).
type Outcome struct {
	Outputs  []Output
	Duration float64
}

// Run executes a benchmark. It returns an error only when the run cannot start (bad
// configuration, failed warm-up); failed requests are counted in the outcome. When ctx ends
// the run stops sending and returns what it measured, with the interrupted requests failed.
func Run(ctx context.Context, cfg Config) (*Outcome, error) {
	if cfg.Sender == nil {
		return nil, errors.New("bench: no sender")
	}
	if len(cfg.Requests) == 0 {
		return nil, errors.New("bench: the dataset is empty")
	}
	if cfg.MaxConcurrency < 0 {
		return nil, fmt.Errorf("bench: max concurrency must be ≥ 0, got %d", cfg.MaxConcurrency)
	}
	if cfg.Duration > 0 && math.IsInf(cfg.RequestRate, 1) && cfg.MaxConcurrency == 0 {
		return nil, errors.New("bench: a duration-bounded run at an infinite request rate needs a concurrency cap (--concurrency N)")
	}
	if cfg.Burstiness == 0 {
		cfg.Burstiness = 1
	}
	arr, err := NewArrivals(cfg.RequestRate, cfg.Burstiness, cfg.Seed)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	var sem chan struct{}
	if cfg.MaxConcurrency > 0 {
		sem = make(chan struct{}, cfg.MaxConcurrency)
	}
	if err := warmup(ctx, cfg, sem); err != nil {
		return nil, err
	}

	var (
		mu      sync.Mutex
		outputs []Output
		done    int
		failed  int
		wg      sync.WaitGroup
	)
	total := len(cfg.Requests)
	var schedule []float64
	if cfg.Duration > 0 {
		total = 0
	} else {
		schedule = arr.Schedule(len(cfg.Requests))
	}
	// In duration mode at an infinite rate the sender itself waits for a slot (closed loop);
	// otherwise arrivals are open-loop and wait for a slot in their own goroutine.
	closedLoop := cfg.Duration > 0 && math.IsInf(cfg.RequestRate, 1)
	if cfg.OnStart != nil {
		cfg.OnStart()
	}
	record := func(idx int, o Output) {
		mu.Lock()
		outputs[idx] = o
		done++
		if !o.Success {
			failed++
		}
		d, f := done, failed
		mu.Unlock()
		if cfg.Progress != nil {
			cfg.Progress(d, f, total)
		}
	}
	start := time.Now()
	var next float64
	for i := 0; ; i++ {
		if cfg.Duration == 0 && i == len(cfg.Requests) {
			break
		}
		if schedule != nil {
			next = schedule[i]
		} else {
			next += arr.Next()
		}
		at := start.Add(time.Duration(next * float64(time.Second)))
		if cfg.Duration > 0 && at.Sub(start) >= cfg.Duration {
			break
		}
		if !sleepUntil(ctx, at) {
			break
		}
		arrival := time.Now()
		if closedLoop {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
			}
			if ctx.Err() != nil || time.Since(start) >= cfg.Duration {
				if ctx.Err() == nil {
					<-sem
				}
				break
			}
		}
		mu.Lock()
		idx := len(outputs)
		outputs = append(outputs, Output{})
		mu.Unlock()
		req := cfg.Requests[i%len(cfg.Requests)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			if sem != nil && !closedLoop {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					o := Output{PromptLen: req.PromptLen, Error: ctx.Err().Error()}
					o.StartTime = time.Since(start).Seconds()
					record(idx, o)
					return
				}
			}
			dispatched := time.Now()
			o := cfg.Sender.Send(ctx, req)
			if sem != nil {
				<-sem
			}
			sent := o.sent
			if sent.IsZero() {
				sent = dispatched
			}
			o.StartTime = sent.Sub(start).Seconds()
			o.QueueTime = dispatched.Sub(arrival).Seconds()
			record(idx, o)
		}()
	}
	wg.Wait()
	return &Outcome{Outputs: outputs, Duration: time.Since(start).Seconds()}, nil
}

// warmup runs cfg.Warmup copies of the first request: one alone (which must succeed, so a
// misconfigured run fails fast with the server's reason), then the rest under the cap.
func warmup(ctx context.Context, cfg Config, sem chan struct{}) error {
	if cfg.Warmup <= 0 {
		return nil
	}
	first := cfg.Sender.Send(ctx, cfg.Requests[0])
	if !first.Success {
		return fmt.Errorf("bench: the first warm-up request failed: %s", first.Error)
	}
	var wg sync.WaitGroup
	for range cfg.Warmup - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if sem != nil {
				select {
				case sem <- struct{}{}:
					defer func() { <-sem }()
				case <-ctx.Done():
					return
				}
			}
			cfg.Sender.Send(ctx, cfg.Requests[0])
		}()
	}
	wg.Wait()
	return ctx.Err()
}

// sleepUntil waits until t and reports false when ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

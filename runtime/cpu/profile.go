package cpu

import (
	"slices"
	"sync"
	"time"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// profile accumulates wall-clock time per op while profiling is on.
type profile struct {
	mu    sync.Mutex
	on    bool
	times map[string]*ml.OpTime
}

// begin returns the start time when profiling is on (zero otherwise).
func (p *profile) begin() time.Time {
	if !p.on {
		return time.Time{}
	}
	return time.Now()
}

// end records an op that began at start.
func (p *profile) end(name string, start time.Time) {
	if start.IsZero() {
		return
	}
	d := time.Since(start)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.times == nil {
		p.times = map[string]*ml.OpTime{}
	}
	t := p.times[name]
	if t == nil {
		t = &ml.OpTime{Name: name}
		p.times[name] = t
	}
	t.Calls++
	t.Total += d
}

// SetProfiling implements ml.Profiler.
func (b *Backend) SetProfiling(on bool) { b.prof.on = on }

// Profile implements ml.Profiler.
func (b *Backend) Profile() []ml.OpTime {
	b.prof.mu.Lock()
	defer b.prof.mu.Unlock()
	out := make([]ml.OpTime, 0, len(b.prof.times))
	for _, t := range b.prof.times {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, c ml.OpTime) int { return int(c.Total - a.Total) })
	return out
}

// ResetProfile implements ml.Profiler.
func (b *Backend) ResetProfile() {
	b.prof.mu.Lock()
	b.prof.times = nil
	b.prof.mu.Unlock()
}

var _ ml.Profiler = (*Backend)(nil)

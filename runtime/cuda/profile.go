package cuda

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// profiler times each kernel and GEMM with a pair of events around its launch; the times are
// read at Profile, after the stream has finished.
type profiler struct {
	mu      sync.Mutex
	on      bool
	pool    []uintptr
	pending []timing
	times   map[string]*ml.OpTime
}

type timing struct {
	name       string
	start, end uintptr
}

func (p *profiler) event(d device) (uintptr, error) {
	if n := len(p.pool); n > 0 {
		ev := p.pool[n-1]
		p.pool = p.pool[:n-1]
		return ev, nil
	}
	return d.newEvent()
}

// time records events around launch. Run inside do.
func (p *profiler) time(d device, name string, launch func() error) error {
	start, err := p.event(d)
	if err != nil {
		return err
	}
	end, err := p.event(d)
	if err != nil {
		return err
	}
	if err := d.record(start); err != nil {
		return err
	}
	if err := launch(); err != nil {
		p.pool = append(p.pool, start, end)
		return err
	}
	if err := d.record(end); err != nil {
		return err
	}
	p.mu.Lock()
	p.pending = append(p.pending, timing{name, start, end})
	p.mu.Unlock()
	return nil
}

// collect turns the pending event pairs into times. Run inside do, after a sync.
func (p *profiler) collect(d device) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, t := range p.pending {
		dt, err := d.elapsed(t.start, t.end)
		errs = append(errs, err)
		if err == nil {
			if p.times == nil {
				p.times = map[string]*ml.OpTime{}
			}
			o := p.times[t.name]
			if o == nil {
				o = &ml.OpTime{Name: t.name}
				p.times[t.name] = o
			}
			o.Calls++
			o.Total += dt
		}
		p.pool = append(p.pool, t.start, t.end)
	}
	p.pending = p.pending[:0]
	return errors.Join(errs...)
}

// release destroys the events. Run inside do.
func (p *profiler) release(d device) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.pending {
		p.pool = append(p.pool, t.start, t.end)
	}
	p.pending = nil
	for _, ev := range p.pool {
		d.destroyEvent(ev)
	}
	p.pool = nil
}

// SetProfiling implements ml.Profiler: while on, each kernel and GEMM is bracketed by CUDA
// events (which costs a little launch overhead).
func (b *Backend) SetProfiling(on bool) { b.prof.on = on }

// Profile implements ml.Profiler: it waits for the queued work and returns the GPU time of
// each kernel (and cuBLASLt GEMM) since the last reset, largest first.
func (b *Backend) Profile() []ml.OpTime {
	if !b.closed {
		_ = b.dev.do(func() error {
			if err := b.dev.sync(); err != nil {
				return err
			}
			return b.prof.collect(b.dev)
		})
	}
	b.prof.mu.Lock()
	defer b.prof.mu.Unlock()
	out := make([]ml.OpTime, 0, len(b.prof.times))
	for _, t := range b.prof.times {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, c ml.OpTime) int {
		if a.Total != c.Total {
			return int(c.Total - a.Total)
		}
		return strings.Compare(a.Name, c.Name)
	})
	return out
}

// Hold queues a kernel that keeps the stream busy for d (qvl_spin). Work queued behind it runs
// back to back once it ends, so that the profiler's event pairs time the kernels alone: without
// a hold, a GPU that outruns the host records each start event when it reaches it and the
// kernel when the host gets to launch it, and a small kernel's time is mostly the host's launch
// gap. The hold must outlast the queueing of the work it covers (and no call in between may
// wait for the stream); it is a profiling aid, not part of a forward step.
func (b *Backend) Hold(d time.Duration) error {
	if b.closed {
		return errors.New("cuda: Hold on a closed backend")
	}
	return b.dev.do(func() error {
		b.a.reset().i64(d.Nanoseconds())
		return b.dev.launch(kSpin, d1(1), d1(32), 0, &b.a)
	})
}

// ResetProfile implements ml.Profiler.
func (b *Backend) ResetProfile() {
	if !b.closed {
		_ = b.dev.do(func() error {
			if err := b.dev.sync(); err != nil {
				return err
			}
			return b.prof.collect(b.dev)
		})
	}
	b.prof.mu.Lock()
	b.prof.times = nil
	b.prof.mu.Unlock()
}

var _ ml.Profiler = (*Backend)(nil)

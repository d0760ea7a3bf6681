package cuda

import (
	"errors"
	"fmt"

	"github.com/qvl-dev/qvl/runtime/ml"
)

// Graphs: the model records a decode step once per batch/context bucket (ml.Grapher) and
// replays it, so that the per-op Go, cgo-free call and launch overhead of a step becomes one
// graph launch. A CUDA graph keeps the arguments of its kernels, so everything a recorded op
// points to must stay where it is: the model's step buffers (the model drops the graphs when
// they move) and this backend's own scratch buffers (the backend drops every graph when one of
// them grows, and when any tensor is freed, whoever reallocated it). Capture first runs fn once
// on the stream — a warm-up that sizes the scratch buffers, allocates the bf16 copies, uploads
// rotary tables and lets cuBLASLt pick its plans, none of which may happen while capturing —
// and then records it. A decode step is a pure function of its inputs and
// writes the same keys and values again, so the extra run changes nothing. The bf16 copies of
// activations (copies.go) start a new generation before the warm-up, before the recording and
// after it, and after every replay, so a recorded MatMul reads only copies that the same graph
// wrote before it.

// graphs maps Capture keys to executable graphs.
type graphs map[uint64]uintptr

// Capture implements ml.Grapher.
func (b *Backend) Capture(key uint64, fn func() error) error {
	if err := b.alive(); err != nil {
		return err
	}
	if fn == nil {
		return errors.New("cuda: Capture of a nil function")
	}
	b.staleAll()
	if err := fn(); err != nil {
		return fmt.Errorf("cuda: graph %#x warm-up: %w", key, err)
	}
	prof := b.prof.on
	b.prof.on = false
	defer func() { b.prof.on = prof }()
	if err := b.dev.do(func() error {
		if err := b.dev.sync(); err != nil {
			return err
		}
		if err := b.deviceErrors(); err != nil {
			return err
		}
		return b.dev.beginCapture()
	}); err != nil {
		return fmt.Errorf("cuda: graph %#x: %w", key, err)
	}
	b.staleAll()
	b.capturing = true
	ferr := fn()
	b.capturing = false
	b.staleAll()
	var g uintptr
	err := b.dev.do(func() error {
		var err error
		g, err = b.dev.endCapture(ferr != nil)
		return err
	})
	if ferr != nil {
		return fmt.Errorf("cuda: graph %#x capture: %w", key, errors.Join(ferr, err))
	}
	if err != nil {
		return fmt.Errorf("cuda: graph %#x capture: %w", key, err)
	}
	if old, ok := b.graphs[key]; ok {
		_ = b.dev.do(func() error { b.dev.destroyGraph(old); return nil })
	}
	if b.graphs == nil {
		b.graphs = graphs{}
	}
	b.graphs[key] = g
	return nil
}

// Replay implements ml.Grapher: one launch of the graph recorded under key.
func (b *Backend) Replay(key uint64) error {
	if err := b.alive(); err != nil {
		return err
	}
	g, ok := b.graphs[key]
	if !ok {
		return fmt.Errorf("cuda: no graph was captured under %#x", key)
	}
	// What the graph wrote is not tracked: no copy is trusted after it.
	b.staleAll()
	return b.dev.do(func() error {
		if b.prof.on {
			// The profile's "graph replay": the GPU time of the whole graph.
			return b.prof.time(b.dev, "graph replay", func() error { return b.dev.launchGraph(g) })
		}
		return b.dev.launchGraph(g)
	})
}

// HasGraph implements ml.Grapher.
func (b *Backend) HasGraph(key uint64) bool {
	_, ok := b.graphs[key]
	return ok
}

// DropGraphs implements ml.Grapher.
func (b *Backend) DropGraphs() {
	if len(b.graphs) == 0 || b.closed {
		return
	}
	_ = b.dev.do(func() error {
		b.dropGraphs()
		return nil
	})
}

// dropGraphs destroys every graph. Run inside do.
func (b *Backend) dropGraphs() {
	for k, g := range b.graphs {
		b.dev.destroyGraph(g)
		delete(b.graphs, k)
	}
}

var _ ml.Grapher = (*Backend)(nil)

// eager is a Backend without its ml.Grapher side.
type eager struct {
	ml.Backend
	ml.DeviceSampler
	ml.Profiler
	ml.Batcher
	ml.NormMatMuler
	ml.SwiGLUMatMuler
	ml.QKVAttender
	ml.MLPer
}

// WithoutGraphs returns b as a backend that does not record graphs (its DeviceSampler,
// Profiler, Batcher and fused ops stay), so that a model runs every step op by op, the same
// kernels as in its graphs, each launched by the host: for comparisons (the benchmark's launch
// overhead is eager − graphs), and as a way around a graph problem. (Until the seventh H100 run
// it lacked the Batcher, the folded attention and the MLP op: eager steps paid a device-thread
// hand-off per op and ran qvl_qkv and qvl_swiglu that the graphs did not.)
func WithoutGraphs(b *Backend) ml.Backend { return eager{b, b, b, b, b, b, b, b} }

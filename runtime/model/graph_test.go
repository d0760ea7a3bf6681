package model_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// recorder is a CPU backend that implements ml.Grapher the way stream capture works: ops
// issued while capturing are recorded, not run, and a replay runs them on the tensors' current
// contents. It lets the model's graph path (padding, fixed buffers, buckets) be tested on the CPU.
type recorder struct {
	*cpu.Backend
	capturing []func() error
	active    bool
	graphs    map[uint64][]func() error
	drops     int
}

func (r *recorder) do(f func() error) error {
	if r.active {
		r.capturing = append(r.capturing, f)
		return nil
	}
	return f()
}

func (r *recorder) EmbedProject(out ml.Tensor, a ml.EmbedArgs) error {
	return r.do(func() error { return r.Backend.EmbedProject(out, a) })
}
func (r *recorder) MatMul(out, x, w ml.Tensor) error {
	return r.do(func() error { return r.Backend.MatMul(out, x, w) })
}
func (r *recorder) RMSNorm(out, x, w ml.Tensor, eps float32) error {
	return r.do(func() error { return r.Backend.RMSNorm(out, x, w, eps) })
}
func (r *recorder) AddRMSNorm(out, x, d, w ml.Tensor, eps float32) error {
	return r.do(func() error { return r.Backend.AddRMSNorm(out, x, d, w, eps) })
}
func (r *recorder) NormMatMul(y, h, x, d, n, w ml.Tensor, eps float32) error {
	return r.do(func() error { return r.Backend.NormMatMul(y, h, x, d, n, w, eps) })
}
func (r *recorder) SwiGLUMatMul(y, act, gu, w ml.Tensor) error {
	return r.do(func() error { return r.Backend.SwiGLUMatMul(y, act, gu, w) })
}
func (r *recorder) QKV(qkv ml.Tensor, a ml.QKVArgs) error {
	return r.do(func() error { return r.Backend.QKV(qkv, a) })
}
func (r *recorder) Attention(out, q ml.Tensor, a ml.AttnArgs) error {
	return r.do(func() error { return r.Backend.Attention(out, q, a) })
}
func (r *recorder) SwiGLU(out, gu ml.Tensor) error {
	return r.do(func() error { return r.Backend.SwiGLU(out, gu) })
}
func (r *recorder) ScatterAdd(x, rows, idx ml.Tensor) error {
	return r.do(func() error { return r.Backend.ScatterAdd(x, rows, idx) })
}
func (r *recorder) Gather(out, x, idx ml.Tensor) error {
	return r.do(func() error { return r.Backend.Gather(out, x, idx) })
}
func (r *recorder) Write(t ml.Tensor, src any) error {
	if r.active {
		return errors.New("write during capture")
	}
	return r.Backend.Write(t, src)
}
func (r *recorder) Read(t ml.Tensor, dst any) error {
	if r.active {
		return errors.New("read during capture")
	}
	return r.Backend.Read(t, dst)
}
func (r *recorder) Capture(key uint64, fn func() error) error {
	r.active, r.capturing = true, nil
	err := fn()
	r.active = false
	if err != nil {
		return err
	}
	if r.graphs == nil {
		r.graphs = map[uint64][]func() error{}
	}
	r.graphs[key] = r.capturing
	return nil
}
func (r *recorder) Replay(key uint64) error {
	ops, ok := r.graphs[key]
	if !ok {
		return fmt.Errorf("no graph %x", key)
	}
	for _, f := range ops {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}
func (r *recorder) HasGraph(key uint64) bool { _, ok := r.graphs[key]; return ok }
func (r *recorder) DropGraphs()              { r.graphs = nil; r.drops++ }

// TestGraphDecodeMatchesEager runs the same requests through an engine whose backend records
// graphs and through a plain one, and requires identical logits at every generated position.
func TestGraphDecodeMatchesEager(t *testing.T) {
	run := func(b ml.Backend) ([][][]float32, *model.Model) {
		m, err := model.Open(b, goldenDir+"/model", model.Options{ProjectorDir: goldenDir + "/projector"})
		require.NoError(t, err)
		t.Cleanup(func() { m.Close() })
		e, err := engine.New(m, engine.Config{BlockSize: 4, MaxNumBatchedTokens: 64})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go e.Run(ctx)
		out := make([][][]float32, 11)
		var wg sync.WaitGroup
		for i := range out {
			r := rand.New(rand.NewPCG(uint64(i), 9))
			req := &engine.Request{MaxTokens: 20 + r.IntN(30), IgnoreEOS: true, ReturnLogits: true, Sampling: sample.Params{Logprobs: -1}}
			for k := 0; k < 1+r.IntN(70); k++ {
				req.Prompt = append(req.Prompt, r.IntN(990))
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := e.Generate(ctx, req)
				require.NoError(t, err)
				out[i] = res.Logits
			}()
		}
		wg.Wait()
		return out, m
	}
	want, _ := run(cpu.NewReference())
	rec := &recorder{Backend: cpu.NewReference()}
	got, m := run(rec)
	require.Equal(t, want, got)
	captures, replays := m.GraphStats()
	require.Greater(t, captures, int64(1), "several buckets were captured")
	require.Greater(t, replays, 5*captures, "graphs are replayed, not recaptured")
	t.Logf("graphs: %d captured, %d replays, %d drops of all graphs", captures, replays, rec.drops)
}

package engine_test

import (
	"fmt"
	"testing"

	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// nullModel stands in for the model so that benchmarks time the engine's own Go work: it
// returns zero logits for a 16-token vocabulary without computing anything.
type nullModel struct{ logits []float32 }

func (m *nullModel) Forward(b *model.Batch) ([]float32, error) {
	n := len(b.LogitRows) * 16
	if cap(m.logits) < n {
		m.logits = make([]float32, n)
	}
	return m.logits[:n], nil
}
func (m *nullModel) InitCache(int, int) error { return nil }
func (m *nullModel) KVBytesPerBlock(int) int  { return 1 }
func (m *nullModel) Spec() model.Spec {
	return model.Spec{VocabSize: 16, HiddenSize: 8, ImageTokenID: 15, SpatialMergeSize: 2}
}

// BenchmarkStep times one scheduling step (intake, schedule, batch building, sampling a
// 16-token vocabulary, streaming the token) with 1 and 256 sequences decoding at context ~512,
// excluding the model.
func BenchmarkStep(b *testing.B) {
	for _, seqs := range []int{1, 256} {
		b.Run(fmt.Sprintf("seqs=%d", seqs), func(b *testing.B) {
			e, err := engine.New(&nullModel{}, engine.Config{NumBlocks: seqs*((600+b.N)/16+2) + 64, MaxNumSeqs: 256, MaxNumBatchedTokens: 8192})
			if err != nil {
				b.Fatal(err)
			}
			prompt := make([]int, 500)
			for i := range prompt {
				prompt[i] = i % 15
			}
			var streams []*engine.Stream
			for i := 0; i < seqs; i++ {
				st, err := e.Submit(&engine.Request{Prompt: prompt, MaxTokens: b.N + 64, IgnoreEOS: true, Sampling: sample.Params{Logprobs: -1}})
				if err != nil {
					b.Fatal(err)
				}
				streams = append(streams, st)
			}
			// Prefill everything, so the timed steps are decodes.
			for i := 0; i < 20; i++ {
				if _, err := e.Step(); err != nil {
					b.Fatal(err)
				}
			}
			drain := func() {
				for _, st := range streams {
					st.Drop()
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := e.Step(); err != nil {
					b.Fatal(err)
				}
				if i%64 == 63 {
					b.StopTimer()
					drain()
					b.StartTimer()
				}
			}
			b.StopTimer()
			if s := e.Stats(); s.Running != seqs {
				b.Fatalf("%d running, want %d", s.Running, seqs)
			}
		})
	}
}

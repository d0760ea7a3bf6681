package synth_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/synth"
)

// TestWriteTinySharded writes the tiny shape in small shards and reads it back through the
// loader: config, index, every language-model tensor with its shape, the skipped vision tensor,
// tokenizer files and the projector.
func TestWriteTinySharded(t *testing.T) {
	dir := t.TempDir()
	s := synth.Shapes["tiny"]
	require.NoError(t, synth.Write(dir, s, synth.Options{Seed: 7, ShardBytes: 8 << 20}))
	cfg, err := loader.LoadConfig(filepath.Join(dir, "config.json"))
	require.NoError(t, err)
	require.Equal(t, synth.Vocab, cfg.VocabSize)
	require.Equal(t, 3, cfg.DeepStackLevels)
	require.Equal(t, []int{6, 5, 5}, cfg.MRopeSection)
	require.FileExists(t, filepath.Join(dir, loader.IndexFileName))
	ck, err := loader.OpenCheckpoint(dir)
	require.NoError(t, err)
	defer ck.Close()
	require.Greater(t, len(ck.Files()), 1)
	emb, err := ck.Tensor("model.language_model.embed_tokens.weight")
	require.NoError(t, err)
	require.Equal(t, []int{synth.Vocab, 128}, emb.Shape)
	require.False(t, ck.Has("model.visual.merger.norm.weight"))
	var n int64
	for _, name := range ck.Names() {
		tt, err := ck.Tensor(name)
		require.NoError(t, err)
		n += int64(tt.NumElements())
	}
	require.Equal(t, s.Params(), n)
	// Norm weights are drawn around 1, linear weights around 0 with std 1/sqrt(fan_in).
	w, err := ck.Tensor("model.language_model.layers.0.mlp.down_proj.weight")
	require.NoError(t, err)
	x, err := w.Float32()
	require.NoError(t, err)
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	require.InDelta(t, 1.0/384, ss/float64(len(x)), 0.1/384)
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json", "chat_template.json", "generation_config.json"} {
		require.FileExists(t, filepath.Join(dir, f))
	}
	p, err := loader.LoadProjector(filepath.Join(dir, "projector"))
	require.NoError(t, err)
	require.Equal(t, 4, p.Config.TokensPerEmbedding)
	require.NoError(t, p.Close())
	// The same seed gives the same weights; another seed, others.
	dir2 := t.TempDir()
	require.NoError(t, synth.Write(dir2, s, synth.Options{Seed: 7}))
	ck2, err := loader.OpenCheckpoint(dir2)
	require.NoError(t, err)
	defer ck2.Close()
	w2, err := ck2.Tensor("model.language_model.layers.0.mlp.down_proj.weight")
	require.NoError(t, err)
	require.Equal(t, w.Data, w2.Data)
}

func TestParams(t *testing.T) {
	// Qwen3-VL-2B's language model has 1.72e9 parameters (DESIGN.md).
	require.InDelta(t, 1.72e9, float64(synth.Shapes["qwen3-vl-2b"].Params()), 0.01e9)
}

func TestDemoDirIsMadeOnce(t *testing.T) {
	t.Setenv("QVL_CACHE_DIR", t.TempDir())
	dir, err := synth.DemoDir(nil)
	require.NoError(t, err)
	st, err := os.Stat(filepath.Join(dir, "model.safetensors"))
	require.NoError(t, err)
	again, err := synth.DemoDir(nil)
	require.NoError(t, err)
	require.Equal(t, dir, again)
	st2, err := os.Stat(filepath.Join(dir, "model.safetensors"))
	require.NoError(t, err)
	require.Equal(t, st.ModTime(), st2.ModTime())
	require.True(t, synth.IsDemo(dir))
}

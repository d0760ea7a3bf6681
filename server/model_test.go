package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/store"
	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/engine"
)

func TestLoadModel(t *testing.T) {
	needFixtures(t)
	m, err := LoadModel(LoadOptions{ModelDir: modelDir, ProjectorDir: projDir, Backend: cpu.New(cpu.Options{}),
		Engine: engine.Config{KVCacheBytes: 4 << 20}})
	require.NoError(t, err)
	defer m.Close()
	assert.Equal(t, projDir, m.ProjectorDir)
	// synth's generation_config.json: temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.
	require.NotNil(t, m.Defaults.Temperature)
	assert.Equal(t, 0.7, *m.Defaults.Temperature)
	assert.Equal(t, 0.8, *m.Defaults.TopP)
	assert.Equal(t, 20, *m.Defaults.TopK)
	assert.Nil(t, m.Defaults.MinP)
	assert.Nil(t, m.Defaults.MaxTokens)
	spec := m.Engine.Spec()
	assert.Equal(t, synth.Shapes["tiny"].ProjIn, spec.ProjectorInputDim)
	go m.Engine.Run(context.Background())
	defer m.Engine.Close()
	res, err := m.Engine.Generate(context.Background(), &engine.Request{Prompt: m.Tokenizer.Encode("hello"), MaxTokens: 3, IgnoreEOS: true})
	require.NoError(t, err)
	assert.Len(t, res.Tokens, 3)

	_, err = LoadModel(LoadOptions{ModelDir: t.TempDir(), Backend: cpu.New(cpu.Options{})})
	require.Error(t, err)
}

func TestSamplingDefaults(t *testing.T) {
	dir := t.TempDir()
	d, eos, err := LoadSamplingDefaults(dir)
	require.NoError(t, err, "no file: no defaults")
	assert.Equal(t, SamplingDefaults{}, d)
	assert.Nil(t, eos)
	write := func(s string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "generation_config.json"), []byte(s), 0o644))
	}
	write(`{"temperature": 0.6, "min_p": 0.05, "max_new_tokens": 99, "eos_token_id": [5, 6]}`)
	d, eos, err = LoadSamplingDefaults(dir)
	require.NoError(t, err)
	assert.Equal(t, 0.6, *d.Temperature)
	assert.Equal(t, 0.05, *d.MinP)
	assert.Equal(t, 99, *d.MaxTokens)
	assert.Nil(t, d.TopP)
	assert.Nil(t, d.TopK, "absent keys are not defaults, even where transformers has one")
	assert.Equal(t, []int{5, 6}, eos)

	// Applied to what a request omits, overridden by what it gives.
	var f commonFields
	p, aerr := f.resolve(d, 1000, -1, nil, "max_tokens", 0)
	require.Nil(t, aerr)
	assert.InDelta(t, 0.6, p.sampling.Temperature, 1e-6)
	assert.InDelta(t, 0.05, p.sampling.MinP, 1e-6)
	assert.Equal(t, 99, p.maxTokens)
	assert.False(t, p.maxFromRequest)
	temp, mt := 0.0, 5
	f.Temperature = &temp
	p, aerr = f.resolve(d, 1000, -1, &mt, "max_tokens", 0)
	require.Nil(t, aerr)
	assert.Zero(t, p.sampling.Temperature)
	assert.Equal(t, 5, p.maxTokens)
	assert.True(t, p.maxFromRequest)

	write(`{"min_p": 3}`)
	_, _, err = LoadSamplingDefaults(dir)
	require.Error(t, err)
	write(`{"temperature": "warm"}`)
	_, _, err = LoadSamplingDefaults(dir)
	require.Error(t, err)
}

func TestDemoCatalog(t *testing.T) {
	dir := t.TempDir()
	path, err := DemoCatalog(dir, 16)
	require.NoError(t, err)
	st, err := store.Open(path)
	require.NoError(t, err)
	m := st.Meta()
	assert.Equal(t, DemoCatalogItems, st.Len())
	assert.Equal(t, 16, m.EmbeddingDim)
	for _, id := range []string{"demo-0", "demo-7", "demo-255"} {
		it, err := st.Lookup(id)
		require.NoError(t, err)
		assert.Equal(t, store.KindEmbedding, it.Kind)
	}
	_, err = st.Lookup("demo-256")
	require.ErrorIs(t, err, store.ErrNotFound)
	require.NoError(t, st.Close())
	// Made once: a second call keeps the file.
	again, err := DemoCatalog(dir, 16)
	require.NoError(t, err)
	st, err = store.Open(again)
	require.NoError(t, err)
	assert.Equal(t, m.UUID, st.Meta().UUID)
	require.NoError(t, st.Close())
	// Another projector size rewrites it.
	_, err = DemoCatalog(dir, 8)
	require.NoError(t, err)
	st, err = store.Open(path)
	require.NoError(t, err)
	assert.Equal(t, 8, st.Meta().EmbeddingDim)
	require.NoError(t, st.Close())
}

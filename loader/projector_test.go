package loader

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLoadProjectorGolden(t *testing.T) {
	p, err := LoadProjector(filepath.Join(goldenDir, "projector"))
	require.NoError(t, err)
	defer p.Close()
	assert.Equal(t, ProjectorConfig{InputDim: 48, HiddenDim: 96, TokensPerEmbedding: 4, OutputDim: 128,
		Activation: ActivationGELU, GridTHW: [3]int{1, 2, 8}}, p.Config)
	assert.Equal(t, []int{96, 48}, p.FC1W.Shape)
	assert.Equal(t, []int{96}, p.FC1B.Shape)
	assert.Equal(t, []int{512, 96}, p.FC2W.Shape)
	assert.Equal(t, []int{512}, p.FC2B.Shape)
	w, err := p.FC2W.Float32()
	require.NoError(t, err)
	assert.Len(t, w, 512*96)
}

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

func TestWriteProjectorRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	cfg := ProjectorConfig{InputDim: 5, HiddenDim: 7, TokensPerEmbedding: 3, OutputDim: 4}
	fc1w, fc1b, fc2w, fc2b := randVec(r, 35), randVec(r, 7), randVec(r, 12*7), randVec(r, 12)
	dir := filepath.Join(t.TempDir(), "proj")
	require.NoError(t, WriteProjector(dir, cfg, fc1w, fc1b, fc2w, fc2b))
	p, err := LoadProjector(dir)
	require.NoError(t, err)
	defer p.Close()
	assert.Equal(t, ActivationGELU, p.Config.Activation)
	assert.Equal(t, [3]int{1, 2, 6}, p.Config.GridTHW)
	for _, c := range []struct {
		t    *Tensor
		want []float32
	}{{p.FC1W, fc1w}, {p.FC1B, fc1b}, {p.FC2W, fc2w}, {p.FC2B, fc2b}} {
		assert.Equal(t, BF16, c.t.DType)
		got, err := c.t.Float32()
		require.NoError(t, err)
		for i := range got {
			require.Equal(t, BF16ToF32(F32ToBF16(c.want[i])), got[i], "%s[%d]", c.t.Name, i)
		}
	}

	err = WriteProjector(dir, cfg, fc1w[:3], fc1b, fc2w, fc2b)
	require.ErrorContains(t, err, "fc1.weight has 3 values, want 35")
	err = WriteProjector(dir, ProjectorConfig{InputDim: 5, HiddenDim: 7, TokensPerEmbedding: 3, OutputDim: 4, GridTHW: [3]int{1, 2, 2}}, fc1w, fc1b, fc2w, fc2b)
	require.ErrorContains(t, err, "grid_thw [1 2 2] gives t*h*w/4 = 1 tokens, but tokens_per_embedding is 3")
}

func TestLoadProjectorErrors(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	cfg := ProjectorConfig{InputDim: 2, HiddenDim: 3, TokensPerEmbedding: 2, OutputDim: 2}
	good := func(t *testing.T) string {
		dir := t.TempDir()
		require.NoError(t, WriteProjector(dir, cfg, randVec(r, 6), randVec(r, 3), randVec(r, 12), randVec(r, 4)))
		return dir
	}
	editJSON := func(t *testing.T, dir string, fn func(m map[string]any)) {
		path := filepath.Join(dir, ProjectorConfigFileName)
		raw, err := os.ReadFile(path)
		require.NoError(t, err)
		var m map[string]any
		require.NoError(t, json.Unmarshal(raw, &m))
		fn(m)
		raw, err = json.Marshal(m)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, raw, 0o644))
	}
	cfgFile := func(dir string) string { return filepath.Join(dir, ProjectorConfigFileName) }
	wFile := func(dir string) string { return filepath.Join(dir, ProjectorWeightsFileName) }

	t.Run("grid mismatch", func(t *testing.T) {
		dir := good(t)
		editJSON(t, dir, func(m map[string]any) { m["grid_thw"] = []int{1, 2, 8} })
		_, err := LoadProjector(dir)
		require.ErrorContains(t, err, cfgFile(dir))
		require.ErrorContains(t, err, "t*h*w/4 = 4 tokens, but tokens_per_embedding is 2")
	})
	t.Run("odd grid", func(t *testing.T) {
		dir := good(t)
		editJSON(t, dir, func(m map[string]any) { m["grid_thw"] = []int{2, 1, 4} })
		_, err := LoadProjector(dir)
		require.ErrorContains(t, err, "even h and w")
	})
	t.Run("activation", func(t *testing.T) {
		dir := good(t)
		editJSON(t, dir, func(m map[string]any) { m["activation"] = "relu" })
		_, err := LoadProjector(dir)
		require.ErrorContains(t, err, `activation "relu" is not supported`)
	})
	t.Run("tanh gelu accepted, grid defaulted", func(t *testing.T) {
		dir := good(t)
		editJSON(t, dir, func(m map[string]any) { m["activation"] = ActivationGELUTanh; delete(m, "grid_thw") })
		p, err := LoadProjector(dir)
		require.NoError(t, err)
		assert.Equal(t, [3]int{1, 2, 4}, p.Config.GridTHW)
		require.NoError(t, p.Close())
	})
	t.Run("missing size", func(t *testing.T) {
		dir := good(t)
		editJSON(t, dir, func(m map[string]any) { delete(m, "hidden_dim") })
		_, err := LoadProjector(dir)
		require.ErrorContains(t, err, "hidden_dim must be positive, got 0")
	})
	t.Run("shape mismatch", func(t *testing.T) {
		dir := good(t)
		editJSON(t, dir, func(m map[string]any) { m["output_dim"] = 3; m["tokens_per_embedding"] = 2 })
		_, err := LoadProjector(dir)
		require.ErrorContains(t, err, wFile(dir))
		require.ErrorContains(t, err, `tensor "fc2.weight": shape [4 3], want [6 3] from projector.json`)
	})
	t.Run("missing tensor", func(t *testing.T) {
		dir := good(t)
		require.NoError(t, WriteFile(wFile(dir), []WriteTensor{
			{Name: "fc1.weight", DType: F32, Shape: []int{3, 2}, Data: F32Bytes(randVec(r, 6))},
		}, nil))
		_, err := LoadProjector(dir)
		require.ErrorContains(t, err, wFile(dir))
		require.ErrorContains(t, err, `tensor "fc1.bias"`)
		require.ErrorIs(t, err, ErrTensorNotFound)
	})
	t.Run("integer dtype", func(t *testing.T) {
		dir := good(t)
		require.NoError(t, WriteFile(wFile(dir), []WriteTensor{
			{Name: "fc1.weight", DType: I32, Shape: []int{3, 2}, Data: make([]byte, 24)},
		}, nil))
		_, err := LoadProjector(dir)
		require.ErrorContains(t, err, `tensor "fc1.weight": dtype I32, want BF16, F16, F32 or F64`)
	})
	t.Run("no config", func(t *testing.T) {
		_, err := LoadProjector(t.TempDir())
		require.ErrorIs(t, err, os.ErrNotExist)
	})
	t.Run("corrupt weights", func(t *testing.T) {
		dir := good(t)
		require.NoError(t, os.WriteFile(wFile(dir), []byte("xx"), 0o644))
		_, err := LoadProjector(dir)
		require.ErrorContains(t, err, wFile(dir))
	})
}

package loader

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCheckpointGolden(t *testing.T) {
	dir := filepath.Join(goldenDir, "model")
	c, err := OpenCheckpoint(dir)
	require.NoError(t, err)
	defer c.Close()
	assert.Empty(t, c.Index)
	names := c.Names()
	// 3 layers × 11 tensors + embed_tokens + norm; the head is tied.
	assert.Len(t, names, 35)
	for _, n := range names {
		assert.False(t, strings.HasPrefix(n, VisualPrefix), n)
	}
	assert.False(t, c.Has("model.visual.blocks.0.attn.qkv.weight"))
	_, err = c.Tensor("model.visual.blocks.0.attn.qkv.weight")
	require.ErrorIs(t, err, ErrTensorNotFound)
	require.ErrorContains(t, err, "vision encoder")
	_, err = c.Tensor("lm_head.weight")
	require.ErrorIs(t, err, ErrTensorNotFound)

	emb, err := c.Tensor("model.language_model.embed_tokens.weight")
	require.NoError(t, err)
	assert.Equal(t, []int{1000, 128}, emb.Shape)
	assert.Equal(t, BF16, emb.DType)
	assert.Equal(t, filepath.Join(dir, "model.safetensors"), emb.File)

	// Compare against the bytes read independently from the file.
	raw, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	require.NoError(t, err)
	n := binary.LittleEndian.Uint64(raw)
	var hdr map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw[8:8+n], &hdr))
	var e struct {
		DataOffsets [2]int `json:"data_offsets"`
	}
	require.NoError(t, json.Unmarshal(hdr["model.language_model.layers.1.self_attn.q_norm.weight"], &e))
	qn, err := c.Tensor("model.language_model.layers.1.self_attn.q_norm.weight")
	require.NoError(t, err)
	v, err := qn.Float32()
	require.NoError(t, err)
	require.Len(t, v, 32)
	base := 8 + int(n) + e.DataOffsets[0]
	for i := range v {
		assert.Equal(t, BF16ToF32(binary.LittleEndian.Uint16(raw[base+2*i:])), v[i], "element %d", i)
	}
	require.NoError(t, c.Close())
	_, err = c.Tensor("model.language_model.norm.weight")
	require.ErrorIs(t, err, ErrClosed)
}

// shardSet writes a sharded checkpoint: each shard is a map of tensor name
// to its values, index maps names to shards (nil: derived from shards).
func shardSet(t *testing.T, shards map[string][]string, index map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	derived := map[string]string{}
	for shard, names := range shards {
		var ts []WriteTensor
		for i, name := range names {
			ts = append(ts, WriteTensor{Name: name, DType: BF16, Shape: []int{2}, Data: BF16Bytes([]float32{float32(i), float32(len(name))})})
			derived[name] = shard
		}
		require.NoError(t, WriteFile(filepath.Join(dir, shard), ts, map[string]string{"format": "pt"}))
	}
	if index == nil {
		index = derived
	}
	js, err := json.Marshal(map[string]any{"metadata": map[string]int{"total_size": 0}, "weight_map": index})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, IndexFileName), js, 0o644))
	return dir
}

const (
	shard1 = "model-00001-of-00002.safetensors"
	shard2 = "model-00002-of-00002.safetensors"
)

func TestCheckpointSharded(t *testing.T) {
	dir := shardSet(t, map[string][]string{
		shard1: {"model.language_model.embed_tokens.weight", "model.visual.patch_embed.weight", "model.language_model.norm.weight"},
		shard2: {"lm_head.weight", "model.visual.merger.weight"},
	}, nil)
	c, err := OpenCheckpoint(dir)
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, filepath.Join(dir, IndexFileName), c.Index)
	assert.Equal(t, []string{"lm_head.weight", "model.language_model.embed_tokens.weight", "model.language_model.norm.weight"}, c.Names())
	assert.Equal(t, []string{filepath.Join(dir, shard1), filepath.Join(dir, shard2)}, c.Files())
	head, err := c.Tensor("lm_head.weight")
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, shard2), head.File)
	v, err := head.Float32()
	require.NoError(t, err)
	assert.Equal(t, []float32{0, float32(len("lm_head.weight"))}, v)
	norm, err := c.Tensor("model.language_model.norm.weight")
	require.NoError(t, err)
	v, err = norm.Float32()
	require.NoError(t, err)
	assert.Equal(t, []float32{2, float32(len("model.language_model.norm.weight"))}, v)
	assert.False(t, c.Has("model.visual.merger.weight"))
}

func TestCheckpointVisualOnlyShardMayBeMissing(t *testing.T) {
	dir := shardSet(t, map[string][]string{shard1: {"model.language_model.norm.weight"}}, map[string]string{
		"model.language_model.norm.weight": shard1,
		"model.visual.merger.weight":       shard2, // never written
	})
	c, err := OpenCheckpoint(dir)
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, []string{"model.language_model.norm.weight"}, c.Names())
}

func TestCheckpointPrefersSingleFile(t *testing.T) {
	dir := shardSet(t, map[string][]string{shard1: {"a"}}, nil)
	require.NoError(t, WriteFile(filepath.Join(dir, SingleFileName), []WriteTensor{{Name: "b", DType: U8, Shape: []int{1}, Data: []byte{1}}}, nil))
	c, err := OpenCheckpoint(dir)
	require.NoError(t, err)
	defer c.Close()
	assert.Equal(t, []string{"b"}, c.Names())
}

func TestCheckpointErrors(t *testing.T) {
	writeIndex := func(t *testing.T, dir, body string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, IndexFileName), []byte(body), 0o644))
	}
	t.Run("empty dir", func(t *testing.T) {
		dir := t.TempDir()
		_, err := OpenCheckpoint(dir)
		require.ErrorIs(t, err, os.ErrNotExist)
		require.ErrorContains(t, err, dir)
		require.ErrorContains(t, err, "neither model.safetensors nor model.safetensors.index.json")
	})
	t.Run("not a dir", func(t *testing.T) {
		_, err := OpenCheckpoint(filepath.Join(goldenDir, "cases.json"))
		require.ErrorContains(t, err, "not a directory")
	})
	t.Run("index malformed", func(t *testing.T) {
		dir := t.TempDir()
		writeIndex(t, dir, `{"weight_map": {"a": 3}}`)
		_, err := OpenCheckpoint(dir)
		require.ErrorContains(t, err, filepath.Join(dir, IndexFileName))
		require.ErrorContains(t, err, "index is not valid JSON")
	})
	t.Run("index not JSON", func(t *testing.T) {
		dir := t.TempDir()
		writeIndex(t, dir, `{"weight_map": `)
		_, err := OpenCheckpoint(dir)
		require.ErrorContains(t, err, "index is not valid JSON")
	})
	t.Run("index without weight_map", func(t *testing.T) {
		dir := t.TempDir()
		writeIndex(t, dir, `{"metadata": {}}`)
		_, err := OpenCheckpoint(dir)
		require.ErrorContains(t, err, "no weight_map entries")
	})
	t.Run("shard escapes dir", func(t *testing.T) {
		dir := t.TempDir()
		writeIndex(t, dir, `{"weight_map": {"a": "../x.safetensors"}}`)
		_, err := OpenCheckpoint(dir)
		require.ErrorContains(t, err, `tensor "a": shard name "../x.safetensors" is not a file name inside the checkpoint directory`)
	})
	t.Run("missing shard", func(t *testing.T) {
		dir := shardSet(t, map[string][]string{shard1: {"a"}}, map[string]string{"a": shard1, "b": shard2})
		_, err := OpenCheckpoint(dir)
		require.ErrorContains(t, err, filepath.Join(dir, IndexFileName))
		require.ErrorContains(t, err, "index names shard "+shard2+", which is missing")
	})
	t.Run("tensor not in its shard", func(t *testing.T) {
		dir := shardSet(t, map[string][]string{shard1: {"a"}, shard2: {"b"}}, map[string]string{"a": shard1, "b": shard1})
		_, err := OpenCheckpoint(dir)
		require.ErrorContains(t, err, filepath.Join(dir, IndexFileName))
		require.ErrorContains(t, err, `tensor "b": index maps it to shard `+shard1+", which does not hold it")
	})
	t.Run("tensor in two shards", func(t *testing.T) {
		dir := shardSet(t, map[string][]string{shard1: {"a", "c"}, shard2: {"b", "c"}}, map[string]string{"a": shard1, "b": shard2, "c": shard1})
		_, err := OpenCheckpoint(dir)
		require.ErrorContains(t, err, `tensor "c": defined in two shards: `+shard1+" and "+shard2)
	})
	t.Run("corrupt shard", func(t *testing.T) {
		dir := shardSet(t, map[string][]string{shard1: {"a"}}, nil)
		require.NoError(t, os.WriteFile(filepath.Join(dir, shard1), []byte{1, 2}, 0o644))
		_, err := OpenCheckpoint(dir)
		require.ErrorContains(t, err, filepath.Join(dir, shard1))
		require.ErrorContains(t, err, "shorter than the 8-byte")
	})
}

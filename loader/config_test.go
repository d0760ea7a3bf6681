package loader

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func tinyConfig() *ModelConfig {
	return &ModelConfig{
		ModelType: "qwen3_vl", HiddenSize: 128, NumLayers: 3, NumHeads: 4, NumKVHeads: 2, HeadDim: 32,
		IntermediateSize: 256, VocabSize: 1000, MaxPositionEmbeddings: 4096, RMSNormEps: 1e-6,
		RopeTheta: 5e6, RopeType: "default", MRopeSection: []int{6, 5, 5}, MRopeInterleaved: true,
		TieWordEmbeddings: true, HiddenAct: "silu", BOSTokenID: 990, EOSTokenIDs: []int{991},
		ImageTokenID: 995, VideoTokenID: 996, VisionStartTokenID: 992, VisionEndTokenID: 993,
		DeepStackVisualIndexes: []int{0, 2}, DeepStackLevels: 2, SpatialMergeSize: 2, VisionOutHiddenSize: 128,
	}
}

func TestLoadConfigGoldenBothForms(t *testing.T) {
	dir := filepath.Join(goldenDir, "model")
	hub, err := LoadConfig(dir)
	require.NoError(t, err)
	assert.Equal(t, tinyConfig(), hub)
	v5, err := LoadConfig(filepath.Join(dir, "config.saved_by_transformers_v5.json"))
	require.NoError(t, err)
	assert.Equal(t, tinyConfig(), v5)
}

func TestLoadConfigMissing(t *testing.T) {
	_, err := LoadConfig(t.TempDir())
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, "config.json")
}

// A Qwen3 text model's config.json, fields at the top level.
const flatQwen3 = `{"architectures":["Qwen3ForCausalLM"],"attention_bias":false,"bos_token_id":151643,
"eos_token_id":151645,"head_dim":128,"hidden_act":"silu","hidden_size":1024,"intermediate_size":3072,
"max_position_embeddings":40960,"model_type":"qwen3","num_attention_heads":16,"num_hidden_layers":28,
"num_key_value_heads":8,"rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000,"sliding_window":null,
"tie_word_embeddings":true,"torch_dtype":"bfloat16","use_cache":true,"use_sliding_window":false,"vocab_size":151936}`

func TestParseConfigFlatTextOnly(t *testing.T) {
	c, err := ParseConfig([]byte(flatQwen3))
	require.NoError(t, err)
	assert.Equal(t, &ModelConfig{
		ModelType: "qwen3", HiddenSize: 1024, NumLayers: 28, NumHeads: 16, NumKVHeads: 8, HeadDim: 128,
		IntermediateSize: 3072, VocabSize: 151936, MaxPositionEmbeddings: 40960, RMSNormEps: 1e-6, RopeTheta: 1e6,
		TieWordEmbeddings: true, HiddenAct: "silu", BOSTokenID: 151643, EOSTokenIDs: []int{151645},
		ImageTokenID: -1, VideoTokenID: -1, VisionStartTokenID: -1, VisionEndTokenID: -1, SpatialMergeSize: 2,
	}, c)
}

// edit returns the golden hub config with fn applied to its text_config and
// top level.
func edit(t *testing.T, fn func(top, text map[string]any)) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(goldenDir, "model", "config.json"))
	require.NoError(t, err)
	var top map[string]any
	require.NoError(t, json.Unmarshal(raw, &top))
	fn(top, top["text_config"].(map[string]any))
	out, err := json.Marshal(top)
	require.NoError(t, err)
	return out
}

func TestParseConfigVariants(t *testing.T) {
	t.Run("rope_scaling.type", func(t *testing.T) {
		c, err := ParseConfig(edit(t, func(_, text map[string]any) {
			text["rope_scaling"] = map[string]any{"type": "mrope", "mrope_section": []int{8, 4, 4}}
		}))
		require.NoError(t, err)
		assert.Equal(t, "mrope", c.RopeType)
		assert.Equal(t, []int{8, 4, 4}, c.MRopeSection)
		assert.False(t, c.MRopeInterleaved)
	})
	t.Run("text_config wins, top level fills", func(t *testing.T) {
		c, err := ParseConfig(edit(t, func(top, text map[string]any) {
			top["hidden_size"] = 4096
			top["bos_token_id"] = 1
			delete(text, "tie_word_embeddings")
			top["tie_word_embeddings"] = false
			delete(text, "eos_token_id")
			top["eos_token_id"] = []int{7, 8}
			text["image_token_id"] = 500
		}))
		require.NoError(t, err)
		assert.Equal(t, 128, c.HiddenSize)
		assert.Equal(t, 990, c.BOSTokenID)
		assert.False(t, c.TieWordEmbeddings)
		assert.Equal(t, []int{7, 8}, c.EOSTokenIDs)
		assert.Equal(t, 500, c.ImageTokenID)
	})
	t.Run("null in text_config falls back", func(t *testing.T) {
		c, err := ParseConfig(edit(t, func(top, text map[string]any) {
			text["tie_word_embeddings"] = nil
			top["tie_word_embeddings"] = false
		}))
		require.NoError(t, err)
		assert.False(t, c.TieWordEmbeddings)
	})
	t.Run("head_dim default and no vision", func(t *testing.T) {
		c, err := ParseConfig(edit(t, func(top, text map[string]any) {
			delete(text, "head_dim")
			delete(top, "vision_config")
		}))
		require.NoError(t, err)
		assert.Equal(t, 32, c.HeadDim)
		assert.Equal(t, 0, c.DeepStackLevels)
		assert.Nil(t, c.DeepStackVisualIndexes)
		assert.Equal(t, 2, c.SpatialMergeSize)
		assert.Equal(t, 0, c.VisionOutHiddenSize)
	})
	t.Run("integral float accepted", func(t *testing.T) {
		c, err := ParseConfig(edit(t, func(_, text map[string]any) { text["hidden_size"] = 128.0 }))
		require.NoError(t, err)
		assert.Equal(t, 128, c.HiddenSize)
	})
}

func TestParseConfigErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		fn   func(top, text map[string]any)
		want string
	}{
		{"zero hidden", func(_, x map[string]any) { x["hidden_size"] = 0 }, "hidden_size must be positive, got 0"},
		{"missing layers", func(_, x map[string]any) { delete(x, "num_hidden_layers") }, "num_hidden_layers must be positive, got 0"},
		{"heads vs kv", func(_, x map[string]any) { x["num_key_value_heads"] = 3 }, "num_attention_heads (4) must be a multiple of num_key_value_heads (3)"},
		{"odd head_dim", func(_, x map[string]any) { x["head_dim"] = 33 }, "head_dim must be even, got 33"},
		{"mrope sum", func(_, x map[string]any) {
			x["rope_scaling"] = map[string]any{"rope_type": "default", "mrope_section": []int{6, 6, 6}}
		}, "mrope_section [6 6 6] sums to 18, want head_dim/2 = 16"},
		{"mrope parts", func(_, x map[string]any) {
			x["rope_scaling"] = map[string]any{"rope_type": "default", "mrope_section": []int{16}}
		}, "mrope_section must have 3 parts"},
		{"rope type", func(_, x map[string]any) {
			x["rope_scaling"] = map[string]any{"rope_type": "yarn", "factor": 4}
		}, `rope_type "yarn" is not supported`},
		{"no rope_theta", func(_, x map[string]any) { delete(x, "rope_theta") }, "rope_theta must be a positive number, got 0"},
		{"act", func(_, x map[string]any) { x["hidden_act"] = "gelu" }, `hidden_act "gelu" is not supported`},
		{"bias", func(_, x map[string]any) { x["attention_bias"] = true }, "attention_bias is true"},
		{"out_hidden_size", func(top, _ map[string]any) {
			top["vision_config"].(map[string]any)["out_hidden_size"] = 64
		}, "vision_config.out_hidden_size 64 must equal hidden_size 128"},
		{"too many deepstack", func(top, _ map[string]any) {
			top["vision_config"].(map[string]any)["deepstack_visual_indexes"] = []int{0, 1, 2, 3}
		}, "4 DeepStack levels do not fit in num_hidden_layers = 3"},
		{"image id outside vocab", func(top, _ map[string]any) { top["image_token_id"] = 1000 }, "image_token_id 1000 is outside the vocabulary [0, 1000)"},
		{"eos outside vocab", func(_, x map[string]any) { x["eos_token_id"] = []int{991, 5000} }, "eos_token_id 5000 is outside"},
		{"type error", func(_, x map[string]any) { x["hidden_size"] = "128" }, `text_config.hidden_size: want an integer, got "128"`},
		{"fraction", func(_, x map[string]any) { x["num_hidden_layers"] = 2.5 }, "text_config.num_hidden_layers: want an integer, got 2.5"},
		{"eos type", func(_, x map[string]any) { x["eos_token_id"] = "x" }, "text_config.eos_token_id: want an integer or a list of integers"},
		{"mrope type", func(_, x map[string]any) {
			x["rope_scaling"] = map[string]any{"mrope_section": []any{6, "5", 5}}
		}, "text_config.rope_scaling.mrope_section[1]: want an integer"},
		{"text_config type", func(top, _ map[string]any) { top["text_config"] = []int{1} }, "text_config is not a JSON object"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig(edit(t, c.fn))
			require.ErrorContains(t, err, c.want)
		})
	}
	_, err := ParseConfig([]byte(`[1]`))
	require.ErrorContains(t, err, "config: not a JSON object")
}

func TestLoadConfigErrorNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.json")
	require.NoError(t, os.WriteFile(path, edit(t, func(_, x map[string]any) { x["head_dim"] = 31 }), 0o644))
	_, err := LoadConfig(path)
	require.ErrorContains(t, err, path+": config: ")
	require.ErrorContains(t, err, "head_dim must be even")
	// All problems at once.
	require.NoError(t, os.WriteFile(path, edit(t, func(_, x map[string]any) { x["head_dim"] = 31; x["vocab_size"] = -1 }), 0o644))
	_, err = LoadConfig(path)
	require.ErrorContains(t, err, "head_dim must be even")
	require.ErrorContains(t, err, "vocab_size must be positive")
}

func TestConfigJSONRoundTrip(t *testing.T) {
	want := tinyConfig()
	js, err := want.JSON()
	require.NoError(t, err)
	got, err := ParseConfig(js)
	require.NoError(t, err)
	assert.Equal(t, want, got)

	// A hub form as the golden one: same keys in text_config's rope_scaling.
	var doc map[string]any
	require.NoError(t, json.Unmarshal(js, &doc))
	text := doc["text_config"].(map[string]any)
	assert.Equal(t, map[string]any{"mrope_interleaved": true, "mrope_section": []any{6.0, 5.0, 5.0}, "rope_type": "default"}, text["rope_scaling"])
	assert.Equal(t, 991.0, text["eos_token_id"])
	assert.Equal(t, map[string]any{"deepstack_visual_indexes": []any{0.0, 2.0}, "out_hidden_size": 128.0, "spatial_merge_size": 2.0}, doc["vision_config"])

	// Several EOS ids and unknown DeepStack indexes.
	c := tinyConfig()
	c.EOSTokenIDs = []int{991, 990}
	c.DeepStackVisualIndexes = nil
	c.DeepStackLevels = 3
	js, err = c.JSON()
	require.NoError(t, err)
	got, err = ParseConfig(js)
	require.NoError(t, err)
	assert.Equal(t, []int{991, 990}, got.EOSTokenIDs)
	assert.Equal(t, []int{0, 1, 2}, got.DeepStackVisualIndexes)
	assert.Equal(t, 3, got.DeepStackLevels)

	c = tinyConfig()
	c.NumKVHeads = 3
	_, err = c.JSON()
	require.ErrorContains(t, err, "num_key_value_heads")
}

func TestGenerationConfig(t *testing.T) {
	g, err := LoadGenerationConfig(filepath.Join(goldenDir, "model"))
	require.NoError(t, err)
	assert.Equal(t, &GenerationConfig{EOSTokenIDs: []int{991}, BOSTokenID: 990, PadTokenID: -1,
		Temperature: DefaultTemperature, TopP: DefaultTopP, TopK: DefaultTopK, RepetitionPenalty: DefaultRepetitionPenalty}, g)

	// Qwen3-VL-2B-Instruct's file.
	g, err = ParseGenerationConfig([]byte(`{"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
		"eos_token_id": [151645, 151643], "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.0, "temperature": 0.7,
		"transformers_version": "4.56.0"}`))
	require.NoError(t, err)
	assert.Equal(t, &GenerationConfig{EOSTokenIDs: []int{151645, 151643}, BOSTokenID: 151643, PadTokenID: 151643,
		DoSample: true, Temperature: 0.7, TopP: 0.8, TopK: 20, RepetitionPenalty: 1}, g)

	g, err = ParseGenerationConfig([]byte(`{"top_k": 0, "temperature": 0, "top_p": null}`))
	require.NoError(t, err)
	assert.Equal(t, 0, g.TopK)
	assert.Equal(t, DefaultTemperature, g.Temperature)
	assert.Equal(t, DefaultTopP, g.TopP)

	for body, want := range map[string]string{
		`{"top_p": 1.5}`:             "top_p must be in (0, 1], got 1.5",
		`{"top_k": -1}`:              "top_k must not be negative",
		`{"temperature": -1}`:        "temperature must be a positive number, got -1",
		`{"repetition_penalty": -2}`: "repetition_penalty must be a positive number",
		`{"eos_token_id": [1, -5]}`:  "eos_token_id must not be negative, got -5",
		`{"do_sample": "yes"}`:       "do_sample: want true or false",
		`{"eos_token_id": {"a": 1}}`: "eos_token_id: want an integer or a list of integers",
		`not json`:                   "generation config: not a JSON object",
	} {
		_, err := ParseGenerationConfig([]byte(body))
		require.ErrorContains(t, err, want, body)
	}

	_, err = LoadGenerationConfig(t.TempDir())
	require.ErrorIs(t, err, os.ErrNotExist)
	path := filepath.Join(t.TempDir(), "generation_config.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"top_p": 2}`), 0o644))
	_, err = LoadGenerationConfig(path)
	require.ErrorContains(t, err, path+": generation config: top_p")
}

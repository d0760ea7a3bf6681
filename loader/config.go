package loader

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// ConfigFileName is the name of a checkpoint's model configuration file.
const ConfigFileName = "config.json"

// ModelConfig is the part of a Qwen3-VL (or Qwen3 text) config.json that qvl
// needs. Token ids that the file does not give are -1.
type ModelConfig struct {
	// ModelType is the top-level model_type ("qwen3_vl", "qwen3"); the
	// text_config's own model_type is not used.
	ModelType             string
	HiddenSize            int
	NumLayers             int // num_hidden_layers
	NumHeads              int // num_attention_heads
	NumKVHeads            int // num_key_value_heads; defaults to NumHeads
	HeadDim               int // head_dim; Validate sets HiddenSize/NumHeads when 0
	IntermediateSize      int
	VocabSize             int
	MaxPositionEmbeddings int     // 0 when absent
	RMSNormEps            float64 // defaults to 1e-6
	RopeTheta             float64
	// RopeType is rope_type (or the older "type") of the rope parameters;
	// "default" (also "" and "mrope") is the only kind qvl runs.
	RopeType         string
	MRopeSection     []int // [t,h,w]; nil for plain RoPE
	MRopeInterleaved bool
	// TieWordEmbeddings defaults to false, as for Qwen3 and Qwen3-VL.
	TieWordEmbeddings bool
	AttentionBias     bool
	HiddenAct         string // defaults to "silu"

	BOSTokenID         int
	EOSTokenIDs        []int // eos_token_id, an int or a list
	ImageTokenID       int
	VideoTokenID       int
	VisionStartTokenID int
	VisionEndTokenID   int

	// DeepStackVisualIndexes is vision_config.deepstack_visual_indexes (the
	// vision layers the DeepStack features were taken from).
	DeepStackVisualIndexes []int
	DeepStackLevels        int // len(DeepStackVisualIndexes)
	SpatialMergeSize       int // vision_config.spatial_merge_size, default 2
	VisionOutHiddenSize    int // vision_config.out_hidden_size, 0 when absent
}

// LoadConfig reads and validates a config.json; path is the file or the
// directory that holds it. A missing file gives an error wrapping
// fs.ErrNotExist.
func LoadConfig(path string) (*ModelConfig, error) {
	path = resolveFile(path, ConfigFileName)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load model config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// resolveFile returns dir/name when path is a directory, else path.
func resolveFile(path, name string) string {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return filepath.Join(path, name)
	}
	return path
}

// jsonFields is a JSON object's members with the name of where each came
// from, for error messages.
type jsonFields map[string]jsonField

type jsonField struct {
	raw  json.RawMessage
	name string // e.g. "text_config.hidden_size"
}

func isNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

// objectFields decodes raw as a JSON object; null members are dropped.
func objectFields(raw json.RawMessage, prefix string) (jsonFields, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		if prefix == "" {
			return nil, fmt.Errorf("not a JSON object: %v", err)
		}
		return nil, fmt.Errorf("%s is not a JSON object: %v", prefix[:len(prefix)-1], err)
	}
	out := jsonFields{}
	for k, v := range m {
		if !isNull(v) {
			out[k] = jsonField{v, prefix + k}
		}
	}
	return out, nil
}

func (f jsonFields) integer(key string, def int) (int, error) {
	v, ok := f[key]
	if !ok {
		return def, nil
	}
	return parseInt(v)
}

func parseInt(v jsonField) (int, error) {
	var n json.Number
	// json.Number also takes a quoted number; a config string is an error.
	if raw := bytes.TrimSpace(v.raw); len(raw) == 0 || raw[0] == '"' || json.Unmarshal(raw, &n) != nil {
		return 0, fmt.Errorf("%s: want an integer, got %s", v.name, truncate(string(v.raw), 40))
	}
	if i, err := strconv.ParseInt(string(n), 10, 0); err == nil {
		return int(i), nil
	}
	x, err := n.Float64()
	if err != nil || x != math.Trunc(x) || math.Abs(x) > 1<<53 {
		return 0, fmt.Errorf("%s: want an integer, got %s", v.name, n)
	}
	return int(x), nil
}

func (f jsonFields) float(key string, def float64) (float64, error) {
	v, ok := f[key]
	if !ok {
		return def, nil
	}
	var x float64
	if err := json.Unmarshal(v.raw, &x); err != nil {
		return 0, fmt.Errorf("%s: want a number, got %s", v.name, truncate(string(v.raw), 40))
	}
	return x, nil
}

func (f jsonFields) str(key, def string) (string, error) {
	v, ok := f[key]
	if !ok {
		return def, nil
	}
	var s string
	if err := json.Unmarshal(v.raw, &s); err != nil {
		return "", fmt.Errorf("%s: want a string, got %s", v.name, truncate(string(v.raw), 40))
	}
	return s, nil
}

func (f jsonFields) boolean(key string, def bool) (bool, error) {
	v, ok := f[key]
	if !ok {
		return def, nil
	}
	var b bool
	if err := json.Unmarshal(v.raw, &b); err != nil {
		return false, fmt.Errorf("%s: want true or false, got %s", v.name, truncate(string(v.raw), 40))
	}
	return b, nil
}

// ints reads an integer list; a single integer counts as a list of one when
// scalarOK.
func (f jsonFields) ints(key string, scalarOK bool) ([]int, error) {
	v, ok := f[key]
	if !ok {
		return nil, nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(v.raw, &list); err != nil {
		if scalarOK {
			n, err := parseInt(v)
			if err != nil {
				return nil, fmt.Errorf("%s: want an integer or a list of integers, got %s", v.name, truncate(string(v.raw), 40))
			}
			return []int{n}, nil
		}
		return nil, fmt.Errorf("%s: want a list of integers, got %s", v.name, truncate(string(v.raw), 40))
	}
	out := make([]int, len(list))
	for i, r := range list {
		n, err := parseInt(jsonField{r, fmt.Sprintf("%s[%d]", v.name, i)})
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

func (f jsonFields) object(key string) (jsonFields, error) {
	v, ok := f[key]
	if !ok {
		return jsonFields{}, nil
	}
	return objectFields(v.raw, v.name+".")
}

// ParseConfig parses config.json bytes in any of the forms Qwen3-VL and
// Qwen3 checkpoints use, applies defaults and validates the result:
//   - hub form: model fields in text_config, with rope_scaling
//     {rope_type | type, mrope_section, mrope_interleaved} and rope_theta;
//   - transformers-v5 form: rope_parameters {rope_type, rope_theta,
//     mrope_section, mrope_interleaved} inside text_config;
//   - flat text-only form: the same fields at the top level.
//
// A field in text_config wins over the same field at the top level; the top
// level supplies fields text_config lacks (tie_word_embeddings,
// image_token_id, ...). JSON nulls count as absent.
func ParseConfig(data []byte) (*ModelConfig, error) {
	top, err := objectFields(data, "")
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	text, err := top.object("text_config")
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	vision, err := top.object("vision_config")
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	merged := jsonFields{}
	for k, v := range top {
		merged[k] = v
	}
	for k, v := range text {
		merged[k] = v
	}

	c := &ModelConfig{}
	var errs []error
	take := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var e error
	c.ModelType, e = top.str("model_type", "")
	take(e)
	c.HiddenSize, e = merged.integer("hidden_size", 0)
	take(e)
	c.NumLayers, e = merged.integer("num_hidden_layers", 0)
	take(e)
	c.NumHeads, e = merged.integer("num_attention_heads", 0)
	take(e)
	c.NumKVHeads, e = merged.integer("num_key_value_heads", c.NumHeads)
	take(e)
	c.HeadDim, e = merged.integer("head_dim", 0)
	take(e)
	c.IntermediateSize, e = merged.integer("intermediate_size", 0)
	take(e)
	c.VocabSize, e = merged.integer("vocab_size", 0)
	take(e)
	c.MaxPositionEmbeddings, e = merged.integer("max_position_embeddings", 0)
	take(e)
	c.RMSNormEps, e = merged.float("rms_norm_eps", 1e-6)
	take(e)
	c.TieWordEmbeddings, e = merged.boolean("tie_word_embeddings", false)
	take(e)
	c.AttentionBias, e = merged.boolean("attention_bias", false)
	take(e)
	c.HiddenAct, e = merged.str("hidden_act", "silu")
	take(e)
	c.BOSTokenID, e = merged.integer("bos_token_id", -1)
	take(e)
	c.EOSTokenIDs, e = merged.ints("eos_token_id", true)
	take(e)
	c.ImageTokenID, e = merged.integer("image_token_id", -1)
	take(e)
	c.VideoTokenID, e = merged.integer("video_token_id", -1)
	take(e)
	c.VisionStartTokenID, e = merged.integer("vision_start_token_id", -1)
	take(e)
	c.VisionEndTokenID, e = merged.integer("vision_end_token_id", -1)
	take(e)

	// Rope: v5 rope_parameters, else the hub's rope_scaling + rope_theta.
	rope, e := merged.object("rope_parameters")
	take(e)
	if len(rope) == 0 {
		rope, e = merged.object("rope_scaling")
		take(e)
	}
	c.RopeTheta, e = merged.float("rope_theta", 0)
	take(e)
	if _, ok := rope["rope_theta"]; ok {
		c.RopeTheta, e = rope.float("rope_theta", 0)
		take(e)
	}
	c.RopeType, e = rope.str("rope_type", "")
	take(e)
	if c.RopeType == "" {
		c.RopeType, e = rope.str("type", "")
		take(e)
	}
	c.MRopeSection, e = rope.ints("mrope_section", false)
	take(e)
	c.MRopeInterleaved, e = rope.boolean("mrope_interleaved", false)
	take(e)

	c.DeepStackVisualIndexes, e = vision.ints("deepstack_visual_indexes", false)
	take(e)
	if len(c.DeepStackVisualIndexes) == 0 {
		c.DeepStackVisualIndexes = nil
	}
	c.DeepStackLevels = len(c.DeepStackVisualIndexes)
	c.SpatialMergeSize, e = vision.integer("spatial_merge_size", 2)
	take(e)
	c.VisionOutHiddenSize, e = vision.integer("out_hidden_size", 0)
	take(e)

	if len(errs) > 0 {
		return nil, fmt.Errorf("config: %w", joinErrs(errs))
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks the configuration and fills HeadDim with
// HiddenSize/NumHeads when it is 0. It checks: positive sizes; heads
// divisible by KV heads; even head_dim; an mrope_section of three
// non-negative parts summing to head_dim/2; rope type "default"; hidden_act
// "silu"; no attention bias; DeepStack levels within the layer count;
// vision out_hidden_size equal to hidden_size; token ids inside the
// vocabulary. All problems are reported together.
func (c *ModelConfig) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.HeadDim == 0 && c.NumHeads > 0 && c.HiddenSize%c.NumHeads == 0 {
		c.HeadDim = c.HiddenSize / c.NumHeads
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"hidden_size", c.HiddenSize}, {"num_hidden_layers", c.NumLayers}, {"num_attention_heads", c.NumHeads},
		{"num_key_value_heads", c.NumKVHeads}, {"head_dim", c.HeadDim}, {"intermediate_size", c.IntermediateSize},
		{"vocab_size", c.VocabSize}, {"vision_config.spatial_merge_size", c.SpatialMergeSize},
	} {
		if f.v <= 0 {
			bad("%s must be positive, got %d", f.name, f.v)
		}
	}
	if c.MaxPositionEmbeddings < 0 {
		bad("max_position_embeddings must not be negative, got %d", c.MaxPositionEmbeddings)
	}
	if !(c.RMSNormEps > 0) || math.IsInf(c.RMSNormEps, 0) {
		bad("rms_norm_eps must be a positive number, got %g", c.RMSNormEps)
	}
	if !(c.RopeTheta > 0) || math.IsInf(c.RopeTheta, 0) {
		bad("rope_theta must be a positive number, got %g (absent?)", c.RopeTheta)
	}
	if c.NumHeads > 0 && c.NumKVHeads > 0 && c.NumHeads%c.NumKVHeads != 0 {
		bad("num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)", c.NumHeads, c.NumKVHeads)
	}
	if c.HeadDim%2 != 0 {
		bad("head_dim must be even, got %d", c.HeadDim)
	}
	if c.MRopeSection != nil {
		sum, neg := 0, false
		for _, s := range c.MRopeSection {
			sum += s
			neg = neg || s < 0
		}
		switch {
		case len(c.MRopeSection) != 3:
			bad("mrope_section must have 3 parts [t, h, w], got %v", c.MRopeSection)
		case neg:
			bad("mrope_section parts must not be negative, got %v", c.MRopeSection)
		case c.HeadDim > 0 && sum != c.HeadDim/2:
			bad("mrope_section %v sums to %d, want head_dim/2 = %d", c.MRopeSection, sum, c.HeadDim/2)
		}
	}
	switch c.RopeType {
	case "", "default", "mrope":
	default:
		bad("rope_type %q is not supported (want \"default\")", c.RopeType)
	}
	if c.HiddenAct != "silu" {
		bad("hidden_act %q is not supported (want \"silu\")", c.HiddenAct)
	}
	if c.AttentionBias {
		bad("attention_bias is true, but Qwen3 attention has no bias and qvl does not support it")
	}
	if c.DeepStackLevels != len(c.DeepStackVisualIndexes) && c.DeepStackVisualIndexes != nil {
		bad("DeepStackLevels %d differs from len(vision_config.deepstack_visual_indexes) = %d", c.DeepStackLevels, len(c.DeepStackVisualIndexes))
	}
	if c.DeepStackLevels < 0 || (c.NumLayers > 0 && c.DeepStackLevels > c.NumLayers) {
		bad("%d DeepStack levels do not fit in num_hidden_layers = %d", c.DeepStackLevels, c.NumLayers)
	}
	if c.VisionOutHiddenSize != 0 && c.VisionOutHiddenSize != c.HiddenSize {
		bad("vision_config.out_hidden_size %d must equal hidden_size %d", c.VisionOutHiddenSize, c.HiddenSize)
	}
	if c.VocabSize > 0 {
		for _, id := range []struct {
			name string
			v    int
		}{
			{"bos_token_id", c.BOSTokenID}, {"image_token_id", c.ImageTokenID}, {"video_token_id", c.VideoTokenID},
			{"vision_start_token_id", c.VisionStartTokenID}, {"vision_end_token_id", c.VisionEndTokenID},
		} {
			if id.v < -1 || id.v >= c.VocabSize {
				bad("%s %d is outside the vocabulary [0, %d)", id.name, id.v, c.VocabSize)
			}
		}
		for _, id := range c.EOSTokenIDs {
			if id < 0 || id >= c.VocabSize {
				bad("eos_token_id %d is outside the vocabulary [0, %d)", id, c.VocabSize)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("config: %w", joinErrs(errs))
	}
	return nil
}

type hubRope struct {
	MRopeInterleaved bool   `json:"mrope_interleaved"`
	MRopeSection     []int  `json:"mrope_section"`
	RopeType         string `json:"rope_type"`
}

type hubText struct {
	AttentionBias         bool     `json:"attention_bias"`
	BOSTokenID            *int     `json:"bos_token_id,omitempty"`
	EOSTokenID            any      `json:"eos_token_id,omitempty"`
	DType                 string   `json:"dtype"`
	HeadDim               int      `json:"head_dim"`
	HiddenAct             string   `json:"hidden_act"`
	HiddenSize            int      `json:"hidden_size"`
	IntermediateSize      int      `json:"intermediate_size"`
	MaxPositionEmbeddings int      `json:"max_position_embeddings,omitempty"`
	ModelType             string   `json:"model_type"`
	NumAttentionHeads     int      `json:"num_attention_heads"`
	NumHiddenLayers       int      `json:"num_hidden_layers"`
	NumKeyValueHeads      int      `json:"num_key_value_heads"`
	RMSNormEps            float64  `json:"rms_norm_eps"`
	RopeScaling           *hubRope `json:"rope_scaling,omitempty"`
	RopeTheta             float64  `json:"rope_theta"`
	TieWordEmbeddings     bool     `json:"tie_word_embeddings"`
	VocabSize             int      `json:"vocab_size"`
}

type hubVision struct {
	DeepStackVisualIndexes []int `json:"deepstack_visual_indexes"`
	OutHiddenSize          int   `json:"out_hidden_size"`
	SpatialMergeSize       int   `json:"spatial_merge_size"`
}

type hubConfig struct {
	Architectures      []string   `json:"architectures"`
	ModelType          string     `json:"model_type"`
	ImageTokenID       *int       `json:"image_token_id,omitempty"`
	VideoTokenID       *int       `json:"video_token_id,omitempty"`
	VisionStartTokenID *int       `json:"vision_start_token_id,omitempty"`
	VisionEndTokenID   *int       `json:"vision_end_token_id,omitempty"`
	TieWordEmbeddings  bool       `json:"tie_word_embeddings"`
	TextConfig         hubText    `json:"text_config"`
	VisionConfig       *hubVision `json:"vision_config,omitempty"`
}

func optID(id int) *int {
	if id < 0 {
		return nil
	}
	return &id
}

// JSON renders c in the hub form of a Qwen3-VL config.json: model fields in
// text_config with rope_scaling and rope_theta, token ids and
// tie_word_embeddings at the top level, and a vision_config stub holding
// deepstack_visual_indexes (0..DeepStackLevels-1 when the indexes are
// unknown), spatial_merge_size and out_hidden_size (hidden_size when 0).
// ParseConfig reads it back to an equal ModelConfig, except for those two
// filled-in values and a RopeType of "" or "mrope", written as "default".
// c is validated first.
func (c *ModelConfig) JSON() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	modelType := c.ModelType
	if modelType == "" {
		modelType = "qwen3_vl"
	}
	h := hubConfig{
		Architectures:      []string{"Qwen3VLForConditionalGeneration"},
		ModelType:          modelType,
		ImageTokenID:       optID(c.ImageTokenID),
		VideoTokenID:       optID(c.VideoTokenID),
		VisionStartTokenID: optID(c.VisionStartTokenID),
		VisionEndTokenID:   optID(c.VisionEndTokenID),
		TieWordEmbeddings:  c.TieWordEmbeddings,
		TextConfig: hubText{
			AttentionBias:         c.AttentionBias,
			BOSTokenID:            optID(c.BOSTokenID),
			DType:                 "bfloat16",
			HeadDim:               c.HeadDim,
			HiddenAct:             c.HiddenAct,
			HiddenSize:            c.HiddenSize,
			IntermediateSize:      c.IntermediateSize,
			MaxPositionEmbeddings: c.MaxPositionEmbeddings,
			ModelType:             modelType + "_text",
			NumAttentionHeads:     c.NumHeads,
			NumHiddenLayers:       c.NumLayers,
			NumKeyValueHeads:      c.NumKVHeads,
			RMSNormEps:            c.RMSNormEps,
			RopeTheta:             c.RopeTheta,
			TieWordEmbeddings:     c.TieWordEmbeddings,
			VocabSize:             c.VocabSize,
		},
	}
	switch len(c.EOSTokenIDs) {
	case 0:
	case 1:
		h.TextConfig.EOSTokenID = c.EOSTokenIDs[0]
	default:
		h.TextConfig.EOSTokenID = c.EOSTokenIDs
	}
	if c.MRopeSection != nil {
		ropeType := c.RopeType
		if ropeType == "" || ropeType == "mrope" {
			ropeType = "default"
		}
		h.TextConfig.RopeScaling = &hubRope{MRopeInterleaved: c.MRopeInterleaved, MRopeSection: c.MRopeSection, RopeType: ropeType}
	}
	idx := c.DeepStackVisualIndexes
	if idx == nil {
		idx = make([]int, c.DeepStackLevels)
		for i := range idx {
			idx[i] = i
		}
	}
	h.VisionConfig = &hubVision{DeepStackVisualIndexes: slices.Clone(idx), OutHiddenSize: c.VisionOutHiddenSize, SpatialMergeSize: c.SpatialMergeSize}
	if h.VisionConfig.OutHiddenSize == 0 {
		h.VisionConfig.OutHiddenSize = c.HiddenSize
	}
	return json.MarshalIndent(h, "", "  ")
}

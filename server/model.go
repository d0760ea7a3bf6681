package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/chat"
	"github.com/qvl-dev/qvl/loader/tokenizer"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/ml"
	"github.com/qvl-dev/qvl/runtime/model"
)

// Model is what a Server serves: an engine (not yet running: the server runs it) and what turns
// requests into its tokens and its tokens back into text.
type Model struct {
	// Engine schedules the requests.
	Engine *engine.Engine
	// Tokenizer encodes prompts and decodes tokens (for logprobs and echo).
	Tokenizer *tokenizer.Tokenizer
	// Template renders chat messages into a prompt.
	Template *chat.Template
	// Defaults are the sampling parameters a request gets for the fields it omits.
	Defaults SamplingDefaults
	// ProjectorDir is where the model's projector was loaded from (empty: none); Reload
	// re-reads it.
	ProjectorDir string
	// Close, when set, releases the model once the engine has stopped.
	Close func() error
}

// SamplingDefaults are the model's generation defaults (generation_config.json), applied to the
// fields a request omits, as vLLM does; nil fields fall back to the OpenAI defaults
// (temperature 1, no top-p/top-k/min-p, no penalty).
type SamplingDefaults struct {
	Temperature, TopP, MinP, RepetitionPenalty *float64
	TopK                                       *int
	// MaxTokens is max_new_tokens: the cap on generated tokens when a request gives none.
	MaxTokens *int
}

// LoadSamplingDefaults reads the sampling defaults of the generation_config.json in dir: the
// fields present among temperature, top_p, top_k, min_p, repetition_penalty and
// max_new_tokens. A missing file gives no defaults; a malformed one is an error.
func LoadSamplingDefaults(dir string) (SamplingDefaults, []int, error) {
	var d SamplingDefaults
	g, err := loader.LoadGenerationConfig(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return d, nil, nil
	}
	if err != nil {
		return d, nil, err
	}
	path := filepath.Join(dir, loader.GenerationConfigFileName)
	data, err := os.ReadFile(path)
	if err != nil {
		return d, nil, err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return d, nil, fmt.Errorf("%s: %w", path, err)
	}
	has := func(k string) bool { return notNull(raw[k]) }
	if has("temperature") {
		d.Temperature = &g.Temperature
	}
	if has("top_p") {
		d.TopP = &g.TopP
	}
	if has("top_k") {
		d.TopK = &g.TopK
	}
	if has("repetition_penalty") {
		d.RepetitionPenalty = &g.RepetitionPenalty
	}
	if has("min_p") {
		var v float64
		if err := json.Unmarshal(raw["min_p"], &v); err != nil || v < 0 || v > 1 || math.IsNaN(v) {
			return d, nil, fmt.Errorf("%s: min_p must be a number in [0, 1]", path)
		}
		d.MinP = &v
	}
	if has("max_new_tokens") {
		var v int
		if err := json.Unmarshal(raw["max_new_tokens"], &v); err != nil || v < 1 {
			return d, nil, fmt.Errorf("%s: max_new_tokens must be a positive integer", path)
		}
		d.MaxTokens = &v
	}
	return d, g.EOSTokenIDs, nil
}

// LoadOptions configure LoadModel.
type LoadOptions struct {
	// ModelDir is a Qwen3-VL checkpoint directory (config.json, safetensors, tokenizer.json,
	// chat template, generation_config.json).
	ModelDir string
	// ProjectorDir is the projector directory for embedding parts (empty: none).
	ProjectorDir string
	// Backend runs the model; the Model's Close closes it.
	Backend ml.Backend
	// Engine sets the engine's limits; NewDetokenizer and EOSTokenIDs are filled in.
	Engine engine.Config
	// Progress, when set, is told the weight bytes loaded so far and in all.
	Progress func(done, total int64)
	// Logger receives notes (default slog.Default()).
	Logger *slog.Logger
}

// LoadModel loads a checkpoint, its tokenizer, chat template and generation defaults, and
// makes the engine. The chat template is the checkpoint's, or Qwen3-VL's when it ships none.
func LoadModel(o LoadOptions) (*Model, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	tok, err := tokenizer.Load(o.ModelDir)
	if err != nil {
		return nil, err
	}
	tmpl, err := chat.Load(o.ModelDir)
	if err != nil {
		// A checkpoint without a template file of its own gets Qwen3-VL's.
		for _, name := range []string{"chat_template.jinja", "chat_template.json"} {
			if _, serr := os.Stat(filepath.Join(o.ModelDir, name)); serr == nil {
				return nil, err
			}
		}
		log.Warn("the checkpoint has no chat template; using Qwen3-VL's", "dir", o.ModelDir, "reason", err.Error())
		if tmpl, err = chat.Default(); err != nil {
			return nil, err
		}
	}
	defaults, genEOS, err := LoadSamplingDefaults(o.ModelDir)
	if err != nil {
		return nil, err
	}
	m, err := model.Open(o.Backend, o.ModelDir, model.Options{ProjectorDir: o.ProjectorDir, Progress: o.Progress})
	if err != nil {
		return nil, err
	}
	cfg := o.Engine
	cfg.NewDetokenizer = func() engine.Detokenizer { return tok.NewDecoder(true) }
	eos := slices.Clone(m.Config.EOSTokenIDs)
	for _, id := range genEOS {
		if !slices.Contains(eos, id) && id < m.Config.VocabSize {
			eos = append(eos, id)
		}
	}
	cfg.EOSTokenIDs = eos
	e, err := engine.New(m, cfg)
	if err != nil {
		m.Close()
		return nil, err
	}
	return &Model{Engine: e, Tokenizer: tok, Template: tmpl, Defaults: defaults, ProjectorDir: o.ProjectorDir, Close: func() error {
		err := m.Close()
		if berr := o.Backend.Close(); err == nil {
			err = berr
		}
		return err
	}}, nil
}

package loader

import (
	"fmt"
	"math"
	"os"
)

// GenerationConfigFileName is the name of a checkpoint's generation defaults.
const GenerationConfigFileName = "generation_config.json"

// Defaults of GenerationConfig, those of transformers' GenerationConfig.
const (
	DefaultTemperature       = 1.0
	DefaultTopP              = 1.0
	DefaultTopK              = 50
	DefaultRepetitionPenalty = 1.0
)

// GenerationConfig holds the sampling defaults of generation_config.json.
// Absent fields take these defaults: EOSTokenIDs nil, BOSTokenID and
// PadTokenID -1, DoSample false, Temperature DefaultTemperature (also when
// 0), TopP DefaultTopP (also when 0), TopK DefaultTopK (an explicit 0 is
// kept: it disables top-k, as in transformers), RepetitionPenalty
// DefaultRepetitionPenalty (also when 0).
type GenerationConfig struct {
	EOSTokenIDs       []int
	BOSTokenID        int
	PadTokenID        int
	DoSample          bool
	Temperature       float64
	TopP              float64
	TopK              int
	RepetitionPenalty float64
}

// LoadGenerationConfig reads generation_config.json; path is the file or the
// directory that holds it. A missing file gives an error wrapping
// os.ErrNotExist, so that callers may treat it as "use the defaults".
func LoadGenerationConfig(path string) (*GenerationConfig, error) {
	path = resolveFile(path, GenerationConfigFileName)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load generation config: %w", err)
	}
	g, err := ParseGenerationConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return g, nil
}

// ParseGenerationConfig parses generation_config.json bytes, applies the
// documented defaults and checks the ranges: temperature ≥ 0, top_p in
// (0, 1], top_k ≥ 0, repetition_penalty > 0, token ids ≥ 0.
func ParseGenerationConfig(data []byte) (*GenerationConfig, error) {
	f, err := objectFields(data, "")
	if err != nil {
		return nil, fmt.Errorf("generation config: %w", err)
	}
	g := &GenerationConfig{}
	var errs []error
	take := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var e error
	g.EOSTokenIDs, e = f.ints("eos_token_id", true)
	take(e)
	g.BOSTokenID, e = f.integer("bos_token_id", -1)
	take(e)
	g.PadTokenID, e = f.integer("pad_token_id", -1)
	take(e)
	g.DoSample, e = f.boolean("do_sample", false)
	take(e)
	g.Temperature, e = f.float("temperature", 0)
	take(e)
	g.TopP, e = f.float("top_p", 0)
	take(e)
	g.TopK, e = f.integer("top_k", DefaultTopK)
	take(e)
	g.RepetitionPenalty, e = f.float("repetition_penalty", 0)
	take(e)
	if len(errs) == 0 {
		take(g.Validate())
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("generation config: %w", joinErrs(errs))
	}
	return g, nil
}

// Validate fills zero Temperature, TopP and RepetitionPenalty with their
// defaults and checks every field's range.
func (g *GenerationConfig) Validate() error {
	if g.Temperature == 0 {
		g.Temperature = DefaultTemperature
	}
	if g.TopP == 0 {
		g.TopP = DefaultTopP
	}
	if g.RepetitionPenalty == 0 {
		g.RepetitionPenalty = DefaultRepetitionPenalty
	}
	var errs []error
	if !(g.Temperature > 0) || math.IsInf(g.Temperature, 0) {
		errs = append(errs, fmt.Errorf("temperature must be a positive number, got %g", g.Temperature))
	}
	if !(g.TopP > 0 && g.TopP <= 1) {
		errs = append(errs, fmt.Errorf("top_p must be in (0, 1], got %g", g.TopP))
	}
	if g.TopK < 0 {
		errs = append(errs, fmt.Errorf("top_k must not be negative, got %d", g.TopK))
	}
	if !(g.RepetitionPenalty > 0) || math.IsInf(g.RepetitionPenalty, 0) {
		errs = append(errs, fmt.Errorf("repetition_penalty must be a positive number, got %g", g.RepetitionPenalty))
	}
	if g.BOSTokenID < -1 {
		errs = append(errs, fmt.Errorf("bos_token_id must not be negative, got %d", g.BOSTokenID))
	}
	if g.PadTokenID < -1 {
		errs = append(errs, fmt.Errorf("pad_token_id must not be negative, got %d", g.PadTokenID))
	}
	for _, id := range g.EOSTokenIDs {
		if id < 0 {
			errs = append(errs, fmt.Errorf("eos_token_id must not be negative, got %d", id))
		}
	}
	return joinErrs(errs)
}

package loader

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// GoldenSet is a goldens directory (see shared/goldens/README.md): a model
// checkpoint in model/, a projector in projector/, cases.json and one
// <case>.safetensors per case.
type GoldenSet struct {
	Dir, Name string
	// SpecialIDs are cases.json's special_ids ("bos", "eos", "vs", "ve",
	// "vpad", "img", "vid").
	SpecialIDs map[string]int
	// Cases are in the order cases.json lists them.
	Cases []GoldenCase
}

// GoldenCase is one reference case. Its tensors are read on demand with
// OpenFile(File) (or Open).
type GoldenCase struct {
	Name string
	Kind string // "text", "image" or "custom"
	File string // path of <Name>.safetensors
	// PromptLen is prompt_len of a text case, 0 otherwise.
	PromptLen int
	// Grids are the pre-merge image grids (t, h, w) of an image case.
	Grids [][3]int
	// TokensPerEmbedding is tokens_per_embedding of a custom case.
	TokensPerEmbedding int
}

// Golden case kinds.
const (
	KindText   = "text"
	KindImage  = "image"
	KindCustom = "custom"
)

// ModelDir returns the path of the set's checkpoint directory.
func (g *GoldenSet) ModelDir() string { return filepath.Join(g.Dir, "model") }

// ProjectorDir returns the path of the set's projector directory.
func (g *GoldenSet) ProjectorDir() string { return filepath.Join(g.Dir, "projector") }

// Case returns the case called name.
func (g *GoldenSet) Case(name string) (GoldenCase, bool) {
	for _, c := range g.Cases {
		if c.Name == name {
			return c, true
		}
	}
	return GoldenCase{}, false
}

// Open memory-maps the case's tensors file; the caller closes it.
func (c GoldenCase) Open() (*File, error) { return OpenFile(c.File) }

// LoadGoldens reads dir/cases.json. Every case's kind must be text, image or
// custom and its <name>.safetensors must exist; the case order is the key
// order of the "cases" object.
func LoadGoldens(dir string) (*GoldenSet, error) {
	path := filepath.Join(dir, "cases.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load goldens: %w", err)
	}
	var doc struct {
		Name       string          `json:"name"`
		SpecialIDs map[string]int  `json:"special_ids"`
		Cases      json.RawMessage `json:"cases"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, formatErr(path, "", "not a cases file: %v", err)
	}
	if doc.Cases == nil {
		return nil, formatErr(path, "", "no \"cases\" object")
	}
	names, raws, err := orderedObject(doc.Cases)
	if err != nil {
		return nil, formatErr(path, "", "cases: %v", err)
	}
	g := &GoldenSet{Dir: dir, Name: doc.Name, SpecialIDs: doc.SpecialIDs}
	for i, name := range names {
		var c struct {
			Kind               string   `json:"kind"`
			PromptLen          int      `json:"prompt_len"`
			Grids              [][3]int `json:"grids"`
			TokensPerEmbedding int      `json:"tokens_per_embedding"`
		}
		if err := json.Unmarshal(raws[i], &c); err != nil {
			return nil, formatErr(path, "", "case %q: %v", name, err)
		}
		switch c.Kind {
		case KindText, KindImage, KindCustom:
		default:
			return nil, formatErr(path, "", "case %q: kind %q, want text, image or custom", name, c.Kind)
		}
		if name == "" || filepath.Base(name) != name {
			return nil, formatErr(path, "", "case name %q is not a plain file name", name)
		}
		file := filepath.Join(dir, name+".safetensors")
		if _, err := os.Stat(file); err != nil {
			return nil, formatErr(path, "", "case %q: %v", name, err)
		}
		g.Cases = append(g.Cases, GoldenCase{Name: name, Kind: c.Kind, File: file, PromptLen: c.PromptLen, Grids: c.Grids, TokensPerEmbedding: c.TokensPerEmbedding})
	}
	return g, nil
}

// orderedObject returns the keys and values of the JSON object raw in the
// order they appear; a repeated key is an error.
func orderedObject(raw json.RawMessage) ([]string, []json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, nil, fmt.Errorf("want a JSON object, got %v", tok)
	}
	var keys []string
	var vals []json.RawMessage
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		k := tok.(string)
		if seen[k] {
			return nil, nil, fmt.Errorf("key %q appears twice", k)
		}
		seen[k] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, err
		}
		keys = append(keys, k)
		vals = append(vals, v)
	}
	return keys, vals, nil
}

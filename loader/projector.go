package loader

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// File names of a projector directory.
const (
	ProjectorConfigFileName  = "projector.json"
	ProjectorWeightsFileName = "projector.safetensors"
)

// Projector activations.
const (
	ActivationGELU     = "gelu"              // exact: x/2 (1 + erf(x/√2))
	ActivationGELUTanh = "gelu_pytorch_tanh" // the tanh approximation
)

// ProjectorConfig describes the custom-embedding projector of projector.json:
// out = fc2(act(fc1(x))) maps one InputDim embedding to TokensPerEmbedding
// tokens of OutputDim (the model's hidden size). The tokens take image
// positions with the pre-merge grid GridTHW, whose t*h*w/4 equals
// TokensPerEmbedding.
type ProjectorConfig struct {
	InputDim           int    `json:"input_dim"`
	HiddenDim          int    `json:"hidden_dim"`
	TokensPerEmbedding int    `json:"tokens_per_embedding"`
	OutputDim          int    `json:"output_dim"`
	Activation         string `json:"activation"`
	GridTHW            [3]int `json:"grid_thw"`
}

// Validate checks that the sizes are positive, the activation is
// ActivationGELU or ActivationGELUTanh, and GridTHW is positive with even h
// and w (the 2×2 spatial merge) and t*h*w/4 == TokensPerEmbedding.
func (c *ProjectorConfig) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{{"input_dim", c.InputDim}, {"hidden_dim", c.HiddenDim}, {"tokens_per_embedding", c.TokensPerEmbedding}, {"output_dim", c.OutputDim}} {
		if f.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", f.name, f.v))
		}
	}
	if c.Activation != ActivationGELU && c.Activation != ActivationGELUTanh {
		errs = append(errs, fmt.Errorf("activation %q is not supported (want %q or %q)", c.Activation, ActivationGELU, ActivationGELUTanh))
	}
	g := c.GridTHW
	switch {
	case g[0] <= 0 || g[1] <= 0 || g[2] <= 0:
		errs = append(errs, fmt.Errorf("grid_thw %v must be positive", g))
	case g[1]%2 != 0 || g[2]%2 != 0:
		errs = append(errs, fmt.Errorf("grid_thw %v must have even h and w (2x2 spatial merge)", g))
	case g[0]*g[1]*g[2]/4 != c.TokensPerEmbedding:
		errs = append(errs, fmt.Errorf("grid_thw %v gives t*h*w/4 = %d tokens, but tokens_per_embedding is %d", g, g[0]*g[1]*g[2]/4, c.TokensPerEmbedding))
	}
	return joinErrs(errs)
}

// Projector is a loaded projector: its config and its four weight tensors,
// which alias the mapping of projector.safetensors until Close.
type Projector struct {
	Config                 ProjectorConfig
	FC1W, FC1B, FC2W, FC2B *Tensor
	file                   *File
}

// LoadProjector reads projector.json and projector.safetensors from dir and
// checks the weights against the config: fc1.weight [hidden_dim, input_dim],
// fc1.bias [hidden_dim], fc2.weight [tokens*output_dim, hidden_dim],
// fc2.bias [tokens*output_dim], each of a float dtype. A projector.json
// without grid_thw gets [1, 2, 2*tokens_per_embedding].
func LoadProjector(dir string) (*Projector, error) {
	cfgPath := filepath.Join(dir, ProjectorConfigFileName)
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("load projector: %w", err)
	}
	cfg, err := parseProjectorConfig(data)
	if err != nil {
		return nil, &FormatError{Path: cfgPath, Reason: err.Error()}
	}
	wPath := filepath.Join(dir, ProjectorWeightsFileName)
	f, err := OpenFile(wPath)
	if err != nil {
		return nil, fmt.Errorf("load projector: %w", err)
	}
	p := &Projector{Config: cfg, file: f}
	rows := cfg.TokensPerEmbedding * cfg.OutputDim
	for _, w := range []struct {
		name  string
		dst   **Tensor
		shape []int
	}{
		{"fc1.weight", &p.FC1W, []int{cfg.HiddenDim, cfg.InputDim}},
		{"fc1.bias", &p.FC1B, []int{cfg.HiddenDim}},
		{"fc2.weight", &p.FC2W, []int{rows, cfg.HiddenDim}},
		{"fc2.bias", &p.FC2B, []int{rows}},
	} {
		t, err := f.Tensor(w.name)
		if err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("load projector: %w", err)
		}
		if !t.ShapeIs(w.shape...) {
			_ = f.Close()
			return nil, formatErr(wPath, w.name, "shape %v, want %v from %s", t.Shape, w.shape, ProjectorConfigFileName)
		}
		if !t.DType.IsFloat() {
			_ = f.Close()
			return nil, formatErr(wPath, w.name, "dtype %s, want BF16, F16, F32 or F64", t.DType)
		}
		*w.dst = t
	}
	return p, nil
}

func parseProjectorConfig(data []byte) (ProjectorConfig, error) {
	var c ProjectorConfig
	f, err := objectFields(data, "")
	if err != nil {
		return c, err
	}
	var errs []error
	take := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var e error
	c.InputDim, e = f.integer("input_dim", 0)
	take(e)
	c.HiddenDim, e = f.integer("hidden_dim", 0)
	take(e)
	c.TokensPerEmbedding, e = f.integer("tokens_per_embedding", 0)
	take(e)
	c.OutputDim, e = f.integer("output_dim", 0)
	take(e)
	c.Activation, e = f.str("activation", "")
	take(e)
	grid, e := f.ints("grid_thw", false)
	take(e)
	switch {
	case e != nil:
	case grid == nil:
		c.GridTHW = [3]int{1, 2, 2 * c.TokensPerEmbedding}
	case len(grid) != 3:
		take(fmt.Errorf("grid_thw must have 3 values [t, h, w], got %v", grid))
	default:
		c.GridTHW = [3]int(grid)
	}
	if len(errs) == 0 {
		take(c.Validate())
	}
	return c, joinErrs(errs)
}

// Close unmaps projector.safetensors; the weight tensors become invalid.
func (p *Projector) Close() error { return p.file.Close() }

// WriteProjector writes projector.json and a BF16 projector.safetensors to
// dir (created if needed). Weights are row-major: fc1w [hidden, input], fc1b
// [hidden], fc2w [tokens*output, hidden], fc2b [tokens*output]. An empty
// Activation becomes ActivationGELU and a zero GridTHW becomes
// [1, 2, 2*TokensPerEmbedding].
func WriteProjector(dir string, cfg ProjectorConfig, fc1w, fc1b, fc2w, fc2b []float32) error {
	if cfg.Activation == "" {
		cfg.Activation = ActivationGELU
	}
	if cfg.GridTHW == [3]int{} {
		cfg.GridTHW = [3]int{1, 2, 2 * cfg.TokensPerEmbedding}
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("write projector %s: %w", dir, err)
	}
	rows := cfg.TokensPerEmbedding * cfg.OutputDim
	tensors := []WriteTensor{
		{Name: "fc1.weight", DType: BF16, Shape: []int{cfg.HiddenDim, cfg.InputDim}, Data: BF16Bytes(fc1w)},
		{Name: "fc1.bias", DType: BF16, Shape: []int{cfg.HiddenDim}, Data: BF16Bytes(fc1b)},
		{Name: "fc2.weight", DType: BF16, Shape: []int{rows, cfg.HiddenDim}, Data: BF16Bytes(fc2w)},
		{Name: "fc2.bias", DType: BF16, Shape: []int{rows}, Data: BF16Bytes(fc2b)},
	}
	for _, t := range tensors {
		if want := product(t.Shape); len(t.Data)/2 != want {
			return fmt.Errorf("write projector %s: %s has %d values, want %d for shape %v", dir, t.Name, len(t.Data)/2, want, t.Shape)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write projector: %w", err)
	}
	if err := WriteFile(filepath.Join(dir, ProjectorWeightsFileName), tensors, nil); err != nil {
		return fmt.Errorf("write projector: %w", err)
	}
	js, err := json.MarshalIndent(struct {
		ProjectorConfig
		Layout string `json:"layout"`
	}{cfg, fmt.Sprintf("out = fc2(%s(fc1(x))) reshaped to [tokens_per_embedding, output_dim]", cfg.Activation)}, "", "  ")
	if err != nil {
		return fmt.Errorf("write projector: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, ProjectorConfigFileName), append(js, '\n')); err != nil {
		return fmt.Errorf("write projector: %w", err)
	}
	return nil
}

func product(dims []int) int {
	n := 1
	for _, d := range dims {
		n *= d
	}
	return n
}

// writeFileAtomic writes data to a temporary file beside path and renames it
// over path.
func writeFileAtomic(path string, data []byte) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Chmod(0o644); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

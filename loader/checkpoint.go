package loader

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
)

// VisualPrefix starts the name of every vision-encoder tensor of a Qwen3-VL
// checkpoint. qvl never reads these tensors.
const VisualPrefix = "model.visual."

// File names of a Hugging Face checkpoint directory.
const (
	SingleFileName = "model.safetensors"
	IndexFileName  = "model.safetensors.index.json"
)

// Checkpoint is a Hugging Face model directory: either one model.safetensors
// or the shards listed by model.safetensors.index.json. Tensors whose name
// starts with VisualPrefix are skipped when indexing (see SkipPrefix).
// It is safe for concurrent use.
type Checkpoint struct {
	// Dir is the directory the checkpoint was opened from.
	Dir string
	// Index is the path of the shard index, "" for a single-file checkpoint.
	Index string

	mu     sync.Mutex
	closed bool
	files  []*File
	byName map[string]*File
	names  []string
}

// OpenCheckpoint opens the checkpoint in dir. A model.safetensors file is
// preferred when present (as transformers does); otherwise the index is read
// and every shard that holds a non-visual tensor is opened. Shards named only
// by model.visual.* entries are not opened, so they may be absent. Errors:
// malformed index, a shard that is missing, a tensor the index maps to a
// shard that does not hold it, and a tensor defined by two shards.
func OpenCheckpoint(dir string) (*Checkpoint, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("open checkpoint %s: not a directory", dir)
	}
	c := &Checkpoint{Dir: dir, byName: map[string]*File{}}
	single := filepath.Join(dir, SingleFileName)
	if _, err := os.Stat(single); err == nil {
		f, err := OpenFile(single, SkipPrefix(VisualPrefix))
		if err != nil {
			return nil, err
		}
		c.files = []*File{f}
		for _, n := range f.Names() {
			c.byName[n] = f
		}
		c.names = f.Names()
		return c, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open checkpoint: %w", err)
	}
	index := filepath.Join(dir, IndexFileName)
	if _, err := os.Stat(index); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open checkpoint %s: neither %s nor %s found: %w", dir, SingleFileName, IndexFileName, fs.ErrNotExist)
	}
	c.Index = index
	if err := c.openShards(); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

type shardIndex struct {
	WeightMap map[string]string `json:"weight_map"`
}

func (c *Checkpoint) openShards() error {
	raw, err := os.ReadFile(c.Index)
	if err != nil {
		return fmt.Errorf("read shard index: %w", err)
	}
	var idx shardIndex
	if err := json.Unmarshal(raw, &idx); err != nil {
		return formatErr(c.Index, "", "index is not valid JSON of the form {\"weight_map\": {tensor: shard}}: %v", err)
	}
	if len(idx.WeightMap) == 0 {
		return formatErr(c.Index, "", "index has no weight_map entries")
	}
	// shard -> the non-visual tensors the index puts there
	want := map[string][]string{}
	for name, shard := range idx.WeightMap {
		if shard == "" || !filepath.IsLocal(shard) {
			return formatErr(c.Index, name, "shard name %q is not a file name inside the checkpoint directory", shard)
		}
		if strings.HasPrefix(name, VisualPrefix) {
			continue
		}
		want[shard] = append(want[shard], name)
	}
	if len(want) == 0 {
		return formatErr(c.Index, "", "index maps no tensor outside %s", VisualPrefix)
	}
	shards := make([]string, 0, len(want))
	for s := range want {
		shards = append(shards, s)
	}
	sort.Strings(shards)
	for _, shard := range shards {
		path := filepath.Join(c.Dir, shard)
		f, err := OpenFile(path, SkipPrefix(VisualPrefix))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return formatErr(c.Index, "", "index names shard %s, which is missing (%s)", shard, path)
			}
			return err
		}
		c.files = append(c.files, f)
		names := want[shard]
		sort.Strings(names)
		for _, n := range names {
			if !f.Has(n) {
				return formatErr(c.Index, n, "index maps it to shard %s, which does not hold it", shard)
			}
		}
		for _, n := range f.Names() {
			if prev, dup := c.byName[n]; dup {
				return formatErr(f.Path, n, "defined in two shards: %s and %s", filepath.Base(prev.Path), shard)
			}
			c.byName[n] = f
		}
	}
	c.names = make([]string, 0, len(c.byName))
	for n := range c.byName {
		c.names = append(c.names, n)
	}
	sort.Strings(c.names)
	return nil
}

// Tensor returns the tensor called name from whichever file holds it. Its
// Data is valid until Close. A model.visual.* name is always an error.
func (c *Checkpoint) Tensor(name string) (*Tensor, error) {
	if strings.HasPrefix(name, VisualPrefix) {
		return nil, fmt.Errorf("checkpoint %s: tensor %q belongs to the vision encoder, which qvl never reads: %w", c.Dir, name, ErrTensorNotFound)
	}
	f, ok := c.byName[name]
	if !ok {
		return nil, fmt.Errorf("checkpoint %s: tensor %q: %w", c.Dir, name, ErrTensorNotFound)
	}
	return f.Tensor(name)
}

// Has reports whether the checkpoint holds a tensor called name (never true
// for model.visual.* names).
func (c *Checkpoint) Has(name string) bool {
	_, ok := c.byName[name]
	return ok
}

// Names returns the sorted names of all tensors, model.visual.* excluded.
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Files returns the paths of the safetensors files that were opened.
func (c *Checkpoint) Files() []string {
	out := make([]string, len(c.files))
	for i, f := range c.files {
		out[i] = f.Path
	}
	return out
}

// Close unmaps every file. Tensors obtained from the checkpoint must not be
// used afterwards. Closing twice is not an error.
func (c *Checkpoint) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

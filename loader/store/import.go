package store

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/qvl-dev/qvl/loader"
)

// Names of the tensors (and metadata keys) ImportSafetensors reads.
const (
	// TensorEmbeddings holds KindEmbedding items: [N, D], one row per item.
	TensorEmbeddings = "embeddings"
	// TensorIDs names the rows of TensorEmbeddings.
	TensorIDs = "ids"
	// TensorImageEmbeds holds KindImageEmbeds items in vLLM's layout: [R, H·(1+levels)], the
	// rows of every item back to back (item j has t·h·w/4 rows for its grid).
	TensorImageEmbeds = "image_embeds"
	// TensorImageGridTHW is the pre-merge grid of each image item: integers [M, 3].
	TensorImageGridTHW = "image_grid_thw"
	// TensorImageIDs names the items of TensorImageEmbeds.
	TensorImageIDs = "image_ids"
)

// ImportOptions configure ImportSafetensors and ImportNPY.
type ImportOptions struct {
	// DType is the stored element type: "float32", "bfloat16", or "" / "auto" (bfloat16 when the
	// source is bfloat16, else float32).
	DType string
	// HiddenSize is the model's hidden size H, needed to split image-embedding rows
	// [tokens, H·(1+levels)] into the embedding and its DeepStack levels.
	HiddenSize int
	// IDs, when set, name the items in order, in place of the ids the source holds.
	IDs []string
	// Source is recorded in the store's metadata (default: the source file names).
	Source string
}

func (o ImportOptions) dtype(src loader.DType) (loader.DType, error) {
	switch strings.ToLower(o.DType) {
	case "", "auto":
		if src == loader.BF16 {
			return loader.BF16, nil
		}
		return loader.F32, nil
	case "float32", "f32":
		return loader.F32, nil
	case "bfloat16", "bf16":
		return loader.BF16, nil
	}
	return 0, fmt.Errorf("dtype %q: want float32, bfloat16 or auto", o.DType)
}

// ImportSafetensors builds the store dst from a safetensors file src holding
//   - TensorEmbeddings [N, D] (any float dtype) for N proprietary embeddings, named by ids;
//   - and/or TensorImageEmbeds [R, H·(1+levels)] with TensorImageGridTHW [M, 3] for M Qwen3-VL
//     images in vLLM's layout, named by image_ids (needs o.HiddenSize).
//
// Ids (for each kind) come from o.IDs, else from a metadata key of the same name as the ids
// tensor holding a JSON array of strings, else from that tensor: integers [N] (written in
// decimal) or U8 bytes holding the ids separated by newlines. Any other tensor is an error.
func ImportSafetensors(dst, src string, o ImportOptions) (Meta, error) {
	f, err := loader.OpenFile(src)
	if err != nil {
		return Meta{}, err
	}
	defer f.Close()
	known := []string{TensorEmbeddings, TensorIDs, TensorImageEmbeds, TensorImageGridTHW, TensorImageIDs}
	for _, n := range f.Names() {
		if !slices.Contains(known, n) {
			return Meta{}, fmt.Errorf("%s: unexpected tensor %q (an import file holds %s)", src, n, strings.Join(known, ", "))
		}
	}
	hasEmb, hasImg := f.Has(TensorEmbeddings), f.Has(TensorImageEmbeds)
	if !hasEmb && !hasImg {
		return Meta{}, fmt.Errorf("%s: neither %q [N, D] nor %q [R, H·(1+levels)] is present (tensors: %v)", src, TensorEmbeddings, TensorImageEmbeds, f.Names())
	}
	if len(o.IDs) > 0 && hasEmb && hasImg {
		return Meta{}, fmt.Errorf("%s: holds both kinds of items; give their ids in the file (%q, %q), not as a list", src, TensorIDs, TensorImageIDs)
	}
	var srcType loader.DType = loader.F32
	for _, n := range []string{TensorEmbeddings, TensorImageEmbeds} {
		if t, err := f.Tensor(n); err == nil && t.DType == loader.BF16 {
			srcType = loader.BF16
		}
	}
	dt, err := o.dtype(srcType)
	if err != nil {
		return Meta{}, err
	}
	if o.Source == "" {
		o.Source = src
	}
	w, err := Create(dst, Options{DType: dt, Source: o.Source})
	if err != nil {
		return Meta{}, err
	}
	if hasEmb {
		if err := importEmbeddings(w, f, src, o.IDs); err != nil {
			w.Abort()
			return Meta{}, err
		}
	}
	if hasImg {
		if err := importImages(w, f, src, o.IDs, o.HiddenSize); err != nil {
			w.Abort()
			return Meta{}, err
		}
	}
	return finish(w, dst)
}

// finish closes w and returns the written store's metadata.
func finish(w *Writer, dst string) (Meta, error) {
	if err := w.Close(); err != nil {
		return Meta{}, err
	}
	s, err := Open(dst)
	if err != nil {
		return Meta{}, err
	}
	defer s.Close()
	return s.Meta(), nil
}

func importEmbeddings(w *Writer, f *loader.File, src string, ids []string) error {
	t, err := f.Tensor(TensorEmbeddings)
	if err != nil {
		return err
	}
	if len(t.Shape) != 2 || t.Shape[0] == 0 || t.Shape[1] == 0 || !t.DType.IsFloat() {
		return fmt.Errorf("%s: %q is %s %v, want a float matrix [N, D]", src, TensorEmbeddings, t.DType, t.Shape)
	}
	n, d := t.Shape[0], t.Shape[1]
	if ids == nil {
		if ids, err = safetensorsIDs(f, src, TensorIDs); err != nil {
			return err
		}
	}
	if len(ids) != n {
		return fmt.Errorf("%s: %d ids for the %d rows of %q", src, len(ids), n, TensorEmbeddings)
	}
	var row []float32
	for i := 0; i < n; i++ {
		row = floatsAt(t.DType, t.Data, i*d, (i+1)*d, row)
		if err := w.AddEmbedding(ids[i], row); err != nil {
			return fmt.Errorf("%s: row %d: %w", src, i, err)
		}
	}
	return nil
}

func importImages(w *Writer, f *loader.File, src string, ids []string, hidden int) error {
	t, err := f.Tensor(TensorImageEmbeds)
	if err != nil {
		return err
	}
	if len(t.Shape) != 2 || t.Shape[0] == 0 || t.Shape[1] == 0 || !t.DType.IsFloat() {
		return fmt.Errorf("%s: %q is %s %v, want a float matrix [rows, H·(1+levels)]", src, TensorImageEmbeds, t.DType, t.Shape)
	}
	g, err := f.Tensor(TensorImageGridTHW)
	if err != nil {
		return fmt.Errorf("%s: %q [M, 3] must accompany %q: %w", src, TensorImageGridTHW, TensorImageEmbeds, err)
	}
	grids, err := g.Int64s()
	if err != nil || len(g.Shape) != 2 || g.Shape[1] != 3 {
		return fmt.Errorf("%s: %q is %s %v, want integers [M, 3]", src, TensorImageGridTHW, g.DType, g.Shape)
	}
	if ids == nil {
		if ids, err = safetensorsIDs(f, src, TensorImageIDs); err != nil {
			return err
		}
	}
	return addImageRows(w, src, t.DType, t.Data, t.Shape[0], t.Shape[1], grids, ids, hidden)
}

// addImageRows adds M image items whose rows lie back to back in data ([rows, cols] of dt).
func addImageRows(w *Writer, src string, dt loader.DType, data []byte, rows, cols int, grids []int64, ids []string, hidden int) error {
	m := len(grids) / 3
	if len(ids) != m {
		return fmt.Errorf("%s: %d ids for %d image grids", src, len(ids), m)
	}
	if hidden <= 0 {
		return fmt.Errorf("%s: image embeddings need the model's hidden size to split rows of %d values into the embedding and its DeepStack levels (give the hidden size or the model directory)", src, cols)
	}
	if cols%hidden != 0 {
		return fmt.Errorf("%s: image embedding rows have %d values, not a multiple of the hidden size %d", src, cols, hidden)
	}
	r := 0
	var buf []float32
	for j := 0; j < m; j++ {
		var grid [3]int
		for k := range grid {
			v := grids[3*j+k]
			if v <= 0 || v > math.MaxInt32 {
				return fmt.Errorf("%s: image %d (%q): image_grid_thw %v has an entry out of range", src, j, ids[j], grids[3*j:3*j+3])
			}
			grid[k] = int(v)
		}
		tokens, err := gridTokens(grid)
		if err != nil {
			return fmt.Errorf("%s: image %d (%q): %w", src, j, ids[j], err)
		}
		if tokens > rows-r {
			return fmt.Errorf("%s: image %d (%q) needs rows [%d, %d), the matrix has %d rows", src, j, ids[j], r, r+tokens, rows)
		}
		buf = floatsAt(dt, data, r*cols, (r+tokens)*cols, buf)
		if err := w.AddImageRows(ids[j], grid, buf, hidden); err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		r += tokens
	}
	if r != rows {
		return fmt.Errorf("%s: the image grids account for %d rows, the matrix has %d", src, r, rows)
	}
	return nil
}

// safetensorsIDs reads the ids stored under name: a metadata key holding a JSON array of
// strings, or a tensor of integers or of newline-separated U8 bytes.
func safetensorsIDs(f *loader.File, src, name string) ([]string, error) {
	meta, inMeta := f.Metadata[name]
	if inMeta && f.Has(name) {
		return nil, fmt.Errorf("%s: ids %q are given both as metadata and as a tensor", src, name)
	}
	if inMeta {
		var ids []string
		if err := json.Unmarshal([]byte(meta), &ids); err != nil {
			return nil, fmt.Errorf("%s: metadata %q must be a JSON array of strings: %w", src, name, err)
		}
		return ids, nil
	}
	t, err := f.Tensor(name)
	if err != nil {
		return nil, fmt.Errorf("%s: no ids: give them as metadata %q (a JSON array of strings), as a tensor %q, or as a list: %w", src, name, name, err)
	}
	if t.DType == loader.U8 {
		return splitIDs(src, t.Data)
	}
	v, err := t.Int64s()
	if err != nil || len(t.Shape) != 1 {
		return nil, fmt.Errorf("%s: tensor %q is %s %v, want integers [N] or U8 newline-separated ids", src, name, t.DType, t.Shape)
	}
	ids := make([]string, len(v))
	for i, x := range v {
		ids[i] = strconv.FormatInt(x, 10)
	}
	return ids, nil
}

// splitIDs splits newline-separated ids (a final newline is allowed, a "\r" before a newline is
// dropped); empty lines are an error.
func splitIDs(src string, data []byte) ([]string, error) {
	data = bytes.TrimSuffix(data, []byte("\n"))
	if len(data) == 0 {
		return nil, nil
	}
	lines := strings.Split(string(data), "\n")
	for i, l := range lines {
		l = strings.TrimSuffix(l, "\r")
		if l == "" {
			return nil, fmt.Errorf("%s: id on line %d is empty", src, i+1)
		}
		if !utf8.ValidString(l) {
			return nil, fmt.Errorf("%s: id on line %d is not valid UTF-8", src, i+1)
		}
		lines[i] = l
	}
	return lines, nil
}

// ReadIDs reads an id list: one id per line.
func ReadIDs(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read ids: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := bufio.NewReader(f).WriteTo(&buf); err != nil {
		return nil, fmt.Errorf("read ids %s: %w", path, err)
	}
	return splitIDs(path, buf.Bytes())
}

// NPYSource names the .npy files of an import.
type NPYSource struct {
	// Embeddings is a float array: [N, D] proprietary embeddings, or, with GridTHW,
	// [R, H·(1+levels)] Qwen3-VL image embeddings in vLLM's layout.
	Embeddings string
	// GridTHW, when set, is an integer array [M, 3] of the images' pre-merge grids; the items are
	// then of KindImageEmbeds.
	GridTHW string
}

// ImportNPY builds the store dst from .npy files, with the ids in o.IDs (one per item).
func ImportNPY(dst string, src NPYSource, o ImportOptions) (Meta, error) {
	emb, closeEmb, err := openNPY(src.Embeddings)
	if err != nil {
		return Meta{}, err
	}
	defer closeEmb()
	if !emb.dtype.IsFloat() || len(emb.shape) != 2 || emb.shape[0] == 0 || emb.shape[1] == 0 {
		return Meta{}, fmt.Errorf("%s: array is %s %v, want a float matrix", src.Embeddings, emb.dtype, emb.shape)
	}
	if len(o.IDs) == 0 {
		return Meta{}, fmt.Errorf("%s: a .npy import needs an id list (one id per line)", src.Embeddings)
	}
	dt, err := o.dtype(emb.dtype)
	if err != nil {
		return Meta{}, err
	}
	if o.Source == "" {
		o.Source = src.Embeddings
	}
	w, err := Create(dst, Options{DType: dt, Source: o.Source})
	if err != nil {
		return Meta{}, err
	}
	rows, cols := emb.shape[0], emb.shape[1]
	if src.GridTHW == "" {
		if len(o.IDs) != rows {
			w.Abort()
			return Meta{}, fmt.Errorf("%s: %d ids for %d rows", src.Embeddings, len(o.IDs), rows)
		}
		var row []float32
		for i := 0; i < rows; i++ {
			row = floatsAt(emb.dtype, emb.data, i*cols, (i+1)*cols, row)
			if err := w.AddEmbedding(o.IDs[i], row); err != nil {
				w.Abort()
				return Meta{}, fmt.Errorf("%s: row %d: %w", src.Embeddings, i, err)
			}
		}
		return finish(w, dst)
	}
	g, closeGrid, err := openNPY(src.GridTHW)
	if err != nil {
		w.Abort()
		return Meta{}, err
	}
	defer closeGrid()
	if g.dtype.IsFloat() || len(g.shape) != 2 || g.shape[1] != 3 {
		w.Abort()
		return Meta{}, fmt.Errorf("%s: array is %s %v, want integers [M, 3]", src.GridTHW, g.dtype, g.shape)
	}
	grids := make([]int64, 3*g.shape[0])
	for i := range grids {
		grids[i] = intAt(g.dtype, g.data, i)
	}
	if err := addImageRows(w, src.Embeddings, emb.dtype, emb.data, rows, cols, grids, o.IDs, o.HiddenSize); err != nil {
		w.Abort()
		return Meta{}, err
	}
	return finish(w, dst)
}

// openNPY maps a .npy file and parses its header; the returned function unmaps it.
func openNPY(path string) (*npyArray, func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open .npy: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("open .npy: %w", err)
	}
	if !st.Mode().IsRegular() || st.Size() < 10 || st.Size() > math.MaxInt {
		return nil, nil, fmt.Errorf("%s: not a readable .npy file (%d bytes)", path, st.Size())
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	a, err := parseNPY(path, data)
	if err != nil {
		_ = unix.Munmap(data)
		return nil, nil, err
	}
	return a, func() { _ = unix.Munmap(data) }, nil
}

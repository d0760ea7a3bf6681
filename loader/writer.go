package loader

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// WriteTensor is one tensor to be written by WriteFile. Data holds the
// little-endian element bytes in row-major order (see BF16Bytes, F32Bytes,
// I64Bytes).
type WriteTensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// WriteFile writes tensors to a safetensors file at path. The header lists
// "__metadata__" (when metadata is not empty) and then the tensors sorted by
// name, is padded with spaces to a multiple of 8 bytes, and the tensors' data
// follow contiguously in the same order. The file is written to a temporary
// file in the same directory, synced and renamed over path, so readers never
// see a partial file.
func WriteFile(path string, tensors []WriteTensor, metadata map[string]string) (err error) {
	sorted := slices.Clone(tensors)
	slices.SortFunc(sorted, func(a, b WriteTensor) int { return strings.Compare(a.Name, b.Name) })
	for i, t := range sorted {
		if err := checkWriteTensor(t); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		if i > 0 && sorted[i-1].Name == t.Name {
			return fmt.Errorf("write %s: tensor %q given twice", path, t.Name)
		}
	}
	header, err := buildHeader(sorted, metadata)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}

	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	w := bufio.NewWriterSize(tmp, 1<<20)
	var lenPrefix [8]byte
	binary.LittleEndian.PutUint64(lenPrefix[:], uint64(len(header)))
	if _, err = w.Write(lenPrefix[:]); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = w.Write(header); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	for _, t := range sorted {
		if _, err = w.Write(t.Data); err != nil {
			return fmt.Errorf("write %s: tensor %q: %w", path, t.Name, err)
		}
	}
	if err = w.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func checkWriteTensor(t WriteTensor) error {
	if t.Name == "" {
		return errors.New("tensor with an empty name")
	}
	if t.Name == "__metadata__" {
		return errors.New(`"__metadata__" is reserved and cannot name a tensor`)
	}
	if !t.DType.Valid() {
		return fmt.Errorf("tensor %q: invalid dtype %s", t.Name, t.DType)
	}
	n := int64(1)
	for _, d := range t.Shape {
		if d < 0 {
			return fmt.Errorf("tensor %q: shape %v has a negative dimension", t.Name, t.Shape)
		}
		if d != 0 && n > math.MaxInt64/int64(d) {
			return fmt.Errorf("tensor %q: shape %v has too many elements", t.Name, t.Shape)
		}
		n *= int64(d)
	}
	if want := n * int64(t.DType.Size()); int64(len(t.Data)) != want {
		return fmt.Errorf("tensor %q: %d data bytes, want %d for shape %v of %s", t.Name, len(t.Data), want, t.Shape, t.DType)
	}
	return nil
}

// buildHeader renders the JSON header for tensors (already sorted and
// checked), space-padded to a multiple of 8 bytes.
func buildHeader(tensors []WriteTensor, metadata map[string]string) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	first := true
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata) // keys come out sorted
		if err != nil {
			return nil, fmt.Errorf("metadata: %w", err)
		}
		b.WriteString(`"__metadata__":`)
		b.Write(m)
		first = false
	}
	var off int64
	for _, t := range tensors {
		if !first {
			b.WriteByte(',')
		}
		first = false
		name, err := json.Marshal(t.Name)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		sh, _ := json.Marshal(shape) // []int always marshals
		end := off + int64(len(t.Data))
		fmt.Fprintf(&b, `%s:{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}`, name, t.DType, sh, off, end)
		off = end
	}
	b.WriteByte('}')
	for b.Len()%8 != 0 {
		b.WriteByte(' ')
	}
	return b.Bytes(), nil
}

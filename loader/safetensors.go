package loader

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// MaxHeaderSize is the largest safetensors JSON header accepted, in bytes
// (the limit of the reference implementation).
const MaxHeaderSize = 100_000_000

// Tensor is one tensor of a safetensors file. Data aliases the read-only
// memory mapping of File: it must not be written to, and it becomes invalid
// (reading it faults) once the File or Checkpoint that returned it is closed.
// A scalar has an empty Shape and one element.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
	File  string
}

// File is one memory-mapped safetensors file. It is safe for concurrent use.
type File struct {
	// Path is the path the file was opened with.
	Path string
	// Metadata is the header's "__metadata__" map (empty when absent).
	Metadata map[string]string

	mu      sync.RWMutex
	data    []byte // whole file
	mapped  bool   // data comes from unix.Mmap
	closed  bool
	tensors map[string]*Tensor
	names   []string
	skipped []string
}

// OpenOption configures OpenFile.
type OpenOption func(*openOptions)

type openOptions struct {
	skipPrefixes []string
}

// SkipPrefix makes OpenFile leave out every tensor whose name starts with one
// of prefixes: its header entry is only checked for offsets that lie inside
// the data section and do not overlap other tensors (its dtype, shape and
// bytes are not validated, its pages are never touched), and it is absent
// from Names and Tensor. Skipped names are listed by Skipped.
func SkipPrefix(prefixes ...string) OpenOption {
	return func(o *openOptions) { o.skipPrefixes = append(o.skipPrefixes, prefixes...) }
}

// OpenFile memory-maps the safetensors file at path read-only and validates
// its header: header length, JSON syntax, each entry's dtype, shape and
// data_offsets (ordered, inside the data section, not overlapping, byte
// length = elements × dtype size) and the "__metadata__" map. Tensor bytes
// are not read. Gaps between tensors are allowed.
func OpenFile(path string, opts ...OpenOption) (*File, error) {
	var o openOptions
	for _, opt := range opts {
		opt(&o)
	}
	fd, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open safetensors file: %w", err)
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat safetensors file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, formatErr(path, "", "not a regular file")
	}
	size := st.Size()
	if size < 8 {
		return nil, formatErr(path, "", "file is %d bytes, shorter than the 8-byte header length prefix", size)
	}
	if size > math.MaxInt {
		return nil, formatErr(path, "", "file of %d bytes is too large to map", size)
	}
	data, err := unix.Mmap(int(fd.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	f, err := parseFile(path, data, o)
	if err != nil {
		_ = unix.Munmap(data)
		return nil, err
	}
	f.mapped = true
	return f, nil
}

// headerEntry is one tensor entry of the JSON header; pointers tell a
// missing key from a zero value.
type headerEntry struct {
	DType       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

type span struct {
	name       string
	begin, end int64
}

// parseFile validates the safetensors bytes data (the whole file) and indexes
// its tensors. It never reads the data section.
func parseFile(path string, data []byte, o openOptions) (*File, error) {
	if len(data) < 8 {
		return nil, formatErr(path, "", "file is %d bytes, shorter than the 8-byte header length prefix", len(data))
	}
	n := binary.LittleEndian.Uint64(data[:8])
	if n > MaxHeaderSize {
		return nil, formatErr(path, "", "header length %d exceeds the limit of %d bytes", n, MaxHeaderSize)
	}
	if n > uint64(len(data)-8) {
		return nil, formatErr(path, "", "header length %d is larger than the %d bytes that follow the length prefix", n, len(data)-8)
	}
	header := data[8 : 8+n]
	body := data[8+n:]
	bodyLen := int64(len(body))

	f := &File{Path: path, Metadata: map[string]string{}, data: data, tensors: map[string]*Tensor{}}
	dec := json.NewDecoder(bytes.NewReader(header))
	tok, err := dec.Token()
	if err != nil {
		return nil, formatErr(path, "", "header is not JSON: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, formatErr(path, "", "header is not a JSON object (starts with %v)", tok)
	}
	seen := map[string]bool{}
	var spans []span
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, formatErr(path, "", "header is not JSON: %v", err)
		}
		name := tok.(string) // object keys are always strings
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, formatErr(path, name, "header is not JSON: %v", err)
		}
		if seen[name] {
			return nil, formatErr(path, name, "appears twice in the header")
		}
		seen[name] = true
		if name == "__metadata__" {
			if err := parseMetadata(raw, f.Metadata); err != nil {
				return nil, formatErr(path, "", "__metadata__: %v", err)
			}
			continue
		}
		skip := hasAnyPrefix(name, o.skipPrefixes)
		var e headerEntry
		if err := json.Unmarshal(raw, &e); err != nil {
			if skip {
				// Only the offsets of a skipped tensor matter.
				var off struct {
					DataOffsets *[]int64 `json:"data_offsets"`
				}
				if json.Unmarshal(raw, &off) != nil {
					return nil, formatErr(path, name, "bad header entry: %v", err)
				}
				e.DataOffsets = off.DataOffsets
			} else {
				return nil, formatErr(path, name, "bad header entry: %v", err)
			}
		}
		begin, end, err := checkOffsets(e.DataOffsets, bodyLen)
		if err != nil {
			return nil, formatErr(path, name, "%v", err)
		}
		spans = append(spans, span{name, begin, end})
		if skip {
			f.skipped = append(f.skipped, name)
			continue
		}
		if e.DType == nil {
			return nil, formatErr(path, name, "entry has no dtype")
		}
		dt, err := ParseDType(*e.DType)
		if err != nil {
			return nil, formatErr(path, name, "%v", err)
		}
		if e.Shape == nil {
			return nil, formatErr(path, name, "entry has no shape")
		}
		shape, numel, err := checkShape(*e.Shape)
		if err != nil {
			return nil, formatErr(path, name, "%v", err)
		}
		if numel > math.MaxInt64/int64(dt.Size()) || numel*int64(dt.Size()) != end-begin {
			return nil, formatErr(path, name, "data_offsets [%d, %d] hold %d bytes, but shape %v of %s needs %d × %d bytes",
				begin, end, end-begin, shape, dt, numel, dt.Size())
		}
		f.tensors[name] = &Tensor{Name: name, DType: dt, Shape: shape, Data: body[begin:end:end], File: path}
		f.names = append(f.names, name)
	}
	if _, err := dec.Token(); err != nil { // closing '}'
		return nil, formatErr(path, "", "header is not JSON: %v", err)
	}
	if tok, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = fmt.Errorf("unexpected %v", tok)
		}
		return nil, formatErr(path, "", "header has trailing data after the JSON object: %v", err)
	}
	if err := checkOverlap(spans); err != nil {
		return nil, formatErr(path, "", "%v", err)
	}
	sort.Strings(f.names)
	sort.Strings(f.skipped)
	return f, nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func parseMetadata(raw json.RawMessage, into map[string]string) error {
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("must be an object mapping strings to strings: %v", err)
	}
	for k, v := range m {
		var s string
		if err := json.Unmarshal(v, &s); err != nil || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			return fmt.Errorf("must map strings to strings, but key %q has value %s", k, truncate(string(v), 40))
		}
		into[k] = s
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func checkOffsets(p *[]int64, bodyLen int64) (begin, end int64, err error) {
	if p == nil {
		return 0, 0, errors.New("entry has no data_offsets")
	}
	off := *p
	if len(off) != 2 {
		return 0, 0, fmt.Errorf("data_offsets has %d values, want 2 ([begin, end])", len(off))
	}
	begin, end = off[0], off[1]
	if begin < 0 || end < 0 {
		return 0, 0, fmt.Errorf("data_offsets [%d, %d] are negative", begin, end)
	}
	if begin > end {
		return 0, 0, fmt.Errorf("data_offsets [%d, %d] are not ordered (begin > end)", begin, end)
	}
	if end > bodyLen {
		return 0, 0, fmt.Errorf("data_offsets [%d, %d] lie outside the data section of %d bytes", begin, end, bodyLen)
	}
	return begin, end, nil
}

func checkShape(dims []int64) (shape []int, numel int64, err error) {
	shape = make([]int, len(dims))
	numel = 1
	for i, d := range dims {
		if d < 0 {
			return nil, 0, fmt.Errorf("shape %v has negative dimension %d at index %d", dims, d, i)
		}
		if d != 0 && numel > math.MaxInt64/d {
			return nil, 0, fmt.Errorf("shape %v has too many elements", dims)
		}
		numel *= d
		shape[i] = int(d)
	}
	return shape, numel, nil
}

// checkOverlap reports two entries whose byte ranges share a byte.
func checkOverlap(spans []span) error {
	spans = slices.DeleteFunc(spans, func(s span) bool { return s.begin == s.end })
	slices.SortFunc(spans, func(a, b span) int {
		if a.begin != b.begin {
			if a.begin < b.begin {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	for i := 1; i < len(spans); i++ {
		a, b := spans[i-1], spans[i]
		if b.begin < a.end {
			return fmt.Errorf("tensor %q data_offsets [%d, %d] overlap tensor %q [%d, %d]", b.name, b.begin, b.end, a.name, a.begin, a.end)
		}
	}
	return nil
}

// Names returns the names of the file's tensors, sorted, without the
// "__metadata__" entry and without skipped tensors.
func (f *File) Names() []string { return slices.Clone(f.names) }

// Skipped returns the sorted names of the tensors left out by SkipPrefix.
func (f *File) Skipped() []string { return slices.Clone(f.skipped) }

// Has reports whether the file holds a (non-skipped) tensor called name.
func (f *File) Has(name string) bool {
	_, ok := f.tensors[name]
	return ok
}

// Tensor returns the tensor called name. The returned value is the caller's
// to keep; its Data aliases the mapping and is valid until Close.
func (f *File) Tensor(name string) (*Tensor, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil, fmt.Errorf("%s: tensor %q: %w", f.Path, name, ErrClosed)
	}
	t, ok := f.tensors[name]
	if !ok {
		if slices.Contains(f.skipped, name) {
			return nil, fmt.Errorf("%s: tensor %q is skipped by its prefix and never read: %w", f.Path, name, ErrTensorNotFound)
		}
		return nil, fmt.Errorf("%s: tensor %q: %w", f.Path, name, ErrTensorNotFound)
	}
	c := *t
	c.Shape = slices.Clone(t.Shape)
	return &c, nil
}

// Close unmaps the file. Data slices of tensors obtained from it must not be
// used afterwards. Closing twice is not an error.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	if f.mapped {
		if err := unix.Munmap(f.data); err != nil {
			return fmt.Errorf("munmap %s: %w", f.Path, err)
		}
	}
	f.data = nil
	return nil
}

package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/qvl-dev/qvl/loader"
)

// Store is an open, memory-mapped store file. Lookup is safe for concurrent use; the slices an
// Item returns may alias the mapping and are valid until Close.
type Store struct {
	path string
	meta Meta

	mu     sync.RWMutex
	data   []byte
	closed bool

	count                    uint64
	dataOff, dataLen         uint64
	recordsOff               uint64
	tableOff, slots          uint64
	idsOff, idsLen, fileSize uint64
}

// Open maps the store at path read-only and checks its header and section bounds. Records are
// checked when they are read (Lookup, At) and all at once by Verify.
func Open(path string) (*Store, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open embedding store: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open embedding store: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, formatErr(path, "not a regular file")
	}
	if st.Size() < headerSize {
		return nil, formatErr(path, "file is %d bytes, shorter than the %d-byte header", st.Size(), headerSize)
	}
	if st.Size() > math.MaxInt {
		return nil, formatErr(path, "file of %d bytes is too large to map", st.Size())
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", path, err)
	}
	s, err := parse(path, data)
	if err != nil {
		_ = unix.Munmap(data)
		return nil, err
	}
	return s, nil
}

// parse checks the header of a whole store file held in data.
func parse(path string, data []byte) (*Store, error) {
	if len(data) < headerSize {
		return nil, formatErr(path, "file is %d bytes, shorter than the %d-byte header", len(data), headerSize)
	}
	if string(data[:8]) != Magic {
		return nil, formatErr(path, "not an embedding store (magic %q, want %q)", data[:8], Magic)
	}
	le := binary.LittleEndian
	if v := le.Uint32(data[8:]); v != Version {
		return nil, formatErr(path, "format version %d, this qvl reads version %d", v, Version)
	}
	s := &Store{path: path, data: data}
	s.count = le.Uint64(data[16:])
	metaOff, metaLen := le.Uint64(data[24:]), le.Uint64(data[32:])
	s.dataOff, s.dataLen = le.Uint64(data[40:]), le.Uint64(data[48:])
	s.recordsOff, s.tableOff, s.slots = le.Uint64(data[56:]), le.Uint64(data[64:]), le.Uint64(data[72:])
	s.idsOff, s.idsLen, s.fileSize = le.Uint64(data[80:]), le.Uint64(data[88:]), le.Uint64(data[96:])
	size := uint64(len(data))
	if s.fileSize != size {
		return nil, formatErr(path, "header says the file is %d bytes, it is %d (truncated or appended to)", s.fileSize, size)
	}
	if s.count >= math.MaxUint32/2 {
		return nil, formatErr(path, "item count %d is out of range", s.count)
	}
	if s.slots < 8 || bits.OnesCount64(s.slots) != 1 || s.slots <= s.count || s.slots > 1<<32 {
		return nil, formatErr(path, "hash table of %d slots for %d items (want a power of two ≥ 8 and above the count)", s.slots, s.count)
	}
	sections := []struct {
		name     string
		off, len uint64
		align    uint64
	}{
		{"data", s.dataOff, s.dataLen, dataAlign},
		{"records", s.recordsOff, s.count * recordSize, 8},
		{"hash table", s.tableOff, s.slots * 4, 4},
		{"ids", s.idsOff, s.idsLen, 1},
		{"metadata", metaOff, metaLen, 1},
	}
	for _, sec := range sections {
		if sec.off < headerSize || sec.off > size || sec.len > size-sec.off {
			return nil, formatErr(path, "%s section [%d, +%d) lies outside the file of %d bytes", sec.name, sec.off, sec.len, size)
		}
		if sec.off%sec.align != 0 {
			return nil, formatErr(path, "%s section at offset %d is not %d-byte aligned", sec.name, sec.off, sec.align)
		}
	}
	if err := json.Unmarshal(data[metaOff:metaOff+metaLen], &s.meta); err != nil {
		return nil, formatErr(path, "metadata: %v", err)
	}
	if s.meta.Embeddings < 0 || s.meta.ImageEmbeds < 0 || uint64(s.meta.Embeddings)+uint64(s.meta.ImageEmbeds) != s.count {
		return nil, formatErr(path, "metadata counts %d embeddings and %d image embeddings, the file holds %d items", s.meta.Embeddings, s.meta.ImageEmbeds, s.count)
	}
	if s.meta.EmbeddingDim < 0 || s.meta.HiddenSize < 0 || s.meta.DeepStackLevels < 0 {
		return nil, formatErr(path, "metadata has negative sizes: %+v", s.meta)
	}
	return s, nil
}

// Path is the file the store was opened from.
func (s *Store) Path() string { return s.path }

// Meta describes the store.
func (s *Store) Meta() Meta { return s.meta }

// Len is the number of items.
func (s *Store) Len() int { return int(s.count) }

// Close unmaps the file; the slices of its items become invalid.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	data := s.data
	s.data = nil
	if err := unix.Munmap(data); err != nil {
		return fmt.Errorf("unmap embedding store %s: %w", s.path, err)
	}
	return nil
}

// Item is one stored item. Its float slices alias the store's mapping where possible (F32 data
// on a little-endian host): they must not be written to and are valid until the Store is closed.
type Item struct {
	// ID is the item's id.
	ID string
	// Kind says what the data is.
	Kind Kind
	// DType is the stored element type (F32 or BF16).
	DType loader.DType
	// GridTHW is the pre-merge image grid of a KindImageEmbeds item (zero for KindEmbedding).
	GridTHW [3]int
	// Tokens is the number of rows: t·h·w/4 for KindImageEmbeds, 1 for KindEmbedding.
	Tokens int
	// Cols is the row size: the hidden size H for KindImageEmbeds, D for KindEmbedding.
	Cols int
	// Levels is the number of DeepStack levels of a KindImageEmbeds item.
	Levels int

	data []byte
}

// Bytes is the size of the item's stored data.
func (it Item) Bytes() int { return len(it.data) }

// Plane returns plane p of the item as float32: plane 0 is the embedding (or the embedding
// vector of a KindEmbedding item), plane 1+l the DeepStack level l, each [Tokens·Cols].
func (it Item) Plane(p int) ([]float32, error) {
	if p < 0 || p > it.Levels {
		return nil, fmt.Errorf("embedding store: item %q has planes 0..%d, not %d", it.ID, it.Levels, p)
	}
	n := it.Tokens * it.Cols
	b := it.data[p*n*it.DType.Size() : (p+1)*n*it.DType.Size()]
	if it.DType == loader.F32 {
		if v, ok := viewF32(b); ok {
			return v, nil
		}
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		return out, nil
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = loader.BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
	}
	return out, nil
}

// Embedding returns the vector of a KindEmbedding item.
func (it Item) Embedding() ([]float32, error) {
	if it.Kind != KindEmbedding {
		return nil, fmt.Errorf("embedding store: item %q is of kind %s, not %s", it.ID, it.Kind, KindEmbedding)
	}
	return it.Plane(0)
}

// ImageEmbeds returns a KindImageEmbeds item's embeddings [Tokens·Cols] and its DeepStack
// levels, each [Tokens·Cols].
func (it Item) ImageEmbeds() ([]float32, [][]float32, error) {
	if it.Kind != KindImageEmbeds {
		return nil, nil, fmt.Errorf("embedding store: item %q is of kind %s, not %s", it.ID, it.Kind, KindImageEmbeds)
	}
	emb, err := it.Plane(0)
	if err != nil {
		return nil, nil, err
	}
	var ds [][]float32
	for l := 0; l < it.Levels; l++ {
		d, err := it.Plane(l + 1)
		if err != nil {
			return nil, nil, err
		}
		ds = append(ds, d)
	}
	return emb, ds, nil
}

// littleEndian reports whether the host stores numbers little-endian.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// viewF32 reinterprets little-endian float32 bytes in place when the host allows it.
func viewF32(b []byte) ([]float32, bool) {
	if !littleEndian || len(b) == 0 || uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4), true
}

// Lookup finds the item with the given id in O(1): one hash, a short linear probe. A missing id
// gives an error wrapping ErrNotFound; a damaged file gives a *FormatError.
func (s *Store) Lookup(id string) (Item, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return Item{}, fmt.Errorf("embedding store %s is closed", s.path)
	}
	h := hashID(id)
	mask := s.slots - 1
	// The table has empty slots (slots > count), but a damaged one might not: bound the probe.
	for i, slot := uint64(0), h&mask; i < s.slots; i, slot = i+1, (slot+1)&mask {
		r := uint64(binary.LittleEndian.Uint32(s.data[s.tableOff+4*slot:]))
		if r == 0 {
			break
		}
		if r > s.count {
			return Item{}, formatErr(s.path, "hash table slot %d names record %d of %d", slot, r-1, s.count)
		}
		off := s.recordsOff + (r-1)*recordSize
		if binary.LittleEndian.Uint64(s.data[off+56:]) != h {
			continue
		}
		it, err := s.item(r - 1)
		if err != nil {
			return Item{}, err
		}
		if it.ID == id {
			return it, nil
		}
	}
	return Item{}, fmt.Errorf("%w: %q", ErrNotFound, id)
}

// At returns item i (0 ≤ i < Len) in the order the items were written.
func (s *Store) At(i int) (Item, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return Item{}, fmt.Errorf("embedding store %s is closed", s.path)
	}
	if i < 0 || uint64(i) >= s.count {
		return Item{}, fmt.Errorf("embedding store %s: item %d out of range [0, %d)", s.path, i, s.count)
	}
	return s.item(uint64(i))
}

// item decodes and checks record i.
func (s *Store) item(i uint64) (Item, error) {
	le := binary.LittleEndian
	rec := s.data[s.recordsOff+i*recordSize : s.recordsOff+(i+1)*recordSize]
	dataOff, dataLen, idOff := le.Uint64(rec[0:]), le.Uint64(rec[8:]), le.Uint64(rec[16:])
	idLen := uint64(le.Uint32(rec[24:]))
	it := Item{Kind: Kind(rec[28]), DType: loader.DType(rec[29]), Levels: int(le.Uint16(rec[30:])),
		Tokens: int(le.Uint32(rec[32:])), Cols: int(le.Uint32(rec[36:])),
		GridTHW: [3]int{int(le.Uint32(rec[40:])), int(le.Uint32(rec[44:])), int(le.Uint32(rec[48:]))}}
	bad := func(format string, args ...any) (Item, error) {
		return Item{}, formatErr(s.path, "record %d: %s", i, fmt.Sprintf(format, args...))
	}
	if idLen == 0 || idLen > MaxIDBytes || idOff > s.idsLen || idLen > s.idsLen-idOff {
		return bad("id [%d, +%d) lies outside the ids section of %d bytes", idOff, idLen, s.idsLen)
	}
	it.ID = string(s.data[s.idsOff+idOff : s.idsOff+idOff+idLen])
	if err := checkDType(it.DType); err != nil {
		return bad("item %q: %v", it.ID, err)
	}
	if it.Tokens <= 0 || it.Cols <= 0 || it.Tokens > maxDim || it.Cols > maxDim {
		return bad("item %q has %d rows of %d values", it.ID, it.Tokens, it.Cols)
	}
	switch it.Kind {
	case KindEmbedding:
		if it.Tokens != 1 || it.Levels != 0 || it.GridTHW != [3]int{} {
			return bad("embedding item %q has %d rows, %d levels, grid %v (want 1, 0, none)", it.ID, it.Tokens, it.Levels, it.GridTHW)
		}
		if it.Cols != s.meta.EmbeddingDim {
			return bad("embedding item %q has %d values, the store's embeddings have %d", it.ID, it.Cols, s.meta.EmbeddingDim)
		}
	case KindImageEmbeds:
		n, err := gridTokens(it.GridTHW)
		if err != nil || n != it.Tokens {
			return bad("image item %q has %d tokens for grid %v", it.ID, it.Tokens, it.GridTHW)
		}
		if it.Cols != s.meta.HiddenSize || it.Levels != s.meta.DeepStackLevels {
			return bad("image item %q has hidden size %d and %d levels, the store's have %d and %d", it.ID, it.Cols, it.Levels, s.meta.HiddenSize, s.meta.DeepStackLevels)
		}
	default:
		return bad("item %q has unknown kind %d", it.ID, it.Kind)
	}
	want, ok := mulSizes(uint64(it.Levels+1), uint64(it.Tokens), uint64(it.Cols), uint64(it.DType.Size()))
	if !ok || dataLen != want {
		return bad("item %q holds %d bytes, want %d", it.ID, dataLen, want)
	}
	if dataOff%dataAlign != 0 || dataOff > s.dataLen || dataLen > s.dataLen-dataOff {
		return bad("item %q data [%d, +%d) lies outside the data section of %d bytes or is unaligned", it.ID, dataOff, dataLen, s.dataLen)
	}
	it.data = s.data[s.dataOff+dataOff : s.dataOff+dataOff+dataLen]
	return it, nil
}

// Verify checks every record, that every id is unique and found by Lookup, and that every value
// is finite. It reads the whole file.
func (s *Store) Verify() error {
	for i := 0; i < s.Len(); i++ {
		it, err := s.At(i)
		if err != nil {
			return err
		}
		got, err := s.Lookup(it.ID)
		if err != nil {
			return fmt.Errorf("embedding store %s: item %d (%q): %w", s.path, i, it.ID, err)
		}
		if got.data == nil || &got.data[0] != &it.data[0] {
			return formatErr(s.path, "id %q is stored twice", it.ID)
		}
		for p := 0; p <= it.Levels; p++ {
			v, err := it.Plane(p)
			if err != nil {
				return err
			}
			for j, x := range v {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					return formatErr(s.path, "item %q plane %d value %d is %v", it.ID, p, j, x)
				}
			}
		}
	}
	return nil
}

// mulSizes multiplies sizes, reporting false on overflow.
func mulSizes(xs ...uint64) (uint64, bool) {
	p := uint64(1)
	for _, x := range xs {
		hi, lo := bits.Mul64(p, x)
		if hi != 0 {
			return 0, false
		}
		p = lo
	}
	return p, true
}

package store

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"time"
	"unicode/utf8"

	"github.com/qvl-dev/qvl/loader"
)

// Options configure Create.
type Options struct {
	// DType is the element type items are stored in: loader.F32 (the default, read in place) or
	// loader.BF16 (half the size, converted on read).
	DType loader.DType
	// Source describes where the data came from; it is kept in Meta.
	Source string
}

// record is one item's index entry.
type record struct {
	dataOff, dataLen uint64
	idOff            uint64
	idLen            uint32
	kind             Kind
	dtype            loader.DType
	levels           int
	tokens, cols     int
	grid             [3]int
	hash             uint64
}

// Writer builds a store file. Items are streamed to a temporary file beside the destination;
// Close writes the index and renames the file into place, so readers never see a partial store.
// A Writer is not safe for concurrent use.
type Writer struct {
	path, tmp string
	f         *os.File
	w         *bufio.Writer
	o         Options
	off       uint64 // bytes of data written
	recs      []record
	ids       []byte
	seen      map[string]struct{}
	meta      Meta
	buf       []byte
	done      bool
}

// Create starts a store that Close will write to path.
func Create(path string, o Options) (*Writer, error) {
	if err := checkDType(o.DType); err != nil {
		return nil, fmt.Errorf("create embedding store %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("create embedding store: %w", err)
	}
	w := &Writer{path: path, tmp: f.Name(), f: f, w: bufio.NewWriterSize(f, 1<<20), o: o, seen: map[string]struct{}{}}
	// The header is written last; reserve its room.
	if _, err := w.w.Write(make([]byte, headerSize)); err != nil {
		w.Abort()
		return nil, fmt.Errorf("create embedding store %s: %w", path, err)
	}
	return w, nil
}

// Len is the number of items added so far.
func (w *Writer) Len() int { return len(w.recs) }

// AddEmbedding adds a KindEmbedding item: a proprietary embedding vector. Every embedding of a
// store has the same size.
func (w *Writer) AddEmbedding(id string, v []float32) error {
	if w.meta.Embeddings > 0 && len(v) != w.meta.EmbeddingDim {
		return fmt.Errorf("embedding store: item %q has %d values, the store's embeddings have %d", id, len(v), w.meta.EmbeddingDim)
	}
	if len(v) == 0 {
		return fmt.Errorf("embedding store: item %q is empty", id)
	}
	err := w.add(id, KindEmbedding, [3]int{}, 1, len(v), 0, func(p, r int) []float32 { return v })
	if err == nil {
		w.meta.Embeddings++
		w.meta.EmbeddingDim = len(v)
	}
	return err
}

// AddImageEmbeds adds a KindImageEmbeds item from separate planes: embeds [tokens·H] and
// deepStack[l] [tokens·H], where tokens = t·h·w/4 for gridTHW (t, h, w).
func (w *Writer) AddImageEmbeds(id string, gridTHW [3]int, embeds []float32, deepStack [][]float32) error {
	tokens, err := gridTokens(gridTHW)
	if err != nil {
		return fmt.Errorf("embedding store: item %q: %w", id, err)
	}
	if len(embeds) == 0 || len(embeds)%tokens != 0 {
		return fmt.Errorf("embedding store: item %q: %d embedding values do not make %d tokens (grid %v)", id, len(embeds), tokens, gridTHW)
	}
	h := len(embeds) / tokens
	for l, d := range deepStack {
		if len(d) != len(embeds) {
			return fmt.Errorf("embedding store: item %q: DeepStack level %d has %d values, want %d", id, l, len(d), len(embeds))
		}
	}
	return w.addImage(id, gridTHW, tokens, h, len(deepStack), func(p, r int) []float32 {
		src := embeds
		if p > 0 {
			src = deepStack[p-1]
		}
		return src[r*h : (r+1)*h]
	})
}

// AddImageRows adds a KindImageEmbeds item given in vLLM's layout: rows [tokens, H·(1+levels)],
// each row the post-merger embedding followed by its DeepStack features, with hidden size H.
func (w *Writer) AddImageRows(id string, gridTHW [3]int, rows []float32, hidden int) error {
	tokens, err := gridTokens(gridTHW)
	if err != nil {
		return fmt.Errorf("embedding store: item %q: %w", id, err)
	}
	if hidden <= 0 {
		return fmt.Errorf("embedding store: item %q: hidden size %d must be positive", id, hidden)
	}
	if len(rows) == 0 || len(rows)%tokens != 0 || (len(rows)/tokens)%hidden != 0 {
		return fmt.Errorf("embedding store: item %q: %d values do not make %d rows of a multiple of the hidden size %d (grid %v)", id, len(rows), tokens, hidden, gridTHW)
	}
	cols := len(rows) / tokens
	return w.addImage(id, gridTHW, tokens, hidden, cols/hidden-1, func(p, r int) []float32 {
		return rows[r*cols+p*hidden : r*cols+(p+1)*hidden]
	})
}

func (w *Writer) addImage(id string, grid [3]int, tokens, h, levels int, row func(p, r int) []float32) error {
	if w.meta.ImageEmbeds > 0 && (h != w.meta.HiddenSize || levels != w.meta.DeepStackLevels) {
		return fmt.Errorf("embedding store: item %q has hidden size %d and %d DeepStack levels; the store's image embeddings have %d and %d",
			id, h, levels, w.meta.HiddenSize, w.meta.DeepStackLevels)
	}
	err := w.add(id, KindImageEmbeds, grid, tokens, h, levels, row)
	if err == nil {
		w.meta.ImageEmbeds++
		w.meta.HiddenSize, w.meta.DeepStackLevels = h, levels
	}
	return err
}

// gridTokens checks a pre-merge image_grid_thw and returns its number of merged tokens.
func gridTokens(g [3]int) (int, error) {
	if g[0] <= 0 || g[1] <= 0 || g[2] <= 0 || g[0] > maxDim || g[1] > maxDim || g[2] > maxDim {
		return 0, fmt.Errorf("image_grid_thw %v: every entry must be positive", g)
	}
	if g[1]%2 != 0 || g[2]%2 != 0 {
		return 0, fmt.Errorf("image_grid_thw %v: h and w must be even (2×2 spatial merge)", g)
	}
	n := uint64(g[0]) * uint64(g[1]) * uint64(g[2]) / 4
	if n > maxDim {
		return 0, fmt.Errorf("image_grid_thw %v makes %d tokens, more than %d", g, n, maxDim)
	}
	return int(n), nil
}

// add writes one item's planes (row(p, r) is row r of plane p) and records it.
func (w *Writer) add(id string, kind Kind, grid [3]int, tokens, cols, levels int, row func(p, r int) []float32) error {
	if w.done {
		return fmt.Errorf("embedding store %s: already closed", w.path)
	}
	switch {
	case id == "":
		return fmt.Errorf("embedding store: an id is empty (item %d)", len(w.recs))
	case len(id) > MaxIDBytes:
		return fmt.Errorf("embedding store: id %.40q… is %d bytes, more than %d", id, len(id), MaxIDBytes)
	case !utf8.ValidString(id):
		return fmt.Errorf("embedding store: id %q is not valid UTF-8", id)
	case cols > maxDim || levels > math.MaxUint16:
		return fmt.Errorf("embedding store: item %q is too large (%d columns, %d levels)", id, cols, levels)
	case len(w.recs) >= math.MaxUint32/2:
		return fmt.Errorf("embedding store: more than %d items", math.MaxUint32/2)
	}
	if _, dup := w.seen[id]; dup {
		return fmt.Errorf("embedding store: id %q is given twice", id)
	}
	// Check every value first, so that a bad item leaves no partial data behind.
	for p := 0; p <= levels; p++ {
		for r := 0; r < tokens; r++ {
			for i, v := range row(p, r) {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					what := "embedding"
					if p > 0 {
						what = fmt.Sprintf("DeepStack level %d", p-1)
					}
					return fmt.Errorf("embedding store: item %q: %s value %d of row %d is %v", id, what, i, r, v)
				}
			}
		}
	}
	pad := alignUp(w.off, dataAlign) - w.off
	if pad > 0 {
		if _, err := w.w.Write(make([]byte, pad)); err != nil {
			return w.fail(err)
		}
		w.off += pad
	}
	size := w.o.DType.Size()
	start := w.off
	for p := 0; p <= levels; p++ {
		for r := 0; r < tokens; r++ {
			x := row(p, r)
			w.buf = w.buf[:0]
			for _, v := range x {
				if w.o.DType == loader.BF16 {
					w.buf = binary.LittleEndian.AppendUint16(w.buf, loader.F32ToBF16(v))
				} else {
					w.buf = binary.LittleEndian.AppendUint32(w.buf, math.Float32bits(v))
				}
			}
			if _, err := w.w.Write(w.buf); err != nil {
				return w.fail(err)
			}
			w.off += uint64(len(x) * size)
		}
	}
	w.seen[id] = struct{}{}
	w.recs = append(w.recs, record{
		dataOff: start, dataLen: w.off - start, idOff: uint64(len(w.ids)), idLen: uint32(len(id)),
		kind: kind, dtype: w.o.DType, levels: levels, tokens: tokens, cols: cols, grid: grid, hash: hashID(id),
	})
	w.ids = append(w.ids, id...)
	return nil
}

func (w *Writer) fail(err error) error {
	w.Abort()
	return fmt.Errorf("write embedding store %s: %w", w.path, err)
}

// Abort discards the store being written.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	_ = w.f.Close()
	_ = os.Remove(w.tmp)
}

// Close writes the index and metadata, syncs the file and renames it to the destination path.
func (w *Writer) Close() error {
	if w.done {
		return fmt.Errorf("embedding store %s: already closed", w.path)
	}
	n := uint64(len(w.recs))
	dataLen := w.off
	recordsOff := alignUp(headerSize+dataLen, 8)
	if pad := recordsOff - (headerSize + dataLen); pad > 0 {
		if _, err := w.w.Write(make([]byte, pad)); err != nil {
			return w.fail(err)
		}
	}
	var rec [recordSize]byte
	for _, r := range w.recs {
		le := binary.LittleEndian
		le.PutUint64(rec[0:], r.dataOff)
		le.PutUint64(rec[8:], r.dataLen)
		le.PutUint64(rec[16:], r.idOff)
		le.PutUint32(rec[24:], r.idLen)
		rec[28] = byte(r.kind)
		rec[29] = byte(r.dtype)
		le.PutUint16(rec[30:], uint16(r.levels))
		le.PutUint32(rec[32:], uint32(r.tokens))
		le.PutUint32(rec[36:], uint32(r.cols))
		le.PutUint32(rec[40:], uint32(r.grid[0]))
		le.PutUint32(rec[44:], uint32(r.grid[1]))
		le.PutUint32(rec[48:], uint32(r.grid[2]))
		le.PutUint32(rec[52:], 0)
		le.PutUint64(rec[56:], r.hash)
		if _, err := w.w.Write(rec[:]); err != nil {
			return w.fail(err)
		}
	}
	// A load factor of at most one half keeps probes short and leaves empty slots to end them.
	slots := uint64(8)
	if n > 2 {
		slots = max(slots, 1<<bits.Len64(2*n-1))
	}
	table := make([]uint32, slots)
	for i, r := range w.recs {
		for s := r.hash & (slots - 1); ; s = (s + 1) & (slots - 1) {
			if table[s] == 0 {
				table[s] = uint32(i + 1)
				break
			}
		}
	}
	tableOff := recordsOff + n*recordSize
	tb := make([]byte, 4*len(table))
	for i, v := range table {
		binary.LittleEndian.PutUint32(tb[4*i:], v)
	}
	if _, err := w.w.Write(tb); err != nil {
		return w.fail(err)
	}
	idsOff := tableOff + 4*slots
	if _, err := w.w.Write(w.ids); err != nil {
		return w.fail(err)
	}
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return w.fail(err)
	}
	w.meta.UUID = hex.EncodeToString(u[:])
	w.meta.Created = time.Now().UTC().Format(time.RFC3339)
	w.meta.Source = w.o.Source
	meta, err := json.Marshal(w.meta)
	if err != nil {
		return w.fail(err)
	}
	metaOff := idsOff + uint64(len(w.ids))
	if _, err := w.w.Write(meta); err != nil {
		return w.fail(err)
	}
	fileSize := metaOff + uint64(len(meta))
	if err := w.w.Flush(); err != nil {
		return w.fail(err)
	}
	var h [headerSize]byte
	copy(h[:], Magic)
	le := binary.LittleEndian
	le.PutUint32(h[8:], Version)
	le.PutUint64(h[16:], n)
	le.PutUint64(h[24:], metaOff)
	le.PutUint64(h[32:], uint64(len(meta)))
	le.PutUint64(h[40:], headerSize)
	le.PutUint64(h[48:], dataLen)
	le.PutUint64(h[56:], recordsOff)
	le.PutUint64(h[64:], tableOff)
	le.PutUint64(h[72:], slots)
	le.PutUint64(h[80:], idsOff)
	le.PutUint64(h[88:], uint64(len(w.ids)))
	le.PutUint64(h[96:], fileSize)
	if _, err := w.f.WriteAt(h[:], 0); err != nil {
		return w.fail(err)
	}
	if err := w.f.Chmod(0o644); err != nil {
		return w.fail(err)
	}
	if err := w.f.Sync(); err != nil {
		return w.fail(err)
	}
	if err := w.f.Close(); err != nil {
		return w.fail(err)
	}
	w.done = true
	if err := os.Rename(w.tmp, w.path); err != nil {
		_ = os.Remove(w.tmp)
		return fmt.Errorf("write embedding store %s: %w", w.path, err)
	}
	return nil
}

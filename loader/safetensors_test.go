package loader

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOpenFileCorrupt(t *testing.T) {
	body16 := make([]byte, 16)
	for _, c := range []struct {
		name   string
		data   func() []byte // whole file, when not header+body16
		header string
		tensor string // tensor the message must name, if any
		reason string
	}{
		{name: "shorter than 8 bytes", data: func() []byte { return []byte{1, 2, 3, 4, 5} }, reason: "shorter than the 8-byte header length prefix"},
		{name: "empty file", data: func() []byte { return nil }, reason: "shorter than the 8-byte header length prefix"},
		{name: "header longer than file", data: func() []byte { return append(lenPrefix(1000), `{}`...) }, reason: "header length 1000 is larger than the 2 bytes"},
		{name: "absurd header length", data: func() []byte { return append(lenPrefix(200_000_000), `{}`...) }, reason: "header length 200000000 exceeds the limit"},
		{name: "header not JSON", header: `{"a": {"dtype": `, tensor: "a", reason: "header is not JSON"},
		{name: "header cut inside a key", header: `{"a`, reason: "header is not JSON"},
		{name: "header JSON array", header: `[1, 2]`, reason: "header is not a JSON object"},
		{name: "trailing garbage", header: `{} xx`, reason: "trailing data after the JSON object"},
		{name: "entry not an object", header: `{"w": 3}`, tensor: "w", reason: "bad header entry"},
		{name: "missing dtype", header: `{"w": {"shape": [4], "data_offsets": [0, 16]}}`, tensor: "w", reason: "entry has no dtype"},
		{name: "missing shape", header: `{"w": {"dtype": "F32", "data_offsets": [0, 16]}}`, tensor: "w", reason: "entry has no shape"},
		{name: "missing data_offsets", header: `{"w": {"dtype": "F32", "shape": [4]}}`, tensor: "w", reason: "entry has no data_offsets"},
		{name: "three offsets", header: `{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8, 16]}}`, tensor: "w", reason: "data_offsets has 3 values, want 2"},
		{name: "unknown dtype", header: `{"w": {"dtype": "Q4_K", "shape": [4], "data_offsets": [0, 16]}}`, tensor: "w", reason: `unknown dtype "Q4_K"`},
		{name: "negative dim", header: `{"w": {"dtype": "F32", "shape": [-4, -1], "data_offsets": [0, 16]}}`, tensor: "w", reason: "negative dimension -4"},
		{name: "fractional dim", header: `{"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 16]}}`, tensor: "w", reason: "bad header entry"},
		{name: "offsets not ordered", header: `{"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}`, tensor: "w", reason: "not ordered (begin > end)"},
		{name: "negative offsets", header: `{"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}`, tensor: "w", reason: "negative"},
		{name: "offsets outside data", header: `{"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 20]}}`, tensor: "w", reason: "outside the data section of 16 bytes"},
		{name: "overlap", header: `{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}`, reason: `tensor "b" data_offsets [8, 16] overlap tensor "a" [0, 12]`},
		{name: "byte length mismatch", header: `{"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 16]}}`, tensor: "w", reason: "hold 16 bytes, but shape [4] of BF16 needs 4 × 2 bytes"},
		{name: "element count overflow", header: `{"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}}`, tensor: "w", reason: "too many elements"},
		{name: "bytes overflow", header: `{"w": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 16]}}`, tensor: "w", reason: "needs 4611686018427387904 × 8 bytes"},
		{name: "metadata value not string", header: `{"__metadata__": {"format": 1}}`, reason: `__metadata__: must map strings to strings, but key "format" has value 1`},
		{name: "metadata value null", header: `{"__metadata__": {"format": null}}`, reason: `key "format" has value null`},
		{name: "metadata not object", header: `{"__metadata__": ["pt"]}`, reason: "__metadata__: must be an object mapping strings to strings"},
		{name: "duplicate tensor", header: `{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}`, tensor: "w", reason: "appears twice"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var path string
			if c.data != nil {
				path = rawBytes(t, c.data())
			} else {
				path = rawSafetensors(t, c.header, body16)
			}
			f, err := OpenFile(path)
			require.Error(t, err)
			assert.Nil(t, f)
			msg := err.Error()
			assert.Contains(t, msg, path, "error must name the file")
			assert.Contains(t, msg, c.reason)
			if c.tensor != "" {
				assert.Contains(t, msg, `tensor "`+c.tensor+`"`)
			}
			var fe *FormatError
			require.True(t, errors.As(err, &fe), "want a *FormatError, got %T", err)
			assert.Equal(t, path, fe.Path)
			assert.Equal(t, c.tensor, fe.Tensor)
		})
	}
}

func TestOpenFileMissing(t *testing.T) {
	_, err := OpenFile(filepath.Join(t.TempDir(), "nope.safetensors"))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, "nope.safetensors")
}

func TestOpenFileAcceptsSpecialCases(t *testing.T) {
	// Empty header, gaps between tensors, zero-size tensors, a scalar,
	// space padding and metadata: all valid.
	header := `{"__metadata__": {"format": "pt"}, "s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},` +
		` "z": {"dtype": "BF16", "shape": [0, 3], "data_offsets": [4, 4]},` +
		` "g": {"dtype": "I32", "shape": [1], "data_offsets": [8, 12]}}    `
	body := append(F32Bytes([]float32{2.5}), 9, 9, 9, 9, 7, 0, 0, 0)
	f, err := OpenFile(rawSafetensors(t, header, body))
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, []string{"g", "s", "z"}, f.Names())
	assert.Equal(t, map[string]string{"format": "pt"}, f.Metadata)
	s, err := f.Tensor("s")
	require.NoError(t, err)
	assert.Equal(t, 1, s.NumElements())
	v, err := s.Float32()
	require.NoError(t, err)
	assert.Equal(t, []float32{2.5}, v)
	z, err := f.Tensor("z")
	require.NoError(t, err)
	assert.Equal(t, 0, z.NumElements())
	zb, err := z.BF16()
	require.NoError(t, err)
	assert.Empty(t, zb)
	g, err := f.Tensor("g")
	require.NoError(t, err)
	gi, err := g.Int64s()
	require.NoError(t, err)
	assert.Equal(t, []int64{7}, gi)

	empty, err := OpenFile(rawSafetensors(t, `{}`, nil))
	require.NoError(t, err)
	assert.Empty(t, empty.Names())
	require.NoError(t, empty.Close())
}

func TestWriteFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rt.safetensors")
	f32 := []float32{1, -2.5, float32(math.Inf(1)), 3e-39}
	bf := []float32{0.1, 1 / 3.0, -7}
	i64 := []int64{-1, 0, 1 << 40}
	f16 := []byte{0x00, 0x3c, 0x00, 0xc0} // 1, -2
	tensors := []WriteTensor{
		{Name: "z.f32", DType: F32, Shape: []int{2, 2}, Data: F32Bytes(f32)},
		{Name: "a.bf16", DType: BF16, Shape: []int{3}, Data: BF16Bytes(bf)},
		{Name: "m.i64", DType: I64, Shape: []int{3, 1}, Data: I64Bytes(i64)},
		{Name: "h.f16", DType: F16, Shape: []int{2}, Data: f16},
		{Name: "s.scalar", DType: I32, Shape: nil, Data: []byte{5, 0, 0, 0}},
		{Name: "f64", DType: F64, Shape: []int{1}, Data: binary.LittleEndian.AppendUint64(nil, math.Float64bits(0.5))},
	}
	require.NoError(t, WriteFile(path, tensors, map[string]string{"format": "pt", "qvl": "test"}))

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	n := binary.LittleEndian.Uint64(raw)
	assert.Zero(t, (8+n)%8, "header must end on an 8-byte boundary")
	hdr := string(raw[8 : 8+n])
	assert.True(t, strings.HasPrefix(hdr, `{"__metadata__":{"format":"pt","qvl":"test"},"a.bf16":`), hdr)
	// offsets contiguous in name order
	var entries map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(hdr), &entries))
	order := []string{"a.bf16", "f64", "h.f16", "m.i64", "s.scalar", "z.f32"}
	var off int64
	for _, name := range order {
		var e struct {
			DataOffsets [2]int64 `json:"data_offsets"`
		}
		require.NoError(t, json.Unmarshal(entries[name], &e))
		assert.Equal(t, off, e.DataOffsets[0], name)
		off = e.DataOffsets[1]
	}
	assert.Equal(t, int64(len(raw))-8-int64(n), off, "data must end the file")

	f, err := OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, order, f.Names())
	get := func(name string) *Tensor {
		tt, err := f.Tensor(name)
		require.NoError(t, err)
		return tt
	}
	v, err := get("z.f32").Float32()
	require.NoError(t, err)
	assert.Equal(t, f32, v)
	assert.Equal(t, []int{2, 2}, get("z.f32").Shape)
	v, err = get("a.bf16").Float32()
	require.NoError(t, err)
	for i, x := range bf {
		assert.Equal(t, BF16ToF32(F32ToBF16(x)), v[i])
	}
	bits, err := get("a.bf16").BF16()
	require.NoError(t, err)
	assert.Equal(t, []uint16{F32ToBF16(0.1), F32ToBF16(1 / 3.0), F32ToBF16(-7)}, bits)
	iv, err := get("m.i64").Int64s()
	require.NoError(t, err)
	assert.Equal(t, i64, iv)
	v, err = get("h.f16").Float32()
	require.NoError(t, err)
	assert.Equal(t, []float32{1, -2}, v)
	iv, err = get("s.scalar").Int64s()
	require.NoError(t, err)
	assert.Equal(t, []int64{5}, iv)
	assert.Equal(t, []int{}, get("s.scalar").Shape)
	v, err = get("f64").Float32()
	require.NoError(t, err)
	assert.Equal(t, []float32{0.5}, v)

	_, err = get("m.i64").Float32()
	require.ErrorContains(t, err, `tensor "m.i64" has dtype I64, want BF16, F16, F32 or F64`)
	_, err = get("z.f32").Int64s()
	require.ErrorContains(t, err, `tensor "z.f32" has dtype F32, want I64`)
	_, err = get("z.f32").BF16()
	require.ErrorContains(t, err, `has dtype F32, want BF16`)

	entriesLeft, err := filepath.Glob(filepath.Join(filepath.Dir(path), "*"))
	require.NoError(t, err)
	assert.Equal(t, []string{path}, entriesLeft, "no temporary file may stay behind")
}

func TestWriteFileRejects(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.safetensors")
	for _, c := range []struct {
		name    string
		tensors []WriteTensor
		reason  string
	}{
		{"length", []WriteTensor{{Name: "w", DType: F32, Shape: []int{3}, Data: make([]byte, 8)}}, `tensor "w": 8 data bytes, want 12`},
		{"duplicate", []WriteTensor{{Name: "w", DType: U8, Shape: []int{1}, Data: []byte{1}}, {Name: "w", DType: U8, Shape: []int{1}, Data: []byte{2}}}, `tensor "w" given twice`},
		{"negative", []WriteTensor{{Name: "w", DType: U8, Shape: []int{-1}}}, "negative dimension"},
		{"reserved", []WriteTensor{{Name: "__metadata__", DType: U8, Shape: []int{0}}}, "reserved"},
		{"dtype", []WriteTensor{{Name: "w", DType: DType(99), Shape: []int{0}}}, "invalid dtype"},
		{"empty name", []WriteTensor{{Name: "", DType: U8, Shape: []int{0}}}, "empty name"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := WriteFile(path, c.tensors, nil)
			require.ErrorContains(t, err, c.reason)
			require.ErrorContains(t, err, path)
			_, statErr := os.Stat(path)
			assert.ErrorIs(t, statErr, os.ErrNotExist)
		})
	}
	err := WriteFile(filepath.Join(dir, "no-such-dir", "x.safetensors"), nil, nil)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestWriteFileReplacesAtomically(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	require.NoError(t, WriteFile(path, []WriteTensor{{Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}}, nil))
	old, err := OpenFile(path)
	require.NoError(t, err)
	defer old.Close()
	require.NoError(t, WriteFile(path, []WriteTensor{{Name: "b", DType: U8, Shape: []int{1}, Data: []byte{2}}}, nil))
	// The old mapping still sees the old file (rename, not overwrite in place).
	a, err := old.Tensor("a")
	require.NoError(t, err)
	assert.Equal(t, []byte{1}, a.Data)
	f, err := OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, []string{"b"}, f.Names())
}

func TestFileTensorErrorsAndClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.safetensors")
	require.NoError(t, WriteFile(path, []WriteTensor{{Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}}, nil))
	f, err := OpenFile(path)
	require.NoError(t, err)
	_, err = f.Tensor("b")
	require.ErrorIs(t, err, ErrTensorNotFound)
	require.ErrorContains(t, err, path)
	require.ErrorContains(t, err, `"b"`)
	// The returned tensor is a copy: editing its shape does not change the file's.
	a, err := f.Tensor("a")
	require.NoError(t, err)
	a.Shape[0] = 7
	a2, err := f.Tensor("a")
	require.NoError(t, err)
	assert.Equal(t, []int{1}, a2.Shape)
	require.NoError(t, f.Close())
	require.NoError(t, f.Close())
	_, err = f.Tensor("a")
	require.ErrorIs(t, err, ErrClosed)
}

func TestSkipPrefix(t *testing.T) {
	// A skipped tensor with an unknown dtype and a wrong byte length is
	// accepted: only its offsets are checked.
	header := `{"model.visual.x": {"dtype": "F8_E4M3", "shape": [1000], "data_offsets": [0, 4]},` +
		` "model.visual.y": {"dtype": "F32", "shape": "bogus", "data_offsets": [4, 4]},` +
		` "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}`
	path := rawSafetensors(t, header, make([]byte, 8))
	_, err := OpenFile(path)
	require.ErrorContains(t, err, `tensor "model.visual.x": unknown dtype "F8_E4M3"`)
	f, err := OpenFile(path, SkipPrefix(VisualPrefix))
	require.NoError(t, err)
	defer f.Close()
	assert.Equal(t, []string{"w"}, f.Names())
	assert.Equal(t, []string{"model.visual.x", "model.visual.y"}, f.Skipped())
	assert.False(t, f.Has("model.visual.x"))
	_, err = f.Tensor("model.visual.x")
	require.ErrorIs(t, err, ErrTensorNotFound)
	require.ErrorContains(t, err, "skipped")

	// Its offsets are still checked against the data section and overlaps.
	for _, h := range []string{
		`{"model.visual.x": {"dtype": "F32", "shape": [9], "data_offsets": [0, 36]}}`,
		`{"model.visual.x": {"dtype": "F32", "shape": [1]}}`,
		`{"model.visual.x": {"data_offsets": [0, 8]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}`,
	} {
		_, err := OpenFile(rawSafetensors(t, h, make([]byte, 8)), SkipPrefix(VisualPrefix))
		require.Error(t, err, h)
		require.ErrorContains(t, err, "model.visual.x")
	}
}

func TestTensorChecksHandMadeData(t *testing.T) {
	tt := &Tensor{Name: "h", DType: F32, Shape: []int{3}, Data: make([]byte, 8), File: "mem"}
	_, err := tt.Float32()
	require.ErrorContains(t, err, `mem: tensor "h" holds 8 bytes, want 12`)
	tt = &Tensor{Name: "h", DType: BF16, Shape: []int{2, -1}, Data: nil, File: "mem"}
	_, err = tt.BF16()
	require.ErrorContains(t, err, "negative dimension")
}

func TestUnalignedData(t *testing.T) {
	// A 1-byte tensor first puts the next ones on odd addresses; the
	// conversions must copy instead of aliasing.
	header := `{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},` +
		` "b": {"dtype": "BF16", "shape": [2], "data_offsets": [1, 5]},` +
		` "c": {"dtype": "F32", "shape": [1], "data_offsets": [5, 9]}}`
	for len(header)%8 != 0 {
		header += " "
	}
	body := append([]byte{0}, BF16Bytes([]float32{1, -2})...)
	body = append(body, F32Bytes([]float32{3.5})...)
	f, err := OpenFile(rawSafetensors(t, header, body))
	require.NoError(t, err)
	defer f.Close()
	b, err := f.Tensor("b")
	require.NoError(t, err)
	bits, err := b.BF16()
	require.NoError(t, err)
	assert.Equal(t, []uint16{0x3f80, 0xc000}, bits)
	v, err := b.Float32()
	require.NoError(t, err)
	assert.Equal(t, []float32{1, -2}, v)
	c, err := f.Tensor("c")
	require.NoError(t, err)
	v, err = c.Float32()
	require.NoError(t, err)
	assert.Equal(t, []float32{3.5}, v)
}

func TestInt64sNarrowTypes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ints.safetensors")
	require.NoError(t, WriteFile(path, []WriteTensor{
		{Name: "i32", DType: I32, Shape: []int{2}, Data: []byte{0xff, 0xff, 0xff, 0xff, 3, 0, 0, 0}},
		{Name: "i16", DType: I16, Shape: []int{2}, Data: []byte{0xfe, 0xff, 0x00, 0x01}},
		{Name: "i8", DType: I8, Shape: []int{2}, Data: []byte{0x80, 0x7f}},
		{Name: "u8", DType: U8, Shape: []int{2}, Data: []byte{0x80, 0xff}},
		{Name: "b", DType: Bool, Shape: []int{1}, Data: []byte{1}},
	}, nil))
	f, err := OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	for name, want := range map[string][]int64{"i32": {-1, 3}, "i16": {-2, 256}, "i8": {-128, 127}, "u8": {128, 255}} {
		tt, err := f.Tensor(name)
		require.NoError(t, err)
		got, err := tt.Int64s()
		require.NoError(t, err)
		assert.Equal(t, want, got, name)
	}
	b, err := f.Tensor("b")
	require.NoError(t, err)
	_, err = b.Int64s()
	require.ErrorContains(t, err, "has dtype BOOL")
}

package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader"
)

// writeNPY writes a C-ordered .npy file (format 1.0) with the given NumPy type string.
func writeNPY(t *testing.T, path, descr string, shape []int, data []byte) {
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = fmt.Sprint(d)
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	h := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, tuple)
	for (10+len(h)+1)%64 != 0 {
		h += " "
	}
	h += "\n"
	out := []byte("\x93NUMPY\x01\x00")
	out = binary.LittleEndian.AppendUint16(out, uint16(len(h)))
	out = append(out, h...)
	out = append(out, data...)
	require.NoError(t, os.WriteFile(path, out, 0o644))
}

func f64Bytes(x []float64) []byte {
	var b []byte
	for _, v := range x {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	return b
}

func seq(n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i) * scale
	}
	return v
}

func TestImportSafetensorsEmbeddings(t *testing.T) {
	dir := t.TempDir()
	emb := seq(3*4, 0.5)
	for _, form := range []string{"metadata", "int tensor", "u8 tensor", "list"} {
		t.Run(form, func(t *testing.T) {
			src := filepath.Join(dir, strings.ReplaceAll(form, " ", "_")+".safetensors")
			tensors := []loader.WriteTensor{{Name: TensorEmbeddings, DType: loader.F32, Shape: []int{3, 4}, Data: loader.F32Bytes(emb)}}
			meta := map[string]string{}
			want := []string{"x", "y", "z"}
			var o ImportOptions
			switch form {
			case "metadata":
				js, _ := json.Marshal(want)
				meta[TensorIDs] = string(js)
			case "int tensor":
				tensors = append(tensors, loader.WriteTensor{Name: TensorIDs, DType: loader.I64, Shape: []int{3}, Data: loader.I64Bytes([]int64{7, 8, 9})})
				want = []string{"7", "8", "9"}
			case "u8 tensor":
				ids := []byte("p\nq\r\nr\n")
				tensors = append(tensors, loader.WriteTensor{Name: TensorIDs, DType: loader.U8, Shape: []int{len(ids)}, Data: ids})
				want = []string{"p", "q", "r"}
			case "list":
				o.IDs = []string{"l1", "l2", "l3"}
				want = o.IDs
			}
			require.NoError(t, loader.WriteFile(src, tensors, meta))
			dst := filepath.Join(dir, form+FileExt)
			m, err := ImportSafetensors(dst, src, o)
			require.NoError(t, err)
			assert.Equal(t, 3, m.Embeddings)
			assert.Equal(t, 4, m.EmbeddingDim)
			s, err := Open(dst)
			require.NoError(t, err)
			defer s.Close()
			for i, id := range want {
				it, err := s.Lookup(id)
				require.NoError(t, err)
				v, err := it.Embedding()
				require.NoError(t, err)
				require.Equal(t, emb[i*4:(i+1)*4], v)
			}
		})
	}
}

func TestImportSafetensorsImages(t *testing.T) {
	dir := t.TempDir()
	h, levels := 4, 2
	// Two images: grid (1,2,2) = 1 token, grid (1,2,4) = 2 tokens; 3 rows in all.
	rows := seq(3*h*(1+levels), 0.25)
	src := filepath.Join(dir, "img.safetensors")
	ids, _ := json.Marshal([]string{"one", "two"})
	require.NoError(t, loader.WriteFile(src, []loader.WriteTensor{
		{Name: TensorImageEmbeds, DType: loader.BF16, Shape: []int{3, h * (1 + levels)}, Data: loader.BF16Bytes(rows)},
		{Name: TensorImageGridTHW, DType: loader.I64, Shape: []int{2, 3}, Data: loader.I64Bytes([]int64{1, 2, 2, 1, 2, 4})},
	}, map[string]string{TensorImageIDs: string(ids)}))
	dst := filepath.Join(dir, "img"+FileExt)
	_, err := ImportSafetensors(dst, src, ImportOptions{})
	require.ErrorContains(t, err, "hidden size")
	m, err := ImportSafetensors(dst, src, ImportOptions{HiddenSize: h})
	require.NoError(t, err)
	assert.Equal(t, 2, m.ImageEmbeds)
	assert.Equal(t, levels, m.DeepStackLevels)
	s, err := Open(dst)
	require.NoError(t, err)
	defer s.Close()
	it, err := s.Lookup("two")
	require.NoError(t, err)
	assert.Equal(t, loader.BF16, it.DType, "auto keeps bf16")
	assert.Equal(t, [3]int{1, 2, 4}, it.GridTHW)
	e, ds, err := it.ImageEmbeds()
	require.NoError(t, err)
	c := h * (1 + levels)
	for tok := 0; tok < 2; tok++ {
		row := bf16Round(rows[(1+tok)*c : (2+tok)*c])
		require.Equal(t, row[:h], e[tok*h:(tok+1)*h])
		for l := 0; l < levels; l++ {
			require.Equal(t, row[(1+l)*h:(2+l)*h], ds[l][tok*h:(tok+1)*h])
		}
	}
}

func TestImportSafetensorsRejects(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, ts []loader.WriteTensor, meta map[string]string) string {
		p := filepath.Join(dir, name+".safetensors")
		require.NoError(t, loader.WriteFile(p, ts, meta))
		return p
	}
	emb := loader.WriteTensor{Name: TensorEmbeddings, DType: loader.F32, Shape: []int{2, 2}, Data: loader.F32Bytes([]float32{1, 2, 3, 4})}
	nan := loader.WriteTensor{Name: TensorEmbeddings, DType: loader.F32, Shape: []int{2, 2}, Data: loader.F32Bytes([]float32{1, float32(math.NaN()), 3, 4})}
	cases := map[string]struct {
		path string
		o    ImportOptions
	}{
		"no ids":        {write("noids", []loader.WriteTensor{emb}, nil), ImportOptions{}},
		"id count":      {write("count", []loader.WriteTensor{emb}, map[string]string{"ids": `["a"]`}), ImportOptions{}},
		"dup ids":       {write("dup", []loader.WriteTensor{emb}, map[string]string{"ids": `["a","a"]`}), ImportOptions{}},
		"bad ids json":  {write("badjson", []loader.WriteTensor{emb}, map[string]string{"ids": `[1,2]`}), ImportOptions{}},
		"unknown":       {write("unknown", []loader.WriteTensor{emb, {Name: "embedding", DType: loader.F32, Shape: []int{1}, Data: loader.F32Bytes([]float32{1})}}, map[string]string{"ids": `["a","b"]`}), ImportOptions{}},
		"nothing":       {write("nothing", []loader.WriteTensor{{Name: TensorIDs, DType: loader.I64, Shape: []int{1}, Data: loader.I64Bytes([]int64{1})}}, nil), ImportOptions{}},
		"nan":           {write("nan", []loader.WriteTensor{nan}, map[string]string{"ids": `["a","b"]`}), ImportOptions{}},
		"dtype":         {write("dtype", []loader.WriteTensor{emb}, map[string]string{"ids": `["a","b"]`}), ImportOptions{DType: "float16"}},
		"missing file":  {filepath.Join(dir, "none.safetensors"), ImportOptions{}},
		"grid mismatch": {write("grid", []loader.WriteTensor{{Name: TensorImageEmbeds, DType: loader.F32, Shape: []int{2, 2}, Data: loader.F32Bytes([]float32{1, 2, 3, 4})}, {Name: TensorImageGridTHW, DType: loader.I64, Shape: []int{1, 3}, Data: loader.I64Bytes([]int64{1, 2, 2})}}, map[string]string{"image_ids": `["a"]`}), ImportOptions{HiddenSize: 2}},
	}
	for name, c := range cases {
		dst := filepath.Join(dir, "out-"+strings.ReplaceAll(name, " ", "_")+FileExt)
		_, err := ImportSafetensors(dst, c.path, c.o)
		assert.Error(t, err, name)
		_, statErr := os.Stat(dst)
		assert.True(t, os.IsNotExist(statErr), "%s: a failed import leaves no store", name)
	}
}

func TestImportNPY(t *testing.T) {
	dir := t.TempDir()
	emb := filepath.Join(dir, "emb.npy")
	vals := []float64{0.5, 1, 1.5, 2, 2.5, 3}
	writeNPY(t, emb, "<f8", []int{3, 2}, f64Bytes(vals))
	dst := filepath.Join(dir, "e"+FileExt)
	_, err := ImportNPY(dst, NPYSource{Embeddings: emb}, ImportOptions{})
	require.ErrorContains(t, err, "id list")
	_, err = ImportNPY(dst, NPYSource{Embeddings: emb}, ImportOptions{IDs: []string{"a", "b"}})
	require.ErrorContains(t, err, "2 ids for 3 rows")
	m, err := ImportNPY(dst, NPYSource{Embeddings: emb}, ImportOptions{IDs: []string{"a", "b", "c"}, DType: "bfloat16"})
	require.NoError(t, err)
	assert.Equal(t, 3, m.Embeddings)
	s, err := Open(dst)
	require.NoError(t, err)
	it, err := s.Lookup("c")
	require.NoError(t, err)
	v, err := it.Embedding()
	require.NoError(t, err)
	require.Equal(t, []float32{2.5, 3}, v)
	require.NoError(t, s.Close())

	// Images: rows [3, 2·(1+1)] with grids (1,2,2) and (1,2,4).
	img := filepath.Join(dir, "img.npy")
	rows := seq(12, 1)
	writeNPY(t, img, "<f4", []int{3, 4}, loader.F32Bytes(rows))
	grid := filepath.Join(dir, "grid.npy")
	var gb []byte
	for _, g := range []int32{1, 2, 2, 1, 2, 4} {
		gb = binary.LittleEndian.AppendUint32(gb, uint32(g))
	}
	writeNPY(t, grid, "<i4", []int{2, 3}, gb)
	dst2 := filepath.Join(dir, "i"+FileExt)
	m, err = ImportNPY(dst2, NPYSource{Embeddings: img, GridTHW: grid}, ImportOptions{IDs: []string{"g1", "g2"}, HiddenSize: 2})
	require.NoError(t, err)
	assert.Equal(t, 2, m.ImageEmbeds)
	assert.Equal(t, 1, m.DeepStackLevels)
	s, err = Open(dst2)
	require.NoError(t, err)
	defer s.Close()
	it, err = s.Lookup("g2")
	require.NoError(t, err)
	e, ds, err := it.ImageEmbeds()
	require.NoError(t, err)
	require.Equal(t, []float32{4, 5, 8, 9}, e)
	require.Equal(t, []float32{6, 7, 10, 11}, ds[0])
}

func TestParseNPYRejects(t *testing.T) {
	hdr := func(h string) []byte {
		b := []byte("\x93NUMPY\x01\x00")
		b = binary.LittleEndian.AppendUint16(b, uint16(len(h)))
		return append(b, h...)
	}
	cases := map[string][]byte{
		"magic":   []byte("NUMPY....."),
		"version": append([]byte("\x93NUMPY\x07\x00"), 0, 0),
		"hlen":    append([]byte("\x93NUMPY\x01\x00"), 0xff, 0xff, '{'),
		"fortran": hdr("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }"),
		"dtype":   hdr("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }"),
		"object":  hdr("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"),
		"size":    hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"),
		"syntax":  hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}"),
		"huge":    hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (2147483647, 2147483647, 2147483647), }"),
		"no dict": hdr("[1, 2]"),
		"trailer": hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), } x"),
	}
	for name, data := range cases {
		_, err := parseNPY(name, data)
		assert.Error(t, err, name)
	}
	a, err := parseNPY("ok", append(hdr("{'descr': '<f4', 'fortran_order': False, 'shape': (1L, 2), }"), make([]byte, 8)...))
	require.NoError(t, err)
	assert.Equal(t, []int{1, 2}, a.shape)
}

func FuzzParseNPY(f *testing.F) {
	f.Add([]byte("\x93NUMPY\x01\x00\x3c\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }    \n\x00\x00\x80\x3f"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := parseNPY("fuzz", data)
		if err != nil {
			return
		}
		n := len(a.data) / a.dtype.Size()
		if a.dtype.IsFloat() {
			_ = floatsAt(a.dtype, a.data, 0, n, nil)
		} else if n > 0 {
			_ = intAt(a.dtype, a.data, n-1)
		}
	})
}

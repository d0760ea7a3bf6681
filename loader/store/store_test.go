package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader"
)

func randVec(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}

func bf16Round(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = loader.BF16ToF32(loader.F32ToBF16(x))
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	for _, dt := range []loader.DType{loader.F32, loader.BF16} {
		t.Run(dt.String(), func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			path := filepath.Join(t.TempDir(), "s"+FileExt)
			w, err := Create(path, Options{DType: dt, Source: "test"})
			require.NoError(t, err)
			vecs := map[string][]float32{}
			for i := 0; i < 300; i++ {
				id := fmt.Sprintf("item-%d", i)
				vecs[id] = randVec(r, 12)
				require.NoError(t, w.AddEmbedding(id, vecs[id]))
			}
			// Two images: one from planes, one from vLLM rows of the same values.
			grid := [3]int{1, 4, 6} // 6 tokens
			h, levels := 8, 3
			emb := randVec(r, 6*h)
			ds := [][]float32{randVec(r, 6*h), randVec(r, 6*h), randVec(r, 6*h)}
			require.NoError(t, w.AddImageEmbeds("img-planes", grid, emb, ds))
			rows := make([]float32, 0, 6*h*(1+levels))
			for tok := 0; tok < 6; tok++ {
				rows = append(rows, emb[tok*h:(tok+1)*h]...)
				for l := 0; l < levels; l++ {
					rows = append(rows, ds[l][tok*h:(tok+1)*h]...)
				}
			}
			require.NoError(t, w.AddImageRows("img-rows", grid, rows, h))
			require.Equal(t, 302, w.Len())
			require.NoError(t, w.Close())

			s, err := Open(path)
			require.NoError(t, err)
			defer s.Close()
			require.NoError(t, s.Verify())
			m := s.Meta()
			assert.Equal(t, 300, m.Embeddings)
			assert.Equal(t, 2, m.ImageEmbeds)
			assert.Equal(t, 12, m.EmbeddingDim)
			assert.Equal(t, h, m.HiddenSize)
			assert.Equal(t, levels, m.DeepStackLevels)
			assert.Equal(t, "test", m.Source)
			assert.Len(t, m.UUID, 32)
			assert.Equal(t, 302, s.Len())

			round := func(v []float32) []float32 {
				if dt == loader.BF16 {
					return bf16Round(v)
				}
				return v
			}
			for id, v := range vecs {
				it, err := s.Lookup(id)
				require.NoError(t, err)
				assert.Equal(t, KindEmbedding, it.Kind)
				assert.Equal(t, dt, it.DType)
				got, err := it.Embedding()
				require.NoError(t, err)
				require.Equal(t, round(v), got, id)
				_, _, err = it.ImageEmbeds()
				require.Error(t, err)
			}
			for _, id := range []string{"img-planes", "img-rows"} {
				it, err := s.Lookup(id)
				require.NoError(t, err)
				assert.Equal(t, KindImageEmbeds, it.Kind)
				assert.Equal(t, grid, it.GridTHW)
				assert.Equal(t, 6, it.Tokens)
				assert.Equal(t, h, it.Cols)
				e, d, err := it.ImageEmbeds()
				require.NoError(t, err)
				require.Equal(t, round(emb), e)
				require.Len(t, d, levels)
				for l := range d {
					require.Equal(t, round(ds[l]), d[l])
				}
				_, err = it.Embedding()
				require.Error(t, err)
			}
			_, err = s.Lookup("item-300")
			require.ErrorIs(t, err, ErrNotFound)
			_, err = s.Lookup("")
			require.ErrorIs(t, err, ErrNotFound)
		})
	}
}

func TestF32ItemsAreReadInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s"+FileExt)
	w, err := Create(path, Options{})
	require.NoError(t, err)
	require.NoError(t, w.AddEmbedding("a", []float32{1, 2, 3}))
	require.NoError(t, w.AddEmbedding("b", []float32{4, 5, 6}))
	require.NoError(t, w.Close())
	s, err := Open(path)
	require.NoError(t, err)
	it, err := s.Lookup("b")
	require.NoError(t, err)
	v, err := it.Embedding()
	require.NoError(t, err)
	if littleEndian {
		// The slice lies inside the mapping.
		require.Same(t, &it.data[0], (*byte)(unsafe.Pointer(&v[0])))
	}
	require.Equal(t, []float32{4, 5, 6}, v)
	require.NoError(t, s.Close())
	_, err = s.Lookup("b")
	require.Error(t, err)
	require.NoError(t, s.Close(), "closing twice is harmless")
}

func TestManyItemsAllFound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s"+FileExt)
	w, err := Create(path, Options{DType: loader.BF16})
	require.NoError(t, err)
	const n = 20000
	for i := 0; i < n; i++ {
		require.NoError(t, w.AddEmbedding(fmt.Sprint(i), []float32{float32(i % 256)}))
	}
	require.NoError(t, w.Close())
	s, err := Open(path)
	require.NoError(t, err)
	defer s.Close()
	require.Equal(t, n, s.Len())
	for i := 0; i < n; i++ {
		it, err := s.Lookup(fmt.Sprint(i))
		require.NoError(t, err)
		v, err := it.Embedding()
		require.NoError(t, err)
		require.Equal(t, float32(i%256), v[0])
	}
	for i := n; i < n+1000; i++ {
		_, err := s.Lookup(fmt.Sprint(i))
		require.ErrorIs(t, err, ErrNotFound)
	}
}

func TestWriterRejects(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(filepath.Join(dir, "s"+FileExt), Options{})
	require.NoError(t, err)
	defer w.Abort()
	require.NoError(t, w.AddEmbedding("a", []float32{1, 2}))
	cases := map[string]error{
		"duplicate":    w.AddEmbedding("a", []float32{1, 2}),
		"empty id":     w.AddEmbedding("", []float32{1, 2}),
		"other dim":    w.AddEmbedding("b", []float32{1, 2, 3}),
		"nan":          w.AddEmbedding("c", []float32{1, float32(math.NaN())}),
		"inf":          w.AddEmbedding("d", []float32{float32(math.Inf(-1)), 1}),
		"bad utf8":     w.AddEmbedding("\xff", []float32{1, 2}),
		"odd grid":     w.AddImageEmbeds("e", [3]int{1, 3, 2}, make([]float32, 8), nil),
		"zero grid":    w.AddImageEmbeds("f", [3]int{0, 2, 2}, make([]float32, 8), nil),
		"wrong size":   w.AddImageEmbeds("g", [3]int{1, 2, 4}, make([]float32, 7), nil),
		"level size":   w.AddImageEmbeds("h", [3]int{1, 2, 2}, make([]float32, 8), [][]float32{make([]float32, 4)}),
		"rows hidden":  w.AddImageRows("i", [3]int{1, 2, 2}, make([]float32, 12), 5),
		"zero hidden":  w.AddImageRows("j", [3]int{1, 2, 2}, make([]float32, 12), 0),
		"long id":      w.AddEmbedding(string(make([]byte, MaxIDBytes+1)), []float32{1, 2}),
		"nan in level": w.AddImageEmbeds("k", [3]int{1, 2, 2}, make([]float32, 4), [][]float32{{0, 0, float32(math.NaN()), 0}}),
	}
	for name, err := range cases {
		assert.Error(t, err, name)
	}
	require.NoError(t, w.AddImageEmbeds("img", [3]int{1, 2, 2}, make([]float32, 8), [][]float32{make([]float32, 8)}))
	assert.Error(t, w.AddImageEmbeds("img2", [3]int{1, 2, 2}, make([]float32, 8), nil), "other level count")
	assert.Equal(t, 2, w.Len(), "rejected items leave nothing behind")
	_, err = Create(filepath.Join(dir, "x"), Options{DType: loader.F16})
	require.Error(t, err)
}

func TestAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(filepath.Join(dir, "s"+FileExt), Options{})
	require.NoError(t, err)
	require.NoError(t, w.AddEmbedding("a", []float32{1}))
	w.Abort()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries)
	require.Error(t, w.Close())
}

func TestEmptyStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s"+FileExt)
	w, err := Create(path, Options{})
	require.NoError(t, err)
	require.NoError(t, w.Close())
	s, err := Open(path)
	require.NoError(t, err)
	defer s.Close()
	require.Equal(t, 0, s.Len())
	_, err = s.Lookup("x")
	require.ErrorIs(t, err, ErrNotFound)
	require.NoError(t, s.Verify())
}

// writeSample writes a small valid store and returns its bytes.
func writeSample(t testing.TB) []byte {
	path := filepath.Join(t.TempDir(), "s"+FileExt)
	w, err := Create(path, Options{})
	require.NoError(t, err)
	require.NoError(t, w.AddEmbedding("a", []float32{1, 2}))
	require.NoError(t, w.AddEmbedding("b", []float32{3, 4}))
	require.NoError(t, w.AddImageEmbeds("c", [3]int{1, 2, 2}, []float32{1, 2, 3}, [][]float32{{4, 5, 6}}))
	require.NoError(t, w.Close())
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	return data
}

func TestDamagedFiles(t *testing.T) {
	good := writeSample(t)
	le := binary.LittleEndian
	edit := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), good...))
	}
	recordsOff := le.Uint64(good[56:])
	tableOff := le.Uint64(good[64:])
	cases := map[string][]byte{
		"empty":          {},
		"short":          good[:100],
		"magic":          edit(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version":        edit(func(b []byte) []byte { le.PutUint32(b[8:], 9); return b }),
		"truncated":      good[:len(good)-1],
		"appended":       append(append([]byte(nil), good...), 0),
		"count":          edit(func(b []byte) []byte { le.PutUint64(b[16:], 1<<40); return b }),
		"slots not pow2": edit(func(b []byte) []byte { le.PutUint64(b[72:], 12); return b }),
		"meta outside":   edit(func(b []byte) []byte { le.PutUint64(b[24:], 1<<50); return b }),
		"meta json":      edit(func(b []byte) []byte { b[len(b)-1] = '!'; return b }),
		"records align":  edit(func(b []byte) []byte { le.PutUint64(b[56:], recordsOff+1); return b }),
	}
	for name, data := range cases {
		_, err := parse(name, data)
		assert.Error(t, err, name)
	}
	// Damage inside records is found when the record is read.
	recs := map[string][]byte{
		"record kind":   edit(func(b []byte) []byte { b[recordsOff+28] = 9; return b }),
		"record dtype":  edit(func(b []byte) []byte { b[recordsOff+29] = byte(loader.I64); return b }),
		"record length": edit(func(b []byte) []byte { le.PutUint64(b[recordsOff+8:], 1<<62); return b }),
		"record offset": edit(func(b []byte) []byte { le.PutUint64(b[recordsOff:], 1<<62); return b }),
		"record id":     edit(func(b []byte) []byte { le.PutUint32(b[recordsOff+24:], 1<<30); return b }),
		"record tokens": edit(func(b []byte) []byte { le.PutUint32(b[recordsOff+32:], 2); return b }),
		"table entry":   edit(func(b []byte) []byte { fillTable(b, tableOff, 99); return b }),
	}
	for name, data := range recs {
		s, err := parse(name, data)
		require.NoError(t, err, name)
		assert.Error(t, s.Verify(), name)
	}
	// A table with no empty slot must not loop forever.
	full := edit(func(b []byte) []byte { fillTable(b, tableOff, 1); return b })
	s, err := parse("full", full)
	require.NoError(t, err)
	_, err = s.Lookup("zzz")
	require.Error(t, err)
}

func fillTable(b []byte, off uint64, v uint32) {
	slots := binary.LittleEndian.Uint64(b[72:])
	for i := uint64(0); i < slots; i++ {
		binary.LittleEndian.PutUint32(b[off+4*i:], v)
	}
}

func FuzzOpen(f *testing.F) {
	good := writeSample(f)
	f.Add(good)
	f.Add(good[:200])
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parse("fuzz", data)
		if err != nil {
			return
		}
		for i := 0; i < s.Len() && i < 64; i++ {
			if it, err := s.At(i); err == nil {
				for p := 0; p <= it.Levels; p++ {
					_, _ = it.Plane(p)
				}
			}
		}
		for _, id := range []string{"a", "b", "c", "zz"} {
			_, _ = s.Lookup(id)
		}
		_ = s.Verify()
	})
}

func TestNotAStore(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(filepath.Join(dir, "missing"))
	require.Error(t, err)
	_, err = Open(dir)
	require.Error(t, err)
	var fe *FormatError
	p := filepath.Join(dir, "junk")
	require.NoError(t, os.WriteFile(p, make([]byte, 300), 0o644))
	_, err = Open(p)
	require.True(t, errors.As(err, &fe), "%v", err)
}

func BenchmarkLookup(b *testing.B) {
	path := filepath.Join(b.TempDir(), "s"+FileExt)
	w, err := Create(path, Options{})
	require.NoError(b, err)
	const n = 100000
	for i := 0; i < n; i++ {
		require.NoError(b, w.AddEmbedding(fmt.Sprintf("sku-%07d", i), []float32{1}))
	}
	require.NoError(b, w.Close())
	s, err := Open(path)
	require.NoError(b, err)
	defer s.Close()
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("sku-%07d", (i*7919)%n)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.Lookup(ids[i%len(ids)]); err != nil {
			b.Fatal(err)
		}
	}
}

package loader

import (
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// BenchmarkTensorFloat32BF16 measures BF16 -> float32 conversion of a
// 1024×1024 tensor read from a mapped file.
func BenchmarkTensorFloat32BF16(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	v := make([]float32, 1<<20)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	path := filepath.Join(b.TempDir(), "b.safetensors")
	if err := WriteFile(path, []WriteTensor{{Name: "w", DType: BF16, Shape: []int{1024, 1024}, Data: BF16Bytes(v)}}, nil); err != nil {
		b.Fatal(err)
	}
	f, err := OpenFile(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	t, err := f.Tensor("w")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(t.Data)))
	for b.Loop() {
		if _, err := t.Float32(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenCheckpointGolden measures opening the goldens checkpoint
// (header parse and validation, 35 indexed tensors, the visual ones skipped).
func BenchmarkOpenCheckpointGolden(b *testing.B) {
	dir := filepath.Join(goldenDir, "model")
	for b.Loop() {
		c, err := OpenCheckpoint(dir)
		if err != nil {
			b.Fatal(err)
		}
		_ = c.Close()
	}
}

package loader

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpenFile feeds arbitrary bytes to the header parser behind OpenFile
// (parseFile; OpenFile only adds the mmap). It must never panic, and every
// tensor it accepts must convert without reading outside its Data.
func FuzzOpenFile(f *testing.F) {
	for _, name := range []string{"projector/projector.safetensors", "text_1.safetensors"} {
		data, err := os.ReadFile(filepath.Join(goldenDir, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	seed := func(header string, body []byte) []byte {
		return append(append(lenPrefix(uint64(len(header))), header...), body...)
	}
	f.Add(seed(`{}`, nil))
	f.Add(seed(`{"__metadata__":{"a":"b"},"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4)))
	f.Add(seed(`{"model.visual.x":{"dtype":"F8","shape":[9],"data_offsets":[0,2]},"s":{"dtype":"F64","shape":[],"data_offsets":[2,10]}}`, make([]byte, 10)))
	f.Add(seed(`{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[4],"data_offsets":[4,12]}}`, make([]byte, 12)))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := parseFile("fuzz", data, openOptions{skipPrefixes: []string{VisualPrefix}})
		if err != nil {
			if file != nil {
				t.Fatal("file returned with an error")
			}
			return
		}
		for _, name := range file.Names() {
			tt, err := file.Tensor(name)
			if err != nil {
				t.Fatalf("listed tensor %q: %v", name, err)
			}
			if len(tt.Data) != tt.NumElements()*tt.DType.Size() {
				t.Fatalf("tensor %q: %d bytes for %d elements of %s", name, len(tt.Data), tt.NumElements(), tt.DType)
			}
			if tt.DType.IsFloat() {
				if _, err := tt.Float32(); err != nil {
					t.Fatal(err)
				}
			}
			if tt.DType == BF16 {
				if _, err := tt.BF16(); err != nil {
					t.Fatal(err)
				}
			}
			_, _ = tt.Int64s()
		}
	})
}

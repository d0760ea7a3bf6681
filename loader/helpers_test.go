package loader

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

const goldenDir = "../testdata/goldens/qwen3vl-tiny-a"

// rawSafetensors writes a hand-made safetensors file: the length prefix,
// header verbatim, then body.
func rawSafetensors(t *testing.T, header string, body []byte) string {
	t.Helper()
	return rawBytes(t, append(append(lenPrefix(uint64(len(header))), header...), body...))
}

func lenPrefix(n uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, n)
	return b
}

func rawBytes(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "x.safetensors")
	require.NoError(t, os.WriteFile(path, data, 0o644))
	return path
}

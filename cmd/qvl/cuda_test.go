package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/qvl-dev/qvl/runtime/cuda"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCUDAFallbackLogsOneLine: without a usable GPU (no libcuda, or the stub libcuda of the
// CUDA toolkit, which answers CUDA_ERROR_NO_DEVICE), --backend cuda fails with the reason and
// --backend auto logs exactly one line with it and runs on the CPU.
func TestCUDAFallbackLogsOneLine(t *testing.T) {
	reason := cuda.Available()
	if reason == nil {
		t.Skip("a GPU is present: no fallback to test")
	}
	_, err := openCUDA()
	require.Error(t, err)
	assert.Equal(t, reason.Error(), err.Error())

	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(old)
	b, err := openBackend("auto", 1)
	require.NoError(t, err)
	defer b.Close()
	assert.Contains(t, b.Name(), "cpu")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 1, "one log line, got %q", buf.String())
	assert.Contains(t, lines[0], "no usable GPU, running on the CPU")
	assert.Contains(t, lines[0], reason.Error()[:20])
	t.Log(lines[0])
}

func TestCUDADeviceVariable(t *testing.T) {
	t.Setenv(envCUDADevice, "x")
	_, err := openCUDA()
	assert.ErrorContains(t, err, "QVL_CUDA_DEVICE")
}

package main

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseRate(t *testing.T) {
	r, err := parseRate("inf")
	require.NoError(t, err)
	assert.True(t, math.IsInf(r, 1))
	r, err = parseRate(" 2.5 ")
	require.NoError(t, err)
	assert.Equal(t, 2.5, r)
	for _, bad := range []string{"0", "-1", "fast", "NaN"} {
		_, err := parseRate(bad)
		assert.Error(t, err, bad)
	}
}

func TestParseFloatsAndKV(t *testing.T) {
	v, err := parseFloats("1, 2,4.5", func(x float64) bool { return x > 0 }, "--sweep-rates")
	require.NoError(t, err)
	assert.Equal(t, []float64{1, 2, 4.5}, v)
	_, err = parseFloats("1,0", func(x float64) bool { return x > 0 }, "--sweep-rates")
	assert.ErrorContains(t, err, `--sweep-rates: "0" is not valid`)
	_, err = parseFloats(",", func(float64) bool { return true }, "x")
	assert.ErrorContains(t, err, "lists nothing")

	kv := kvFlags{}
	require.NoError(t, kv.Set("server=H100 SXM"))
	require.NoError(t, kv.Set(" tp = 1 "))
	assert.Equal(t, kvFlags{"server": "H100 SXM", "tp": "1"}, kv)
	assert.Error(t, kv.Set("novalue"))
	assert.Error(t, kv.Set("=x"))
}

func TestSynthDirIsMadeOnceAndReused(t *testing.T) {
	base := t.TempDir()
	dir, err := synthDir(base, "tiny", 3)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(base, "synth-tiny-seed3"), dir)
	assert.FileExists(t, filepath.Join(dir, "config.json"))
	// A second call reuses the directory: mark it and check the mark survives.
	mark := filepath.Join(dir, "mark")
	require.NoError(t, os.WriteFile(mark, nil, 0o644))
	again, err := synthDir(base, "tiny", 3)
	require.NoError(t, err)
	assert.Equal(t, dir, again)
	assert.FileExists(t, mark)
	_, err = synthDir(base, "huge", 0)
	assert.ErrorContains(t, err, `unknown shape "huge"`)
	left, _ := filepath.Glob(filepath.Join(base, ".synth-*"))
	assert.Empty(t, left, "no temporary directory is left behind")
}

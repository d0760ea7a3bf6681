package loader

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLoadGoldens(t *testing.T) {
	g, err := LoadGoldens(goldenDir)
	require.NoError(t, err)
	assert.Equal(t, "qwen3vl-tiny-a", g.Name)
	assert.Equal(t, map[string]int{"bos": 990, "eos": 991, "vs": 992, "ve": 993, "vpad": 994, "img": 995, "vid": 996}, g.SpecialIDs)
	var names, kinds []string
	for _, c := range g.Cases {
		names = append(names, c.Name)
		kinds = append(kinds, c.Kind)
	}
	// cases.json order, not sorted order.
	assert.Equal(t, []string{"text_1", "text_7", "text_33", "image_2", "custom_2"}, names)
	assert.Equal(t, []string{"text", "text", "text", "image", "custom"}, kinds)

	c, ok := g.Case("text_7")
	require.True(t, ok)
	assert.Equal(t, 7, c.PromptLen)
	f, err := c.Open()
	require.NoError(t, err)
	defer f.Close()
	ids, err := f.Tensor("input_ids")
	require.NoError(t, err)
	v, err := ids.Int64s()
	require.NoError(t, err)
	assert.Len(t, v, 7)

	img, ok := g.Case("image_2")
	require.True(t, ok)
	assert.Equal(t, [][3]int{{1, 4, 6}, {1, 2, 4}}, img.Grids)
	cu, ok := g.Case("custom_2")
	require.True(t, ok)
	assert.Equal(t, 4, cu.TokensPerEmbedding)
	_, ok = g.Case("nope")
	assert.False(t, ok)

	cp, err := OpenCheckpoint(g.ModelDir())
	require.NoError(t, err)
	require.NoError(t, cp.Close())
	p, err := LoadProjector(g.ProjectorDir())
	require.NoError(t, err)
	require.NoError(t, p.Close())
}

func TestLoadGoldensErrors(t *testing.T) {
	write := func(t *testing.T, body string, files ...string) string {
		dir := t.TempDir()
		require.NoError(t, os.WriteFile(filepath.Join(dir, "cases.json"), []byte(body), 0o644))
		for _, f := range files {
			require.NoError(t, os.WriteFile(filepath.Join(dir, f), nil, 0o644))
		}
		return dir
	}
	for _, c := range []struct {
		name, body string
		files      []string
		want       string
	}{
		{"not json", `{`, nil, "not a cases file"},
		{"no cases", `{"name": "x"}`, nil, `no "cases" object`},
		{"cases not object", `{"cases": [1]}`, nil, "want a JSON object"},
		{"bad kind", `{"cases": {"a": {"kind": "audio"}}}`, []string{"a.safetensors"}, `case "a": kind "audio"`},
		{"missing file", `{"cases": {"a": {"kind": "text"}}}`, nil, `case "a"`},
		{"path in name", `{"cases": {"../a": {"kind": "text"}}}`, nil, "not a plain file name"},
		{"duplicate", `{"cases": {"a": {"kind": "text"}, "a": {"kind": "text"}}}`, []string{"a.safetensors"}, `key "a" appears twice`},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := write(t, c.body, c.files...)
			_, err := LoadGoldens(dir)
			require.ErrorContains(t, err, c.want)
			require.ErrorContains(t, err, filepath.Join(dir, "cases.json"))
		})
	}
	_, err := LoadGoldens(t.TempDir())
	require.ErrorIs(t, err, os.ErrNotExist)
}

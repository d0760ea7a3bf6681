package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/chat"
	"github.com/qvl-dev/qvl/loader/store"
	"github.com/qvl-dev/qvl/loader/tokenizer"
	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "256MiB": 256 << 20, "2GB": 2e9, "1.5G": 3 << 29, "64k": 64 << 10, "10 MB": 10e6, "7B": 7} {
		got, err := parseSize(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for _, bad := range []string{"", "MiB", "-1", "ten", "1e30GB"} {
		_, err := parseSize(bad)
		assert.Error(t, err, bad)
	}
}

func TestPrintReadyShowsTheDemoCurl(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c"+store.FileExt)
	w, err := store.Create(path, store.Options{})
	require.NoError(t, err)
	require.NoError(t, w.AddEmbedding("demo-7", []float32{1, 2}))
	require.NoError(t, w.AddEmbedding("sku-1", []float32{1, 2}))
	require.NoError(t, w.Close())
	var b bytes.Buffer
	printReady(&b, "http://127.0.0.1:8000", "qvl-demo", true, path, false)
	out := b.String()
	assert.Contains(t, out, `{"type": "image_ref", "image_ref": {"id": "demo-7"}}`)
	assert.Contains(t, out, "curl http://127.0.0.1:8000/v1/chat/completions")
	// The curl is valid JSON once pasted.
	body := out[strings.Index(out, "-d '")+4 : strings.LastIndex(out, "'")]
	var v map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &v), body)
	assert.Equal(t, "qvl-demo", v["model"])

	b.Reset()
	printReady(&b, "http://h:1", "m", false, path, true)
	assert.Contains(t, b.String(), `"id": "demo-7"`, "a real store's first id")
	assert.Contains(t, b.String(), "Authorization: Bearer $QVL_API_KEY")
	b.Reset()
	printReady(&b, "http://h:1", "m", false, "", false)
	assert.Contains(t, b.String(), `"content": "Hello! What can you do?"`)
}

func TestTokenizeLines(t *testing.T) {
	tok, err := tokenizer.FromJSON(qwen3.TokenizerJSON())
	require.NoError(t, err)
	var out bytes.Buffer
	require.NoError(t, tokenizeLines(strings.NewReader("\"Hello, world\"\n\n\"\"\n"), &out, tok, nil))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2)
	var ids []int
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &ids))
	assert.Equal(t, tok.Encode("Hello, world"), ids)
	assert.Equal(t, "[]", lines[1])

	tmpl, err := chat.Default()
	require.NoError(t, err)
	out.Reset()
	msgs := `[{"role":"user","content":[{"type":"image_ref","image_ref":{"id":"x"}},{"type":"text","text":"hi"}]}]`
	require.NoError(t, tokenizeLines(strings.NewReader(msgs+"\n"), &out, tok, tmpl))
	require.NoError(t, json.Unmarshal(out.Bytes(), &ids))
	want := tok.Encode("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
	assert.Equal(t, want, ids)

	err = tokenizeLines(strings.NewReader("\"ok\"\n{not json\n"), &out, tok, nil)
	require.ErrorContains(t, err, "line 2")
	err = tokenizeLines(strings.NewReader(`[{"content":"no role"}]`), &out, tok, tmpl)
	require.ErrorContains(t, err, "line 1")
}

func TestEmbeddingsImportCommand(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "c.safetensors")
	require.NoError(t, loader.WriteFile(src, []loader.WriteTensor{
		{Name: store.TensorEmbeddings, DType: loader.F32, Shape: []int{2, 3}, Data: loader.F32Bytes([]float32{1, 2, 3, 4, 5, 6})},
	}, map[string]string{"ids": `["a","b"]`}))
	out := filepath.Join(dir, "c"+store.FileExt)
	require.NoError(t, runEmbeddingsImport([]string{"--safetensors", src, "--out", out, "--dtype", "bfloat16"}))
	s, err := store.Open(out)
	require.NoError(t, err)
	it, err := s.Lookup("b")
	require.NoError(t, err)
	assert.Equal(t, loader.BF16, it.DType)
	require.NoError(t, s.Close())
	require.NoError(t, runEmbeddingsInfo([]string{"--verify", out}))
	require.Error(t, runEmbeddingsImport([]string{"--out", out}), "no source")
	ids := filepath.Join(dir, "ids.txt")
	require.NoError(t, os.WriteFile(ids, []byte("x\ny\nz\n"), 0o644))
	require.ErrorContains(t, runEmbeddingsImport([]string{"--safetensors", src, "--ids", ids, "--out", out}), "3 ids for the 2 rows")
}

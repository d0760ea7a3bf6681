package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/chat"
	"github.com/qvl-dev/qvl/loader/store"
	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/loader/tokenizer"
	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/model"
)

// Shared by the tests: the tiny demo-shaped model, its tokenizer and template, a store of
// custom embeddings for its projector, and a second projector.
var (
	modelDir   string
	projDir    string
	proj2Dir   string
	storePath  string
	testTok    *tokenizer.Tokenizer
	testTmpl   *chat.Template
	storeItems = map[string][]float32{}
)

// The fixtures are made on first use, so that fuzz workers that need none start at once.
var (
	fixtureRoot string
	fixtureOnce sync.Once
	fixtureErr  error
	tokOnce     sync.Once
	tokErr      error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtureRoot != "" {
		os.RemoveAll(fixtureRoot)
	}
	os.Exit(code)
}

// needTokenizer loads the shared tokenizer and chat template (Qwen3's, as the tiny model ships).
func needTokenizer(t testing.TB) {
	tokOnce.Do(func() {
		if testTok, tokErr = tokenizer.FromJSON(qwen3.TokenizerJSON()); tokErr == nil {
			testTmpl, tokErr = chat.Default()
		}
	})
	require.NoError(t, tokErr)
}

// needFixtures writes the shared model, projectors and store on first use.
func needFixtures(t testing.TB) {
	needTokenizer(t)
	fixtureOnce.Do(func() { fixtureErr = setup() })
	require.NoError(t, fixtureErr)
}

func setup() error {
	root, err := os.MkdirTemp("", "qvl-server-test-")
	if err != nil {
		return err
	}
	fixtureRoot = root
	modelDir = filepath.Join(root, "model")
	if err := synth.Write(modelDir, synth.Shapes["tiny"], synth.Options{Seed: 1}); err != nil {
		return err
	}
	projDir = filepath.Join(modelDir, "projector")
	// A second projector of the same shape with other weights (for hot swaps).
	other := filepath.Join(root, "other")
	if err := synth.Write(other, synth.Shapes["tiny"], synth.Options{Seed: 2}); err != nil {
		return err
	}
	proj2Dir = filepath.Join(other, "projector")
	storePath = filepath.Join(root, "items"+store.FileExt)
	w, err := store.Create(storePath, store.Options{})
	if err != nil {
		return err
	}
	d := synth.Shapes["tiny"].ProjIn
	for i := 0; i < 16; i++ {
		v := make([]float32, d)
		for j := range v {
			v[j] = float32(math.Sin(float64(i*d+j) * 0.37))
		}
		id := fmt.Sprintf("item-%d", i)
		storeItems[id] = v
		if err := w.AddEmbedding(id, v); err != nil {
			return err
		}
	}
	// One Qwen3-VL image item: grid (1, 2, 4) = 2 tokens, with DeepStack levels.
	s := synth.Shapes["tiny"]
	rows := make([]float32, 2*s.Hidden*(1+s.DeepStack))
	for i := range rows {
		rows[i] = float32(math.Cos(float64(i)*0.11)) * 0.5
	}
	if err := w.AddImageRows("photo-1", [3]int{1, 2, 4}, rows, s.Hidden); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return nil
}

// testModel opens the shared model with its projector on the CPU, as LoadModel does but with
// the shared tokenizer.
func testModel(t testing.TB, ec engine.Config) *Model {
	needFixtures(t)
	b := cpu.New(cpu.Options{})
	m, err := model.Open(b, modelDir, model.Options{ProjectorDir: projDir})
	require.NoError(t, err)
	if ec.KVCacheBytes == 0 && ec.NumBlocks == 0 {
		ec.KVCacheBytes = 8 << 20
	}
	ec.NewDetokenizer = func() engine.Detokenizer { return testTok.NewDecoder(true) }
	e, err := engine.New(m, ec)
	require.NoError(t, err)
	d, _, err := LoadSamplingDefaults(modelDir)
	require.NoError(t, err)
	return &Model{Engine: e, Tokenizer: testTok, Template: testTmpl, Defaults: d, ProjectorDir: projDir, Close: func() error {
		err := m.Close()
		b.Close()
		return err
	}}
}

type testServer struct {
	t     testing.TB
	srv   *Server
	ts    *httptest.Server
	m     *Model
	store string
}

type serverOptions struct {
	cfg    Config
	engine engine.Config
	// store is the store to serve: the shared one when empty, none when "-".
	store    string
	noAttach bool
}

// newTestServer starts a server over httptest with the shared model (and, unless the config
// says otherwise, the shared store).
func newTestServer(t testing.TB, o serverOptions) *testServer {
	needFixtures(t)
	if o.cfg.Logger == nil {
		o.cfg.Logger = discardLogger()
	}
	switch o.store {
	case "":
		o.store = storePath
	case "-":
		o.store = ""
	}
	s := New(o.cfg)
	ts := httptest.NewServer(s.Handler())
	out := &testServer{t: t, srv: s, ts: ts, store: o.store}
	if !o.noAttach {
		out.m = testModel(t, o.engine)
		require.NoError(t, s.Attach(out.m, o.store))
	}
	t.Cleanup(func() {
		ts.CloseClientConnections()
		ts.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return out
}

// do sends a request and returns the status, headers and body.
func (ts *testServer) do(method, path string, body any, hdr ...string) (int, http.Header, []byte) {
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		js, err := json.Marshal(b)
		require.NoError(ts.t, err)
		r = bytes.NewReader(js)
	}
	req, err := http.NewRequest(method, ts.ts.URL+path, r)
	require.NoError(ts.t, err)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := ts.ts.Client().Do(req)
	require.NoError(ts.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(ts.t, err)
	return resp.StatusCode, resp.Header, data
}

// post sends a JSON body and decodes a 200 answer into out.
func (ts *testServer) post(path string, body any, out any) {
	code, _, data := ts.do(http.MethodPost, path, body)
	require.Equal(ts.t, http.StatusOK, code, "%s", data)
	require.NoError(ts.t, json.Unmarshal(data, out), "%s", data)
}

// sseEvents sends a streaming request and returns the data of its events, [DONE] included.
func (ts *testServer) sseEvents(path string, body any) []string {
	js, err := json.Marshal(body)
	require.NoError(ts.t, err)
	resp, err := ts.ts.Client().Post(ts.ts.URL+path, "application/json", bytes.NewReader(js))
	require.NoError(ts.t, err)
	defer resp.Body.Close()
	require.Equal(ts.t, http.StatusOK, resp.StatusCode)
	require.Equal(ts.t, "text/event-stream", resp.Header.Get("Content-Type"))
	var events []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			events = append(events, d)
		} else {
			require.Equal(ts.t, "", line, "SSE lines are data or blank")
		}
	}
	require.NoError(ts.t, sc.Err())
	return events
}

// waitIdle waits until the engine runs nothing and holds no KV block.
func (ts *testServer) waitIdle() engine.Stats {
	var st engine.Stats
	require.Eventually(ts.t, func() bool {
		st = ts.m.Engine.Stats()
		return st.Running == 0 && st.Waiting == 0 && st.KVBlocksUsed == 0
	}, 20*time.Second, 5*time.Millisecond, "engine never went idle: %+v", st)
	return st
}

// b64 encodes float32s as base64 of little-endian float32 or bfloat16.
func b64(x []float32, bf16 bool) string {
	var b []byte
	for _, v := range x {
		if bf16 {
			b = binary.LittleEndian.AppendUint16(b, loader.F32ToBF16(v))
		} else {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
	}
	return base64.StdEncoding.EncodeToString(b)
}

// userMsg is a chat request body with one user message of the given content parts.
func userMsg(parts ...map[string]any) []map[string]any {
	return []map[string]any{{"role": "user", "content": parts}}
}

func textPart(s string) map[string]any { return map[string]any{"type": "text", "text": s} }

func refPart(id string) map[string]any {
	return map[string]any{"type": "image_ref", "image_ref": map[string]any{"id": id}}
}

func embeddingPart(v []float32) map[string]any {
	return map[string]any{"type": "embedding", "embedding": map[string]any{"data": b64(v, false), "dtype": "float32"}}
}

func imageEmbedsPart(rows []float32, tokens, cols int, grid [3]int) map[string]any {
	return map[string]any{"type": "image_embeds", "image_embeds": map[string]any{
		"data": b64(rows, false), "dtype": "float32", "shape": []int{tokens, cols}, "image_grid_thw": grid}}
}

// greedy is a chat request body with greedy decoding.
func greedy(msgs any, maxTokens int, extra ...any) map[string]any {
	b := map[string]any{"model": "qvl", "messages": msgs, "max_tokens": maxTokens, "temperature": 0}
	for i := 0; i+1 < len(extra); i += 2 {
		b[extra[i].(string)] = extra[i+1]
	}
	return b
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

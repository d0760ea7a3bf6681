package server

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/store"
)

// writeStore writes a store of embeddings at dir/name.qvlstore.
func writeStore(t testing.TB, dir, name string, items map[string][]float32) string {
	path := filepath.Join(dir, name+store.FileExt)
	w, err := store.Create(path, store.Options{})
	require.NoError(t, err)
	ids := make([]string, 0, len(items))
	for id := range items {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		require.NoError(t, w.AddEmbedding(id, items[id]))
	}
	require.NoError(t, w.Close())
	return path
}

func TestReloadStoreWhileServing(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	ask := func(parts ...map[string]any) string {
		r := ts.chat(greedy(userMsg(append(parts, textPart("describe"))...), 6, "ignore_eos", true))
		return r.Choices[0].Message.Content
	}
	before := ask(refPart("item-3"))
	// Store B maps item-3 to what item-5 was.
	pathB := writeStore(t, t.TempDir(), "b", map[string][]float32{"item-3": storeItems["item-5"]})
	oldRef := ts.srv.store.Load()

	// A request holding rows of the old store (photo-1 is read in place) is in flight.
	resp, sc := ts.openStream(context.Background(), greedy(userMsg(refPart("photo-1"), textPart("long answer")), 40, "ignore_eos", true))
	defer resp.Body.Close()
	code, _, data := ts.do(http.MethodPost, "/admin/reload", map[string]any{"store": pathB})
	require.Equal(t, http.StatusOK, code, "%s", data)
	var st Status
	require.NoError(t, json.Unmarshal(data, &st))
	assert.Equal(t, pathB, st.Store.Path)
	assert.Equal(t, 1, st.Store.Items)
	assert.Positive(t, oldRef.refs.Load(), "the old store stays mapped while the request runs")

	// The in-flight request finishes normally on the old rows.
	var finish string
	for sc.Scan() {
		d, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || d == "[DONE]" {
			continue
		}
		var c chatChunkView
		require.NoError(t, json.Unmarshal([]byte(d), &c))
		require.Nil(t, c.Error)
		if len(c.Choices) > 0 && c.Choices[0].FinishReason != nil {
			finish = *c.Choices[0].FinishReason
		}
	}
	assert.Equal(t, "length", finish)
	// Then the old mapping goes.
	require.Eventually(t, func() bool { return oldRef.refs.Load() == 0 }, 5*time.Second, 5*time.Millisecond)

	// New requests see store B.
	after := ask(refPart("item-3"))
	assert.NotEqual(t, before, after)
	assert.Equal(t, ask(embeddingPart(storeItems["item-5"])), after)
	code, _, _ = ts.do(http.MethodPost, "/v1/chat/completions", greedy(userMsg(refPart("photo-1")), 2))
	assert.Equal(t, http.StatusNotFound, code, "store B has no photo-1")

	// A reload with no paths re-reads the current store file (here: replaced on disk).
	writeStore(t, filepath.Dir(pathB), "b", map[string][]float32{"item-3": storeItems["item-3"], "extra": storeItems["item-1"]})
	status, err := ts.srv.Reload(context.Background(), ReloadRequest{})
	require.NoError(t, err)
	assert.Equal(t, 2, status.Store.Items)
	assert.NotEqual(t, st.Store.UUID, status.Store.UUID)
	assert.Equal(t, before, ask(refPart("item-3")), "the cache never serves another store's tokens")
	ts.waitIdle()
}

func TestReloadProjector(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	ask := func(part map[string]any) string {
		r := ts.chat(greedy(userMsg(part, textPart("describe")), 6, "ignore_eos", true))
		return r.Choices[0].Message.Content
	}
	before := ask(refPart("item-3"))
	require.Equal(t, 1, ts.srv.Status().ProjectedCache.Entries)
	code, _, data := ts.do(http.MethodPost, "/admin/reload", map[string]any{"projector": proj2Dir})
	require.Equal(t, http.StatusOK, code, "%s", data)
	var st Status
	require.NoError(t, json.Unmarshal(data, &st))
	require.NotNil(t, st.Projector)
	assert.Equal(t, uint64(1), st.Projector.Generation)
	assert.Equal(t, proj2Dir, st.Projector.Dir)
	assert.Equal(t, 0, st.ProjectedCache.Entries, "the old projector's tokens are dropped")

	after := ask(refPart("item-3"))
	assert.NotEqual(t, before, after, "the new projector makes other tokens")
	assert.Equal(t, ask(embeddingPart(storeItems["item-3"])), after, "store items and inline embeddings use the same projector")
	ts.waitIdle()
}

func TestReloadRefusesMisfits(t *testing.T) {
	ts := newTestServer(t, serverOptions{})
	before := ts.srv.Status()
	small := writeStore(t, t.TempDir(), "small", map[string][]float32{"a": {1, 2, 3}})
	code, _, data := ts.do(http.MethodPost, "/admin/reload", map[string]any{"store": small})
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, string(data), "projector takes 256")
	code, _, _ = ts.do(http.MethodPost, "/admin/reload", map[string]any{"projector": t.TempDir()})
	assert.Equal(t, http.StatusBadRequest, code)
	after := ts.srv.Status()
	assert.Equal(t, before.Store.UUID, after.Store.UUID, "nothing changed")
	assert.Equal(t, before.Projector.Generation, after.Projector.Generation)
	r := ts.chat(greedy(userMsg(refPart("item-0"), textPart("ok")), 2))
	assert.Len(t, r.Choices, 1)
}

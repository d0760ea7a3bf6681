package server

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/store"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/model"
)

// storeRef is one version of the embedding store, reference-counted: the server holds one
// reference while it is the current version, and every request that resolved an id against it
// holds one until the engine is done with the request (image rows alias the file mapping). The
// mapping is closed when the last reference goes.
type storeRef struct {
	st   *store.Store
	refs atomic.Int64
	log  *slog.Logger
}

func newStoreRef(st *store.Store, log *slog.Logger) *storeRef {
	r := &storeRef{st: st, log: log}
	r.refs.Store(1)
	return r
}

// acquire takes a reference unless the version is already retired and released.
func (r *storeRef) acquire() bool {
	for {
		n := r.refs.Load()
		if n <= 0 {
			return false
		}
		if r.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release drops a reference and closes the store with the last one.
func (r *storeRef) release() {
	if r.refs.Add(-1) == 0 {
		if err := r.st.Close(); err != nil {
			r.log.Error("closing a retired embedding store", "path", r.st.Path(), "err", err)
		} else {
			r.log.Info("embedding store unmapped", "path", r.st.Path(), "uuid", r.st.Meta().UUID)
		}
	}
}

// acquireStore returns the current store with a reference taken, or nil when none is loaded.
func (s *Server) acquireStore() *storeRef {
	for {
		r := s.store.Load()
		if r == nil {
			return nil
		}
		if r.acquire() {
			return r
		}
	}
}

// projKey names projected tokens: the projector generation, the store's UUID and the item id.
type projKey struct {
	gen   uint64
	store string
	id    string
}

// projCache holds projected tokens [K·H] per item, bounded by bytes, least recently used out.
type projCache struct {
	mu     sync.Mutex
	lru    *simplelru.LRU[projKey, []float32]
	bytes  int64
	max    int64
	hits   atomic.Int64
	misses atomic.Int64
}

func entryBytes(k projKey, v []float32) int64 { return int64(4*len(v)+len(k.id)+len(k.store)) + 96 }

func newProjCache(maxBytes int64) *projCache {
	c := &projCache{max: maxBytes}
	// The count bound is only a backstop: bytes bound the cache.
	c.lru, _ = simplelru.NewLRU[projKey, []float32](1<<30, func(k projKey, v []float32) {
		c.bytes -= entryBytes(k, v)
	})
	return c
}

func (c *projCache) get(k projKey) ([]float32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.lru.Get(k)
	if ok {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
	return v, ok
}

func (c *projCache) add(k projKey, v []float32) {
	n := entryBytes(k, v)
	if n > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru.Contains(k) {
		return
	}
	c.lru.Add(k, v)
	c.bytes += n
	for c.bytes > c.max {
		c.lru.RemoveOldest()
	}
}

func (c *projCache) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Purge()
}

func (c *projCache) stats() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes
}

// refHash identifies a store item's rows for prefix caching: the store version, the id, and the
// projector generation that made its tokens (0 for rows taken from the store as they are).
func refHash(storeUUID, id string, gen uint64) [32]byte {
	h := sha256.New()
	h.Write([]byte("qvl-store-item\x00"))
	h.Write([]byte(storeUUID))
	h.Write([]byte{0})
	h.Write([]byte(id))
	var g [8]byte
	binary.LittleEndian.PutUint64(g[:], gen)
	h.Write(g[:])
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// resolvedImages are a request's images ready for the engine, with their image-pad counts, and
// the store reference to release once the engine is done with them.
type resolvedImages struct {
	images []engine.Image
	tokens []int
	ref    *storeRef
}

// release drops the store reference, if any.
func (ri *resolvedImages) release() {
	if ri != nil && ri.ref != nil {
		ri.ref.release()
		ri.ref = nil
	}
}

// resolveImages turns parsed image parts into engine images: store ids are looked up, and
// custom embeddings are projected (store items through the projected-token cache). On error
// nothing stays referenced.
func (s *Server) resolveImages(ctx context.Context, m *Model, parts []imagePart) (*resolvedImages, *APIError) {
	ri := &resolvedImages{images: make([]engine.Image, len(parts)), tokens: make([]int, len(parts))}
	if len(parts) == 0 {
		return ri, nil
	}
	ok := false
	defer func() {
		if !ok {
			ri.release()
		}
	}()
	// customs[i] is the embedding to project for part i (nil when the part is ready).
	customs := make([][]float32, len(parts))
	// aliased: some image rows lie in the store's mapping, so the reference must be held until
	// the engine is done with the request.
	aliased := false
	keys := make([]*projKey, len(parts))
	for i, p := range parts {
		switch {
		case p.img != nil:
			ri.images[i] = *p.img
		case p.custom != nil:
			customs[i] = p.custom
		default:
			if ri.ref == nil {
				if ri.ref = s.acquireStore(); ri.ref == nil {
					return nil, notFound(p.param+".image_ref.id", "image_not_found", "%s.image_ref.id %q: this server has no embedding store loaded (start it with --store PATH)", p.param, p.refID)
				}
			}
			it, err := ri.ref.st.Lookup(p.refID)
			if errors.Is(err, store.ErrNotFound) {
				return nil, notFound(p.param+".image_ref.id", "image_not_found", "%s.image_ref.id %q is not in the embedding store", p.param, p.refID)
			}
			if err != nil {
				s.log.Error("embedding store lookup", "id", p.refID, "err", err)
				return nil, internalError("the embedding store could not be read")
			}
			uuid := ri.ref.st.Meta().UUID
			switch it.Kind {
			case store.KindEmbedding:
				v, err := it.Embedding()
				if err != nil {
					return nil, internalError("the embedding store could not be read")
				}
				customs[i] = v
				keys[i] = &projKey{store: uuid, id: p.refID}
			case store.KindImageEmbeds:
				spec := m.Engine.Spec()
				if it.Cols != spec.HiddenSize || (it.Levels != 0 && it.Levels != spec.DeepStackLevels) {
					return nil, unprocessable(p.param+".image_ref.id", "%s: item %q has hidden size %d and %d DeepStack levels; the model has %d and %d",
						p.param, p.refID, it.Cols, it.Levels, spec.HiddenSize, spec.DeepStackLevels)
				}
				emb, ds, err := it.ImageEmbeds()
				if err != nil {
					return nil, internalError("the embedding store could not be read")
				}
				ri.images[i] = engine.Image{GridTHW: it.GridTHW, Embeds: emb, DeepStack: ds, Hash: refHash(uuid, p.refID, 0)}
				aliased = true
			}
		}
	}
	if err := s.project(ctx, m, parts, customs, keys, ri); err != nil {
		return nil, err
	}
	h := m.Engine.Spec().HiddenSize
	for i := range ri.images {
		ri.tokens[i] = len(ri.images[i].Embeds) / h
	}
	ok = true
	if !aliased {
		ri.release()
	}
	return ri, nil
}

// project fills the images of the parts with custom embeddings with their projected tokens,
// taking store items from the cache where it has them, and projecting the rest in one call.
func (s *Server) project(ctx context.Context, m *Model, parts []imagePart, customs [][]float32, keys []*projKey, ri *resolvedImages) *APIError {
	need := false
	for _, c := range customs {
		need = need || c != nil
	}
	if !need {
		return nil
	}
	// The read lock keeps the projector (and its generation) fixed from the cache lookup to the
	// cache insert.
	s.projMu.RLock()
	defer s.projMu.RUnlock()
	spec := m.Engine.Spec()
	d, k, h := spec.ProjectorInputDim, spec.ProjectorTokens, spec.HiddenSize
	if k == 0 {
		return unprocessable(parts[0].param, "embeddings need a projector, and this server has none loaded")
	}
	var batch []float32
	var uncached []int
	for i, c := range customs {
		if c == nil {
			continue
		}
		if len(c) != d {
			return unprocessable(parts[i].param, "%s: the embedding has %d values; the loaded projector takes %d", parts[i].param, len(c), d)
		}
		if keys[i] != nil {
			keys[i].gen = s.projGen
			if v, ok := s.cache.get(*keys[i]); ok {
				ri.images[i] = engine.Image{GridTHW: [3]int{1, 2, 2 * k}, Embeds: v, Hash: refHash(keys[i].store, keys[i].id, s.projGen)}
				continue
			}
		}
		// Copied: the projection may run after this request is gone, and store rows are mapped.
		batch = append(batch, c...)
		uncached = append(uncached, i)
	}
	if len(uncached) == 0 {
		return nil
	}
	out, err := m.Engine.Project(ctx, batch)
	if err != nil {
		if ctx.Err() != nil {
			return &APIError{Status: statusClientClosed, Type: typeInvalidRequest, Message: "the client went away"}
		}
		s.log.Error("projecting embeddings", "err", err)
		return internalError("projecting the embeddings failed")
	}
	if len(out) != len(uncached)*k*h {
		s.log.Error("projector output size", "got", len(out), "want", len(uncached)*k*h)
		return internalError("projecting the embeddings failed")
	}
	for j, i := range uncached {
		v := out[j*k*h : (j+1)*k*h : (j+1)*k*h]
		img := engine.Image{GridTHW: [3]int{1, 2, 2 * k}, Embeds: v}
		if keys[i] != nil {
			img.Hash = refHash(keys[i].store, keys[i].id, s.projGen)
			s.cache.add(*keys[i], v)
		}
		ri.images[i] = img
	}
	return nil
}

// statusClientClosed is logged (never seen by the client) when a client leaves mid-request.
const statusClientClosed = 499

// checkFit reports whether a store can be served with a model of the given spec.
func checkFit(meta store.Meta, path string, spec model.Spec) error {
	if meta.Embeddings > 0 {
		if spec.ProjectorTokens == 0 {
			return fmt.Errorf("embedding store %s holds %d embeddings of %d values, but no projector is loaded (give --projector DIR)", path, meta.Embeddings, meta.EmbeddingDim)
		}
		if meta.EmbeddingDim != spec.ProjectorInputDim {
			return fmt.Errorf("embedding store %s holds embeddings of %d values, but the projector takes %d", path, meta.EmbeddingDim, spec.ProjectorInputDim)
		}
	}
	if meta.ImageEmbeds > 0 {
		if meta.HiddenSize != spec.HiddenSize {
			return fmt.Errorf("embedding store %s holds image embeddings of hidden size %d, but the model's is %d", path, meta.HiddenSize, spec.HiddenSize)
		}
		if meta.DeepStackLevels != 0 && meta.DeepStackLevels != spec.DeepStackLevels {
			return fmt.Errorf("embedding store %s holds image embeddings with %d DeepStack levels, but the model has %d", path, meta.DeepStackLevels, spec.DeepStackLevels)
		}
	}
	return nil
}

// ReloadRequest names what to swap in. An empty field re-reads the path last used for it (the
// configured one at start); with no path known, that part is left as it is.
type ReloadRequest struct {
	// Store is the path of an embedding store file.
	Store string `json:"store,omitempty"`
	// Projector is a projector directory (projector.json, projector.safetensors).
	Projector string `json:"projector,omitempty"`
}

// Reload swaps in a new embedding store and/or projector while requests keep flowing: both are
// loaded and checked against the model (and each other) first, and nothing changes on error.
// Requests already resolved keep the rows of the version they started with; the old store is
// unmapped when its last request is done.
func (s *Server) Reload(ctx context.Context, req ReloadRequest) (*Status, error) {
	m := s.model()
	if m == nil {
		return nil, errors.New("the model is not loaded yet")
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	storePath, projDir := req.Store, req.Projector
	if storePath == "" {
		storePath = s.storePath
	}
	if projDir == "" {
		projDir = s.projDir
	}
	var proj *loader.Projector
	spec := m.Engine.Spec()
	if projDir != "" {
		p, err := loader.LoadProjector(projDir)
		if err != nil {
			return nil, err
		}
		if p.Config.OutputDim != spec.HiddenSize {
			p.Close()
			return nil, fmt.Errorf("projector %s outputs tokens of %d values, but the model's hidden size is %d", projDir, p.Config.OutputDim, spec.HiddenSize)
		}
		proj = p
		spec.ProjectorInputDim, spec.ProjectorTokens = p.Config.InputDim, p.Config.TokensPerEmbedding
	}
	var st *store.Store
	if storePath != "" {
		var err error
		if st, err = store.Open(storePath); err != nil {
			if proj != nil {
				proj.Close()
			}
			return nil, err
		}
	}
	fit := st
	if fit == nil {
		if cur := s.acquireStore(); cur != nil {
			defer cur.release()
			fit = cur.st
		}
	}
	if fit != nil {
		if err := checkFit(fit.Meta(), fit.Path(), spec); err != nil {
			if proj != nil {
				proj.Close()
			}
			if st != nil {
				st.Close()
			}
			return nil, err
		}
	}
	if proj != nil {
		s.projMu.Lock()
		// The model owns the projector from here on (it closes the one it replaces).
		err := m.Engine.SwapProjector(context.Background(), proj)
		if err == nil {
			s.projGen++
			s.cache.purge()
			s.projDir = projDir
		}
		s.projMu.Unlock()
		if err != nil {
			proj.Close()
			if st != nil {
				st.Close()
			}
			return nil, fmt.Errorf("swapping the projector: %w", err)
		}
		s.log.Info("projector swapped in", "dir", projDir, "generation", s.projGenerationLocked())
	}
	if st != nil {
		old := s.store.Swap(newStoreRef(st, s.log))
		s.storePath = storePath
		if old != nil {
			old.release()
		}
		s.log.Info("embedding store swapped in", "path", storePath, "items", st.Len(), "uuid", st.Meta().UUID)
	}
	s.metrics.reloads.Inc()
	return s.Status(), nil
}

func (s *Server) projGenerationLocked() uint64 {
	s.projMu.RLock()
	defer s.projMu.RUnlock()
	return s.projGen
}

// DemoCatalogFile is the name of the demo catalog written beside the demo model.
const DemoCatalogFile = "demo-catalog" + store.FileExt

// DemoCatalogItems is the number of items of the demo catalog.
const DemoCatalogItems = 256

// DemoCatalog returns the demo catalog in dir (the demo model's directory), writing it on first
// use: DemoCatalogItems random embeddings of dim values (the demo projector's input size) with
// ids demo-0 … demo-255.
func DemoCatalog(dir string, dim int) (string, error) {
	path := filepath.Join(dir, DemoCatalogFile)
	if st, err := store.Open(path); err == nil {
		m := st.Meta()
		st.Close()
		if m.Embeddings == DemoCatalogItems && m.EmbeddingDim == dim {
			return path, nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		slog.Warn("rewriting the demo catalog", "path", path, "err", err)
	}
	w, err := store.Create(path, store.Options{Source: "qvl demo catalog: random embeddings"})
	if err != nil {
		return "", err
	}
	r := rand.New(rand.NewPCG(7, 7))
	v := make([]float32, dim)
	for i := 0; i < DemoCatalogItems; i++ {
		for j := range v {
			v[j] = float32(r.NormFloat64())
		}
		if err := w.AddEmbedding(fmt.Sprintf("demo-%d", i), v); err != nil {
			w.Abort()
			return "", err
		}
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	return path, nil
}

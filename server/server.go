// Package server is qvl's OpenAI-compatible HTTP API over the engine (runtime/engine): chat and
// text completions with SSE streaming, models, health, Prometheus metrics and pprof, and the
// precomputed embedding store (loader/store) with its cache of projected tokens. Images arrive
// as embeddings, never pixels: Qwen3-VL post-merger embeddings (image_embeds), ids in the
// embedding store (image_ref), or proprietary embeddings the loaded projector maps to tokens
// (embedding). docs/api.md gives the exact JSON of every endpoint.
//
// A Server is a client of the engine's public API: New makes it (every API call answers 503
// while loading), Attach hands it a loaded Model and starts the engine, Reload swaps the store
// or projector while requests flow, and Shutdown drains it.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/qvl-dev/qvl/loader/store"
)

// Config configures a Server.
type Config struct {
	// ServedModelName is the model id clients send and /v1/models lists (default "qvl").
	ServedModelName string
	// MaxBodyBytes caps a request body (default 64 MiB); larger bodies get 413.
	MaxBodyBytes int64
	// APIKey, when set, must be sent as "Authorization: Bearer <key>" to the /v1/ endpoints.
	APIKey string
	// AdminToken, when set, must be sent as "Authorization: Bearer <token>" to /admin/ and
	// /debug/pprof/; when empty those accept loopback clients only.
	AdminToken string
	// ProjectedCacheBytes bounds the cache of projected tokens (default 256 MiB).
	ProjectedCacheBytes int64
	// DefaultMaxTokens caps a chat completion that gives no max_tokens, when the model's
	// generation config has no max_new_tokens (0: up to the context length, as vLLM does).
	DefaultMaxTokens int
	// RetryAfter is the Retry-After of 429 and 503 answers (default 1 s).
	RetryAfter time.Duration
	// Logger receives the server's logs (default slog.Default()).
	Logger *slog.Logger
}

// Server states.
const (
	stateLoading int32 = iota
	stateReady
	stateDraining
	stateStopped
)

// Server is the HTTP API. Its handler serves from New on; API calls answer 503 until Attach.
type Server struct {
	cfg     Config
	log     *slog.Logger
	handler http.Handler
	metrics *metrics
	created int64

	mu       sync.Mutex // state, m, inflight.Add
	state    int32
	m        *Model
	inflight sync.WaitGroup
	active   atomic.Int64
	runStop  context.CancelFunc
	runDone  chan struct{}
	// abortCtx ends when a drain runs out of time: every request's work stops.
	abortCtx context.Context
	abort    context.CancelFunc

	store     atomic.Pointer[storeRef]
	reloadMu  sync.Mutex // serializes Reload; guards storePath and projDir
	storePath string
	projDir   string
	projMu    sync.RWMutex // projGen; held for reading from a cache lookup to its insert
	projGen   uint64
	cache     *projCache

	// hook, when set (tests), runs at a named point of request handling.
	hook func(point string)
}

// New makes a Server that answers 503 to API calls until Attach.
func New(cfg Config) *Server {
	if cfg.ServedModelName == "" {
		cfg.ServedModelName = "qvl"
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 20
	}
	if cfg.ProjectedCacheBytes <= 0 {
		cfg.ProjectedCacheBytes = 256 << 20
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, log: cfg.Logger, created: time.Now().Unix()}
	s.cache = newProjCache(cfg.ProjectedCacheBytes)
	s.abortCtx, s.abort = context.WithCancel(context.Background())
	s.metrics = newMetrics(s)
	s.handler = s.routes()
	return s
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Ready reports whether the server serves API calls (attached and not draining).
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == stateReady
}

func (s *Server) model() *Model {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m
}

// Attach hands the server its model and the embedding store to serve (storePath, optional):
// it opens the store (checked against the model), starts the engine, and begins serving. Reload
// re-reads storePath and m.ProjectorDir. On error the model is left to the caller.
func (s *Server) Attach(m *Model, storePath string) error {
	if m == nil || m.Engine == nil || m.Tokenizer == nil || m.Template == nil {
		return errors.New("server: Attach needs a model with an engine, a tokenizer and a template")
	}
	var ref *storeRef
	if storePath != "" {
		st, err := store.Open(storePath)
		if err != nil {
			return err
		}
		if err := checkFit(st.Meta(), st.Path(), m.Engine.Spec()); err != nil {
			st.Close()
			return err
		}
		ref = newStoreRef(st, s.log)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateLoading {
		if ref != nil {
			ref.release()
		}
		return errors.New("server: already attached or shut down")
	}
	if ref != nil {
		s.store.Store(ref)
	}
	s.reloadMu.Lock()
	s.storePath = storePath
	s.reloadMu.Unlock()
	s.projMu.Lock()
	s.projDir = m.ProjectorDir
	s.projMu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	s.runStop, s.runDone = cancel, make(chan struct{})
	go func() {
		defer close(s.runDone)
		if err := m.Engine.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("engine stopped", "err", err)
		}
	}()
	s.m = m
	s.state = stateReady
	return nil
}

// Shutdown drains the server: new API calls get 503 at once, in-flight requests run to their end
// until ctx is done, when they are cancelled (their clients get an error, their cache blocks are
// freed). Then the engine stops, and the model and store are released. It returns ctx's error
// when requests had to be cancelled. The HTTP listener is the caller's to close.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	prev := s.state
	if prev == stateDraining || prev == stateStopped {
		s.mu.Unlock()
		return errors.New("server: already shut down")
	}
	s.state = stateDraining
	m := s.m
	s.mu.Unlock()
	if prev == stateLoading {
		s.mu.Lock()
		s.state = stateStopped
		s.mu.Unlock()
		return nil
	}
	done := make(chan struct{})
	go func() {
		s.inflight.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		s.log.Warn("drain deadline reached; cancelling the requests still running", "requests", s.active.Load())
		// Stopping the engine's loop cancels every request it holds, and the abort context ends
		// the handlers' waits (on the engine or on their clients).
		s.abort()
		s.runStop()
		<-done
	}
	m.Engine.Close()
	<-s.runDone
	s.runStop()
	if m.Close != nil {
		if cerr := m.Close(); cerr != nil {
			s.log.Error("closing the model", "err", cerr)
		}
	}
	if old := s.store.Swap(nil); old != nil {
		old.release()
	}
	s.mu.Lock()
	s.state = stateStopped
	s.mu.Unlock()
	return err
}

// enter admits an API call: it fails with 503 while loading or draining.
func (s *Server) enter() (*Model, *APIError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case stateLoading:
		return nil, &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "loading",
			Message: "the model is loading; retry shortly", RetryAfter: s.cfg.RetryAfter}
	case stateDraining, stateStopped:
		return nil, &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "draining",
			Message: "the server is shutting down", RetryAfter: s.cfg.RetryAfter}
	}
	s.inflight.Add(1)
	s.active.Add(1)
	return s.m, nil
}

func (s *Server) leave() {
	s.active.Add(-1)
	s.inflight.Done()
}

// recorder remembers whether a handler has started its answer, and its status.
type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Flush lets streaming handlers flush through the recorder.
func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		if r.status == 0 {
			r.status = http.StatusOK
		}
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the underlying writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// handlerFunc is an endpoint: it writes its answer, or returns an error for the wrapper to write.
type handlerFunc func(w http.ResponseWriter, r *http.Request) *APIError

// endpoint wraps a handler: method check, panic isolation, error answers, metrics.
func (s *Server) endpoint(name string, methods []string, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.log.Error("panic while handling a request", "endpoint", name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				if rec.status == 0 {
					internalError("internal error while handling the request").write(rec)
				}
			}
			code := rec.status
			if code == 0 {
				code = http.StatusOK
			}
			s.metrics.requests.WithLabelValues(name, fmt.Sprint(code)).Inc()
		}()
		ok := false
		for _, m := range methods {
			ok = ok || r.Method == m
		}
		if !ok {
			rec.Header().Set("Allow", strings.Join(methods, ", "))
			(&APIError{Status: http.StatusMethodNotAllowed, Type: typeInvalidRequest,
				Message: fmt.Sprintf("%s %s is not allowed; use %s", r.Method, r.URL.Path, strings.Join(methods, " or "))}).write(rec)
			return
		}
		if err := h(rec, r); err != nil {
			if err.Status == statusClientClosed {
				return
			}
			if rec.status == 0 {
				err.write(rec)
			} else {
				s.log.Warn("error after the answer began", "endpoint", name, "err", err.Error())
			}
		}
	})
}

// checkAPIKey enforces Config.APIKey.
func (s *Server) checkAPIKey(r *http.Request) *APIError {
	if s.cfg.APIKey == "" {
		return nil
	}
	if bearer(r) != s.cfg.APIKey {
		return &APIError{Status: http.StatusUnauthorized, Type: typeAuthentication, Code: "invalid_api_key",
			Message: "missing or wrong API key: send Authorization: Bearer <key>"}
	}
	return nil
}

// checkAdmin enforces Config.AdminToken, or loopback-only access when none is set.
func (s *Server) checkAdmin(r *http.Request) *APIError {
	if s.cfg.AdminToken != "" {
		if bearer(r) != s.cfg.AdminToken {
			return &APIError{Status: http.StatusUnauthorized, Type: typeAuthentication, Code: "invalid_admin_token",
				Message: "missing or wrong admin token: send Authorization: Bearer <token>"}
		}
		return nil
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return &APIError{Status: http.StatusForbidden, Type: typeAuthentication, Code: "admin_forbidden",
			Message: "admin endpoints accept loopback clients only unless the server has an admin token (--admin-token)"}
	}
	return nil
}

func bearer(r *http.Request) string {
	v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	return strings.TrimSpace(v)
}

// readBody reads a request body up to the configured limit (413 beyond it).
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *APIError) {
	tooLarge := func() *APIError {
		return &APIError{Status: http.StatusRequestEntityTooLarge, Type: typeInvalidRequest, Code: "request_too_large",
			Message: fmt.Sprintf("the request body is larger than the limit of %d bytes", s.cfg.MaxBodyBytes)}
	}
	if r.ContentLength > s.cfg.MaxBodyBytes {
		return nil, tooLarge()
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge()
		}
		return nil, badRequest("", "reading the request body: %v", err)
	}
	return body, nil
}

// api wraps an API endpoint: key check, admission (503 while loading or draining), body.
func (s *Server) api(h func(w http.ResponseWriter, r *http.Request, m *Model, body []byte) *APIError) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) *APIError {
		if err := s.checkAPIKey(r); err != nil {
			return err
		}
		m, err := s.enter()
		if err != nil {
			return err
		}
		defer s.leave()
		var body []byte
		if r.Method == http.MethodPost {
			if body, err = s.readBody(w, r); err != nil {
				return err
			}
		}
		return h(w, r, m, body)
	}
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	post, get := []string{http.MethodPost}, []string{http.MethodGet, http.MethodHead}
	mux.Handle("/v1/chat/completions", s.endpoint("chat", post, s.api(s.handleChat)))
	mux.Handle("/v1/completions", s.endpoint("completions", post, s.api(s.handleCompletions)))
	mux.Handle("/v1/models", s.endpoint("models", get, s.api(s.handleModels)))
	mux.Handle("/health", s.endpoint("health", get, s.handleHealth))
	mux.Handle("/metrics", s.endpoint("metrics", get, func(w http.ResponseWriter, r *http.Request) *APIError {
		promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
		return nil
	}))
	mux.Handle("/admin/reload", s.endpoint("admin_reload", post, s.handleReload))
	mux.Handle("/admin/status", s.endpoint("admin_status", get, func(w http.ResponseWriter, r *http.Request) *APIError {
		if err := s.checkAdmin(r); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, s.Status())
		return nil
	}))
	pp := http.NewServeMux()
	pp.HandleFunc("/debug/pprof/", pprof.Index)
	pp.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	pp.HandleFunc("/debug/pprof/profile", pprof.Profile)
	pp.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	pp.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/debug/pprof/", s.endpoint("pprof", []string{http.MethodGet, http.MethodHead, http.MethodPost}, func(w http.ResponseWriter, r *http.Request) *APIError {
		if err := s.checkAdmin(r); err != nil {
			return err
		}
		pp.ServeHTTP(w, r)
		return nil
	}))
	mux.Handle("/", s.endpoint("unknown", []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions},
		func(w http.ResponseWriter, r *http.Request) *APIError {
			return notFound("", "not_found", "no endpoint %s %s (see docs/api.md)", r.Method, r.URL.Path)
		}))
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// handleHealth answers 200 {"status": "ok"} when serving, 503 while loading or draining.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) *APIError {
	s.mu.Lock()
	state := s.state
	s.mu.Unlock()
	names := map[int32]string{stateLoading: "loading", stateReady: "ok", stateDraining: "draining", stateStopped: "stopped"}
	code := http.StatusOK
	if state != stateReady {
		code = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", fmt.Sprint(int(s.cfg.RetryAfter.Seconds()+0.999)))
	}
	writeJSON(w, code, map[string]string{"status": names[state]})
	return nil
}

// modelObject is one entry of /v1/models.
type modelObject struct {
	ID          string `json:"id"`
	Object      string `json:"object"`
	Created     int64  `json:"created"`
	OwnedBy     string `json:"owned_by"`
	MaxModelLen int    `json:"max_model_len"`
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request, m *Model, _ []byte) *APIError {
	writeJSON(w, http.StatusOK, struct {
		Object string        `json:"object"`
		Data   []modelObject `json:"data"`
	}{"list", []modelObject{{ID: s.cfg.ServedModelName, Object: "model", Created: s.created, OwnedBy: "qvl", MaxModelLen: m.Engine.MaxModelLen()}}})
	return nil
}

// handleReload is POST /admin/reload: {"store": path, "projector": dir}, both optional.
func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) *APIError {
	if err := s.checkAdmin(r); err != nil {
		return err
	}
	if s.model() == nil {
		return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Code: "loading", Message: "the model is loading", RetryAfter: s.cfg.RetryAfter}
	}
	body, aerr := s.readBody(w, r)
	if aerr != nil {
		return aerr
	}
	var req ReloadRequest
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := decodeBody(body, &req); err != nil {
			return err
		}
	}
	st, err := s.Reload(r.Context(), req)
	if err != nil {
		return badRequest("", "reload failed, nothing was changed: %v", err)
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// Status describes what the server serves.
type Status struct {
	// Model is the served model name; State is loading, ok, draining or stopped.
	Model string `json:"model"`
	State string `json:"state"`
	// Store is the current embedding store (null when none).
	Store *StoreStatus `json:"store"`
	// Projector is the loaded projector (null when none).
	Projector *ProjectorStatus `json:"projector"`
	// ProjectedCache describes the projected-token cache.
	ProjectedCache CacheStatus `json:"projected_cache"`
	// Requests is the number of API calls in flight.
	Requests int64 `json:"requests_in_flight"`
}

// StoreStatus describes the current embedding store.
type StoreStatus struct {
	Path string `json:"path"`
	store.Meta
	Items int `json:"items"`
}

// ProjectorStatus describes the loaded projector.
type ProjectorStatus struct {
	Dir                string `json:"dir,omitempty"`
	InputDim           int    `json:"input_dim"`
	TokensPerEmbedding int    `json:"tokens_per_embedding"`
	// Generation counts projector swaps since start.
	Generation uint64 `json:"generation"`
}

// CacheStatus describes the projected-token cache.
type CacheStatus struct {
	Entries  int   `json:"entries"`
	Bytes    int64 `json:"bytes"`
	MaxBytes int64 `json:"max_bytes"`
	Hits     int64 `json:"hits"`
	Misses   int64 `json:"misses"`
}

// Status reports the server's state, store, projector and cache.
func (s *Server) Status() *Status {
	s.mu.Lock()
	state, m := s.state, s.m
	s.mu.Unlock()
	names := map[int32]string{stateLoading: "loading", stateReady: "ok", stateDraining: "draining", stateStopped: "stopped"}
	st := &Status{Model: s.cfg.ServedModelName, State: names[state], Requests: s.active.Load()}
	if r := s.acquireStore(); r != nil {
		st.Store = &StoreStatus{Path: r.st.Path(), Meta: r.st.Meta(), Items: r.st.Len()}
		r.release()
	}
	if m != nil {
		if spec := m.Engine.Spec(); spec.ProjectorTokens > 0 {
			st.Projector = &ProjectorStatus{Dir: s.projDirSnapshot(), InputDim: spec.ProjectorInputDim, TokensPerEmbedding: spec.ProjectorTokens, Generation: s.projGenerationLocked()}
		}
	}
	n, b := s.cache.stats()
	st.ProjectedCache = CacheStatus{Entries: n, Bytes: b, MaxBytes: s.cfg.ProjectedCacheBytes, Hits: s.cache.hits.Load(), Misses: s.cache.misses.Load()}
	return st
}

// projDirSnapshot reads the projector directory; Reload sets it under projMu too.
func (s *Server) projDirSnapshot() string {
	s.projMu.RLock()
	defer s.projMu.RUnlock()
	return s.projDir
}

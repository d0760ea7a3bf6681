package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/store"
	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/server"
)

func init() {
	register("serve", "serve a model over an OpenAI-compatible API (no flags: the built-in demo on 127.0.0.1:8000)", runServe)
}

// byteSize is a flag holding a size in bytes: a number with an optional unit (KB, MB, GB,
// KiB, MiB, GiB; K, M, G are binary).
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	v, err := parseSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(v)
	return nil
}

func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(u.suffix)) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || f*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit (e.g. 512MiB, 2GB)", s)
	}
	return int64(f * float64(mult)), nil
}

// loadingProgress reports loading progress on stderr: in place on a terminal, every 10% else.
type loadingProgress struct {
	mu    sync.Mutex
	what  string
	last  time.Time
	step  int64
	tty   bool
	ended bool
}

func newLoadingProgress(what string) *loadingProgress {
	fi, err := os.Stderr.Stat()
	return &loadingProgress{what: what, tty: err == nil && fi.Mode()&os.ModeCharDevice != 0, step: -1}
}

func (p *loadingProgress) update(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if total <= 0 || p.ended {
		return
	}
	pct := done * 100 / total
	mb := func(n int64) float64 { return float64(n) / 1e6 }
	switch {
	case p.tty:
		if done < total && time.Since(p.last) < 100*time.Millisecond {
			return
		}
		p.last = time.Now()
		fmt.Fprintf(os.Stderr, "\r%s: %3d%% (%.0f of %.0f MB)", p.what, pct, mb(done), mb(total))
		if done >= total {
			fmt.Fprintln(os.Stderr)
			p.ended = true
		}
	case pct/10 > p.step || done >= total:
		p.step = pct / 10
		fmt.Fprintf(os.Stderr, "%s: %d%% (%.0f of %.0f MB)\n", p.what, pct, mb(done), mb(total))
		p.ended = done >= total
	}
}

func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:8000", "address to listen on")
	modelDir := fs.String("model", "", "Qwen3-VL checkpoint directory (default: the built-in demo model)")
	projDir := fs.String("projector", "", "projector directory for embedding parts (default: <model>/projector when present)")
	storePath := fs.String("store", "", "embedding store to serve image_ref ids from (default with the demo model: its demo catalog)")
	backend := fs.String("backend", "auto", "backend: auto, cpu, cpu-ref or cuda")
	threads := fs.Int("threads", 0, "CPU threads (0: all cores)")
	kvBytes := byteSize(256 << 20)
	fs.Var(&kvBytes, "kv-cache-bytes", "memory for the KV cache (e.g. 256MiB, 8GiB)")
	maxSeqs := fs.Int("max-num-seqs", 256, "most requests in one engine step")
	maxBatched := fs.Int("max-num-batched-tokens", 2048, "most tokens in one engine step (longer prompts are prefilled in chunks)")
	maxWaiting := fs.Int("max-waiting", 1024, "most requests waiting for the engine; beyond, requests get 429 (0: unbounded)")
	maxModelLen := fs.Int("max-model-len", 0, "longest prompt plus output (0: the model's, within the KV cache)")
	served := fs.String("served-model-name", "", "model id clients send and /v1/models lists (default: the model directory's name, qvl-demo for the demo)")
	apiKey := fs.String("api-key", os.Getenv("QVL_API_KEY"), "API key clients must send as a bearer token (default $QVL_API_KEY; empty: none)")
	adminToken := fs.String("admin-token", os.Getenv("QVL_ADMIN_TOKEN"), "token for /admin/ and /debug/pprof/ (default $QVL_ADMIN_TOKEN; empty: loopback clients only)")
	maxBody := byteSize(64 << 20)
	fs.Var(&maxBody, "max-body-bytes", "largest request body (larger ones get 413)")
	cacheBytes := byteSize(256 << 20)
	fs.Var(&cacheBytes, "projected-cache-bytes", "memory for cached projector outputs of store items")
	drain := fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may take to finish")
	defMax := fs.Int("default-max-tokens", -1, "max_tokens of chat requests that give none (-1: 128 for the demo model, else up to the context length)")
	fs.Parse(args)
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (flags only; see qvl serve -h)", fs.Args())
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(log)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	demo := *modelDir == ""
	name := *served
	if name == "" {
		name = "qvl-demo"
		if !demo {
			name = filepath.Base(filepath.Clean(*modelDir))
		}
	}
	if *defMax < 0 {
		*defMax = 0
		if demo {
			*defMax = 128
		}
	}
	srv := server.New(server.Config{ServedModelName: name, MaxBodyBytes: int64(maxBody), APIKey: *apiKey, AdminToken: *adminToken,
		ProjectedCacheBytes: int64(cacheBytes), DefaultMaxTokens: *defMax, Logger: log})
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	url := "http://" + displayAddr(ln.Addr())
	fmt.Fprintf(os.Stderr, "qvl: listening on %s; loading the model (requests get 503 until it is ready)\n", url)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	type loaded struct {
		store string
		err   error
	}
	ready := make(chan loaded, 1)
	go func() {
		st, err := loadAndAttach(srv, log, serveConfig{model: *modelDir, projector: *projDir, store: *storePath, backend: *backend, threads: *threads,
			engine: engine.Config{KVCacheBytes: int64(kvBytes), MaxNumSeqs: *maxSeqs, MaxNumBatchedTokens: *maxBatched, MaxWaiting: *maxWaiting, MaxModelLen: *maxModelLen}})
		ready <- loaded{st, err}
	}()

	for {
		select {
		case l := <-ready:
			if l.err != nil {
				_ = hs.Close()
				return l.err
			}
			printReady(os.Stdout, url, name, demo, l.store, *apiKey != "")
		case err := <-serveErr:
			return fmt.Errorf("http server: %w", err)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				st, err := srv.Reload(context.Background(), server.ReloadRequest{})
				if err != nil {
					log.Error("reload on SIGHUP failed; still serving the previous store and projector", "err", err)
				} else if st.Store != nil {
					log.Info("reloaded on SIGHUP", "store", st.Store.Path, "items", st.Store.Items)
				}
				continue
			}
			return shutdown(srv, hs, log, *drain, sigs)
		}
	}
}

// shutdown drains the server (a second signal cuts the drain short) and closes the listener.
func shutdown(srv *server.Server, hs *http.Server, log *slog.Logger, drain time.Duration, sigs <-chan os.Signal) error {
	log.Info("shutting down: no new requests; waiting for the ones in flight", "deadline", drain)
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	go func() {
		select {
		case <-sigs:
			log.Warn("second signal: cancelling the requests in flight")
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		log.Error("shutdown", "err", err)
	}
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	if err := hs.Shutdown(hctx); err != nil {
		_ = hs.Close()
	}
	log.Info("stopped")
	return nil
}

type serveConfig struct {
	model, projector, store, backend string
	threads                          int
	engine                           engine.Config
}

// loadAndAttach loads the model (writing the demo model and catalog on first use), attaches it
// to srv, and returns the path of the store it serves.
func loadAndAttach(srv *server.Server, log *slog.Logger, c serveConfig) (string, error) {
	dir := c.model
	demo := dir == ""
	if demo {
		var err error
		if dir, err = synth.DemoDir(newLoadingProgress("writing the demo model (first run only)").update); err != nil {
			return "", fmt.Errorf("demo model: %w", err)
		}
	}
	proj := c.projector
	if proj == "" {
		if _, err := os.Stat(filepath.Join(dir, "projector", loader.ProjectorConfigFileName)); err == nil {
			proj = filepath.Join(dir, "projector")
		}
	}
	b, err := openBackend(c.backend, c.threads)
	if err != nil {
		return "", err
	}
	m, err := server.LoadModel(server.LoadOptions{ModelDir: dir, ProjectorDir: proj, Backend: b, Engine: c.engine,
		Progress: newLoadingProgress("loading " + dir).update, Logger: log})
	if err != nil {
		b.Close()
		return "", err
	}
	st := c.store
	if st == "" && demo {
		if st, err = server.DemoCatalog(dir, m.Engine.Spec().ProjectorInputDim); err != nil {
			m.Close()
			return "", fmt.Errorf("demo catalog: %w", err)
		}
	}
	if err := srv.Attach(m, st); err != nil {
		m.Close()
		return "", err
	}
	spec := m.Engine.Spec()
	log.Info("model ready", "dir", dir, "backend", b.Name(), "hidden", spec.HiddenSize, "max_model_len", m.Engine.MaxModelLen(),
		"projector", proj, "store", st)
	return st, nil
}

// displayAddr is a listening address as a client would dial it.
func displayAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// printReady tells the user the server is up and how to call it.
func printReady(w io.Writer, url, name string, demo bool, storePath string, key bool) {
	fmt.Fprintf(w, "\nqvl is serving %q at %s\n", name, url)
	if demo {
		fmt.Fprintf(w, "  the built-in demo model: tiny random weights with the real Qwen3 tokenizer (its output is gibberish)\n")
	}
	ref := ""
	if storePath != "" {
		if st, err := store.Open(storePath); err == nil {
			m := st.Meta()
			fmt.Fprintf(w, "  embedding store %s: %d items (%d embeddings, %d image embeddings)\n", storePath, st.Len(), m.Embeddings, m.ImageEmbeds)
			if demo {
				ref = "demo-7"
			} else if st.Len() > 0 {
				if it, err := st.At(0); err == nil {
					ref = it.ID
				}
			}
			st.Close()
		}
	}
	fmt.Fprintf(w, "  endpoints: /v1/chat/completions /v1/completions /v1/models /health /metrics /debug/pprof/ (see docs/api.md)\n\nTry it:\n\n")
	auth := ""
	if key {
		auth = ` -H "Authorization: Bearer $QVL_API_KEY"`
	}
	content := `"Hello! What can you do?"`
	if ref != "" {
		content = fmt.Sprintf(`[
      {"type": "image_ref", "image_ref": {"id": %q}},
      {"type": "text", "text": "Describe this item."}
    ]`, ref)
	}
	fmt.Fprintf(w, `curl %s/v1/chat/completions -H 'Content-Type: application/json'%s -d '{
  "model": %q,
  "messages": [
    {"role": "user", "content": %s}
  ],
  "max_tokens": 32
}'
`, url, auth, name, content)
	fmt.Fprintln(w)
}

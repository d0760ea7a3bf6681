package bench

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBenchServeE2E runs `qvl bench serve` for 8 s at concurrency 4 against the built-in demo
// server, as CI does with
//
//	QVL_E2E=1 go test -run TestBenchServeE2E -count=1 ./bench/
//
// It builds qvl, starts `qvl serve` on a free loopback port with a fresh cache directory (the
// demo model and catalog are made on first use), benchmarks it with image references to the
// demo catalog and a server CPU profile, checks the result file and the profile, and stops the
// server with SIGTERM, which must exit cleanly. With QVL_E2E_URL set it benchmarks that server
// instead of starting one. Without either variable it is skipped: it takes about half a minute.
func TestBenchServeE2E(t *testing.T) {
	url := os.Getenv("QVL_E2E_URL")
	if url == "" && os.Getenv("QVL_E2E") == "" {
		t.Skip("set QVL_E2E=1 (or QVL_E2E_URL) to run the end-to-end benchmark against qvl serve")
	}
	tmp := t.TempDir()
	qvl := filepath.Join(tmp, "qvl")
	build := exec.Command("go", "build", "-o", qvl, "./cmd/qvl")
	build.Dir = moduleRoot(t)
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	if url == "" {
		url = startServer(t, qvl, tmp)
	}
	result := filepath.Join(tmp, "result.json")
	profDir := filepath.Join(tmp, "prof")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qvl, "bench", "serve", "--url", url, "--duration", "8s", "--concurrency", "4",
		"--random-input-len", "64", "--random-output-len", "16", "--image-ref-prob", "0.5", "--image-ids", "demo-0..demo-255",
		"--metric-percentiles", "50,99", "--result-json", result, "--profile", profDir)
	cmd.Env = append(os.Environ(), "QVL_CACHE_DIR="+filepath.Join(tmp, "cache"))
	start := time.Now()
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "qvl bench serve: %s", out)
	t.Logf("qvl bench serve took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	assert.Contains(t, string(out), "============ Serving Benchmark Result ============")

	r, err := ReadResult(result)
	require.NoError(t, err)
	assert.Positive(t, r.Completed)
	assert.Zero(t, r.Failed, "errors: %v", r.Errors)
	assert.Len(t, r.TTFTs, r.Completed)
	assert.Positive(t, r.TotalOutputTokens)
	assert.Positive(t, r.MeanTTFTMs)
	assert.Positive(t, r.MeanTPOTMs)
	assert.GreaterOrEqual(t, r.Duration, 8.0)
	assert.Less(t, r.Duration, 60.0, "a bounded run")
	for _, k := range []string{"p50_ttft_ms", "p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms", "p99_e2el_ms"} {
		assert.Contains(t, r.Percentiles, k)
	}
	assert.Equal(t, 4, *r.MaxConcurrency)
	assert.LessOrEqual(t, r.MaxConcurrentRequests, 4)
	for i, n := range r.OutputLens {
		assert.Equal(t, 16, n, "request %d: the random dataset ignores EOS, so every output is max_tokens long", i)
	}

	f, err := os.Open(filepath.Join(profDir, "cpu-infqps.pb.gz"))
	require.NoError(t, err)
	defer f.Close()
	p, err := profile.Parse(f)
	require.NoError(t, err)
	assert.Equal(t, "cpu", p.SampleType[len(p.SampleType)-1].Type, "a Go CPU profile")
	assert.NotEmpty(t, p.Sample, "the server was busy during the run")
}

// moduleRoot finds the directory of go.mod above the test's directory.
func moduleRoot(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	require.NoError(t, err)
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// startServer runs `qvl serve` on a free port and returns its URL once /health answers 200.
func startServer(t *testing.T, qvl, tmp string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	logPath := filepath.Join(tmp, "serve.log")
	logf, err := os.Create(logPath)
	require.NoError(t, err)
	srv := exec.Command(qvl, "serve", "--addr", addr)
	srv.Env = append(os.Environ(), "QVL_CACHE_DIR="+filepath.Join(tmp, "cache"))
	srv.Stdout, srv.Stderr = logf, logf
	require.NoError(t, srv.Start())
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			assert.NoError(t, err, "qvl serve must exit cleanly on SIGTERM")
		case <-time.After(30 * time.Second):
			_ = srv.Process.Kill()
			t.Error("qvl serve did not exit within 30 s of SIGTERM")
		}
		logf.Close()
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("qvl serve log:\n%s", log)
		}
	})
	url := "http://" + addr
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logPath)
			t.Fatalf("qvl serve exited early (%v):\n%s", err, log)
		default:
		}
		resp, err := http.Get(url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("qvl serve at %s was not healthy within 2 minutes", url)
	return ""
}

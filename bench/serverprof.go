package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// CPUProfiler collects a Go CPU profile of a server while a benchmark runs, from its
// /debug/pprof/profile endpoint (net/http/pprof). Since that endpoint profiles for a fixed
// number of seconds, it fetches consecutive windows until stopped and merges them: a CPU
// profile only samples time on the CPU, so the idle tail of the last window adds nothing.
type CPUProfiler struct {
	// HTTP is the client used.
	HTTP *http.Client
	// BaseURL is the server's root (the profile is at BaseURL/debug/pprof/profile).
	BaseURL string
	// Window is the length of each fetch (default 5 s).
	Window time.Duration

	stop chan struct{}
	done chan struct{}
	prof []*profile.Profile
	err  error
}

// Start begins profiling.
func (p *CPUProfiler) Start(ctx context.Context) {
	if p.Window <= 0 {
		p.Window = 5 * time.Second
	}
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.done)
		for {
			prof, err := p.fetch(ctx)
			if err != nil {
				p.err = err
				return
			}
			p.prof = append(p.prof, prof)
			select {
			case <-p.stop:
				return
			case <-ctx.Done():
				return
			default:
			}
		}
	}()
}

// fetch downloads one window.
func (p *CPUProfiler) fetch(ctx context.Context) (*profile.Profile, error) {
	secs := max(1, int((p.Window+time.Second-1)/time.Second))
	u := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimRight(p.BaseURL, "/"), secs)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	hc := p.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("CPU profile from %s: %w", u, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("CPU profile from %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("CPU profile from %s: HTTP %s: %.200s (does the server serve net/http/pprof?)", u, resp.Status, bytes.TrimSpace(data))
	}
	prof, err := profile.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("CPU profile from %s is not a pprof profile: %w", u, err)
	}
	return prof, nil
}

// Stop waits for the window in progress to finish and writes the merged profile to path.
func (p *CPUProfiler) Stop(path string) error {
	if p.stop == nil {
		return errors.New("CPU profiler: not started")
	}
	close(p.stop)
	<-p.done
	if p.err != nil && len(p.prof) == 0 {
		return p.err
	}
	if len(p.prof) == 0 {
		return errors.New("CPU profiler: no profile was fetched")
	}
	merged, err := profile.Merge(p.prof)
	if err != nil {
		return fmt.Errorf("CPU profiler: merging %d windows: %w", len(p.prof), err)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := merged.Write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return p.err
}

package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/qvl-dev/qvl/loader"
	"github.com/qvl-dev/qvl/loader/chat"
	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/sample"
	"github.com/qvl-dev/qvl/server"
)

func init() {
	register("generate", "run one prompt through the engine, streaming the text to stdout", runGenerate)
}

func runGenerate(args []string) error {
	fs := flag.NewFlagSet("generate", flag.ExitOnError)
	modelDir := fs.String("model", "", "Qwen3-VL checkpoint directory (default: the built-in demo model)")
	prompt := fs.String("prompt", "", "the prompt (required)")
	useChat := fs.Bool("chat", false, "wrap the prompt as one user message in the model's chat template")
	maxTokens := fs.Int("max-tokens", 64, "most tokens to generate")
	temperature := fs.Float64("temperature", -1, "sampling temperature; 0 is greedy (default: the model's generation_config.json, else 1)")
	topP := fs.Float64("top-p", -1, "nucleus sampling threshold (default: the model's, else off)")
	topK := fs.Int("top-k", -2, "keep the k most likely tokens (default: the model's, else off)")
	seed := fs.Int64("seed", -1, "random seed for reproducible sampling (-1: random)")
	ignoreEOS := fs.Bool("ignore-eos", false, "keep generating past end-of-sequence tokens")
	backend := fs.String("backend", "cpu", "backend: cpu, cpu-ref, cuda or auto")
	threads := fs.Int("threads", 0, "CPU threads (0: all cores)")
	fs.Parse(args)
	if *prompt == "" {
		fs.Usage()
		return errors.New("--prompt is required")
	}
	if *maxTokens < 1 {
		return fmt.Errorf("--max-tokens must be at least 1, got %d", *maxTokens)
	}
	dir := *modelDir
	if dir == "" {
		var err error
		if dir, err = synth.DemoDir(newLoadingProgress("writing the demo model (first run only)").update); err != nil {
			return err
		}
	}
	b, err := openBackend(*backend, *threads)
	if err != nil {
		return err
	}
	proj := ""
	if _, err := os.Stat(filepath.Join(dir, "projector", loader.ProjectorConfigFileName)); err == nil {
		proj = filepath.Join(dir, "projector")
	}
	m, err := server.LoadModel(server.LoadOptions{ModelDir: dir, ProjectorDir: proj, Backend: b,
		Engine: engine.Config{KVCacheBytes: 64 << 20, MaxModelLen: 0}, Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		b.Close()
		return err
	}
	defer m.Close()
	var ids []int
	if *useChat {
		ids, err = m.Template.Encode(m.Tokenizer, []chat.Message{chat.Text("user", *prompt)}, chat.Options{AddGenerationPrompt: true}, m.Engine.Spec().ImageTokenID, nil)
		if err != nil {
			return err
		}
	} else {
		ids = m.Tokenizer.Encode(*prompt)
	}
	sp := sample.Params{Temperature: 1, Logprobs: -1}
	d := m.Defaults
	if d.Temperature != nil {
		sp.Temperature = float32(*d.Temperature)
	}
	if d.TopP != nil {
		sp.TopP = float32(*d.TopP)
	}
	if d.TopK != nil {
		sp.TopK = *d.TopK
	}
	if d.MinP != nil {
		sp.MinP = float32(*d.MinP)
	}
	if d.RepetitionPenalty != nil {
		sp.RepetitionPenalty = float32(*d.RepetitionPenalty)
	}
	if *temperature >= 0 {
		sp.Temperature = float32(*temperature)
	}
	if *topP >= 0 {
		sp.TopP = float32(*topP)
	}
	if *topK >= -1 {
		sp.TopK = *topK
	}
	if *seed >= 0 {
		s := uint64(*seed)
		sp.Seed = &s
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	go m.Engine.Run(runCtx)
	start := time.Now()
	st, err := m.Engine.Submit(&engine.Request{Prompt: ids, Sampling: sp, MaxTokens: *maxTokens, IgnoreEOS: *ignoreEOS})
	if err != nil {
		return err
	}
	return streamOut(ctx, os.Stdout, st, start, len(ids))
}

// streamOut writes a stream's text as it comes and a summary on stderr.
func streamOut(ctx context.Context, w io.Writer, st *engine.Stream, start time.Time, promptLen int) error {
	out := bufio.NewWriter(w)
	var first time.Time
	n := 0
	for {
		ev, err := st.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			st.Cancel()
			out.Flush()
			return err
		}
		if ev.Token >= 0 {
			n++
			if first.IsZero() {
				first = time.Now()
			}
		}
		out.WriteString(ev.Text)
		out.Flush()
		if ev.Finish == engine.FinishError {
			return fmt.Errorf("generation failed: %v", ev.Err)
		}
		if ev.Finish != "" {
			fmt.Fprintln(out)
			out.Flush()
			total := time.Since(start)
			rate := 0.0
			if n > 1 {
				rate = float64(n-1) / time.Since(first).Seconds()
			}
			fmt.Fprintf(os.Stderr, "[%s: %d prompt tokens, %d generated in %.2fs; first token after %.0f ms; %.1f tokens/s after it]\n",
				ev.Finish, promptLen, n, total.Seconds(), float64(first.Sub(start).Milliseconds()), rate)
		}
	}
	return nil
}

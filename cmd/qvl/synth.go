package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/qvl-dev/qvl/loader/synth"
)

func init() {
	register("synth", "write a checkpoint with random bf16 weights of a real Qwen3-VL shape", runSynth)
}

func runSynth(args []string) error {
	fs := flag.NewFlagSet("synth", flag.ExitOnError)
	shape := fs.String("shape", "tiny", "model shape: "+strings.Join(synth.ShapeNames(), ", "))
	out := fs.String("out", "", "output directory (required)")
	seed := fs.Uint64("seed", 0, "random seed of the weights")
	shard := fs.Int64("shard-bytes", 2<<30, "largest safetensors shard")
	fs.Parse(args)
	s, ok := synth.Shapes[*shape]
	if !ok {
		return fmt.Errorf("unknown shape %q (want one of %s)", *shape, strings.Join(synth.ShapeNames(), ", "))
	}
	if *out == "" {
		return fmt.Errorf("--out DIR is required")
	}
	start := time.Now()
	fmt.Fprintf(os.Stderr, "synth %s: %.2fB parameters into %s\n", s.Name, float64(s.Params())/1e9, *out)
	err := synth.Write(*out, s, synth.Options{Seed: *seed, ShardBytes: *shard, Progress: progressPrinter("writing")})
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "done in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// progressPrinter returns a progress callback that redraws one line on stderr.
func progressPrinter(what string) func(done, total int64) {
	last := time.Time{}
	return func(done, total int64) {
		if time.Since(last) < 200*time.Millisecond && done < total {
			return
		}
		last = time.Now()
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(done) / float64(total)
		}
		fmt.Fprintf(os.Stderr, "\r%s %6.1f%% (%.2f / %.2f GB)", what, pct, float64(done)/1e9, float64(total)/1e9)
	}
}

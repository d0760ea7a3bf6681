package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/qvl-dev/qvl/runtime/verify"
)

func init() {
	register("verify", "check logits against a goldens directory (Hugging Face reference outputs)", runVerify)
}

func runVerify(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ExitOnError)
	dir := fs.String("goldens", "testdata/goldens/qwen3vl-tiny-a", "goldens directory (model/, projector/, cases.json, <case>.safetensors)")
	dump := fs.String("dump", "", "write <case>.safetensors with the computed logits into this directory")
	backend := fs.String("backend", "cpu", "backend: cpu, cpu-ref, cuda or auto")
	threads := fs.Int("threads", 0, "CPU threads (0: all cores)")
	maxAbs := fs.Float64("max-abs", 0, "largest |Δlogit| allowed (default 2e-3; with --backend cuda the relative L2 bound applies instead)")
	maxRel := fs.Float64("max-rel-l2", 0, "largest relative L2 error of logits (default 2e-2 on cuda, off on the CPU)")
	budget := fs.Int("max-num-batched-tokens", 0, "engine step budget; small values force chunked prefill")
	fs.Parse(args)
	b, err := openBackend(*backend, *threads)
	if err != nil {
		return err
	}
	defer b.Close()
	o := verify.Options{Dump: *dump, Out: os.Stdout, MaxAbs: *maxAbs, MaxRelL2: *maxRel, MaxNumBatchedTokens: *budget}
	if *backend == "cuda" || *backend == "gpu" {
		if o.MaxRelL2 == 0 {
			o.MaxRelL2 = 2e-2
		}
		if o.MaxAbs == 0 {
			o.MaxAbs = -1
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fmt.Printf("verify %s on %s\n", *dir, b.Name())
	res, err := verify.Run(ctx, *dir, b, o)
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range res {
		if !r.Pass {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d cases failed", failed, len(res))
	}
	fmt.Printf("all %d cases pass\n", len(res))
	return nil
}

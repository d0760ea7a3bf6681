package engine_test

import (
	"context"
	"fmt"
	"log"

	"github.com/qvl-dev/qvl/runtime/cpu"
	"github.com/qvl-dev/qvl/runtime/engine"
	"github.com/qvl-dev/qvl/runtime/model"
	"github.com/qvl-dev/qvl/runtime/sample"
)

// Example opens a checkpoint on the CPU, starts an engine and streams one greedy request with a
// proprietary embedding that the projector maps to 4 image tokens.
func Example() {
	m, err := model.Open(cpu.New(cpu.Options{}), "../../testdata/goldens/qwen3vl-tiny-a/model",
		model.Options{ProjectorDir: "../../testdata/goldens/qwen3vl-tiny-a/projector"})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	e, err := engine.New(m, engine.Config{KVCacheBytes: 16 << 20})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go e.Run(ctx)

	emb := make([]float32, 48) // one 48-dim embedding for this tiny model's projector
	for i := range emb {
		emb[i] = float32(i%7) / 7
	}
	st, err := e.Submit(&engine.Request{
		// text, <|vision_start|>, 4 × <|image_pad|>, <|vision_end|>, text
		Prompt:    []int{17, 42, 992, 995, 995, 995, 995, 993, 7},
		Images:    []engine.Image{{Custom: emb}},
		Sampling:  sample.Params{Temperature: 0, Logprobs: -1},
		MaxTokens: 5, IgnoreEOS: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	var tokens []int
	for {
		ev, err := st.Next(ctx)
		if err != nil {
			break
		}
		if ev.Token >= 0 {
			tokens = append(tokens, ev.Token)
		}
		if ev.Finish != "" {
			fmt.Println(tokens)
			fmt.Printf("finish=%s prompt=%d completion=%d\n", ev.Finish, ev.Usage.PromptTokens, ev.Usage.CompletionTokens)
		}
	}
	// Output:
	// [32 27 432 651 651]
	// finish=length prompt=9 completion=5
}

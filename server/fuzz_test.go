package server

import (
	"encoding/json"
	"testing"

	"github.com/qvl-dev/qvl/loader/chat"
	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/model"
)

// fuzzSpec is the tiny model's spec, for parsing without a model.
func fuzzSpec() model.Spec {
	s := synth.Shapes["tiny"]
	return model.Spec{VocabSize: synth.Vocab, HiddenSize: s.Hidden, DeepStackLevels: s.DeepStack, ImageTokenID: synth.ImagePad,
		SpatialMergeSize: 2, MaxPositions: s.MaxPositions, EOSTokenIDs: []int{synth.ImEnd}, ProjectorInputDim: s.ProjIn, ProjectorTokens: s.ProjTokens}
}

func seedBodies(f *testing.F) {
	s := synth.Shapes["tiny"]
	cols := s.Hidden * (1 + s.DeepStack)
	bodies := []any{
		greedy(userMsg(textPart("hi")), 4),
		greedy(userMsg(refPart("item-1"), textPart("x")), 4, "n", 2, "seed", 3, "stop", []string{"a"}, "logprobs", true, "top_logprobs", 2),
		greedy(userMsg(imageEmbedsPart(make([]float32, 2*cols), 2, cols, [3]int{1, 2, 4})), 3, "stream", true, "stream_options", map[string]any{"include_usage": true}),
		greedy(userMsg(embeddingPart(make([]float32, s.ProjIn))), 3),
		map[string]any{"prompt": []any{"a", []int{1, 2}}, "logprobs": 2, "echo": false, "n": 2},
		map[string]any{"prompt": "hello", "max_tokens": 3},
	}
	for _, b := range bodies {
		js, _ := json.Marshal(b)
		f.Add(js)
	}
	for _, c := range hostileCases() {
		switch b := c.body.(type) {
		case string:
			if len(b) < 4096 {
				f.Add([]byte(b))
			}
		case nil:
		default:
			if js, _ := json.Marshal(b); len(js) < 4096 {
				f.Add(js)
			}
		}
	}
}

// FuzzChatRequest: parsing never panics, and every refusal is a 4xx.
func FuzzChatRequest(f *testing.F) {
	needTokenizer(f)
	seedBodies(f)
	spec := fuzzSpec()
	d := SamplingDefaults{}
	f.Fuzz(func(t *testing.T, body []byte) {
		pc, err := parseChat(body, "qvl", spec, d, 4096, 0)
		if err != nil {
			if err.Status < 400 || err.Status > 499 || err.Message == "" {
				t.Fatalf("refusal %d %q", err.Status, err.Message)
			}
			return
		}
		if pc.p.n < 1 || pc.p.n > MaxN || len(pc.msgs) == 0 {
			t.Fatalf("accepted out of range: n=%d, %d messages", pc.p.n, len(pc.msgs))
		}
		// Rendering and tokenizing the accepted messages must not panic either.
		counts := make([]int, len(pc.parts))
		for i := range counts {
			counts[i] = 1
		}
		_, _ = testTmpl.Encode(testTok, pc.msgs, chat.Options{AddGenerationPrompt: true}, spec.ImageTokenID, counts)
	})
}

// FuzzCompletionRequest: parsing never panics, and every refusal is a 4xx.
func FuzzCompletionRequest(f *testing.F) {
	needTokenizer(f)
	seedBodies(f)
	spec := fuzzSpec()
	f.Fuzz(func(t *testing.T, body []byte) {
		pc, err := parseCompletion(body, "qvl", spec, SamplingDefaults{})
		if err != nil {
			if err.Status < 400 || err.Status > 499 || err.Message == "" {
				t.Fatalf("refusal %d %q", err.Status, err.Message)
			}
			return
		}
		if len(pc.prompts)*pc.p.n > maxChoices {
			t.Fatalf("accepted %d choices", len(pc.prompts)*pc.p.n)
		}
		for _, p := range pc.prompts {
			for _, id := range p.ids {
				if id < 0 || id >= spec.VocabSize {
					t.Fatalf("accepted token %d", id)
				}
			}
			if p.ids == nil {
				_ = testTok.Encode(p.text)
			}
		}
	})
}

// FuzzImagePart: an image part's object never panics the parser; accepted images have the
// model's shapes and finite values.
func FuzzImagePart(f *testing.F) {
	s := synth.Shapes["tiny"]
	cols := s.Hidden * (1 + s.DeepStack)
	for _, p := range []map[string]any{
		imageEmbedsPart(make([]float32, 2*cols), 2, cols, [3]int{1, 2, 4}),
		imageEmbedsPart(make([]float32, s.Hidden), 1, s.Hidden, [3]int{1, 2, 2}),
		embeddingPart(make([]float32, s.ProjIn)),
		refPart("demo-7"),
	} {
		kind := p["type"].(string)
		js, _ := json.Marshal(p[kind])
		f.Add(kind, js)
	}
	f.Add("image_url", []byte(`{"url":"x"}`))
	spec := fuzzSpec()
	lim := imageLimits{spec: spec, maxTokens: 4095}
	f.Fuzz(func(t *testing.T, kind string, data []byte) {
		ip, err := parseImagePart(kind, data, "p", lim)
		if err != nil {
			if err.Status < 400 || err.Status > 499 {
				t.Fatalf("refusal %d", err.Status)
			}
			return
		}
		switch {
		case ip.img != nil:
			if len(ip.img.Embeds)%spec.HiddenSize != 0 || len(ip.img.Embeds) == 0 {
				t.Fatalf("accepted %d values", len(ip.img.Embeds))
			}
			if ip.img.DeepStack != nil && len(ip.img.DeepStack) != spec.DeepStackLevels {
				t.Fatalf("accepted %d levels", len(ip.img.DeepStack))
			}
		case ip.custom != nil:
			if len(ip.custom) != spec.ProjectorInputDim {
				t.Fatalf("accepted an embedding of %d", len(ip.custom))
			}
		case ip.refID == "":
			t.Fatal("accepted an empty part")
		}
	})
}

package server

import (
	"encoding/json"
	"testing"

	"github.com/qvl-dev/qvl/loader/synth"
	"github.com/qvl-dev/qvl/runtime/model"
)

// BenchmarkParseChatWithImage parses a whole chat body holding one Qwen3-VL-2B-shaped image
// (256 tokens × 8192 float32 columns, 11 MiB of base64): every JSON layer and the image.
func BenchmarkParseChatWithImage(b *testing.B) {
	s := synth.Shapes["qwen3-vl-2b"]
	cols := s.Hidden * (1 + s.DeepStack)
	rows := make([]float32, 256*cols)
	for i := range rows {
		rows[i] = float32(i%97) * 0.01
	}
	body, err := json.Marshal(greedy(userMsg(imageEmbedsPart(rows, 256, cols, [3]int{1, 32, 32}), textPart("What is it?")), 16))
	if err != nil {
		b.Fatal(err)
	}
	spec := model.Spec{VocabSize: synth.Vocab, HiddenSize: s.Hidden, DeepStackLevels: s.DeepStack, SpatialMergeSize: 2, ImageTokenID: synth.ImagePad}
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := parseChat(body, "qvl", spec, SamplingDefaults{}, 4096, 0); err != nil {
			b.Fatal(err)
		}
	}
}

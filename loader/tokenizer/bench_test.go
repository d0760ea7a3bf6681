package tokenizer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

const benchEnglish = `The tokenizer is the first stage of every request and the last stage of every response. It turns
the user's text into the integer ids the model was trained on, and it turns generated ids back into
text that can be streamed to a client one piece at a time. Because it runs on the CPU while the GPU is
busy with the forward pass, its cost is rarely on the critical path, but a slow tokenizer still shows
up as extra time-to-first-token for long prompts: a 100,000-character document must be normalized,
split into words, and merged into subword units before the first layer can run.

Byte-level BPE never fails on unknown input. Every string, whatever its script, is a sequence of
bytes, and every byte has a token of its own; merges then combine frequent neighbours into longer
tokens, in the order they were learned. Words like "internationalization" or "don't" end up as a few
tokens, while rare names, emoji and long numbers are split finer. Numbers are split into single digits
by the pre-tokenizer, so 1234567 becomes seven tokens, which helps arithmetic.
`

const benchCJK = `分词器是每个请求的第一步，也是每个响应的最后一步。它把用户的文本转换成模型训练时使用的整数编号，
又把生成的编号转换回文本，以便逐段流式地发送给客户端。对于很长的提示词，分词速度会直接影响首个词元的延迟。
トークナイザーは、すべてのリクエストの最初の段階であり、すべてのレスポンスの最後の段階です。
ユーザーのテキストをモデルが学習した整数IDに変換し、生成されたIDをテキストに戻します。
토크나이저는 모든 요청의 첫 단계이자 모든 응답의 마지막 단계입니다. 사용자의 텍스트를 정수 ID로 바꿉니다.
`

// benchMixed builds about 1 MB of mixed English prose, Go source code (this package's own files) and
// CJK text.
func benchMixed(b *testing.B) string {
	b.Helper()
	files, err := filepath.Glob("*.go")
	require.NoError(b, err)
	var code strings.Builder
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		data, err := os.ReadFile(f)
		require.NoError(b, err)
		code.Write(data)
	}
	var s strings.Builder
	for s.Len() < 1<<20 {
		s.WriteString(benchEnglish)
		s.WriteString(code.String())
		s.WriteString(benchCJK)
	}
	return s.String()
}

// BenchmarkEncode measures encoding throughput (MB/s of input text). Run it on one core:
//
//	go test ./loader/tokenizer/ -run '^$' -bench Encode -cpu 1
func BenchmarkEncode(b *testing.B) {
	tok, err := FromJSON(qwen3.TokenizerJSON())
	require.NoError(b, err)
	lines := corpus(b)
	var corpusBytes int64
	for _, c := range lines {
		corpusBytes += int64(len(c.Text))
	}
	mixed := benchMixed(b)

	b.Run("corpus", func(b *testing.B) {
		b.SetBytes(corpusBytes)
		for b.Loop() {
			for _, c := range lines {
				tok.Encode(c.Text)
			}
		}
	})
	b.Run("mixed", func(b *testing.B) {
		b.SetBytes(int64(len(mixed)))
		for b.Loop() {
			tok.Encode(mixed)
		}
	})
	b.Run("mixed-cold-cache", func(b *testing.B) {
		b.SetBytes(int64(len(mixed)))
		for b.Loop() {
			tok.cache.clear()
			tok.Encode(mixed)
		}
	})
}

// BenchmarkDecode measures full decoding of the mixed text's ids.
func BenchmarkDecode(b *testing.B) {
	tok, err := FromJSON(qwen3.TokenizerJSON())
	require.NoError(b, err)
	mixed := benchMixed(b)
	ids := tok.Encode(mixed)
	b.SetBytes(int64(len(mixed)))
	for b.Loop() {
		tok.Decode(ids, false)
	}
}

// BenchmarkFromJSON measures building the Qwen3 tokenizer from its tokenizer.json.
func BenchmarkFromJSON(b *testing.B) {
	data := qwen3.TokenizerJSON()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := FromJSON(data); err != nil {
			b.Fatal(err)
		}
	}
}

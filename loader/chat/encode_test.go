package chat

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeTokenizer maps each special token to a small id and every other byte to 1000+byte, which is
// enough to see where pads land.
type fakeTokenizer struct{}

var fakeSpecial = []string{"<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"}

const fakePad = 3

func (fakeTokenizer) Encode(text string) []int {
	var ids []int
	for len(text) > 0 {
		matched := false
		for id, s := range fakeSpecial {
			if strings.HasPrefix(text, s) {
				ids = append(ids, id)
				text = text[len(s):]
				matched = true
				break
			}
		}
		if !matched {
			ids = append(ids, 1000+int(text[0]))
			text = text[1:]
		}
	}
	return ids
}

func TestEncodeExpandsImagePads(t *testing.T) {
	tmpl, err := Default()
	require.NoError(t, err)
	msgs := []Message{{Role: "user", Content: []Part{{Type: PartImage}, {Type: PartText, Text: "a"}, {Type: PartImage}}}}
	ids, err := tmpl.Encode(fakeTokenizer{}, msgs, Options{}, fakePad, []int{3, 1})
	require.NoError(t, err)
	// <|im_start|> u s e r \n <vs> pad pad pad <ve> a <vs> pad <ve> <|im_end|> \n
	want := []int{0, 1000 + 'u', 1000 + 's', 1000 + 'e', 1000 + 'r', 1000 + '\n',
		2, 3, 3, 3, 4, 1000 + 'a', 2, 3, 4, 1, 1000 + '\n'}
	assert.Equal(t, want, ids)
}

func TestEncodeErrors(t *testing.T) {
	tmpl, err := Default()
	require.NoError(t, err)
	two := []Message{{Role: "user", Content: []Part{{Type: PartImage}, {Type: PartImage}}}}
	for _, tc := range []struct {
		name   string
		tok    TextEncoder
		msgs   []Message
		counts []int
		want   string
	}{
		{"too few counts", fakeTokenizer{}, two, []int{4}, "the prompt has 2 image pad tokens (id 3) but 1 image token counts were given"},
		{"too many counts", fakeTokenizer{}, two, []int{4, 4, 4}, "has 2 image pad tokens (id 3) but 3"},
		{"zero count", fakeTokenizer{}, two, []int{4, 0}, "image 1 has 0 tokens, want at least 1"},
		{"pad typed in text", fakeTokenizer{}, []Message{Text("user", "<|image_pad|>")}, nil, "has 1 image pad tokens (id 3) but 0"},
		{"system image dropped by the template", fakeTokenizer{}, []Message{{Role: "system", Content: []Part{{Type: PartImage}}}}, []int{1}, "has 0 image pad tokens"},
		{"nil tokenizer", nil, two, []int{1, 1}, "tokenizer is nil"},
		{"render error", fakeTokenizer{}, []Message{{Role: "user", Content: []Part{{Type: "audio"}}}}, nil, `part type "audio"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tmpl.Encode(tc.tok, tc.msgs, Options{}, fakePad, tc.counts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestExpandImagePads(t *testing.T) {
	got, err := ExpandImagePads([]int{7, 9, 7, 9, 7}, 9, []int{2, 3})
	require.NoError(t, err)
	assert.Equal(t, []int{7, 9, 9, 7, 9, 9, 9, 7}, got)

	got, err = ExpandImagePads([]int{7}, 9, nil)
	require.NoError(t, err)
	assert.Equal(t, []int{7}, got)

	_, err = ExpandImagePads([]int{9}, 9, []int{-2})
	require.ErrorContains(t, err, "image 0 has -2 tokens")
}

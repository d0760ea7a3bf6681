package server

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestExtractBlobs(t *testing.T) {
	big := strings.Repeat("QUJD", 400) // 1600 base64 characters
	body := `{"messages":[{"role":"user","content":[{"type":"image_embeds","image_embeds":{"data":"` + big + `","dtype":"float32"}},` +
		`{"type":"text","text":"` + big + `"},{"type":"embedding","embedding":{"dtype":"float32", "data" : "` + big + `=="}}]}],` +
		`"chat_template_kwargs":{"data":"short"},"x":"\"data\"","y":{"data":"` + strings.Repeat("!", 2000) + `"}}`
	out, blobs := extractBlobs([]byte(body))
	require.Len(t, blobs, 2, "only base64 values of data keys, long enough")
	assert.Equal(t, big, string(blobs[0]))
	assert.Equal(t, big+"==", string(blobs[1]))
	assert.Less(t, len(out), len(body)-3000)
	// The result is the same document with the two strings replaced.
	var orig, got map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &orig))
	require.NoError(t, json.Unmarshal(out, &got))
	restore(got, blobs)
	assert.Equal(t, orig, got)

	// Nothing to lift, or text that does not lex: the body comes back as it is.
	for _, b := range []string{`{"data":"short"}`, `{"data":"` + big, `not json`, ``} {
		out, blobs = extractBlobs([]byte(b))
		assert.Equal(t, b, string(out))
		assert.Nil(t, blobs)
	}
	// Escaped quotes inside strings are skipped correctly.
	b := `{"a":"x\"data\":\"","data":"` + big + `"}`
	out, blobs = extractBlobs([]byte(b))
	require.Len(t, blobs, 1)
	require.True(t, json.Valid(out))

	// A placeholder names only blobs of its own request.
	_, ok := blobRef([]byte(blobPrefix+"5"), blobs)
	assert.False(t, ok)
	got0, ok := blobRef([]byte(blobPrefix+"0"), blobs)
	assert.True(t, ok)
	assert.Equal(t, big, string(got0))
}

// restore puts lifted strings back in place of their placeholders.
func restore(v any, blobs [][]byte) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = restore(e, blobs)
		}
	case []any:
		for i, e := range x {
			x[i] = restore(e, blobs)
		}
	case string:
		if b, ok := blobRef([]byte(x), blobs); ok {
			return string(b)
		}
	}
	return v
}

// FuzzExtractBlobs: lifting never changes what a valid document means, nor makes an invalid
// one valid.
func FuzzExtractBlobs(f *testing.F) {
	// Short blobs, so that the fuzzer reaches them.
	old := minBlobBytes
	minBlobBytes = 4
	f.Cleanup(func() { minBlobBytes = old })
	f.Add([]byte(`{"data":"QUJDRA=="}`))
	f.Add([]byte(`{"a":[{"data":"QUJD"},{"data":"x"}],"data":1}`))
	f.Add([]byte(`{"a":"\\","data":"QUJDRA","b":{"data":"\u0041BCD"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		if msg := checkExtract(body); msg != "" {
			t.Fatal(msg)
		}
	})
}

// checkExtract lifts the blobs of body and says what went wrong, if anything.
func checkExtract(body []byte) string {
	out, blobs := extractBlobs(body)
	if !json.Valid(body) {
		if json.Valid(out) {
			return fmt.Sprintf("made valid: %q", out)
		}
		return ""
	}
	if !json.Valid(out) {
		return fmt.Sprintf("made invalid: %q -> %q", body, out)
	}
	var a, b any
	if json.Unmarshal(body, &a) != nil || json.Unmarshal(out, &b) != nil {
		return "decode failed"
	}
	b = restore(b, blobs)
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) != string(jb) {
		return fmt.Sprintf("changed meaning:\n%s\n%s", ja, jb)
	}
	return ""
}

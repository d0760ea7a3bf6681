package chat

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseMessagesContentForms(t *testing.T) {
	msgs, err := ParseMessages([]byte(`[
		{"role": "system", "content": "be brief"},
		{"role": "user", "content": [
			{"type": "text", "text": "look:"},
			{"type": "image_url", "image_url": {"url": "https://x/y.png"}},
			{"type": "image_ref", "image_ref": {"id": "img-1"}},
			{"type": "image_embeds", "image_embeds": {"image_embeds": "AAAA", "image_grid_thw": [1, 2, 4]}},
			{"type": "embedding", "embedding": {"id": "e"}},
			{"type": "image"},
			{"type": "text"}
		], "name": "alice"},
		{"role": "assistant", "content": null, "tool_calls": [
			{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
			{"id": "c2", "type": "function", "function": {"name": "g", "arguments": {"z": 1, "a": [true, null]}}}
		]},
		{"role": "tool", "tool_call_id": "c1", "content": ""},
		{"role": "assistant", "reasoning_content": "hmm"}
	]`))
	require.NoError(t, err)
	require.Len(t, msgs, 5)

	require.NotNil(t, msgs[0].ContentString)
	assert.Equal(t, "be brief", *msgs[0].ContentString)

	u := msgs[1]
	assert.Nil(t, u.ContentString)
	assert.Equal(t, "alice", u.Name)
	require.Len(t, u.Content, 7)
	assert.Equal(t, Part{Type: PartText, Text: "look:"}, u.Content[0])
	kinds := []string{"image_url", "image_ref", "image_embeds", "embedding", "image"}
	for i, k := range kinds {
		p := u.Content[1+i]
		assert.Equal(t, PartImage, p.Type, k)
		assert.Equal(t, k, p.Kind)
	}
	assert.JSONEq(t, `{"url": "https://x/y.png"}`, string(u.Content[1].Data))
	assert.JSONEq(t, `{"id": "img-1"}`, string(u.Content[2].Data))
	assert.Nil(t, u.Content[5].Data, "a bare {type: image} part has no data")
	assert.Equal(t, Part{Type: PartText}, u.Content[6])
	assert.Len(t, ImageParts(msgs), 5)

	a := msgs[2]
	assert.Nil(t, a.ContentString, "null content is an empty list of parts")
	assert.Empty(t, a.Content)
	require.Len(t, a.ToolCalls, 2)
	assert.Equal(t, ToolCall{ID: "c1", Type: "function", Function: FunctionCall{Name: "f", Arguments: `{"a":1}`}}, a.ToolCalls[0])
	assert.True(t, a.ToolCalls[1].Function.ArgumentsObject)
	assert.Equal(t, `{"z": 1, "a": [true, null]}`, a.ToolCalls[1].Function.Arguments)

	require.NotNil(t, msgs[3].ContentString)
	assert.Equal(t, "", *msgs[3].ContentString, "an empty string stays a string")
	assert.Equal(t, "c1", msgs[3].ToolCallID)

	require.NotNil(t, msgs[4].ReasoningContent)
	assert.Equal(t, "hmm", *msgs[4].ReasoningContent)
	assert.Nil(t, msgs[4].ContentString)
}

func TestMessageUnmarshalJSON(t *testing.T) {
	var req struct {
		Messages []Message `json:"messages"`
	}
	require.NoError(t, json.Unmarshal([]byte(`{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}`), &req))
	require.Len(t, req.Messages, 1)
	assert.Equal(t, PartImage, req.Messages[0].Content[0].Type)
}

func TestParseMessagesErrors(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{"not an array", `{"role": "user"}`, "want a JSON array"},
		{"no role", `[{"content": "x"}]`, `messages[0]: field "role" is missing`},
		{"content number", `[{"role": "user", "content": 5}]`, `messages[0]: field "content": want a string, an array of parts or null, got 5`},
		{"unknown part", `[{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]}]`, `messages[1]: content[1]: unsupported content part type "input_audio"`},
		{"video part", `[{"role": "user", "content": [{"type": "video"}]}]`, `unsupported content part type "video"`},
		{"part without type", `[{"role": "user", "content": [{"text": "a"}]}]`, `content[0]: field "type" is missing`},
		{"part not object", `[{"role": "user", "content": ["a"]}]`, `content[0]: want a content part object`},
		{"text not string", `[{"role": "user", "content": [{"type": "text", "text": 3}]}]`, `field "text" must be a string`},
		{"call without function", `[{"role": "assistant", "tool_calls": [{"id": "x"}]}]`, `tool_calls[0]: field "function" is missing`},
		{"call without name", `[{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]`, `tool_calls[0]: field "function.name" is missing`},
		{"bad json", `[{"role": "user", "content": "x"`, "want a JSON array"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMessages([]byte(tc.data))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

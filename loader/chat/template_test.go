package chat

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	return p
}

func jsonString(t *testing.T, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	require.NoError(t, err)
	return string(b)
}

func TestDefaultIsTheEmbeddedTemplate(t *testing.T) {
	tmpl, err := Default()
	require.NoError(t, err)
	var file struct {
		ChatTemplate string `json:"chat_template"`
	}
	require.NoError(t, json.Unmarshal(qwen3.ChatTemplateJSON(), &file))
	assert.Equal(t, file.ChatTemplate, tmpl.Source())
}

func TestLoadForms(t *testing.T) {
	dir := t.TempDir()
	src := "{{ bos_token }}|{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}|{{ eos_token }}"

	j := writeFile(t, dir, "t.jinja", src)
	tmpl, err := Load(j)
	require.NoError(t, err)
	msgs := []Message{Text("user", "hi")}
	got, err := tmpl.Render(msgs, Options{})
	require.NoError(t, err)
	assert.Equal(t, "|user:hi;|", got, "a .jinja file has no special tokens")

	cfg := writeFile(t, dir, "tokenizer_config.json", `{"bos_token": null, "eos_token": {"content": "<|im_end|>", "lstrip": false},
		"pad_token": "<|endoftext|>", "additional_special_tokens": ["<|im_start|>", {"content": "<|im_end|>"}],
		"chat_template": `+jsonString(t, src+"{{ pad_token }}{{ additional_special_tokens | length }}")+`}`)
	tmpl, err = Load(cfg)
	require.NoError(t, err)
	got, err = tmpl.Render(msgs, Options{})
	require.NoError(t, err)
	assert.Equal(t, "|user:hi;|<|im_end|><|endoftext|>2", got, "tokenizer_config.json special tokens become variables")

	// Options.Vars overrides a special token.
	got, err = tmpl.Render(msgs, Options{Vars: map[string]any{"eos_token": "E"}})
	require.NoError(t, err)
	assert.Equal(t, "|user:hi;|E<|endoftext|>2", got)

	named := writeFile(t, dir, "named.json", `{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}`)
	tmpl, err = Load(named)
	require.NoError(t, err)
	assert.Equal(t, "D", tmpl.Source())
}

func TestLoadDirectoryPrecedence(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "tokenizer_config.json", `{"eos_token": "</s>", "chat_template": "config{{ eos_token }}"}`)
	tmpl, err := Load(dir)
	require.NoError(t, err)
	got, err := tmpl.Render(nil, Options{})
	require.NoError(t, err)
	assert.Equal(t, "config</s>", got)

	writeFile(t, dir, "chat_template.json", `{"chat_template": "json{{ eos_token }}"}`)
	tmpl, err = Load(dir)
	require.NoError(t, err)
	got, err = tmpl.Render(nil, Options{})
	require.NoError(t, err)
	assert.Equal(t, "json</s>", got, "chat_template.json wins over tokenizer_config.json, special tokens still come from it")

	writeFile(t, dir, "chat_template.jinja", "jinja{{ eos_token }}")
	tmpl, err = Load(dir)
	require.NoError(t, err)
	got, err = tmpl.Render(nil, Options{})
	require.NoError(t, err)
	assert.Equal(t, "jinja</s>", got, "chat_template.jinja wins over both")
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, file, content, want string
	}{
		{"unknown extension", "t.txt", "x", "unknown file kind"},
		{"no key", "a.json", `{"eos_token": "x"}`, `no "chat_template" key`},
		{"not an object", "b.json", `[1]`, "want a JSON object"},
		{"no default", "c.json", `{"chat_template": [{"name": "rag", "template": "x"}]}`, `none named "default"`},
		{"bad template value", "d.json", `{"chat_template": 3}`, "must be a string or a list"},
		{"bad special token", "e.json", `{"chat_template": "x", "eos_token": 3}`, "eos_token: want a string"},
		{"empty", "f.jinja", "  \n", "empty template"},
		{"syntax", "g.jinja", "{% if x %}never closed", "g.jinja"},
		{"unclosed tag", "h.jinja", "{{ x ", "line 1 col 1: tag is not closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeFile(t, dir, tc.file, tc.content))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := Load(filepath.Join(dir, "missing.jinja"))
	require.ErrorIs(t, err, os.ErrNotExist)
	empty := t.TempDir()
	_, err = Load(empty)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "has no chat_template.jinja")
}

func TestRenderTemplateSeesMessageFields(t *testing.T) {
	tmpl, err := Parse(`{% for m in messages %}[{{ m.role }}|{{ m.content is string }}|{{ m.name is defined }}|{{ m.tool_call_id | default('-') }}|{{ m.reasoning_content | default('-') }}|` +
		`{% if m.content is not string %}{% for p in m.content %}{{ p.type }}{{ '+text' if 'text' in p else '' }},{% endfor %}{% endif %}|` +
		`{% for c in m.tool_calls | default([]) %}{{ c.id }} {{ c.type }} {{ c.function.name }} {{ c.function.arguments is string }} {{ c.function.arguments | tojson }};{% endfor %}]{% endfor %}` +
		`{{ tools is none }}`)
	require.NoError(t, err)
	reason := "why"
	got, err := tmpl.Render([]Message{
		Text("user", "a"),
		{Role: "user", Name: "bob", Content: []Part{{Type: PartText, Text: ""}, {Type: PartImage, Kind: "image_url", Data: json.RawMessage(`{"url":"u"}`)}}},
		{Role: "assistant", ReasoningContent: &reason, ToolCalls: []ToolCall{
			{ID: "1", Type: "function", Function: FunctionCall{Name: "f", Arguments: `{"b": 2,"a":1}`}},
			{ID: "2", Type: "function", Function: FunctionCall{Name: "g", Arguments: `{"b": 2,"a":[1.5, -2.25e-3, 12, "é<"]}`, ArgumentsObject: true}},
		}},
		{Role: "tool", ToolCallID: "2", ContentString: new(string)},
	}, Options{})
	require.NoError(t, err)
	assert.Equal(t, `[user|True|False|-|-||]`+
		`[user|False|True|-|-|text+text,image,|]`+
		`[assistant|False|False|-|why||1 function f True "{\"b\": 2,\"a\":1}";2 function g False {"b": 2, "a": [1.5, -0.00225, 12, "é<"]};]`+
		`[tool|True|False|2|-||]True`, got)
}

func TestRenderToolsKeepKeyOrder(t *testing.T) {
	tmpl, err := Parse(`{% for t in tools %}{{ t | tojson }}{{ '\n' }}{% endfor %}{{ tools | length }}`)
	require.NoError(t, err)
	got, err := tmpl.Render(nil, Options{Tools: []json.RawMessage{
		json.RawMessage(`{"type": "function", "function": {"name": "z", "parameters": {"b": 1, "a": {"y": null, "x": true}}}}`),
		json.RawMessage(`{"b":"\u00e9\n","a":[]}`),
	}})
	require.NoError(t, err)
	assert.Equal(t, `{"type": "function", "function": {"name": "z", "parameters": {"b": 1, "a": {"y": null, "x": true}}}}
{"b": "é\n", "a": []}
2`, got)

	got, err = tmpl.Render(nil, Options{Tools: []json.RawMessage{}})
	require.NoError(t, err)
	assert.Equal(t, "0", got, "an empty, non-nil Tools is an empty list")
}

func TestRenderVars(t *testing.T) {
	tmpl, err := Parse(`{{ enable_thinking }} {{ n }} {{ f }} {{ l | join(',') }} {{ m | tojson }} {{ raw | tojson }} {{ s | join('') }}`)
	require.NoError(t, err)
	got, err := tmpl.Render(nil, Options{Vars: map[string]any{
		"enable_thinking": false, "n": 3, "f": 0.5, "l": []any{"a", int64(2)},
		"m": map[string]any{"z": nil, "a": true}, "raw": json.RawMessage(`{"z": 1, "a": 2}`), "s": []string{"x", "y"},
	}})
	require.NoError(t, err)
	assert.Equal(t, `False 3 0.5 a,2 {"a": true, "z": null} {"z": 1, "a": 2} xy`, got)
}

func TestRenderErrors(t *testing.T) {
	tmpl, err := Parse(`{{ messages | length }}{{ raise_exception('stop') if fail else '' }}`)
	require.NoError(t, err)
	for _, tc := range []struct {
		name string
		msgs []Message
		opts Options
		want string
	}{
		{"reserved var", nil, Options{Vars: map[string]any{"messages": 1}}, `Options.Vars["messages"] would replace`},
		{"bad var type", nil, Options{Vars: map[string]any{"x": struct{}{}}}, `Options.Vars["x"]: unsupported type struct {}`},
		{"bad nested var", nil, Options{Vars: map[string]any{"x": []any{1, struct{}{}}}}, `Options.Vars["x"]: [1]: unsupported type`},
		{"bad tools", nil, Options{Tools: []json.RawMessage{json.RawMessage(`{"a":`)}}, "tools[0] is not valid JSON"},
		{"trailing tools data", nil, Options{Tools: []json.RawMessage{json.RawMessage(`{} {}`)}}, "tools[0] is not valid JSON: trailing data"},
		{"bad part type", []Message{{Role: "user", Content: []Part{{Type: "video"}}}}, Options{}, `messages[0] (user): content[0]: part type "video" is not "text" or "image"`},
		{"bad object args", []Message{{Role: "assistant", ToolCalls: []ToolCall{{Function: FunctionCall{Name: "f", Arguments: "{", ArgumentsObject: true}}}}}, Options{}, "messages[0] (assistant): tool_calls[0] (f): arguments are marked as a JSON object but do not parse"},
		{"raise_exception", nil, Options{Vars: map[string]any{"fail": true}}, "stop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tmpl.Render(tc.msgs, tc.opts)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "chat template (source): ", "errors name the template")
		})
	}
}

func TestRenderIsConcurrencySafe(t *testing.T) {
	tmpl, err := Default()
	require.NoError(t, err)
	msgs := []Message{{Role: "user", Content: []Part{{Type: PartImage}, {Type: PartText, Text: "x"}}}}
	want, err := tmpl.Render(msgs, Options{AddGenerationPrompt: true, AddVisionID: true})
	require.NoError(t, err)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for range 50 {
				got, err := tmpl.Render(msgs, Options{AddGenerationPrompt: true, AddVisionID: true})
				if err == nil && got != want {
					err = assert.AnError
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		require.NoError(t, <-errs)
	}
}

func BenchmarkRenderQwen3VL(b *testing.B) {
	tmpl, err := Default()
	require.NoError(b, err)
	msgs, err := ParseMessages([]byte(`[
		{"role": "system", "content": "You rank pins."},
		{"role": "user", "content": [{"type": "image_ref", "image_ref": {"id": "a"}}, {"type": "image_ref", "image_ref": {"id": "b"}}, {"type": "text", "text": "Which pin fits the board better? Answer in one word."}]},
		{"role": "assistant", "content": "The first."},
		{"role": "user", "content": [{"type": "image_ref", "image_ref": {"id": "c"}}, {"type": "text", "text": "And this one?"}]}
	]`))
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tmpl.Render(msgs, Options{AddGenerationPrompt: true}); err != nil {
			b.Fatal(err)
		}
	}
}

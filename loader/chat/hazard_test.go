package chat

import (
	"encoding/json"
	"testing"

	"github.com/ardanlabs/jinja"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hazardCases are templates the pinned engine renders differently from Jinja2. jinja2 is Python
// Jinja2 3.1.6's output with transformers' settings (trim_blocks, lstrip_blocks) for x = "v".
var hazardCases = []struct {
	name, src, jinja2, where string
}{
	{"trim_blocks across an expression", "{% if x %}{{ x }}\n{% endif %}", "v\n", "line 1 col 18"},
	{"explicit trims across an expression", "{%- if x -%}A: {{ x }}{%- endif %}", "A: v", "line 1 col 13"},
	{"lstrip_blocks after a leading expression", "{{ x }}   {% if x %}b{% endif %}", "v   b", "line 1 col 8"},
	{"lstrip_blocks across an expression", "A\n  {{ x }}{% if x %}b{% endif %}", "A\n  vb", "line 1 col 1"},
	{"plus modifier", "{%+ if x %}a{% endif %}", "a", "line 1 col 1"},
}

func TestHazardsAreRealWithThePinnedEngine(t *testing.T) {
	for _, tc := range hazardCases {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := jinja.Compile(tc.src)
			require.NoError(t, err)
			got, err := raw.Render(map[string]any{"x": "v"})
			require.NoError(t, err)
			// If this fails, the engine was fixed: drop the check from hazards and this case.
			assert.NotEqual(t, tc.jinja2, got, "engine renders %q", got)
		})
	}
}

func TestParseRefusesHazards(t *testing.T) {
	for _, tc := range hazardCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.src)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "cannot render exactly: "+tc.where)
		})
	}
	_, err := Parse("a\n{{ tools | tojson(indent=4) }}")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "line 2 col 1: tojson with indent=")
}

func TestParseAcceptsAdjacentWhitespaceControl(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"{% if x %}\n{{ x }}\n{% endif %}", "v\n"},
		{"{%- if x -%}\n  A: {{ x }} {%- endif %}", "A: v"},
		{"  {% if x %}b{% endif %}", "b"},
		{"A\n  {% if x %}{{ x }}{% endif %}\n", "A\nv"},
		{"{% if x %}a{% endif %}{# c #}\nb", "ab"},
		{"{{ x }}\n{{- x }}", "vv"},
		{"{{ '{%- if %}' }} {{ x }}", "{%- if %} v"},
	} {
		tmpl, err := Parse(tc.src)
		require.NoError(t, err, tc.src)
		got, err := tmpl.Render(nil, Options{Vars: map[string]any{"x": "v"}})
		require.NoError(t, err, tc.src)
		assert.Equal(t, tc.want, got, tc.src)
	}
}

// TestKnownEngineDifferences pins what the engine does where it differs from Jinja2 in ways Parse
// cannot see (docs/decisions/chat-template.md lists them). None of them occurs in the Qwen3-VL or
// Qwen3 templates; if one of these assertions fails, the engine changed: update the document.
func TestKnownEngineDifferences(t *testing.T) {
	tmpl, err := Parse(`{{ n }}|{{ n | string }}|{{ f | tojson }}|{{ g | tojson }}`)
	require.NoError(t, err)
	got, err := tmpl.Render(nil, Options{Vars: map[string]any{"n": nil, "f": 1000.0, "g": json.RawMessage("1234567.5")}})
	require.NoError(t, err)
	// Jinja2 (transformers) renders "None|None|1000.0|1234567.5"; the engine prints None as nothing and
	// floats with Go's shortest 'g' format.
	assert.Equal(t, "||1000|1.2345675e+06", got)
}

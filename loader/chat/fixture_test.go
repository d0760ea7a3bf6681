package chat

import (
	"bufio"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fixtureCase is one line of testdata/*.jsonl, written by testdata/gen/gen.mjs (rendered with
// @huggingface/jinja 0.5.11) and annotated by testdata/gen/pyref.py (Python Jinja2 as transformers
// sets it up) where the two references disagree.
type fixtureCase struct {
	ID       string          `json:"id"`
	Messages json.RawMessage `json:"messages"`
	Options  struct {
		AddGenerationPrompt bool                       `json:"add_generation_prompt"`
		AddVisionID         bool                       `json:"add_vision_id"`
		Tools               []json.RawMessage          `json:"tools"`
		Vars                map[string]json.RawMessage `json:"vars"`
	} `json:"options"`
	Images      int     `json:"images"`
	Expected    *string `json:"expected"`
	Error       *string `json:"error"`
	Python      *string `json:"python"`
	PythonError *string `json:"python_error"`
	// ImageTokens and IDs, on some cases: a token count per image and the expected ids of Encode.
	ImageTokens []int `json:"image_tokens"`
	IDs         []int `json:"ids"`
}

func (c fixtureCase) options() Options {
	o := Options{AddGenerationPrompt: c.Options.AddGenerationPrompt, AddVisionID: c.Options.AddVisionID, Tools: c.Options.Tools}
	if len(c.Options.Vars) > 0 {
		o.Vars = map[string]any{}
		for k, v := range c.Options.Vars {
			o.Vars[k] = v
		}
	}
	return o
}

func readFixture(t *testing.T, path string) []fixtureCase {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	var cases []fixtureCase
	for sc.Scan() {
		var c fixtureCase
		require.NoError(t, json.Unmarshal(sc.Bytes(), &c), "%s line %d", path, len(cases)+1)
		cases = append(cases, c)
	}
	require.NoError(t, sc.Err())
	return cases
}

// checkFixture renders every case and requires byte equality with @huggingface/jinja's output, or
// with Python Jinja2's where the two references disagree (the JavaScript one is then wrong; see
// docs/decisions/chat-template.md). It returns how many cases used the Python reference.
func checkFixture(t *testing.T, tmpl *Template, cases []fixtureCase) int {
	t.Helper()
	pythonCases := 0
	for _, c := range cases {
		msgs, err := ParseMessages(c.Messages)
		require.NoError(t, err, c.ID)
		require.Nil(t, c.Error, "%s: the JavaScript reference failed to render: %v", c.ID, c.Error)
		require.Nil(t, c.PythonError, "%s: the Python reference failed to render", c.ID)
		require.NotNil(t, c.Expected, c.ID)
		got, err := tmpl.Render(msgs, c.options())
		require.NoError(t, err, c.ID)
		want := *c.Expected
		if c.Python != nil {
			pythonCases++
			require.NotEqual(t, *c.Python, *c.Expected, "%s: a python annotation must differ from expected", c.ID)
			want = *c.Python
		}
		if got != want {
			require.Equal(t, want, got, "case %s renders differently from the reference", c.ID)
		}
		assert.Len(t, ImageParts(msgs), c.Images, c.ID)
	}
	return pythonCases
}

func TestFixtureQwen3VL(t *testing.T) {
	cases := readFixture(t, "testdata/qwen3vl.jsonl")
	require.GreaterOrEqual(t, len(cases), 300)
	tmpl, err := Default()
	require.NoError(t, err)
	require.Equal(t, 0, checkFixture(t, tmpl, cases), "the references agree on every Qwen3-VL case")
	for _, c := range cases {
		assert.Equal(t, c.Images, strings.Count(*c.Expected, "<|image_pad|>"), c.ID)
	}

	// The same template loaded from the checkpoint file renders the same.
	fromFile, err := Load("../tokenizer/qwen3/chat_template.json")
	require.NoError(t, err)
	checkFixture(t, fromFile, cases[:50])
}

func TestFixtureQwen3Text(t *testing.T) {
	cases := readFixture(t, "testdata/qwen3text.jsonl")
	require.GreaterOrEqual(t, len(cases), 100)
	tmpl, err := Load("../tokenizer/qwen3/tokenizer_config.json")
	require.NoError(t, err)
	// @huggingface/jinja 0.5.11 ignores the argument of str.strip/lstrip/rstrip; where that shows,
	// the case carries Python Jinja2's output and the Go engine must match Python.
	n := checkFixture(t, tmpl, cases)
	t.Logf("%d of %d cases compared against Python Jinja2, where @huggingface/jinja differs", n, len(cases))
}

// TestReadmeSample is the rendering documented in /work/shared/tokenizer/qwen3-vl/README.md.
func TestReadmeSample(t *testing.T) {
	tmpl, err := Default()
	require.NoError(t, err)
	got, err := tmpl.Render([]Message{
		Text("system", "You rank pins."),
		{Role: "user", Content: []Part{{Type: PartImage}, {Type: PartText, Text: "Describe this."}}},
	}, Options{AddGenerationPrompt: true})
	require.NoError(t, err)
	require.Equal(t, "<|im_start|>system\nYou rank pins.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this.<|im_end|>\n<|im_start|>assistant\n", got)
}

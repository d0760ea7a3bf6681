package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ardanlabs/jinja"

	"github.com/qvl-dev/qvl/loader/tokenizer/qwen3"
)

// Template is a parsed chat template. It is safe for concurrent use.
type Template struct {
	name string // where it came from, for error messages
	src  string
	tmpl *jinja.Template
	// vars are the variables every render gets unless Options.Vars overrides them: the special
	// tokens of tokenizer_config.json (bos_token, eos_token, ...), as transformers passes them.
	vars map[string]jinja.Value
}

// Options are the rendering switches of Hugging Face's apply_chat_template.
type Options struct {
	// AddGenerationPrompt appends the assistant turn header (add_generation_prompt).
	AddGenerationPrompt bool
	// Tools are the tool (function) specifications, each one JSON value as the client sent it; key
	// order is kept because templates print them with tojson. Nil means no tools (the template
	// sees tools = none).
	Tools []json.RawMessage
	// AddVisionID makes Qwen-VL templates label images "Picture N: " (add_vision_id).
	AddVisionID bool
	// Vars are further template variables (for example "enable_thinking" for thinking templates).
	// Values may be nil, bool, string, numbers, []any, []string, map[string]any (visited in sorted
	// key order) or json.RawMessage (key order kept). They may override the special-token variables
	// but not messages, tools, add_generation_prompt or add_vision_id.
	Vars map[string]any
}

// reserved are the variables Render sets from its arguments.
var reserved = []string{"messages", "tools", "add_generation_prompt", "add_vision_id"}

// specialTokenKeys are the tokenizer_config.json entries transformers passes to chat templates.
var specialTokenKeys = []string{"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}

// Parse parses a chat template's Jinja source. It fails, naming line and column, on a syntax error
// and on the constructs the Go engine is known to render differently from Jinja2 (see hazard.go).
func Parse(src string) (*Template, error) {
	return parse("(source)", src, nil)
}

func parse(name, src string, vars map[string]jinja.Value) (*Template, error) {
	if strings.TrimSpace(src) == "" {
		return nil, fmt.Errorf("chat template %s: empty template", name)
	}
	if err := hazards(src); err != nil {
		return nil, fmt.Errorf("chat template %s: cannot render exactly: %w", name, err)
	}
	tmpl, err := jinja.Compile(src)
	if err != nil {
		return nil, fmt.Errorf("chat template %s: %w", name, err)
	}
	return &Template{name: name, src: src, tmpl: tmpl, vars: vars}, nil
}

// Default returns the chat template Qwen3-VL Instruct checkpoints ship (embedded in package
// loader/tokenizer/qwen3). It fails only if the embedded file is damaged.
func Default() (*Template, error) {
	return parseJSON("qwen3.ChatTemplateJSON", qwen3.ChatTemplateJSON())
}

// Load reads a chat template from a file or a checkpoint directory:
//   - a .jinja file: the template source;
//   - a .json file with a "chat_template" key (chat_template.json or tokenizer_config.json), whose
//     value is the source or a list of {"name", "template"} of which "default" is used; the special
//     tokens of a tokenizer_config.json become template variables (bos_token, eos_token, ...);
//   - a directory: chat_template.jinja, else chat_template.json, else tokenizer_config.json, the order
//     transformers uses, with the special tokens of tokenizer_config.json when it is there.
func Load(path string) (*Template, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("chat template: %w", err)
	}
	if info.IsDir() {
		return loadDir(path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("chat template: %w", err)
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".jinja", ".j2", ".jinja2":
		return parse(path, string(data), nil)
	case ".json":
		return parseJSON(path, data)
	}
	return nil, fmt.Errorf("chat template %s: unknown file kind (want .jinja, a .json with a chat_template key, or a checkpoint directory)", path)
}

func loadDir(dir string) (*Template, error) {
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	var vars map[string]jinja.Value
	if data, err := os.ReadFile(cfgPath); err == nil {
		var cfg map[string]json.RawMessage
		if err := json.Unmarshal(data, &cfg); err != nil {
			return nil, fmt.Errorf("chat template %s: %w", cfgPath, err)
		}
		if vars, err = specialTokens(cfg); err != nil {
			return nil, fmt.Errorf("chat template %s: %w", cfgPath, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("chat template: %w", err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
		return parse(filepath.Join(dir, "chat_template.jinja"), string(data), vars)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("chat template: %w", err)
	}
	for _, name := range []string{"chat_template.json", "tokenizer_config.json"} {
		p := filepath.Join(dir, name)
		data, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("chat template: %w", err)
		}
		src, err := templateSource(data)
		if errors.Is(err, errNoTemplateKey) && name == "chat_template.json" {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("chat template %s: %w", p, err)
		}
		return parse(p, src, vars)
	}
	return nil, fmt.Errorf("chat template: %s has no chat_template.jinja, chat_template.json or tokenizer_config.json with a chat_template", dir)
}

var errNoTemplateKey = errors.New(`no "chat_template" key`)

func parseJSON(name string, data []byte) (*Template, error) {
	src, err := templateSource(data)
	if err != nil {
		return nil, fmt.Errorf("chat template %s: %w", name, err)
	}
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("chat template %s: %w", name, err)
	}
	vars, err := specialTokens(cfg)
	if err != nil {
		return nil, fmt.Errorf("chat template %s: %w", name, err)
	}
	return parse(name, src, vars)
}

// templateSource extracts the "chat_template" of a JSON file: a string, or a list of named
// templates of which "default" is used.
func templateSource(data []byte) (string, error) {
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", fmt.Errorf("want a JSON object: %w", err)
	}
	raw, ok := cfg["chat_template"]
	if !ok {
		return "", errNoTemplateKey
	}
	var src string
	if err := json.Unmarshal(raw, &src); err == nil {
		return src, nil
	}
	var named []struct {
		Name     string `json:"name"`
		Template string `json:"template"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		return "", fmt.Errorf(`"chat_template" must be a string or a list of {"name", "template"}: %w`, err)
	}
	names := make([]string, len(named))
	for i, n := range named {
		if n.Name == "default" {
			return n.Template, nil
		}
		names[i] = n.Name
	}
	return "", fmt.Errorf(`"chat_template" lists templates %q but none named "default"`, names)
}

// specialTokens reads the special tokens of a tokenizer_config.json: each is a string or an
// AddedToken object {"content": ...}; null or absent ones are left out, as transformers does.
func specialTokens(cfg map[string]json.RawMessage) (map[string]jinja.Value, error) {
	tokenString := func(raw json.RawMessage) (string, bool, error) {
		var s *string
		if err := json.Unmarshal(raw, &s); err == nil {
			if s == nil {
				return "", false, nil
			}
			return *s, true, nil
		}
		var obj struct {
			Content *string `json:"content"`
		}
		if err := json.Unmarshal(raw, &obj); err != nil || obj.Content == nil {
			return "", false, fmt.Errorf("want a string or an object with \"content\", got %.60s", raw)
		}
		return *obj.Content, true, nil
	}
	vars := map[string]jinja.Value{}
	for _, k := range specialTokenKeys {
		raw, ok := cfg[k]
		if !ok {
			continue
		}
		s, ok, err := tokenString(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		if ok {
			vars[k] = jinja.NewString(s)
		}
	}
	if raw, ok := cfg["additional_special_tokens"]; ok {
		var list []json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, fmt.Errorf("additional_special_tokens: want a list: %w", err)
		}
		items := make([]jinja.Value, 0, len(list))
		for i, e := range list {
			s, ok, err := tokenString(e)
			if err != nil {
				return nil, fmt.Errorf("additional_special_tokens[%d]: %w", i, err)
			}
			if ok {
				items = append(items, jinja.NewString(s))
			}
		}
		vars["additional_special_tokens"] = jinja.NewList(items)
	}
	return vars, nil
}

// Source returns the template's Jinja source.
func (t *Template) Source() string { return t.src }

// Render renders msgs with the template, as Hugging Face's apply_chat_template(tokenize=False) does.
func (t *Template) Render(msgs []Message, opts Options) (string, error) {
	vars := make(map[string]jinja.Value, len(t.vars)+len(opts.Vars)+len(reserved))
	for k, v := range t.vars {
		vars[k] = v
	}
	for k, v := range opts.Vars {
		for _, r := range reserved {
			if k == r {
				return "", fmt.Errorf("chat template %s: Options.Vars[%q] would replace a variable Render sets from its arguments", t.name, k)
			}
		}
		val, err := goValue(v)
		if err != nil {
			return "", fmt.Errorf("chat template %s: Options.Vars[%q]: %w", t.name, k, err)
		}
		vars[k] = val
	}
	list := make([]jinja.Value, len(msgs))
	for i, m := range msgs {
		v, err := messageValue(m)
		if err != nil {
			return "", fmt.Errorf("chat template %s: messages[%d] (%s): %w", t.name, i, m.Role, err)
		}
		list[i] = v
	}
	vars["messages"] = jinja.NewList(list)
	vars["add_generation_prompt"] = jinja.NewBool(opts.AddGenerationPrompt)
	vars["add_vision_id"] = jinja.NewBool(opts.AddVisionID)
	vars["tools"] = jinja.None()
	if opts.Tools != nil {
		tools := make([]jinja.Value, len(opts.Tools))
		for i, raw := range opts.Tools {
			v, err := jsonValue(raw)
			if err != nil {
				return "", fmt.Errorf("chat template %s: tools[%d] is not valid JSON: %w", t.name, i, err)
			}
			tools[i] = v
		}
		vars["tools"] = jinja.NewList(tools)
	}
	out, err := t.tmpl.RenderValues(vars)
	if err != nil {
		return "", fmt.Errorf("chat template %s: %w", t.name, err)
	}
	return out, nil
}

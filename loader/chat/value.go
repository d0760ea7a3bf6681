package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/ardanlabs/jinja"
)

// jsonValue decodes exactly one JSON value into a template value, keeping object keys in the order
// they appear (tojson must print them in that order, as Python and JavaScript renderers do).
// Integers without a fraction or exponent stay integers, other numbers become floats, as in Python.
func jsonValue(data []byte) (jinja.Value, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	v, err := decodeJSON(d)
	if err != nil {
		return jinja.Undefined(), err
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return jinja.Undefined(), errors.New("trailing data after the JSON value")
	}
	return v, nil
}

func decodeJSON(d *json.Decoder) (jinja.Value, error) {
	tok, err := d.Token()
	if err != nil {
		return jinja.Undefined(), err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := jinja.NewDict()
			dict := obj.AsDict()
			for d.More() {
				key, err := d.Token()
				if err != nil {
					return jinja.Undefined(), err
				}
				v, err := decodeJSON(d)
				if err != nil {
					return jinja.Undefined(), err
				}
				dict.Set(key.(string), v)
			}
			if _, err := d.Token(); err != nil {
				return jinja.Undefined(), err
			}
			return obj, nil
		case '[':
			var items []jinja.Value
			for d.More() {
				v, err := decodeJSON(d)
				if err != nil {
					return jinja.Undefined(), err
				}
				items = append(items, v)
			}
			if _, err := d.Token(); err != nil {
				return jinja.Undefined(), err
			}
			if items == nil {
				items = []jinja.Value{}
			}
			return jinja.NewList(items), nil
		}
		return jinja.Undefined(), fmt.Errorf("unexpected %q", t)
	case nil:
		return jinja.None(), nil
	default:
		// bool, string and json.Number map as Python's json.loads maps them.
		return jinja.FromGoValue(t), nil
	}
}

// goValue converts a Go value given in Options.Vars: json.RawMessage is decoded with jsonValue (key
// order kept); maps with string keys are visited in sorted key order.
func goValue(v any) (jinja.Value, error) {
	switch x := v.(type) {
	case json.RawMessage:
		return jsonValue(x)
	case jinja.Value:
		return x, nil
	case nil, bool, string, int, int64, float64, json.Number:
		return jinja.FromGoValue(x), nil
	case int32:
		return jinja.NewInt(int64(x)), nil
	case uint32:
		return jinja.NewInt(int64(x)), nil
	case float32:
		return jinja.NewFloat(float64(x)), nil
	case []string:
		items := make([]jinja.Value, len(x))
		for i, s := range x {
			items[i] = jinja.NewString(s)
		}
		return jinja.NewList(items), nil
	case []any:
		items := make([]jinja.Value, len(x))
		for i, e := range x {
			var err error
			if items[i], err = goValue(e); err != nil {
				return jinja.Undefined(), fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return jinja.NewList(items), nil
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		obj := jinja.NewDict()
		for _, k := range keys {
			e, err := goValue(x[k])
			if err != nil {
				return jinja.Undefined(), fmt.Errorf("[%q]: %w", k, err)
			}
			obj.AsDict().Set(k, e)
		}
		return obj, nil
	}
	return jinja.Undefined(), fmt.Errorf("unsupported type %T (want bool, string, number, nil, []any, map[string]any or json.RawMessage)", v)
}

// messageValue is the template's view of one message: role, content (string or parts), and the
// optional name, tool_call_id, reasoning_content and tool_calls, in that order.
func messageValue(m Message) (jinja.Value, error) {
	obj := jinja.NewDict()
	d := obj.AsDict()
	d.Set("role", jinja.NewString(m.Role))
	if m.ContentString != nil {
		d.Set("content", jinja.NewString(*m.ContentString))
	} else {
		parts := make([]jinja.Value, len(m.Content))
		for j, p := range m.Content {
			pv := jinja.NewDict()
			switch p.Type {
			case PartText:
				pv.AsDict().Set("type", jinja.NewString(PartText))
				pv.AsDict().Set("text", jinja.NewString(p.Text))
			case PartImage:
				pv.AsDict().Set("type", jinja.NewString(PartImage))
			default:
				return jinja.Undefined(), fmt.Errorf("content[%d]: part type %q is not %q or %q", j, p.Type, PartText, PartImage)
			}
			parts[j] = pv
		}
		d.Set("content", jinja.NewList(parts))
	}
	if m.Name != "" {
		d.Set("name", jinja.NewString(m.Name))
	}
	if m.ToolCallID != "" {
		d.Set("tool_call_id", jinja.NewString(m.ToolCallID))
	}
	if m.ReasoningContent != nil {
		d.Set("reasoning_content", jinja.NewString(*m.ReasoningContent))
	}
	if len(m.ToolCalls) > 0 {
		calls := make([]jinja.Value, len(m.ToolCalls))
		for j, c := range m.ToolCalls {
			fn := jinja.NewDict()
			fn.AsDict().Set("name", jinja.NewString(c.Function.Name))
			if c.Function.ArgumentsObject {
				args, err := jsonValue([]byte(c.Function.Arguments))
				if err != nil {
					return jinja.Undefined(), fmt.Errorf("tool_calls[%d] (%s): arguments are marked as a JSON object but do not parse: %w", j, c.Function.Name, err)
				}
				fn.AsDict().Set("arguments", args)
			} else {
				fn.AsDict().Set("arguments", jinja.NewString(c.Function.Arguments))
			}
			call := jinja.NewDict()
			call.AsDict().Set("id", jinja.NewString(c.ID))
			call.AsDict().Set("type", jinja.NewString(c.Type))
			call.AsDict().Set("function", fn)
			calls[j] = call
		}
		d.Set("tool_calls", jinja.NewList(calls))
	}
	return obj, nil
}

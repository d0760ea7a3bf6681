// Package chat turns OpenAI-style chat messages into the prompt a checkpoint's Jinja chat template
// renders (byte for byte what Hugging Face's renderers produce), and that prompt into token ids with
// each image expanded to its number of <|image_pad|> tokens.
//
// Templates are rendered by github.com/ardanlabs/jinja, a pure-Go Jinja engine, so any checkpoint's
// own template can be used (see docs/decisions/chat-template.md for the measurements behind that
// choice). Parse refuses, with an error that names the place, the constructs that engine is known to
// render differently from Jinja2.
package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Part types as the template sees them.
const (
	// PartText is a text content part; its text is in Part.Text.
	PartText = "text"
	// PartImage is an image content part of any wire kind (see ImageKinds); the template sees only
	// {"type": "image"} and renders <|vision_start|><|image_pad|><|vision_end|> for it.
	PartImage = "image"
)

// ImageKinds lists the OpenAI-style content part types that ParseMessages maps to a PartImage part:
// "image_url" (OpenAI), "image" (Hugging Face), and qvl's precomputed forms "image_ref",
// "image_embeds" (vLLM's wire format) and "embedding".
var ImageKinds = []string{"image_url", "image", "image_ref", "image_embeds", "embedding"}

// Part is one element of a message whose content is a list of parts.
type Part struct {
	// Type is PartText or PartImage.
	Type string `json:"type"`
	// Text is the text of a PartText part (may be empty).
	Text string `json:"text,omitempty"`
	// Kind is the wire type an image part arrived as (one of ImageKinds); empty for text parts and for
	// image parts built in Go. The template never sees it.
	Kind string `json:"-"`
	// Data is the value under the Kind key of the wire part (for example the {"url": ...} object of an
	// "image_url" part), kept verbatim so that a caller can resolve the image or embedding it names.
	// The template never sees it.
	Data json.RawMessage `json:"-"`
}

// FunctionCall is the function an assistant tool call invokes.
type FunctionCall struct {
	// Name is the function's name.
	Name string
	// Arguments is the call's arguments as JSON text when ArgumentsObject is true, otherwise the
	// arguments string exactly as given (OpenAI sends a string that holds JSON, but it is not parsed).
	Arguments string
	// ArgumentsObject reports that the arguments arrived as a JSON value (usually an object) rather
	// than a string. The template then sees the parsed value, key order kept, and its `is string`
	// test is false (Qwen templates then print it with tojson); otherwise it sees the string verbatim.
	ArgumentsObject bool
}

// ToolCall is one tool call of an assistant message.
type ToolCall struct {
	// ID is the call's id (OpenAI "id"); may be empty.
	ID string
	// Type is the call's type, "function" for every call OpenAI defines.
	Type string
	// Function is the function called.
	Function FunctionCall
}

// Message is one chat message. Its content is either a string (ContentString non-nil) or a list of
// parts (ContentString nil; Content may then be empty): chat templates distinguish the two (`content
// is string`), so the form a client used is kept.
type Message struct {
	// Role is "system", "user", "assistant" or "tool" (other roles are passed to the template as is).
	Role string
	// Content holds the parts of a message whose content is a list; ignored when ContentString is set.
	Content []Part
	// ContentString, when non-nil, is the message's content as a plain string.
	ContentString *string
	// ToolCalls are an assistant message's tool calls.
	ToolCalls []ToolCall
	// Name is the optional participant name (passed to the template as "name" when non-empty).
	Name string
	// ToolCallID is the id of the call a tool message answers (passed as "tool_call_id" when non-empty).
	ToolCallID string
	// ReasoningContent, when non-nil, is an assistant message's reasoning (passed as
	// "reasoning_content"; thinking templates render it inside <think></think>).
	ReasoningContent *string
}

// Text returns a message whose content is the string text.
func Text(role, text string) Message {
	return Message{Role: role, ContentString: &text}
}

// ParseMessages decodes an OpenAI-style JSON array of chat messages. Content may be a string, an
// array of parts, or null/absent (taken as an empty list of parts, as vLLM does for assistant
// messages that only carry tool calls). Parts of type "text" become PartText parts and parts of the
// ImageKinds become PartImage parts; any other part type is an error that names the message and part.
// Tool call arguments may be a string (kept verbatim) or a JSON object (kept, in key order).
func ParseMessages(data []byte) ([]Message, error) {
	var raws []json.RawMessage
	if err := json.Unmarshal(data, &raws); err != nil {
		return nil, fmt.Errorf("chat messages: want a JSON array of message objects: %w", err)
	}
	msgs := make([]Message, len(raws))
	for i, raw := range raws {
		if err := msgs[i].decode(raw); err != nil {
			return nil, fmt.Errorf("chat messages[%d]: %w", i, err)
		}
	}
	return msgs, nil
}

// UnmarshalJSON decodes one OpenAI-style message, with the rules of ParseMessages.
func (m *Message) UnmarshalJSON(data []byte) error {
	return m.decode(data)
}

type wireMessage struct {
	Role             *string         `json:"role"`
	Content          json.RawMessage `json:"content"`
	Name             *string         `json:"name"`
	ToolCallID       *string         `json:"tool_call_id"`
	ToolCalls        []wireToolCall  `json:"tool_calls"`
	ReasoningContent *string         `json:"reasoning_content"`
}

type wireToolCall struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function *struct {
		Name      *string         `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	} `json:"function"`
}

func (m *Message) decode(data []byte) error {
	var w wireMessage
	if err := json.Unmarshal(data, &w); err != nil {
		return fmt.Errorf("want a message object with role, content, tool_calls: %w", err)
	}
	if w.Role == nil || *w.Role == "" {
		return errors.New(`field "role" is missing or empty`)
	}
	out := Message{Role: *w.Role, ReasoningContent: w.ReasoningContent}
	if w.Name != nil {
		out.Name = *w.Name
	}
	if w.ToolCallID != nil {
		out.ToolCallID = *w.ToolCallID
	}
	content := bytes.TrimSpace(w.Content)
	switch {
	case len(content) == 0 || bytes.Equal(content, []byte("null")):
		// No content: an empty list of parts.
	case content[0] == '"':
		var s string
		if err := json.Unmarshal(content, &s); err != nil {
			return fmt.Errorf(`field "content": %w`, err)
		}
		out.ContentString = &s
	case content[0] == '[':
		var raws []json.RawMessage
		if err := json.Unmarshal(content, &raws); err != nil {
			return fmt.Errorf(`field "content": %w`, err)
		}
		out.Content = make([]Part, len(raws))
		for j, raw := range raws {
			p, err := decodePart(raw)
			if err != nil {
				return fmt.Errorf("content[%d]: %w", j, err)
			}
			out.Content[j] = p
		}
	default:
		return fmt.Errorf(`field "content": want a string, an array of parts or null, got %.40s`, content)
	}
	for j, tc := range w.ToolCalls {
		call, err := decodeToolCall(tc)
		if err != nil {
			return fmt.Errorf("tool_calls[%d]: %w", j, err)
		}
		out.ToolCalls = append(out.ToolCalls, call)
	}
	*m = out
	return nil
}

func decodePart(raw json.RawMessage) (Part, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil || fields == nil {
		return Part{}, fmt.Errorf("want a content part object, got %.40s", raw)
	}
	var typ string
	if err := json.Unmarshal(fields["type"], &typ); err != nil || typ == "" {
		return Part{}, fmt.Errorf(`field "type" is missing or not a string in %.60s`, raw)
	}
	if typ == PartText {
		var text string
		if t, ok := fields["text"]; ok && !bytes.Equal(bytes.TrimSpace(t), []byte("null")) {
			if err := json.Unmarshal(t, &text); err != nil {
				return Part{}, fmt.Errorf(`text part: field "text" must be a string: %w`, err)
			}
		}
		return Part{Type: PartText, Text: text}, nil
	}
	for _, k := range ImageKinds {
		if typ == k {
			return Part{Type: PartImage, Kind: typ, Data: fields[typ]}, nil
		}
	}
	return Part{}, fmt.Errorf("unsupported content part type %q (want %q or an image kind %q)", typ, PartText, ImageKinds)
}

func decodeToolCall(tc wireToolCall) (ToolCall, error) {
	if tc.Function == nil {
		return ToolCall{}, errors.New(`field "function" is missing`)
	}
	if tc.Function.Name == nil {
		return ToolCall{}, errors.New(`field "function.name" is missing`)
	}
	call := ToolCall{ID: tc.ID, Type: tc.Type, Function: FunctionCall{Name: *tc.Function.Name}}
	args := bytes.TrimSpace(tc.Function.Arguments)
	switch {
	case len(args) == 0:
		// Absent arguments: an empty string, as the template would print nothing for them.
	case args[0] == '"':
		if err := json.Unmarshal(args, &call.Function.Arguments); err != nil {
			return ToolCall{}, fmt.Errorf(`field "function.arguments": %w`, err)
		}
	default:
		call.Function.Arguments = string(args)
		call.Function.ArgumentsObject = true
	}
	return call, nil
}

// Package qwen3 embeds the tokenizer data files of the Qwen3 / Qwen3-VL model family (tokenizer.json,
// tokenizer_config.json and the Qwen3-VL chat_template.json), so that qvl can write them into
// synthesized checkpoints and its built-in demo model without any network access. See README.md in
// this directory for the provenance of the files.
package qwen3

import _ "embed"

//go:embed tokenizer.json
var tokenizerJSON []byte

//go:embed tokenizer_config.json
var tokenizerConfigJSON []byte

//go:embed chat_template.json
var chatTemplateJSON []byte

// TokenizerJSON returns the contents of Qwen3's tokenizer.json (byte-level BPE: vocabulary, merges,
// added tokens, normalizer and pre-tokenizer). The returned slice is a fresh copy the caller may modify.
func TokenizerJSON() []byte { return clone(tokenizerJSON) }

// TokenizerConfigJSON returns the contents of Qwen3's tokenizer_config.json (special tokens, text chat
// template, tokenizer class). The returned slice is a fresh copy the caller may modify.
func TokenizerConfigJSON() []byte { return clone(tokenizerConfigJSON) }

// ChatTemplateJSON returns the contents of the chat_template.json that Qwen3-VL Instruct checkpoints
// ship beside their weights. The returned slice is a fresh copy the caller may modify.
func ChatTemplateJSON() []byte { return clone(chatTemplateJSON) }

func clone(b []byte) []byte {
	out := make([]byte, len(b))
	copy(out, b)
	return out
}

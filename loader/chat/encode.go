package chat

import (
	"fmt"
)

// TextEncoder turns text into token ids, recognizing special tokens such as <|image_pad|> written in
// the text. *tokenizer.Tokenizer (package loader/tokenizer) implements it.
type TextEncoder interface {
	Encode(text string) []int
}

// Encode renders msgs, tokenizes the prompt with tok, and expands the k-th <|image_pad|> token
// (id imagePadID) into imageTokens[k] copies: the number of embedding rows image k contributes
// (t*h*w/4 for a Qwen3-VL grid (t, h, w); K for a custom embedding projected to K tokens). It fails
// when the prompt holds a different number of image pads than len(imageTokens) (for example when a
// template drops an image or a text part spells out "<|image_pad|>"), or when a count is below 1.
func (t *Template) Encode(tok TextEncoder, msgs []Message, opts Options, imagePadID int, imageTokens []int) ([]int, error) {
	if tok == nil {
		return nil, fmt.Errorf("chat encode: tokenizer is nil")
	}
	for k, n := range imageTokens {
		if n < 1 {
			return nil, fmt.Errorf("chat encode: image %d has %d tokens, want at least 1", k, n)
		}
	}
	text, err := t.Render(msgs, opts)
	if err != nil {
		return nil, err
	}
	return ExpandImagePads(tok.Encode(text), imagePadID, imageTokens)
}

// ExpandImagePads returns ids with the k-th occurrence of imagePadID repeated imageTokens[k] times.
// It fails when ids hold a different number of pads than len(imageTokens) or a count is below 1.
func ExpandImagePads(ids []int, imagePadID int, imageTokens []int) ([]int, error) {
	pads, total := 0, 0
	for _, id := range ids {
		if id == imagePadID {
			pads++
		}
	}
	if pads != len(imageTokens) {
		return nil, fmt.Errorf("chat encode: the prompt has %d image pad tokens (id %d) but %d image token counts were given", pads, imagePadID, len(imageTokens))
	}
	for k, n := range imageTokens {
		if n < 1 {
			return nil, fmt.Errorf("chat encode: image %d has %d tokens, want at least 1", k, n)
		}
		total += n
	}
	out := make([]int, 0, len(ids)-pads+total)
	k := 0
	for _, id := range ids {
		if id != imagePadID {
			out = append(out, id)
			continue
		}
		for range imageTokens[k] {
			out = append(out, imagePadID)
		}
		k++
	}
	return out, nil
}

// ImageParts returns the image parts of msgs in the order a Qwen-VL template renders their pads
// (message order, then part order): the k-th entry is the image whose token count is imageTokens[k].
func ImageParts(msgs []Message) []Part {
	var out []Part
	for _, m := range msgs {
		if m.ContentString != nil {
			continue
		}
		for _, p := range m.Content {
			if p.Type == PartImage {
				out = append(out, p)
			}
		}
	}
	return out
}

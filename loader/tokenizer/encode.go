package tokenizer

// Encode tokenizes text. Added tokens that occur in the text (special ones such as <|im_start|> and
// <|image_pad|>, and non-special ones such as <think>) are recognized and become their ids, as Hugging
// Face tokenizers do with split_special_tokens=false; no BOS/EOS token is added. Text that is not
// valid UTF-8 is tokenized byte by byte where it is invalid, without error.
func (t *Tokenizer) Encode(text string) []int {
	ids := make([]int, 0, len(text)/3+1)
	for len(text) > 0 {
		pos, size, id := t.addedMatcher.find(text)
		if pos < 0 {
			return t.appendSection(ids, text)
		}
		ids = t.appendSection(ids, text[:pos])
		ids = append(ids, int(id))
		text = text[pos+size:]
	}
	return ids
}

// EncodeOrdinary tokenizes text treating added tokens as plain text: "<|im_start|>" in the text is
// encoded like any other characters. Use it for untrusted content that must not inject control tokens.
func (t *Tokenizer) EncodeOrdinary(text string) []int {
	return t.appendSection(make([]int, 0, len(text)/3+1), text)
}

// appendSection normalizes, pre-tokenizes and BPE-encodes a run of text without added tokens.
func (t *Tokenizer) appendSection(dst []int, s string) []int {
	if len(s) == 0 {
		return dst
	}
	s = nfc(s)
	for i := 0; i < len(s); {
		j := pieceEnd(s, i)
		dst = t.appendPiece(dst, s[i:j])
		i = j
	}
	return dst
}

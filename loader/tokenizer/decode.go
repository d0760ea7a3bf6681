package tokenizer

import "unicode/utf8"

// Decode turns token ids back into text. Vocabulary tokens contribute their bytes; added tokens their
// content. Bytes that do not form valid UTF-8 become U+FFFD, one per maximal ill-formed subsequence
// (the WHATWG / Python errors="replace" convention); a byte sequence is cut at every added token. With
// skipSpecial, special tokens (IsSpecial) are left out, and the bytes around them join up. Ids that
// name no token are ignored.
func (t *Tokenizer) Decode(ids []int, skipSpecial bool) string {
	var st utf8Stream
	buf := make([]byte, 0, 4*len(ids))
	for _, id := range ids {
		buf = t.appendToken(buf, &st, id, skipSpecial)
	}
	return string(st.flush(buf))
}

// appendToken appends what token id contributes to decoded text, carrying incomplete UTF-8 in st.
func (t *Tokenizer) appendToken(dst []byte, st *utf8Stream, id int, skipSpecial bool) []byte {
	if id < 0 || id >= len(t.known) || !t.known[id] {
		return dst
	}
	if t.added[id] {
		if skipSpecial && t.special[id] {
			return dst
		}
		dst = st.flush(dst)
		return append(dst, t.raw[id]...)
	}
	return st.write(dst, t.raw[id])
}

// Decoder is an incremental detokenizer for streaming generation: feed it token ids one at a time and
// it returns the text each one completes. The concatenation of everything Add and Flush return equals
// Decode of all the ids. A Decoder is not safe for concurrent use.
type Decoder struct {
	t    *Tokenizer
	skip bool
	st   utf8Stream
}

// NewDecoder returns a Decoder; skipSpecial has the meaning it has for Decode.
func (t *Tokenizer) NewDecoder(skipSpecial bool) *Decoder {
	return &Decoder{t: t, skip: skipSpecial}
}

// Add decodes one more token and returns the newly completed text. It never returns part of a UTF-8
// character: the bytes of a character split across tokens are held back until it is complete (or
// turns out to be invalid, which yields U+FFFD).
func (d *Decoder) Add(id int) string {
	var buf [64]byte
	return string(d.t.appendToken(buf[:0], &d.st, id, d.skip))
}

// Flush ends the stream and returns what is left: an incomplete UTF-8 character held back by Add comes
// out as U+FFFD. The Decoder can then be reused for a new stream.
func (d *Decoder) Flush() string {
	var buf [4]byte
	return string(d.st.flush(buf[:0]))
}

// utf8Stream is the UTF-8 decoder of the WHATWG Encoding Standard (section 4.1.1, error mode
// "replacement"), which TextDecoder uses: each maximal ill-formed subsequence becomes one U+FFFD. It
// keeps the state of a character split across writes.
type utf8Stream struct {
	cp     rune // code point accumulated so far
	seen   uint8
	needed uint8 // continuation bytes still expected; 0 between characters
	lower  byte  // bounds of the next continuation byte
	upper  byte
}

const replacement = "\uFFFD"

// write decodes src, appending the completed characters to dst.
func (s *utf8Stream) write(dst []byte, src []byte) []byte {
	for i := 0; i < len(src); {
		b := src[i]
		if s.needed == 0 {
			if b < utf8.RuneSelf {
				dst = append(dst, b)
				i++
				continue
			}
			// Fast path: copy a complete valid character at once.
			if _, size := utf8.DecodeRune(src[i:]); size > 1 {
				dst = append(dst, src[i:i+size]...)
				i += size
				continue
			}
			s.lower, s.upper = 0x80, 0xBF
			switch {
			case b >= 0xC2 && b <= 0xDF:
				s.needed, s.cp = 1, rune(b&0x1F)
			case b >= 0xE0 && b <= 0xEF:
				if b == 0xE0 {
					s.lower = 0xA0
				} else if b == 0xED {
					s.upper = 0x9F
				}
				s.needed, s.cp = 2, rune(b&0x0F)
			case b >= 0xF0 && b <= 0xF4:
				if b == 0xF0 {
					s.lower = 0x90
				} else if b == 0xF4 {
					s.upper = 0x8F
				}
				s.needed, s.cp = 3, rune(b&0x07)
			default:
				dst = append(dst, replacement...)
			}
			i++
			continue
		}
		if b < s.lower || b > s.upper {
			// Ill-formed: emit U+FFFD and reprocess b as the start of a new character.
			s.reset()
			dst = append(dst, replacement...)
			continue
		}
		s.lower, s.upper = 0x80, 0xBF
		s.cp = s.cp<<6 | rune(b&0x3F)
		s.seen++
		i++
		if s.seen == s.needed {
			dst = utf8.AppendRune(dst, s.cp)
			s.reset()
		}
	}
	return dst
}

// flush ends the byte sequence: a pending incomplete character becomes U+FFFD.
func (s *utf8Stream) flush(dst []byte) []byte {
	if s.needed != 0 {
		s.reset()
		dst = append(dst, replacement...)
	}
	return dst
}

func (s *utf8Stream) reset() { *s = utf8Stream{} }

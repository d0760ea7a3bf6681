package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// sectionNFC is what Decode(Encode(s)) must give for valid UTF-8 s: added tokens verbatim and the text
// between them NFC-normalized section by section (normalization never crosses an added token, so
// "<|im_end|>\u0338" stays as is although NFC would compose ">\u0338" into "≯").
func sectionNFC(tok *Tokenizer, s string) string {
	var b strings.Builder
	for len(s) > 0 {
		pos, size, _ := tok.addedMatcher.find(s)
		if pos < 0 {
			b.WriteString(nfc(s))
			break
		}
		b.WriteString(nfc(s[:pos]))
		b.WriteString(s[pos : pos+size])
		s = s[pos+size:]
	}
	return b.String()
}

// FuzzEncode checks, for any input, that encoding never panics and yields valid ids, and for valid
// UTF-8 that decoding gives back the NFC form of the input (per section between added tokens for
// Encode, whole for EncodeOrdinary) and that streaming decode agrees with Decode.
//
//	go test ./loader/tokenizer/ -run '^$' -fuzz FuzzEncode -fuzztime 60s
func FuzzEncode(f *testing.F) {
	tok := qwen(f)
	for i, c := range corpus(f) {
		if len(c.Text) < 300 && i%4 == 0 {
			f.Add(c.Text)
		}
	}
	for _, s := range []string{"\xff", "a\xe4\xb8", "\xed\xa0\x80<|im_end|>\xc0\xaf", "<|im_start|\xf0\x9f\x99", "'\xffs", " \x80\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids := tok.Encode(s)
		ord := tok.EncodeOrdinary(s)
		for _, list := range [][]int{ids, ord} {
			for _, id := range list {
				if _, ok := tok.Token(id); !ok {
					t.Fatalf("Encode(%q) produced id %d that names no token", s, id)
				}
			}
		}
		dec := tok.Decode(ids, false)
		if !utf8.ValidString(dec) {
			t.Fatalf("Decode(Encode(%q)) = %q is not valid UTF-8", s, dec)
		}
		if !utf8.ValidString(s) {
			return
		}
		if want := nfc(s); tok.Decode(ord, false) != want {
			t.Fatalf("Decode(EncodeOrdinary(%q)) = %q, want NFC %q", s, tok.Decode(ord, false), want)
		}
		if want := sectionNFC(tok, s); dec != want {
			t.Fatalf("Decode(Encode(%q)) = %q, want %q", s, dec, want)
		}
		if n := norm.NFC.String(s); strings.Count(n, cgj) == strings.Count(s, cgj) && nfc(s) != n {
			t.Fatalf("nfc(%q) = %q, golang.org/x/text gives %q", s, nfc(s), n)
		}
		d := tok.NewDecoder(false)
		var b strings.Builder
		for _, id := range ids {
			chunk := d.Add(id)
			if !utf8.ValidString(chunk) {
				t.Fatalf("streaming decode of %q: chunk %q is not valid UTF-8", s, chunk)
			}
			b.WriteString(chunk)
		}
		b.WriteString(d.Flush())
		if b.String() != dec {
			t.Fatalf("streaming decode of %q = %q, Decode gives %q", s, b.String(), dec)
		}
	})
}

package tokenizer

import (
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// cgj is U+034F COMBINING GRAPHEME JOINER, which golang.org/x/text/unicode/norm inserts into runs of
// more than 30 non-starters (the Stream-Safe Text Format of UAX #15).
const cgj = "\u034F"

// nfc returns the NFC form of s as String.prototype.normalize("NFC") computes it. It uses
// golang.org/x/text/unicode/norm, and falls back to nfcUnbounded when that inserted a U+034F to keep
// the text stream-safe, which the reference implementation does not do.
func nfc(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return s
	}
	out := norm.NFC.String(s)
	if out != s && strings.Count(out, cgj) != strings.Count(s, cgj) && utf8.ValidString(s) {
		return nfcUnbounded(s)
	}
	return out
}

// nfcElem is one character of a canonical decomposition with its canonical combining class.
type nfcElem struct {
	r   rune
	ccc uint8
}

// nfcUnbounded computes NFC by the textbook algorithm of UAX #15 (full canonical decomposition,
// canonical ordering, canonical composition) with no limit on the length of a run of non-starters. s
// must be valid UTF-8. Only text with more than 30 consecutive combining marks comes here.
func nfcUnbounded(s string) string {
	elems := make([]nfcElem, 0, len(s))
	var buf [utf8.UTFMax]byte
	for _, r := range s {
		d := norm.NFD.String(string(r))
		for _, dr := range d {
			n := utf8.EncodeRune(buf[:], dr)
			elems = append(elems, nfcElem{r: dr, ccc: norm.NFD.Properties(buf[:n]).CCC()})
		}
	}
	// Canonical ordering: stable sort of every run of non-starters by combining class.
	for i := 0; i < len(elems); {
		if elems[i].ccc == 0 {
			i++
			continue
		}
		j := i
		for j < len(elems) && elems[j].ccc != 0 {
			j++
		}
		slices.SortStableFunc(elems[i:j], func(a, b nfcElem) int { return int(a.ccc) - int(b.ccc) })
		i = j
	}
	// Canonical composition.
	out := elems[:0]
	starter := -1 // index in out of the last starter
	for _, c := range elems {
		if starter >= 0 {
			last := len(out) - 1
			blocked := last > starter && out[last].ccc >= c.ccc
			if !blocked {
				if comp, ok := composePair(out[starter].r, c.r); ok {
					out[starter].r = comp
					continue
				}
			}
		}
		if c.ccc == 0 {
			starter = len(out)
		}
		out = append(out, c)
	}
	var b strings.Builder
	b.Grow(len(s))
	for _, c := range out {
		b.WriteRune(c.r)
	}
	return b.String()
}

// composePair returns the primary composite of a and b, if there is one. a is a starter that is the
// result of composing a canonically ordered decomposition whose combining classes do not exceed b's,
// so the NFC of the pair is the composite exactly when a and b compose.
func composePair(a, b rune) (rune, bool) {
	var buf [2 * utf8.UTFMax]byte
	n := utf8.EncodeRune(buf[:], a)
	n += utf8.EncodeRune(buf[n:], b)
	out := norm.NFC.Bytes(buf[:n])
	r, size := utf8.DecodeRune(out)
	if size == len(out) && r != utf8.RuneError {
		return r, true
	}
	return 0, false
}

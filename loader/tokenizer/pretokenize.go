package tokenizer

import (
	"sync"
	"unicode"
	"unicode/utf8"
)

// Character classes of the pre-tokenizer regex.
const (
	clsOther   = iota // none of the below: [^\s\p{L}\p{N}]
	clsLetter         // \p{L}
	clsNumber         // \p{N}
	clsSpace          // \s other than \r and \n
	clsNewline        // \r or \n
)

// asciiClass classifies the ASCII bytes.
var asciiClass = func() (t [128]uint8) {
	for c := 0; c < 128; c++ {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
			t[c] = clsLetter
		case c >= '0' && c <= '9':
			t[c] = clsNumber
		case c == '\r' || c == '\n':
			t[c] = clsNewline
		case c == ' ' || c == '\t' || c == '\v' || c == '\f':
			t[c] = clsSpace
		default:
			t[c] = clsOther
		}
	}
	return t
}()

// bmpClass classifies the Basic Multilingual Plane; built on first use.
var (
	bmpClass     []uint8
	bmpClassOnce sync.Once
)

func buildBMPClass() {
	t := make([]uint8, 0x10000)
	for r := rune(0); r < 0x10000; r++ {
		t[r] = slowClass(r)
	}
	bmpClass = t
}

// isJSSpace reports whether r matches \s in an ECMAScript regular expression: the WhiteSpace and
// LineTerminator productions (Zs, TAB, VT, FF, ZWNBSP U+FEFF, LF, CR, LS, PS). Unlike Unicode's
// White_Space property this includes U+FEFF and excludes U+0085.
func isJSSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ', 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000, 0xFEFF:
		return true
	}
	return r >= 0x2000 && r <= 0x200A
}

func slowClass(r rune) uint8 {
	switch {
	case r == '\r' || r == '\n':
		return clsNewline
	case isJSSpace(r):
		return clsSpace
	case unicode.IsLetter(r):
		return clsLetter
	case unicode.IsNumber(r):
		return clsNumber
	}
	return clsOther
}

// classAt decodes the character at s[i] and returns its class and size in bytes. An invalid UTF-8 byte
// is a one-byte character of class clsOther.
func classAt(s string, i int) (uint8, int) {
	c := s[i]
	if c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, size := utf8.DecodeRuneInString(s[i:])
	if r < 0x10000 {
		return bmpClass[r], size
	}
	return slowClass(r), size
}

// pieceEnd returns the end of the pre-tokenizer piece that starts at s[i] (i < len(s)). It reproduces
// the leftmost match of the Split regex
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// under backtracking semantics: the first alternative that matches at i wins, each quantifier taking
// as much as it can while the rest of its alternative still matches. Every character matches some
// alternative, so the pieces tile the text.
func pieceEnd(s string, i int) int {
	n := len(s)
	// 1. Contractions, ASCII case-insensitive (as the JavaScript port rewrites (?i:...)).
	if s[i] == '\'' && i+1 < n {
		// c|0x20 folds only 'A'-'Z' onto 'a'-'z' among the bytes that can equal these letters.
		switch s[i+1] | 0x20 {
		case 's', 't', 'm', 'd':
			return i + 2
		case 'r', 'v':
			if i+2 < n && s[i+2]|0x20 == 'e' {
				return i + 3
			}
		case 'l':
			if i+2 < n && s[i+2]|0x20 == 'l' {
				return i + 3
			}
		}
	}
	c0, n0 := classAt(s, i)
	// 2. [^\r\n\p{L}\p{N}]?\p{L}+
	switch c0 {
	case clsLetter:
		return letters(s, i+n0)
	case clsOther, clsSpace:
		if i+n0 < n {
			if c1, n1 := classAt(s, i+n0); c1 == clsLetter {
				return letters(s, i+n0+n1)
			}
		}
	case clsNumber:
		// 3. \p{N}
		return i + n0
	}
	// 4. " ?[^\s\p{L}\p{N}]+[\r\n]*" (without the optional space the alternative cannot match at a
	// space, which is \s).
	j := i
	if s[i] == ' ' {
		j = i + 1
	}
	k := j
	for k < n {
		c, size := classAt(s, k)
		if c != clsOther {
			break
		}
		k += size
	}
	if k > j {
		for k < n && (s[k] == '\r' || s[k] == '\n') {
			k++
		}
		return k
	}
	// Only white space is left (c0 is clsSpace or clsNewline). Find the run of white space.
	end := i
	lastNL := -1    // index of the last \r or \n in the run
	lastStart := -1 // start of the last character of the run
	runes := 0
	for end < n {
		c, size := classAt(s, end)
		if c != clsSpace && c != clsNewline {
			break
		}
		if c == clsNewline {
			lastNL = end
		}
		lastStart = end
		runes++
		end += size
	}
	// 5. \s*[\r\n]+ : backtrack \s* to the last newline of the run; [\r\n]+ then takes it (the run
	// holds no newline after it).
	if lastNL >= 0 {
		return lastNL + 1
	}
	// 6. \s+(?!\S) : the whole run at the end of the text, else the run minus its last character.
	if end == n {
		return end
	}
	if runes >= 2 {
		return lastStart
	}
	// 7. \s+
	return end
}

// letters returns the end of the run of letters starting at s[i].
func letters(s string, i int) int {
	n := len(s)
	for i < n {
		c := s[i]
		if c < utf8.RuneSelf {
			if asciiClass[c] != clsLetter {
				return i
			}
			i++
			continue
		}
		cls, size := classAt(s, i)
		if cls != clsLetter {
			return i
		}
		i += size
	}
	return i
}

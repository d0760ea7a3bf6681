package tokenizer

import "fmt"

// byteToRune is the GPT-2 byte-level alphabet: printable bytes map to themselves, the others (controls,
// space, DEL, NBSP, soft hyphen...) to U+0100 and up, so that every byte is a visible character.
var byteToRune [256]rune

// runeToByte inverts byteToRune; -1 for runes outside the alphabet.
var runeToByte [324]int16

func init() {
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = rune(256 + n)
			n++
		}
	}
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	for b, r := range byteToRune {
		runeToByte[r] = int16(b)
	}
}

// byteLevelDecode maps a token written in the byte-level alphabet back to its bytes.
func byteLevelDecode(tok string) ([]byte, error) {
	out := make([]byte, 0, len(tok))
	for _, r := range tok {
		if r < 0 || int(r) >= len(runeToByte) || runeToByte[r] < 0 {
			return nil, fmt.Errorf("character %q is not in the byte-level alphabet", r)
		}
		out = append(out, byte(runeToByte[r]))
	}
	return out, nil
}
